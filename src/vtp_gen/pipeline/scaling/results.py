"""One row per study point: the point, its tokenizer's training FLOPs, and the evaluation's numbers.

Rows are built from the files the steps leave in the point's run folder
(``eval/metrics.json``, ``stage1/metrics.json``, ``stage2/train_summary.json``)
plus the FLOP count, so a row can be rebuilt from any finished run folder, also
one made by separate jobs on a cluster. ``scaling.csv`` holds them all; the
protocol labels (``gfid_label`` = "FID-400", ...) travel with the numbers so a
CSV never passes FID-400 off as FID-10k.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from vtp_gen.metrics.report import read_metrics_json
from vtp_gen.pipeline.scaling.plots import pearson
from vtp_gen.utils.atomic import atomic_output

# Eval metric -> CSV column; percentages (stored as fractions in metrics.json) become percent here.
METRIC_COLUMNS = {
    "gfid": "gfid",
    "kid": "kid",
    "precision": "precision",
    "recall": "recall",
    "rfid": "rfid",
    "psnr": "psnr",
    "ssim": "ssim",
    "lpips": "lpips",
    "linear_probe_bottleneck": "linear_probe",  # the paper's scaling-plot protocol: 64-d bottleneck
    "linear_probe": "linear_probe_dinov2",
    "zero_shot_top1": "zero_shot_top1",
    "domain_fd": "domain_fd",  # make eval's generation.domain (docs/eval.md, "Domain metric")
    "label_agreement": "label_agreement",
}
PERCENT_METRICS = {"linear_probe_bottleneck", "linear_probe", "zero_shot_top1", "label_agreement"}
LABELLED_METRICS = ("gfid", "rfid", "linear_probe_bottleneck", "domain_fd")
# Metrics recorded with a 95 % interval and a real-vs-real floor: both travel with the number,
# so a CSV row tells whether two points differ by more than their noise.
INTERVAL_METRICS = ("domain_fd", "label_agreement")
INTERVAL_COLUMNS = [
    f"{METRIC_COLUMNS[m]}_{part}" for m in INTERVAL_METRICS for part in ("low", "high", "floor", "floor_high")
]

COLUMNS = [
    "point",
    "preset",
    "objectives",
    "steps",
    "tokenizer_gflops",
    "gflops_per_step",
    "batches_per_step",
    "trainable_params_m",
    *METRIC_COLUMNS.values(),
    *INTERVAL_COLUMNS,
    "gfid_label",
    "rfid_label",
    "linear_probe_label",
    "domain_fd_label",
    "stage2_steps",
    "seconds_stage1",
    "seconds_cache",
    "seconds_stage2",
    "seconds_eval",
    "seconds_total",
]


def objectives_label(lambdas: dict) -> str:
    """'CLIP+SSL+AE', 'AE', ... from the objective weights (the paper's names for the four settings)."""
    parts = [
        name for key, name in (("lambda_clip", "CLIP"), ("lambda_ssl", "SSL")) if lambdas.get(key, 0) > 0
    ]
    if lambdas.get("lambda_rec", 0) > 0:
        parts.append("AE")
    return "+".join(parts) or "none"


def eval_values(metrics_json: Path) -> dict:
    """CSV columns from an eval ``metrics.json`` (missing metrics are simply absent)."""
    _, records = read_metrics_json(metrics_json)
    out: dict = {}
    for record in records:
        column = METRIC_COLUMNS.get(record.metric)
        if column is None or record.value is None:
            continue
        scale = 100 if record.metric in PERCENT_METRICS else 1
        out[column] = record.value * scale
        if record.interval is not None:
            out[f"{column}_low"], out[f"{column}_high"] = (v * scale for v in record.interval)
        if record.floor is not None:
            out[f"{column}_floor"] = record.floor["value"] * scale
            out[f"{column}_floor_high"] = record.floor["high"] * scale
        if record.metric in LABELLED_METRICS:
            out[f"{column}_label"] = record.label
    return out


def build_row(
    point_dir: Path,
    preset: str,
    steps: int,
    objectives: dict,
    gflops_per_step: float,
    batches_per_step: int,
    trainable_parameters: int,
    seconds: dict | None = None,
) -> dict:
    """The CSV row of a finished point from its run folder."""
    point_dir = Path(point_dir)
    row = {
        "point": point_dir.name,
        "preset": preset,
        "objectives": objectives_label(objectives),
        "steps": steps,
        "tokenizer_gflops": gflops_per_step * steps * batches_per_step,
        "gflops_per_step": gflops_per_step,
        "batches_per_step": batches_per_step,
        "trainable_params_m": trainable_parameters / 1e6,
        **eval_values(point_dir / "eval" / "metrics.json"),
    }
    summary = point_dir / "stage2" / "train_summary.json"
    if summary.is_file():
        row["stage2_steps"] = json.loads(summary.read_text()).get("step")
    for key, value in (seconds or {}).items():
        row[f"seconds_{key}"] = value
    return row


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_csv(rows: list[dict], path: Path) -> Path:
    """``COLUMNS`` in order (empty cells for what a point lacks, e.g. zero-shot without a text tower)."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_format(row.get(column)) for column in COLUMNS])
    return Path(path)


def read_csv(path: Path) -> list[dict]:
    """Rows back from ``scaling.csv``: numbers as floats (steps as ints), empty cells as None."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict = {}
            for key, text in raw.items():
                if text == "":
                    row[key] = None
                elif key in ("steps", "stage2_steps", "batches_per_step"):
                    row[key] = int(float(text))
                else:
                    try:
                        row[key] = float(text)
                    except ValueError:
                        row[key] = text
            rows.append(row)
    return rows


def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def summary_markdown(rows: list[dict], images: list[Path], root: Path) -> str:
    """The rows as a Markdown table, the gFID trend of each preset over its budgets, and the
    correlations the paper's claim is about (probe vs gFID, rFID vs gFID)."""

    gfid_label = next((r["gfid_label"] for r in rows if r.get("gfid_label")), "gFID")
    rfid_label = next((r["rfid_label"] for r in rows if r.get("rfid_label")), "rFID")
    lines = [
        "# Scaling study",
        "",
        f"{len(rows)} points. {gfid_label} and {rfid_label} as labelled (sample counts included);",
        "probe = linear probe on the 64-d bottleneck features (the paper's scaling-plot protocol), top-1 %.",
        "",
        f"| point | objectives | stage-1 steps | tokenizer GFLOPs | {rfid_label} | PSNR | probe | zero-shot | "
        f"{gfid_label} | minutes |",
        "| --- | --- | --: | --: | --: | --: | --: | --: | --: | --: |",
    ]
    for r in rows:
        minutes = r.get("seconds_total")
        lines.append(
            f"| {r['point']} | {r.get('objectives', '')} | {r['steps']} | {_cell(r.get('tokenizer_gflops'), 0)} | "
            f"{_cell(r.get('rfid'))} | {_cell(r.get('psnr'))} | {_cell(r.get('linear_probe'), 1)} | "
            f"{_cell(r.get('zero_shot_top1'), 1)} | {_cell(r.get('gfid'))} | "
            f"{_cell(minutes / 60 if isinstance(minutes, (int, float)) else None, 1)} |"
        )
    lines += ["", "## gFID from the smallest to the largest budget, per preset", ""]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if isinstance(r.get("gfid"), (int, float)):
            groups.setdefault(r["preset"], []).append(r)
    for preset, group in groups.items():
        group.sort(key=lambda r: r["steps"])
        first, last = group[0], group[-1]
        if len(group) < 2:
            continue  # one budget: no trend to state
        change = last["gfid"] - first["gfid"]
        lines.append(
            f"- {preset} ({first.get('objectives', '')}): {first['gfid']:.2f} at {first['steps']} steps -> "
            f"{last['gfid']:.2f} at {last['steps']} steps ({change:+.2f})"
        )
    lines += ["", "## Correlation with gFID over all points (Pearson r)", ""]
    for column, name in (
        ("linear_probe", "linear probe"),
        ("rfid", rfid_label),
        ("zero_shot_top1", "zero-shot"),
    ):
        usable = [
            r
            for r in rows
            if isinstance(r.get(column), (int, float)) and isinstance(r.get("gfid"), (int, float))
        ]
        r_value = pearson([r[column] for r in usable], [r["gfid"] for r in usable])
        shown = f"{r_value:+.2f}" if r_value is not None else "n/a (fewer than 3 points)"
        lines.append(
            f"- {name} vs {gfid_label}: {shown} ({len(usable)} point{'s' if len(usable) != 1 else ''})"
        )
    if images:
        lines += [""]
        lines += [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in images]
    return "\n".join(lines) + "\n"
