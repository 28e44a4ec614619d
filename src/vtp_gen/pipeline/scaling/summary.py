"""``summary.md``: the rows as a table with their intervals, then the verdict computed from them.

Everything under "Verdict" is derived from ``scaling.csv`` by :mod:`vtp_gen.pipeline.scaling.verdict`;
nothing in it is written by hand, so rerunning the study (or collecting more points) rewrites it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vtp_gen.pipeline.scaling.verdict import (
    BASELINE,
    MATCHED_COMPUTE_MAX_RATIO,
    PAPER,
    PLATEAU_RULE,
    RULE,
    correlation,
    estimate,
    gaps,
    last_change,
    matched_compute_gaps,
    plateau,
    width_verdict,
    widths,
)


def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def _with_interval(row: dict, column: str, digits: int = 2) -> str:
    e = estimate(row, column)
    if e is None:
        return "–"
    if not e.has_interval:
        return f"{e.value:.{digits}f}"
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _label(rows: Sequence[dict], column: str, fallback: str) -> str:
    return next((r[f"{column}_label"] for r in rows if r.get(f"{column}_label")), fallback)


def width_name(width) -> str:
    return f"width {width}" if width is not None else "the recipe's width"


def table(rows: Sequence[dict]) -> list[str]:
    gfid, rfid, domain = (
        _label(rows, "gfid", "gFID"),
        _label(rows, "rfid", "rFID"),
        _label(rows, "domain_fd", "FD-judge"),
    )
    return [
        f"| point | objectives | width | stage-1 steps | tokenizer GFLOPs | {rfid} | PSNR | probe | zero-shot | "
        f"{gfid} [95 %] | {domain} [95 %] | agreement % | seeds | minutes |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |",
        *(
            f"| {r['point']} | {r.get('objectives', '')} | {_cell(r.get('width'))} | {r['steps']} | "
            f"{_cell(r.get('tokenizer_gflops'), 0)} | {_cell(r.get('rfid'))} | {_cell(r.get('psnr'))} | "
            f"{_cell(r.get('linear_probe'), 1)} | {_cell(r.get('zero_shot_top1'), 1)} | {_with_interval(r, 'gfid')} | "
            f"{_with_interval(r, 'domain_fd')} | {_with_interval(r, 'label_agreement', 1)} | "
            f"{_cell(r.get('seeds') or 1)} | "
            f"{_cell(r['seconds_total'] / 60 if isinstance(r.get('seconds_total'), (int, float)) else None, 1)} |"
            for r in rows
        ),
    ]


def floors(rows: Sequence[dict]) -> list[str]:
    lines = []
    row = next((r for r in rows if r.get("gfid_floor") is not None), None)
    if row:
        lines.append(
            f"- {row.get('gfid_label') or 'gFID'}: real-vs-real floor {row['gfid_floor']:.2f} "
            "(real train vs real test images at the same N; from the study's gfid_floors)"
        )
    row = next((r for r in rows if r.get("domain_fd_floor") is not None), None)
    if row:
        lines.append(
            f"- {row.get('domain_fd_label') or 'FD-judge'}: real-vs-real floor {row['domain_fd_floor']:.2f} "
            f"(95 % of real draws below {row['domain_fd_floor_high']:.2f})"
        )
    row = next((r for r in rows if r.get("label_agreement_floor") is not None), None)
    if row:
        lines.append(
            f"- label agreement: the judge's own accuracy on real test images at the same N, "
            f"{row['label_agreement_floor']:.1f} % (the ceiling a perfect generator reaches)"
        )
    return lines


def _pair(g) -> str:
    """Which budgets a gap compares: "400 steps", or "400 vs 1600 steps" across budgets."""
    if g.baseline_steps is None or g.baseline_steps == g.steps:
        return f"{g.steps} steps"
    return f"{g.steps} vs {g.baseline_steps} steps"


def verdict_lines(rows: Sequence[dict], resamples: int = 2000) -> list[str]:
    gfid, rfid, domain = (
        _label(rows, "gfid", "gFID"),
        _label(rows, "rfid", "rFID"),
        _label(rows, "domain_fd", "FD-judge"),
    )
    names = {"gfid": gfid, "domain_fd": domain, "rfid": rfid}
    lines = ["## Verdict", "", f"Rule: {RULE}.", ""]
    for width in widths(rows):
        for matched, how in ((False, "same steps"), (True, "matched compute")):
            parts = []
            for metric in ("gfid", "domain_fd"):
                v = width_verdict(rows, width, metric, matched_compute=matched)
                if v.gap is None:
                    parts.append(f"by {names[metric]}: {v.verdict} (no pair of budgets)")
                else:
                    parts.append(
                        f"by {names[metric]}: **{v.verdict}** ({v.gap.gap.text()} at {_pair(v.gap)})"
                    )
            lines.append(f"- **{width_name(width)}, {how}**: " + "; ".join(parts))
    for matched, title in (
        (False, "at the same stage-1 steps"),
        (True, f"at matched compute (nearest budgets in FLOPs, within {MATCHED_COMPUTE_MAX_RATIO:g}x)"),
    ):
        lines += ["", f"### {PAPER} minus {BASELINE} {title} (negative: the paper's direction)", ""]
        for width in widths(rows):
            for metric in ("gfid", "domain_fd"):
                for g in (matched_compute_gaps if matched else gaps)(rows, width, metric):
                    ratio = (
                        f", {g.compute_ratio:.1f}x the baseline's tokenizer FLOPs" if g.compute_ratio else ""
                    )
                    lines.append(
                        f"- {width_name(width)}, {_pair(g)}, {names[metric]}: {g.paper.text(signed=False)} - "
                        f"{g.baseline.text(signed=False)} = {g.gap.text()}{ratio}"
                    )
    lines += ["", f"### Does {BASELINE} stop helping generation while it still reconstructs better?", ""]
    lines.append(
        "Change per doubling of tokenizer compute over the preset's last two budgets (negative = improving); "
        f"{PLATEAU_RULE}:"
    )
    lines.append("")
    for width in widths(rows):
        for objectives in (BASELINE, PAPER):
            changes = {m: last_change(rows, width, objectives, m) for m in ("gfid", "domain_fd", "rfid")}
            shown = [f"{names[m]} {c.per_doubling.text()}" for m, c in changes.items() if c is not None]
            if not shown:
                continue
            steps = next(c.steps for c in changes.values() if c is not None)
            verdict = (
                f"; plateau: {plateau(changes['gfid'], changes['rfid'])}" if objectives == BASELINE else ""
            )
            lines.append(
                f"- {width_name(width)}, {objectives}, {steps[0]} -> {steps[1]} steps: "
                + ", ".join(shown)
                + verdict
            )
    lines += ["", "### Correlations over the points (Pearson r, 95 % bootstrap over points)", ""]
    for column, name in (("linear_probe", "linear probe"), ("zero_shot_top1", "zero-shot"), ("rfid", rfid)):
        for target in ("gfid", "domain_fd"):
            c = correlation(rows, column, target, resamples)
            if c.points:
                lines.append(f"- {name} vs {names[target]}: {c.text()}")
    return lines


def curve_lines(curve: Sequence[dict] | None, point: str) -> list[str]:
    if not curve:
        return []
    gfid, domain = _label(curve, "gfid", "gFID"), _label(curve, "domain_fd", "FD-judge")
    lines = [
        "",
        f"## Stage-2 curve of {point}",
        "",
        "The generator of one point at several stage-2 step counts (one seed): has gFID flattened?",
        "",
        f"| stage-2 steps | {gfid} [95 %] | {domain} [95 %] |",
        "| --: | --: | --: |",
    ]
    lines += [
        f"| {r['stage2_steps']} | {_with_interval(r, 'gfid')} | {_with_interval(r, 'domain_fd')} |"
        for r in curve
    ]
    return lines


def summary_markdown(
    rows: list[dict],
    images: list[Path],
    root: Path,
    curve: Sequence[dict] | None = None,
    curve_point: str = "",
    resamples: int = 2000,
) -> str:
    """The rows as a Markdown table with intervals, the floors, the computed verdict, the stage-2
    curve, the figures."""
    gfid = _label(rows, "gfid", "gFID")
    seeds = max((r.get("seeds") or 1) for r in rows)
    pooled = next((r["seed_spread"] for r in rows if r.get("seed_spread")), "")
    spread = f"the spread over {seeds} stage-2 seeds" + (f", {pooled}" if pooled else "")
    lines = [
        "# Scaling study",
        "",
        f"{len(rows)} points. Metrics as labelled (sample counts included); [95 %] intervals: a bootstrap "
        f"over the samples{' combined with ' + spread if seeds > 1 else ''}. "
        "Probe: linear probe on the bottleneck features, top-1 %. Lower is better for "
        f"{gfid}, rFID and FD-judge.",
        "",
        *table(rows),
    ]
    floor_lines = floors(rows)
    if floor_lines:
        lines += ["", "Floors (what real images score under the same protocol):", "", *floor_lines]
    lines += ["", *verdict_lines(rows, resamples)]
    lines += curve_lines(curve, curve_point)
    if images:
        lines += [""]
        lines += [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in images]
    return "\n".join(lines) + "\n"
