"""``vtp-gen scaling`` / ``make scaling``: the tokenizer scaling study, point by point, resumable.

    runs/<name>/<preset>-<steps>/stage1/ cache/ stage2/ eval/   an ordinary run per point
                                 point.json                     the point's row, FLOPs, configs (= done)
    runs/<name>/scaling.csv                                     one row per finished point
    runs/<name>/summary.md                                      the rows as a table, trends, correlations
    runs/<name>/images/gfid_vs_compute.png, probe_vs_gfid.png, rfid_vs_gfid.png

Each point runs the library's own steps in this process (stage 1, the latent
cache, stage 2, evaluation), configured as their commands would be. A point
is done when its ``point.json`` exists; a rerun skips done points, and an
interrupted point resumes inside its steps (each step resumes from its own
checkpoints). A done point whose recorded configs differ from the current ones
is an error, never silently mixed into the CSV.

With ``execute=false`` nothing is trained: each unfinished point's commands are
printed (for multi-GPU jobs) and the points whose evaluation exists are
collected into the CSV and plots.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from vtp_gen.config import ConfigError, to_dict
from vtp_gen.pipeline.cache.run import run as run_cache
from vtp_gen.pipeline.cli import build_config
from vtp_gen.pipeline.evaluate.run import run as run_eval
from vtp_gen.pipeline.run_dir import run_root
from vtp_gen.pipeline.scaling.flops import StepFlops, batches_per_step, pretraining_step_flops, resolve_device
from vtp_gen.pipeline.scaling.plots import plot_all
from vtp_gen.pipeline.scaling.results import build_row, summary_markdown, write_csv
from vtp_gen.pipeline.stage1.run import run as run_stage1
from vtp_gen.pipeline.stage2.run import run as run_stage2
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger

log = step_logger("scaling")

POINT_FILE = "point.json"
CSV_FILE = "scaling.csv"
SUMMARY_FILE = "summary.md"
STEP_ORDER = ("stage1", "cache", "stage2", "eval")


@dataclass(frozen=True)
class Point:
    preset: str  # the preset recipe's file stem
    recipe: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.preset}-{self.steps}"


@dataclass(frozen=True)
class StepCall:
    """One step of one point, as its command line would give it."""

    step: str
    recipes: tuple[str, ...]
    data: str
    overrides: tuple[str, ...]

    def build(self) -> DictConfig:
        return build_config(self.step, list(self.recipes), self.data, list(self.overrides))

    def command(self) -> str:
        parts = ["vtp-gen", self.step]
        for recipe in self.recipes:
            parts += ["--config", recipe]
        if self.data:
            parts += ["--data", self.data]
        return shlex.join([*parts, *self.overrides])


def plan_points(cfg: DictConfig) -> list[Point]:
    """Every (preset, steps) point, presets in recipe order and budgets ascending."""
    if not cfg.presets or not cfg.steps:
        raise ConfigError("scaling: presets and steps must both be non-empty")
    stems = [Path(p).stem for p in cfg.presets]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"scaling: preset recipes must have distinct file names, got {stems}")
    if any(int(s) <= 0 for s in cfg.steps):
        raise ConfigError(f"scaling: steps must be positive, got {list(cfg.steps)}")
    points = [
        Point(stem, recipe, int(s))
        for stem, recipe in zip(stems, cfg.presets)
        for s in sorted(set(cfg.steps))
    ]
    unknown = sorted(set(cfg.only) - {p.name for p in points})
    if unknown:
        raise ConfigError(
            f"scaling: only names unknown points {unknown}; points are {[p.name for p in points]}"
        )
    return points


def study_root(cfg: DictConfig) -> Path:
    return run_root(cfg)


def step_calls(cfg: DictConfig, point: Point) -> list[StepCall]:
    """The point's steps: shared recipes and overrides, then the point's run folder (and stage-1 steps).

    The hand-over between steps is spelled out (tokenizer, cache, generator paths inside the point's
    folder), so a recipe that names other paths (a paper recipe's official checkpoint) cannot make
    one point read another run's files.
    """
    folder = study_root(cfg) / point.name
    tokenizer, cache, generator = (
        folder / "stage1" / "tokenizer",
        folder / "cache",
        folder / "stage2" / "generator",
    )
    where = [f"run.out_dir={study_root(cfg)}", f"run.name={point.name}", f"run.seed={cfg.run.seed}"]
    calls = [
        StepCall(
            "stage1",
            (*cfg.stage1.recipes, point.recipe),
            cfg.stage1.data,
            (*cfg.stage1.overrides, *where, f"trainer.max_steps={point.steps}"),
        )
    ]
    if cfg.cache.recipes:
        wiring = (f"tokenizer={tokenizer}", f"out_dir={cache}")
        calls.append(
            StepCall(
                "cache", tuple(cfg.cache.recipes), cfg.cache.data, (*cfg.cache.overrides, *where, *wiring)
            )
        )
    wiring = (f"latents.tokenizer={tokenizer}", f"latents.cache_dir={cache}")
    calls.append(
        StepCall(
            "stage2", tuple(cfg.stage2.recipes), cfg.stage2.data, (*cfg.stage2.overrides, *where, *wiring)
        )
    )
    wiring = (f"tokenizer={tokenizer}", f"generation.generator={generator}")
    calls.append(
        StepCall("eval", tuple(cfg.eval.recipes), cfg.eval.data, (*cfg.eval.overrides, *where, *wiring))
    )
    return calls


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(old) | set(new))
    out = []
    for key in keys:
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {a!r} -> {b!r}")
    return out


def finished_record(point_dir: Path, configs: dict[str, dict]) -> dict | None:
    """The point's record when it is done with these very configs; an error when done with others."""
    path = point_dir / POINT_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    changed = _differences(record.get("configs", {}), configs)
    if changed:
        shown = "; ".join(changed[:8]) + (f"; ... {len(changed) - 8} more" if len(changed) > 8 else "")
        raise ConfigError(
            f"{point_dir} was finished with other settings ({shown}). Use another run.name for the new "
            f"study, or delete {point_dir} to redo this point."
        )
    return record


class FlopsCache:
    """Step FLOPs per preset, counted once per process (a step costs the same at every budget)."""

    def __init__(self, device: str) -> None:
        self.device = resolve_device(device)
        self.counted: dict[str, StepFlops] = {}

    def __call__(self, preset: str, stage1_cfg: DictConfig) -> StepFlops:
        if preset not in self.counted:
            started = time.time()
            # The count runs a real step: keep it from moving the global RNG the training seeds from.
            with torch.random.fork_rng(devices=[]):
                self.counted[preset] = pretraining_step_flops(stage1_cfg, self.device)
            flops = self.counted[preset]
            log.info(
                f"{preset}: {flops.per_step / 1e9:.3f} GFLOPs per stage-1 step (B={flops.batch_size}, "
                f"{flops.trainable_parameters / 1e6:.2f}M trainable; counted in {time.time() - started:.1f} s)"
            )
        return self.counted[preset]


def record_point(
    point: Point, point_dir: Path, configs: dict[str, DictConfig], flops: StepFlops, seconds: dict
) -> dict:
    stage1 = configs["stage1"]
    batches = batches_per_step(stage1)
    if str(stage1.trainer.devices) == "auto":
        log.info(
            f"{point.name}: trainer.devices=auto counts as 1 device in the FLOPs; set it to the real number"
        )
    row = build_row(
        point_dir,
        point.preset,
        point.steps,
        dict(to_dict(stage1.objectives)),
        flops.per_step / 1e9,
        batches,
        flops.trainable_parameters,
        seconds,
    )
    record = {
        "row": row,
        "flops": {"per_step": flops.per_step, "batch_size": flops.batch_size, "batches_per_step": batches},
        "configs": {name: to_dict(c) for name, c in configs.items()},
    }
    write_json_atomic(point_dir / POINT_FILE, record)
    return record


def run_steps(configs: dict[str, DictConfig]) -> dict:
    """The point's steps in order, in this process; wall seconds per step."""

    runners = {"stage1": run_stage1, "cache": run_cache, "stage2": run_stage2, "eval": run_eval}
    seconds = {}
    for name in STEP_ORDER:
        if name in configs:
            started = time.time()
            runners[name](configs[name])
            seconds[name] = round(time.time() - started, 1)
    seconds["total"] = round(sum(seconds.values()), 1)
    return seconds


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def point_line(row: dict) -> str:
    parts = []
    for column, label_column, unit in (
        ("gfid", "gfid_label", ""),
        ("rfid", "rfid_label", ""),
        ("linear_probe", None, " %"),
        ("zero_shot_top1", None, " %"),
    ):
        value = row.get(column)
        if value is not None:
            name = (
                row.get(label_column)
                if label_column
                else {"linear_probe": "probe", "zero_shot_top1": "zero-shot"}[column]
            )
            parts.append(f"{name or column} {value:.2f}{unit}")
    return ", ".join(parts)


def write_outputs(root: Path, rows: list[dict]) -> list[Path]:
    if not rows:
        return []
    csv_path = write_csv(rows, root / CSV_FILE)
    images = plot_all(rows, root / "images")
    (root / SUMMARY_FILE).write_text(summary_markdown(rows, images, root))
    return [csv_path, *images, root / SUMMARY_FILE]


def run(cfg: DictConfig) -> list[dict]:
    """Run (or, with ``execute=false``, plan and collect) the study; returns the finished rows."""
    root = study_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    points = plan_points(cfg)
    selected = [p for p in points if not cfg.only or p.name in cfg.only]
    flops = FlopsCache(cfg.flops_device)
    rows: dict[str, dict] = {}
    started = time.time()
    fresh_seconds: list[float] = []
    mode = "running" if cfg.execute else "planning (execute=false)"
    log.info(
        f"{mode} {len(selected)} of {len(points)} points in {root}: presets "
        f"{[Path(p).stem for p in cfg.presets]} x stage-1 steps {sorted(set(cfg.steps))}"
    )
    for index, point in enumerate(points, start=1):
        calls = step_calls(cfg, point)
        configs = {call.step: call.build() for call in calls}
        point_dir = root / point.name
        record = finished_record(point_dir, {k: to_dict(v) for k, v in configs.items()})
        tag = f"{index}/{len(points)} {point.name}"
        if record is not None:
            rows[point.name] = record["row"]
            log.info(f"{tag}: done earlier ({point_line(record['row'])}), skipped")
            continue
        if point not in selected:
            continue
        if not cfg.execute:
            if (point_dir / "eval" / "metrics.json").is_file():
                record = record_point(point, point_dir, configs, flops(point.preset, configs["stage1"]), {})
                rows[point.name] = record["row"]
                log.info(f"{tag}: collected ({point_line(record['row'])})")
            else:
                log.info(f"{tag}: to run, step by step:\n" + "\n".join(f"    {c.command()}" for c in calls))
            continue
        log.info(f"{tag}: {point.steps} stage-1 steps of {Path(point.recipe).name}, then stage 2 and eval")
        step_flops = flops(point.preset, configs["stage1"])
        seconds = run_steps(configs)
        record = record_point(point, point_dir, configs, step_flops, seconds)
        rows[point.name] = record["row"]
        write_outputs(root, [rows[p.name] for p in points if p.name in rows])
        fresh_seconds.append(seconds["total"])
        remaining = sum(
            1 for p in selected[selected.index(point) + 1 :] if not (root / p.name / POINT_FILE).is_file()
        )
        eta = (
            f", ~{_minutes(remaining * sum(fresh_seconds) / len(fresh_seconds))} left for {remaining} points"
            if remaining
            else ""
        )
        steps_text = ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total")
        log.info(
            f"{tag}: done in {_minutes(seconds['total'])} ({steps_text}); {point_line(record['row'])}; "
            f"{_minutes(time.time() - started)} elapsed{eta}"
        )
    ordered = [rows[p.name] for p in points if p.name in rows]
    outputs = write_outputs(root, ordered)
    if outputs:
        log.info(f"{len(ordered)} of {len(points)} points in {outputs[0]}; figures and summary beside it:")
        for path in outputs[1:]:
            log.info(f"    {path}")
    else:
        log.info("no finished point yet: nothing to tabulate")
    return ordered
