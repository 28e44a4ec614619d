"""``vtp-gen scaling`` / ``make scaling``: the tokenizer scaling study, point by point, resumable.

    runs/<name>/<point>/stage1/ cache/ stage2/ eval/    an ordinary run per point
                        point.json                      the point's row, FLOPs, configs (= done)
    runs/<name>/<point>/seed<k>/stage2/ eval/           with stage2_seeds: one generator per seed
    runs/<name>/<point>/curve/                          with stage2_curve: that point's gFID vs stage-2 steps
    runs/<name>/scaling.csv                             one row per finished point
    runs/<name>/summary.md                              the rows, intervals, verdict, correlations
    runs/<name>/images/*.png                            the figures (vtp_gen.pipeline.scaling.plots)

A point is ``<preset>-<steps>``, or ``<preset>-w<width>-<steps>`` when the study
sets bottleneck widths. Each point runs the library's own steps in this process
(stage 1, the latent cache, stage 2, evaluation), configured as their commands
would be. With ``stage2_seeds`` the tokenizer is evaluated once (rFID, probe,
zero-shot, in ``<point>/eval``) and the generator is trained and evaluated once
per seed (``<point>/seed<k>/``); the row carries the mean over seeds with a 95 %
interval. A point is done when its ``point.json`` exists; a rerun skips done
points, and an interrupted point resumes inside its steps (each step resumes
from its own checkpoints). A done point whose recorded configs differ from the
current ones is an error, never silently mixed into the CSV.

With ``execute=false`` nothing is trained: each unfinished point's commands are
printed (for multi-GPU jobs) and the points whose evaluations exist are
collected into the CSV and plots.
"""

from __future__ import annotations

import json
import shlex
import shutil
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
from vtp_gen.pipeline.scaling.results import build_row, eval_values, pool_seed_spread, write_csv
from vtp_gen.pipeline.scaling.summary import summary_markdown
from vtp_gen.pipeline.stage1.run import run as run_stage1
from vtp_gen.pipeline.stage2.run import run as run_stage2
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger

log = step_logger("scaling")

POINT_FILE = "point.json"
CURVE_DIR = "curve"
CURVE_FILE = "curve.json"
CSV_FILE = "scaling.csv"
SUMMARY_FILE = "summary.md"


@dataclass(frozen=True)
class Point:
    preset: str  # the preset recipe's file stem
    recipe: str
    steps: int
    width: int | None = None  # bottleneck channels per token; None = the recipe's own

    @property
    def name(self) -> str:
        width = f"-w{self.width}" if self.width is not None else ""
        return f"{self.preset}{width}-{self.steps}"


@dataclass(frozen=True)
class StepCall:
    """One step of one point, as its command line would give it.

    ``key`` names the call among the point's calls ("stage2/seed1"); ``step`` is the command.
    """

    step: str
    recipes: tuple[str, ...]
    data: str
    overrides: tuple[str, ...]
    key: str = ""

    @property
    def name(self) -> str:
        return self.key or self.step

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
    """Every (width, preset, steps) point: widths in order, presets in recipe order, budgets ascending."""
    if not cfg.presets or not cfg.steps:
        raise ConfigError("scaling: presets and steps must both be non-empty")
    stems = [Path(p).stem for p in cfg.presets]
    if len(set(stems)) != len(stems):
        raise ConfigError(f"scaling: preset recipes must have distinct file names, got {stems}")
    if any(int(s) <= 0 for s in cfg.steps):
        raise ConfigError(f"scaling: steps must be positive, got {list(cfg.steps)}")
    widths = [int(w) for w in cfg.widths]
    if any(w <= 0 for w in widths) or len(set(widths)) != len(widths):
        raise ConfigError(f"scaling: widths must be distinct positive channel counts, got {widths}")
    restricted = {int(w): list(names) for w, names in cfg.width_presets.items()}
    for width, names in restricted.items():
        if width not in widths:
            raise ConfigError(f"scaling: width_presets names width {width}, not one of widths {widths}")
        unknown = sorted(set(names) - set(stems))
        if unknown:
            raise ConfigError(
                f"scaling: width_presets[{width}] names unknown presets {unknown}; presets are {stems}"
            )
    seeds = [int(s) for s in cfg.stage2_seeds]
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"scaling: stage2_seeds must be distinct, got {seeds}")
    points = [
        Point(stem, recipe, int(s), width)
        for width in (widths or [None])
        for stem, recipe in zip(stems, cfg.presets)
        if width is None or width not in restricted or stem in restricted[width]
        for s in sorted(set(cfg.steps))
    ]
    names = {p.name for p in points}
    unknown = sorted(set(cfg.only) - names)
    if unknown:
        raise ConfigError(
            f"scaling: only names unknown points {unknown}; points are {[p.name for p in points]}"
        )
    curve = cfg.stage2_curve
    if curve.point and curve.point not in names:
        raise ConfigError(
            f"scaling: stage2_curve.point {curve.point!r} is not a point; points are {[p.name for p in points]}"
        )
    if curve.point and (not curve.steps or any(int(s) <= 0 for s in curve.steps)):
        raise ConfigError(
            f"scaling: stage2_curve.steps must be positive step counts, got {list(curve.steps)}"
        )
    return points


