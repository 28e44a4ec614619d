"""One row per study point: the point, its tokenizer's training FLOPs, and the evaluation's numbers.

Rows are built from the files the steps leave in the point's run folder
(``eval/metrics.json``, ``seed<k>/eval/metrics.json``, ``stage1/metrics.json``,
``stage2/train_summary.json``) plus the FLOP count, so a row can be rebuilt
from any finished run folder, also one made by separate jobs on a cluster.
``scaling.csv`` holds them all; the protocol labels (``gfid_label`` =
"FID-400", ...) travel with the numbers so a CSV never passes FID-400 off as
FID-10k.

With several stage-2 seeds, every generation metric is the mean over the seeds
and its ``_low``/``_high`` columns the 95 % interval of that mean from each
seed's bootstrap interval and the spread between seeds
(:func:`vtp_gen.metrics.intervals.combine_seeds`); ``<metric>_per_seed`` lists
the seeds' own values.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

from vtp_gen.metrics.intervals import Interval, combine_seeds, pooled_seed_variance
from vtp_gen.metrics.report import read_metrics_json
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
# Metrics of the generator (one value per stage-2 seed, combined over seeds) ...
GENERATION_METRICS = ("gfid", "kid", "precision", "recall", "domain_fd", "label_agreement")
# ... of which these carry a 95 % interval (a bootstrap over samples, or KID's subset std, and/or
# the seed spread), and these a real-vs-real floor: so a CSV row tells whether two points differ
# by more than their noise.
INTERVAL_METRICS = ("gfid", "kid", "precision", "recall", "domain_fd", "label_agreement")
FLOOR_METRICS = ("domain_fd", "label_agreement")
INTERVAL_COLUMNS = [
    *(f"{METRIC_COLUMNS[m]}_{part}" for m in INTERVAL_METRICS for part in ("low", "high")),
    "gfid_floor",  # from the study's gfid_floors (measured outside make eval), when known for N
    *(f"{METRIC_COLUMNS[m]}_{part}" for m in FLOOR_METRICS for part in ("floor", "floor_high")),
]
# Per-seed values and the seeds' mean bootstrap standard error: what pooling the seed spread over
# the study's points needs (pool_seed_spread).
SEED_COLUMNS = ["seeds", "gfid_per_seed", "domain_fd_per_seed", "gfid_boot_std", "domain_fd_boot_std"]
POOLED_COLUMNS = ("gfid", "domain_fd")

COLUMNS = [
    "point",
    "preset",
    "objectives",
    "width",
    "steps",
    "tokenizer_gflops",
    "gflops_per_step",
    "batches_per_step",
    "trainable_params_m",
    *METRIC_COLUMNS.values(),
    *INTERVAL_COLUMNS,
    *SEED_COLUMNS,
    "seed_spread",
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
        interval = record_interval(record)
        if interval is not None:
            out[f"{column}_low"], out[f"{column}_high"] = interval.low * scale, interval.high * scale
        if record.floor is not None:
            out[f"{column}_floor"] = record.floor["value"] * scale
            out[f"{column}_floor_high"] = record.floor["high"] * scale
        if record.metric in LABELLED_METRICS:
            out[f"{column}_label"] = record.label
    return out


def record_interval(record) -> Interval | None:
    """A metric record's 95 % interval (in the record's own units), with its standard error when known.

    A bootstrap interval (``interval``, its details in ``extra.interval``) as recorded; KID's std
    over subsets as a normal interval; None for a number measured without one.
    """
    if record.interval is not None:
        details = (record.extra or {}).get("interval") or {}
        return Interval(
            record.value,
            float(record.interval[0]),
            float(record.interval[1]),
            method=details.get("method", ""),
            std=details.get("std"),
            resamples=int(details.get("resamples", 0)),
        )
    if record.std is not None:
        half = NORMAL_95 * record.std
        return Interval(record.value, record.value - half, record.value + half, method="std", std=record.std)
    return None


NORMAL_95 = 1.959963984540054
NON_NEGATIVE = ("gfid", "domain_fd")  # distances (KID's unbiased estimate may dip below 0)
PROPORTIONS = ("precision", "recall", "label_agreement")  # fractions in metrics.json


def clipped(metric: str, interval: Interval) -> tuple[float, float]:
    """The interval's ends, clipped to what the metric can take (a t interval from few seeds can
    reach below 0 for a distance, or past 1 for a proportion)."""
    low, high = interval.low, interval.high
    if metric in NON_NEGATIVE:
        low = max(low, 0.0)
    if metric in PROPORTIONS:
        low, high = max(low, 0.0), min(high, 1.0)
    return low, high


def pool_seed_spread(rows: Sequence[dict]) -> list[dict]:
    """The rows with their gFID and FD-judge intervals recomputed from the seed spread pooled over
    all points.

    Every point trains stage 2 with the same recipe, so how much a generator moves from seed to
    seed is taken to be alike across points and is estimated from all of them: 12 points of 2
    seeds give 12 degrees of freedom (Student's t = 2.18) where a point's own 2 seeds give 1
    (t = 12.7). Each row keeps its mean; its bootstrap term stays the floor, as in
    :func:`~vtp_gen.metrics.intervals.combine_seeds`. Rows are copied, not changed; with fewer
    than two multi-seed points nothing is pooled.
    """
    out = [dict(row) for row in rows]
    for column in POOLED_COLUMNS:
        seeded = [(row, _per_seed(row, column)) for row in out]
        seeded = [(row, values) for row, values in seeded if len(values) > 1]
        if len(seeded) < 2:
            continue
        pooled = pooled_seed_variance([values for _, values in seeded])
        for row, values in seeded:
            boot = float(row.get(f"{column}_boot_std") or 0.0)
            combined = combine_seeds(
                [Interval(v, v - boot, v + boot, std=boot) for v in values], pooled=pooled
            )
            row[f"{column}_low"], row[f"{column}_high"] = clipped(column, combined)
            row["seed_spread"] = f"pooled over {len(seeded)} points ({pooled[1]} degrees of freedom)"
    return out


def _per_seed(row: dict, column: str) -> list[float]:
    text = row.get(f"{column}_per_seed")
    return [float(v) for v in str(text).split(";")] if text not in (None, "") else []


def combined_generation_values(metrics_files: Sequence[Path]) -> dict:
    """Generation columns of several seeds' ``metrics.json``: mean, 95 % interval, per-seed values.

    Floors and labels come from the first seed (the same protocol at every seed). A metric that one
    seed lacks is left out rather than averaged over fewer seeds.
    """
    per_file = [{r.metric: r for r in read_metrics_json(path)[1]} for path in metrics_files]
    out: dict = {"seeds": len(per_file)}
    for metric in GENERATION_METRICS:
        records = [records.get(metric) for records in per_file]
        if not records or any(r is None or r.value is None for r in records):
            continue
        column, scale = METRIC_COLUMNS[metric], 100 if metric in PERCENT_METRICS else 1
        intervals = [record_interval(r) for r in records]
        has_interval = all(i is not None for i in intervals)
        if not has_interval:  # the seed spread alone (from 2 seeds on)
            intervals = [Interval(r.value, r.value, r.value, std=0.0) for r in records]
        combined = combine_seeds(intervals)
        out[column] = combined.value * scale
        if has_interval or len(records) > 1:
            low, high = clipped(metric, combined)
            out[f"{column}_low"], out[f"{column}_high"] = low * scale, high * scale
        if f"{column}_per_seed" in SEED_COLUMNS:
            out[f"{column}_per_seed"] = ";".join(f"{r.value * scale:.8g}" for r in records)
            boot_var = sum(i.standard_error**2 for i in intervals) / len(intervals)
            out[f"{column}_boot_std"] = math.sqrt(boot_var) * scale
        first = records[0]
        if first.floor is not None:
            out[f"{column}_floor"] = first.floor["value"] * scale
            out[f"{column}_floor_high"] = first.floor["high"] * scale
        if metric in LABELLED_METRICS:
            out[f"{column}_label"] = first.label
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
    width: int | None = None,
    seed_dirs: Sequence[Path] | None = None,
    gfid_floors: dict | None = None,
) -> dict:
    """The CSV row of a finished point from its run folder.

    ``seed_dirs``: the stage-2 seeds' folders (each with ``eval/`` and ``stage2/``); their generation
    metrics are combined, the tokenizer's come from the point's own ``eval/``. ``gfid_floors``: the
    real-vs-real FID by N, recorded beside gFID when the row's N is in it.
    """
    point_dir = Path(point_dir)
    row = {
        "point": point_dir.name,
        "preset": preset,
        "objectives": objectives_label(objectives),
        "width": width,
        "steps": steps,
        "tokenizer_gflops": gflops_per_step * steps * batches_per_step,
        "gflops_per_step": gflops_per_step,
        "batches_per_step": batches_per_step,
        "trainable_params_m": trainable_parameters / 1e6,
        **eval_values(point_dir / "eval" / "metrics.json"),
    }
    stage2_dirs = [point_dir]
    if seed_dirs:
        row.update(combined_generation_values([Path(d) / "eval" / "metrics.json" for d in seed_dirs]))
        stage2_dirs = [Path(d) for d in seed_dirs]
    summary = stage2_dirs[0] / "stage2" / "train_summary.json"
    if summary.is_file():
        row["stage2_steps"] = json.loads(summary.read_text()).get("step")
    floor = (gfid_floors or {}).get(fid_samples(row.get("gfid_label")))
    if floor is not None and row.get("gfid") is not None:
        row["gfid_floor"] = float(floor)
    for key, value in (seconds or {}).items():
        row[f"seconds_{key}"] = value
    return row


def fid_samples(label: str | None) -> int | None:
    """N of a 'FID-400' / 'FID-10k' label."""
    if not label or "-" not in label:
        return None
    count = label.rsplit("-", 1)[1]
    try:
        return int(count[:-1]) * 1000 if count.endswith("k") else int(count)
    except ValueError:
        return None


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
                elif key in ("steps", "stage2_steps", "batches_per_step", "width", "seeds"):
                    row[key] = int(float(text))
                else:
                    try:
                        row[key] = float(text)
                    except ValueError:
                        row[key] = text
            rows.append(row)
    return rows
