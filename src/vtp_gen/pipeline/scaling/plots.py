"""The study's figures, as PNGs (matplotlib, no display needed), with 95 % error bars and floors.

* ``gfid_vs_compute.png``: gFID against tokenizer training GFLOPs, one panel per bottleneck
  width, one line per objective preset (the paper's Figs. 1c and 5); the real-vs-real floor
  (``gfid_floors``) as a dashed line;
* ``domain_fd_vs_compute.png``: the same for the domain metric (FD-judge), its measured floor
  dashed and the floor's 95 % range shaded;
* ``rfid_vs_compute.png``: rFID against compute (does reconstruction still improve?);
* ``probe_vs_gfid.png``, ``zero_shot_vs_gfid.png``, ``rfid_vs_gfid.png``: each point's metric
  against its gFID with the gFID's error bar, and Pearson r over all points (Figs. 2, 4);
* ``gfid_vs_stage2_steps.png``: one point's gFID (and FD-judge) against stage-2 steps, from
  ``stage2_curve`` (has the generator flattened?).

Error bars are the rows' ``<metric>_low/_high`` (a bootstrap over samples, combined over stage-2
seeds when there are several); a point without them is drawn without a bar. Each point is
labelled with its stage-1 step count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from vtp_gen.pipeline.scaling.verdict import pearson, widths
from vtp_gen.utils.plots import headless_pyplot

__all__ = ["pearson", "plot_all"]

PAPER_NAMES = {
    "AE": "AE only",
    "CLIP+AE": "CLIP + AE",
    "SSL+AE": "SSL + AE",
    "CLIP+SSL+AE": "CLIP + SSL + AE (VTP)",
}
MARKERS = "osD^v<>"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _usable(rows: Sequence[dict], *keys: str) -> list[dict]:
    return [r for r in rows if all(_finite(r.get(k)) for k in keys)]


def _by_preset(rows: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["preset"], []).append(row)
    return {name: sorted(group, key=lambda r: r["steps"]) for name, group in groups.items()}


def _label(row: dict, column: str, fallback: str) -> str:
    return row.get(f"{column}_label") or fallback


def _legend_name(group: list[dict]) -> str:
    objectives = group[0].get("objectives") or ""
    name = group[0]["preset"]
    return f"{name} ({PAPER_NAMES.get(objectives, objectives)})" if objectives else name


def _errors(rows: Sequence[dict], column: str) -> list[list[float]] | None:
    """Matplotlib's asymmetric yerr from ``_low/_high`` (0 where a row has none); None when none has any."""
    if not any(_finite(r.get(f"{column}_low")) and _finite(r.get(f"{column}_high")) for r in rows):
        return None
    below, above = [], []
    for r in rows:
        low, high = r.get(f"{column}_low"), r.get(f"{column}_high")
        ok = _finite(low) and _finite(high)
        below.append(max(r[column] - low, 0.0) if ok else 0.0)
        above.append(max(high - r[column], 0.0) if ok else 0.0)
    return [below, above]


def _save(plt, fig, axes, path: Path) -> Path:
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _width_title(width) -> str:
    return f"width {width}" if width is not None else "recipe's width"