def study_root(cfg: DictConfig) -> Path:
    return run_root(cfg)


def stage2_seeds(cfg: DictConfig) -> list[int]:
    """The stage-2 seeds of every point ([run.seed] when the study sets none)."""
    return [int(s) for s in cfg.stage2_seeds] or [int(cfg.run.seed)]


def seed_folder(point_dir: Path, seed: int) -> Path:
    return Path(point_dir) / f"seed{seed}"


# Evaluation parts that measure the tokenizer (once per point) and the generator (once per seed).
TOKENIZER_ONLY = ("generation.enabled=false",)
GENERATOR_ONLY = ("reconstruction.enabled=false", "linear_probe.enabled=false", "zero_shot.enabled=false")


def _generator_calls(
    cfg: DictConfig, tokenizer: Path, cache: Path, out_dir: Path, name: str, seed: int, key: str, extra=()
) -> list[StepCall]:
    """Stage 2 + a generation-only eval in ``out_dir/name`` (a seed's or a curve step's folder)."""
    where = (f"run.out_dir={out_dir}", f"run.name={name}", f"run.seed={seed}")
    generator = out_dir / name / "stage2" / "generator"
    return [
        StepCall(
            "stage2",
            tuple(cfg.stage2.recipes),
            cfg.stage2.data,
            (
                *cfg.stage2.overrides,
                *where,
                f"latents.tokenizer={tokenizer}",
                f"latents.cache_dir={cache}",
                *extra,
            ),
            f"stage2/{key}",
        ),
        StepCall(
            "eval",
            tuple(cfg.eval.recipes),
            cfg.eval.data,
            (
                *cfg.eval.overrides,
                *where,
                f"tokenizer={tokenizer}",
                f"generation.generator={generator}",
                *GENERATOR_ONLY,
            ),
            f"eval/{key}",
        ),
    ]


def step_calls(cfg: DictConfig, point: Point) -> list[StepCall]:
    """The point's steps: shared recipes and overrides, then the point's run folder (and stage-1 steps).

    The hand-over between steps is spelled out (tokenizer, cache, generator paths inside the point's
    folder), so a recipe that names other paths (a paper recipe's official checkpoint) cannot make
    one point read another run's files. With stage2_seeds: the tokenizer's eval (no generation) in
    the point's folder, then stage 2 and a generation-only eval per seed in ``seed<k>/``.
    """
    root = study_root(cfg)
    folder = root / point.name
    tokenizer, cache = folder / "stage1" / "tokenizer", folder / "cache"
    where = [f"run.out_dir={root}", f"run.name={point.name}", f"run.seed={cfg.run.seed}"]
    width = [f"{cfg.width_key}={point.width}"] if point.width is not None else []
    calls = [
        StepCall(
            "stage1",
            (*cfg.stage1.recipes, point.recipe),
            cfg.stage1.data,
            (*cfg.stage1.overrides, *where, *width, f"trainer.max_steps={point.steps}"),
        )
    ]
    if cfg.cache.recipes:
        wiring = (f"tokenizer={tokenizer}", f"out_dir={cache}")
        calls.append(
            StepCall(
                "cache", tuple(cfg.cache.recipes), cfg.cache.data, (*cfg.cache.overrides, *where, *wiring)
            )
        )
    if not cfg.stage2_seeds:
        generator = folder / "stage2" / "generator"
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
    wiring = (f"tokenizer={tokenizer}", *TOKENIZER_ONLY)
    calls.append(
        StepCall("eval", tuple(cfg.eval.recipes), cfg.eval.data, (*cfg.eval.overrides, *where, *wiring))
    )
    for seed in stage2_seeds(cfg):
        calls += _generator_calls(cfg, tokenizer, cache, folder, f"seed{seed}", seed, f"seed{seed}")
    return calls


def curve_calls(cfg: DictConfig, point: Point) -> dict[int, list[StepCall]]:
    """Stage-2 steps -> (stage 2 trained to that step, its generation-only eval), in ``<point>/curve/``.

    One stage-2 run (``curve/stage2``, the first stage-2 seed) is resumed from step count to step
    count; each count's generator is copied to ``curve/step<n>/stage2/generator`` and evaluated there.
    """
    folder = study_root(cfg) / point.name
    tokenizer, cache = folder / "stage1" / "tokenizer", folder / "cache"
    seed = stage2_seeds(cfg)[0]
    out: dict[int, list[StepCall]] = {}
    for steps in sorted({int(s) for s in cfg.stage2_curve.steps}):
        stage2, _ = _generator_calls(
            cfg, tokenizer, cache, folder, "curve", seed, f"curve{steps}", (f"trainer.max_steps={steps}",)
        )
        # Its eval reads curve/step<n>/stage2/generator: the copy of the generator at this step count.
        _, evaluation = _generator_calls(
            cfg, tokenizer, cache, folder / "curve", f"step{steps}", seed, f"step{steps}"
        )
        out[steps] = [stage2, evaluation]
    return out


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


def finished_record(point_dir: Path, configs: dict[str, dict], marker: str = POINT_FILE) -> dict | None:
    """The point's record when it is done with these very configs; an error when done with others."""
    path = point_dir / marker
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
    """Step FLOPs per preset and width, counted once per process (a step costs the same at every budget)."""

    def __init__(self, device: str) -> None:
        self.device = resolve_device(device)
        self.counted: dict[tuple[str, int | None], StepFlops] = {}

    def __call__(self, point: Point, stage1_cfg: DictConfig) -> StepFlops:
        key = (point.preset, point.width)
        if key not in self.counted:
            started = time.time()
            # The count runs a real step: keep it from moving the global RNG the training seeds from.
            with torch.random.fork_rng(devices=[]):
                self.counted[key] = pretraining_step_flops(stage1_cfg, self.device)
            flops = self.counted[key]
            what = point.preset + (f" at width {point.width}" if point.width is not None else "")
            log.info(
                f"{what}: {flops.per_step / 1e9:.3f} GFLOPs per stage-1 step (B={flops.batch_size}, "
                f"{flops.trainable_parameters / 1e6:.2f}M trainable; counted in {time.time() - started:.1f} s)"
            )
        return self.counted[key]


def record_point(
    point: Point,
    point_dir: Path,
    configs: dict[str, DictConfig],
    flops: StepFlops,
    seconds: dict,
    cfg: DictConfig | None = None,
) -> dict:
    stage1 = configs["stage1"]
    batches = batches_per_step(stage1)
    if str(stage1.trainer.devices) == "auto":
        log.info(
            f"{point.name}: trainer.devices=auto counts as 1 device in the FLOPs; set it to the real number"
        )
    seeded = cfg is not None and bool(cfg.stage2_seeds)
    row = build_row(
        point_dir,
        point.preset,
        point.steps,
        dict(to_dict(stage1.objectives)),
        flops.per_step / 1e9,
        batches,
        flops.trainable_parameters,
        seconds,
        width=point.width,
        seed_dirs=[seed_folder(point_dir, s) for s in stage2_seeds(cfg)] if seeded else None,
        gfid_floors=dict(cfg.gfid_floors) if cfg is not None else None,
    )
    record = {
        "row": row,
        "flops": {"per_step": flops.per_step, "batch_size": flops.batch_size, "batches_per_step": batches},
        "configs": {name: to_dict(c) for name, c in configs.items()},
    }
    write_json_atomic(point_dir / POINT_FILE, record)
    return record