def plot_vs_compute(
    rows: Sequence[dict],
    column: str,
    path: Path,
    title: str,
    fallback_label: str,
    floor: float | None = None,
    floor_column: str | None = None,
) -> Path | None:
    """``column`` against tokenizer GFLOPs: one panel per width, error bars, the floor dashed."""
    rows = _usable(rows, "tokenizer_gflops", column)
    if not rows:
        return None
    plt = headless_pyplot()
    panels = widths(rows)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels) + 1.2, 4.6), dpi=120, sharey=True, squeeze=False
    )
    axes = list(axes[0])
    for ax, width in zip(axes, panels):
        here = [r for r in rows if r.get("width") == width]
        for group in _by_preset(here).values():
            xs, ys = [r["tokenizer_gflops"] for r in group], [r[column] for r in group]
            ax.errorbar(xs, ys, yerr=_errors(group, column), marker="o", capsize=3, label=_legend_name(group))
            for r in group:
                ax.annotate(
                    f"{r['steps']}",
                    (r["tokenizer_gflops"], r[column]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        level = floor
        band = None
        if floor_column:
            floored = [r for r in here if _finite(r.get(floor_column))]
            if floored:
                level = floored[0][floor_column]
                high = floored[0].get(f"{floor_column}_high")
                band = high if _finite(high) else None
        if level is not None:
            ax.axhline(level, linestyle="--", color="0.35", linewidth=1, label=f"real vs real ({level:.2f})")
            if band is not None:
                ax.axhspan(0, band, color="0.85", alpha=0.5, zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel("tokenizer training compute (GFLOPs, log scale)")
        ax.set_title(f"{title}, {_width_title(width)}", fontsize=9)
    axes[0].set_ylabel(_label(rows[0], column, fallback_label) + "  (lower is better)")
    return _save(plt, fig, axes, Path(path))


def _scatter_vs_gfid(rows, column: str, xlabel: str, title: str, path: Path) -> Path | None:
    rows = _usable(rows, column, "gfid")
    if not rows:
        return None
    plt = headless_pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6), dpi=120)
    panels = widths(rows)
    for index, width in enumerate(panels):
        for group in _by_preset([r for r in rows if r.get("width") == width]).values():
            xs, ys = [r[column] for r in group], [r["gfid"] for r in group]
            name = _legend_name(group) + (f", w{width}" if width is not None else "")
            ax.errorbar(
                xs,
                ys,
                yerr=_errors(group, "gfid"),
                marker=MARKERS[index % len(MARKERS)],
                linestyle=":",
                capsize=3,
                label=name,
            )
            for r in group:
                ax.annotate(
                    f"{r['steps']}",
                    (r[column], r["gfid"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
    r = pearson([row[column] for row in rows], [row["gfid"] for row in rows])
    correlation = f"; Pearson r = {r:+.2f} over {len(rows)} points" if r is not None else ""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_label(rows[0], "gfid", "gFID") + "  (lower is better)")
    ax.set_title(f"{title}{correlation}", fontsize=9)
    return _save(plt, fig, [ax], Path(path))


def plot_gfid_vs_compute(rows: Sequence[dict], path: Path) -> Path | None:
    """The floor is the rows' ``gfid_floor`` (from the study's ``gfid_floors``), when known."""
    floor = next((r["gfid_floor"] for r in rows if _finite(r.get("gfid_floor"))), None)
    return plot_vs_compute(
        rows, "gfid", path, "Generation vs tokenizer compute (cf. Figs. 1c, 5)", "gFID", floor=floor
    )


def plot_probe_vs_gfid(rows: Sequence[dict], path: Path) -> Path | None:
    label = next((r["linear_probe_label"] for r in rows if r.get("linear_probe_label")), "linear probe")
    return _scatter_vs_gfid(
        rows,
        "linear_probe",
        f"{label}, % (higher is better)",
        "Understanding vs generation (cf. Fig. 2)",
        path,
    )


def plot_zero_shot_vs_gfid(rows: Sequence[dict], path: Path) -> Path | None:
    return _scatter_vs_gfid(
        rows, "zero_shot_top1", "zero-shot top-1, % (higher is better)", "Zero-shot vs generation", path
    )


def plot_rfid_vs_gfid(rows: Sequence[dict], path: Path) -> Path | None:
    label = next((r["rfid_label"] for r in rows if r.get("rfid_label")), "rFID")
    return _scatter_vs_gfid(
        rows, "rfid", f"{label} (lower is better)", "Reconstruction vs generation (cf. Fig. 4)", path
    )


def plot_stage2_curve(curve: Sequence[dict], path: Path, point: str = "") -> Path | None:
    """gFID (and FD-judge, when measured) of one point's generator against its stage-2 steps."""
    columns = [c for c in ("gfid", "domain_fd") if _usable(curve, "stage2_steps", c)]
    if not columns:
        return None
    plt = headless_pyplot()
    fig, axes = plt.subplots(1, len(columns), figsize=(5.2 * len(columns) + 0.8, 4.2), dpi=120, squeeze=False)
    axes = list(axes[0])
    for ax, column in zip(axes, columns):
        rows = sorted(_usable(curve, "stage2_steps", column), key=lambda r: r["stage2_steps"])
        ax.errorbar(
            [r["stage2_steps"] for r in rows],
            [r[column] for r in rows],
            yerr=_errors(rows, column),
            marker="o",
            capsize=3,
            label=point or None,
        )
        floor_column = "domain_fd_floor" if column == "domain_fd" else None
        if floor_column and _finite(rows[0].get(floor_column)):
            ax.axhline(rows[0][floor_column], linestyle="--", color="0.35", linewidth=1, label="real vs real")
        ax.set_xlabel("stage-2 training steps")
        ax.set_ylabel(_label(rows[0], column, column) + "  (lower is better)")
        ax.set_title(f"Generator training curve{' of ' + point if point else ''}", fontsize=9)
    return _save(plt, fig, axes, Path(path))


def plot_all(
    rows: Sequence[dict],
    folder: Path,
    curve: Sequence[dict] | None = None,
    curve_point: str = "",
) -> list[Path]:
    """The figures into ``folder``; a figure without a usable point is not written."""
    folder = Path(folder)
    made = [
        plot_gfid_vs_compute(rows, folder / "gfid_vs_compute.png"),
        plot_vs_compute(
            rows,
            "domain_fd",
            folder / "domain_fd_vs_compute.png",
            "Domain metric vs tokenizer compute",
            "FD-judge",
            floor_column="domain_fd_floor",
        ),
        plot_vs_compute(
            rows, "rfid", folder / "rfid_vs_compute.png", "Reconstruction vs tokenizer compute", "rFID"
        ),
        plot_probe_vs_gfid(rows, folder / "probe_vs_gfid.png"),
        plot_zero_shot_vs_gfid(rows, folder / "zero_shot_vs_gfid.png"),
        plot_rfid_vs_gfid(rows, folder / "rfid_vs_gfid.png"),
        plot_stage2_curve(curve, folder / "gfid_vs_stage2_steps.png", curve_point) if curve else None,
    ]
    return [p for p in made if p is not None]