def refreshed_row(point: Point, point_dir: Path, record: dict, cfg: DictConfig) -> dict:
    """A done point's row rebuilt from its folder with this code (intervals, floors, new columns), with
    the FLOPs and wall seconds its record holds; the recorded row when the folder no longer has its evals."""
    old = record["row"]
    seeded = bool(cfg.stage2_seeds)
    try:
        row = build_row(
            point_dir,
            point.preset,
            point.steps,
            dict(record["configs"]["stage1"]["objectives"]),
            record["flops"]["per_step"] / 1e9,
            record["flops"]["batches_per_step"],
            int(round(old.get("trainable_params_m", 0) * 1e6)),
            {k[len("seconds_") :]: v for k, v in old.items() if k.startswith("seconds_")},
            width=point.width,
            seed_dirs=[seed_folder(point_dir, s) for s in stage2_seeds(cfg)] if seeded else None,
            gfid_floors=dict(cfg.gfid_floors),
        )
    except (FileNotFoundError, KeyError, ValueError):
        return old
    return row


RUNNERS = {"stage1": run_stage1, "cache": run_cache, "stage2": run_stage2, "eval": run_eval}


def run_steps(calls: list[StepCall], configs: dict[str, DictConfig]) -> dict:
    """The point's steps in order, in this process; wall seconds per step kind (seeds summed)."""
    seconds: dict[str, float] = {}
    for call in calls:
        started = time.time()
        RUNNERS[call.step](configs[call.name])
        seconds[call.step] = round(seconds.get(call.step, 0.0) + time.time() - started, 1)
    seconds["total"] = round(sum(seconds.values()), 1)
    return seconds


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def point_line(row: dict) -> str:
    parts = []
    for column, label_column, unit in (
        ("gfid", "gfid_label", ""),
        ("domain_fd", "domain_fd_label", ""),
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
            low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
            interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
            parts.append(f"{name or column} {value:.2f}{interval}{unit}")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- the stage-2 curve
def _copy_generator(source: Path, target: Path) -> None:
    """The generator folder as it is now, copied whole (a half copy is never left as the target)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    partial.rename(target)


def run_curve(cfg: DictConfig, points: list[Point]) -> list[dict] | None:
    """One point's generator evaluated at several stage-2 step counts (``stage2_curve``); its rows.

    Needs the point's tokenizer and cache (the point done). ``curve.json`` marks it done, with the
    configs it was made with; other configs on a rerun are an error, as for points.
    """
    curve = cfg.stage2_curve
    if not curve.point:
        return None
    point = next(p for p in points if p.name == curve.point)
    folder = study_root(cfg) / point.name / CURVE_DIR
    calls = curve_calls(cfg, point)
    configs = {c.name: c.build() for group in calls.values() for c in group}
    plain = {k: to_dict(v) for k, v in configs.items()}
    record = finished_record(folder, plain, CURVE_FILE)
    if record is not None:
        return record["rows"]
    evals_done = all((folder / f"step{s}" / "eval" / "metrics.json").is_file() for s in calls)
    if not cfg.execute and not evals_done:
        log.info(
            f"stage-2 curve of {point.name}: to run, step by step:\n"
            + "\n".join(f"    {c.command()}" for group in calls.values() for c in group)
            + f"\n    (after each stage 2: copy {folder}/stage2/generator to {folder}/step<n>/stage2/generator)"
        )
        return None
    if not evals_done and not (study_root(cfg) / point.name / POINT_FILE).is_file():
        log.info(f"stage-2 curve of {point.name}: waits for the point to finish")
        return None
    rows = []
    for steps, (stage2, evaluation) in calls.items():
        step_dir = folder / f"step{steps}"
        metrics = step_dir / "eval" / "metrics.json"
        if not metrics.is_file():
            generator = step_dir / "stage2" / "generator"
            if not generator.is_dir():
                log.info(f"stage-2 curve of {point.name}: training to step {steps}")
                result = run_stage2(configs[stage2.name])
                generator.parent.mkdir(parents=True, exist_ok=True)
                _copy_generator(Path(result.generator), generator)
            run_eval(configs[evaluation.name])
        row = {"stage2_steps": steps, **eval_values(metrics)}
        log.info(f"stage-2 curve of {point.name}: step {steps}: {point_line(row)}")
        rows.append(row)
    write_json_atomic(folder / CURVE_FILE, {"point": point.name, "rows": rows, "configs": plain})
    return rows


def write_outputs(root: Path, rows: list[dict], cfg: DictConfig | None = None, curve=None) -> list[Path]:
    if not rows:
        return []
    if cfg is None or cfg.pool_seed_spread:
        rows = pool_seed_spread(rows)
    csv_path = write_csv(rows, root / CSV_FILE)
    curve_point = cfg.stage2_curve.point if cfg is not None else ""
    images = plot_all(rows, root / "images", curve=curve, curve_point=curve_point)
    resamples = int(cfg.correlation_resamples) if cfg is not None else 2000
    summary = summary_markdown(rows, images, root, curve=curve, curve_point=curve_point, resamples=resamples)
    (root / SUMMARY_FILE).write_text(summary)
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
    widths = f"widths {list(cfg.widths)} x " if cfg.widths else ""
    seeds = f" x stage-2 seeds {list(cfg.stage2_seeds)}" if cfg.stage2_seeds else ""
    log.info(
        f"{mode} {len(selected)} of {len(points)} points in {root}: {widths}presets "
        f"{[Path(p).stem for p in cfg.presets]} x stage-1 steps {sorted(set(cfg.steps))}{seeds}"
    )
    for index, point in enumerate(points, start=1):
        calls = step_calls(cfg, point)
        configs = {call.name: call.build() for call in calls}
        point_dir = root / point.name
        record = finished_record(point_dir, {k: to_dict(v) for k, v in configs.items()})
        tag = f"{index}/{len(points)} {point.name}"
        if record is not None:
            rows[point.name] = refreshed_row(point, point_dir, record, cfg)
            log.info(f"{tag}: done earlier ({point_line(rows[point.name])}), skipped")
            continue
        if point not in selected:
            continue
        if not cfg.execute:
            evals = [configs[c.name] for c in calls if c.step == "eval"]
            if all((run_root(e) / "eval" / "metrics.json").is_file() for e in evals):
                record = record_point(point, point_dir, configs, flops(point, configs["stage1"]), {}, cfg)
                rows[point.name] = record["row"]
                log.info(f"{tag}: collected ({point_line(record['row'])})")
            else:
                log.info(f"{tag}: to run, step by step:\n" + "\n".join(f"    {c.command()}" for c in calls))
            continue
        width = f" at width {point.width}" if point.width is not None else ""
        log.info(
            f"{tag}: {point.steps} stage-1 steps of {Path(point.recipe).name}{width}, then stage 2 and eval"
        )
        step_flops = flops(point, configs["stage1"])
        seconds = run_steps(calls, configs)
        record = record_point(point, point_dir, configs, step_flops, seconds, cfg)
        rows[point.name] = record["row"]
        write_outputs(root, [rows[p.name] for p in points if p.name in rows], cfg)
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
    curve_started = time.time()
    curve = run_curve(cfg, points)
    if curve is not None and cfg.execute:
        log.info(f"stage-2 curve of {cfg.stage2_curve.point}: {_minutes(time.time() - curve_started)}")
    ordered = [rows[p.name] for p in points if p.name in rows]
    outputs = write_outputs(root, ordered, cfg, curve)
    if outputs:
        log.info(f"{len(ordered)} of {len(points)} points in {outputs[0]}; figures and summary beside it:")
        for path in outputs[1:]:
            log.info(f"    {path}")
    else:
        log.info("no finished point yet: nothing to tabulate")
    log.info(f"study wall time this run: {_minutes(time.time() - started)}")
    return ordered
