"""``vtp-gen stage2`` (``make stage2``): train a generator on cached latents, then export its EMA weights.

    make stage2                                          # embedded default: caches first if needed
    make stage2 CONFIG=configs/stage2/lightningdit_xl1.yaml \\
        ARGS="latents.cache_dir=/data/vtp_l_in1k latents.tokenizer=/ckpt/VTP-L-f16d64"

Steps: make the latent cache when it is missing (the cache step's library
function, one device); open it, refusing a cache made with another tokenizer;
check what the end of the run needs (the tokenizer that decodes the preview
grids); build the generator with the cache's latent shape; train (resuming from
``checkpoints/last.ckpt`` when the run folder has one); save ``last.ckpt`` and
export ``runs/<name>/stage2/generator/`` (EMA weights in the reference layout,
``config.json`` + ``model.safetensors``, plus the latent statistics and the
recipe's sampler) and ``train_summary.json`` (speed, peak memory, weight
digests checked equal on every rank); only then the end-of-run preview grid,
sized to the device. The run folder is locked while this runs; SIGTERM / SIGINT
stop training after the current step, and the checkpoint and export are still
written (:mod:`vtp_gen.utils.stop_signals`).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from vtp_gen import load_tokenizer
from vtp_gen.config import ConfigError
from vtp_gen.interop.generators import save_generator
from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.latents.manifest import PROGRESS_DIR, SHARD_PATTERN, STATS_FILE, is_complete, read_manifest
from vtp_gen.models.registry import UnknownModelError, get_factory
from vtp_gen.pipeline.cache.config import CacheConfig
from vtp_gen.pipeline.cache.run import run as run_cache
from vtp_gen.pipeline.run_dir import prepare_run_dir, run_root
from vtp_gen.systems.flow_matching import AdamWSettings, LatentFlowMatching
from vtp_gen.systems.latent_data import LatentDataModule, cache_labels, count_classes, latent_shape
from vtp_gen.systems.resume import FixedSettings, state_dict_mismatch
from vtp_gen.systems.sampling import LatentDecoder, SampleGridCallback, preview_labels, sampling_kwargs
from vtp_gen.systems.stop_on_signal import StopOnSignal
from vtp_gen.systems.trainer import build_trainer, find_resume_checkpoint, keep_csv_history
from vtp_gen.transport import Transport
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger
from vtp_gen.utils.step_guard import guarded_step
from vtp_gen.utils.stop_signals import StopRequested, raise_if_requested, signal_name

log = step_logger("stage2")

GENERATOR_DIR = "generator"
RUN_INFO_FILE = "stage2.json"
SUMMARY_FILE = "train_summary.json"


@dataclass
class Stage2Result:
    folder: Path
    generator: Path | None  # the exported EMA generator (rank 0 only)
    summary: dict | None


def cache_folder(cfg: DictConfig) -> Path:
    return Path(cfg.latents.cache_dir) if cfg.latents.cache_dir else run_root(cfg) / "cache"


def tokenizer_folder(cfg: DictConfig) -> Path:
    return Path(cfg.latents.tokenizer) if cfg.latents.tokenizer else run_root(cfg) / "stage1" / "tokenizer"


def _launched_with_many_processes() -> bool:
    # torchrun / SLURM start every rank at once; Lightning's own launcher starts the others later.
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_foreign_cache(folder: Path) -> bool:
    """Shards and statistics without our manifest or progress records: a cache written by other tools."""
    if not folder.is_dir() or read_manifest(folder) is not None or (folder / PROGRESS_DIR).exists():
        return False
    has_shards = any(SHARD_PATTERN.match(p.name) for p in folder.iterdir())
    return has_shards and (folder / STATS_FILE).is_file()


def ensure_latent_cache(cfg: DictConfig) -> Path:
    """The cache folder, made first with the cache step when missing or unfinished (and allowed)."""
    folder = cache_folder(cfg)
    if is_complete(folder) or is_foreign_cache(folder):
        return folder
    if not cfg.latents.make_cache:
        raise FileNotFoundError(
            f"no complete latent cache in {folder}: run `make cache` with the same run.name (it writes "
            "runs/<run.name>/cache; see docs/latent-cache.md), point latents.cache_dir at a cache, or set "
            "latents.make_cache=true"
        )
    if _launched_with_many_processes():
        raise FileNotFoundError(
            f"no complete latent cache in {folder}, and this is a multi-process launch: make the cache first "
            "with `make cache` (every GPU encodes its own shards), then start stage 2"
        )

    cache_cfg = OmegaConf.structured(CacheConfig)
    cache_cfg.run = cfg.run
    cache_cfg.data = cfg.data
    cache_cfg.tokenizer = str(tokenizer_folder(cfg))
    cache_cfg.out_dir = str(folder)
    for key in ("shard_size", "stats_max_images", "flips", "storage_dtype"):
        cache_cfg[key] = cfg.latents[key]
    cache_cfg.accelerator = cfg.trainer.accelerator
    cache_cfg.devices = 1
    cache_cfg.progress_bar = cfg.trainer.progress_bar
    log.info(f"no latent cache in {folder}: caching {cfg.data.source} ({cfg.data.split}) first")
    run_cache(cache_cfg)
    return folder


def check_tokenizer_folder(folder: Path, needed_for: list[str]) -> None:
    """A one-line error now, instead of a failure later, when ``folder`` is no VTP tokenizer folder."""
    weights = ("model.safetensors", "model.safetensors.index.json")
    has_weights = any((folder / name).is_file() for name in weights)
    if folder.is_dir() and (folder / "config.json").is_file() and has_weights:
        return
    state = "does not exist" if not folder.exists() else "has no config.json + model.safetensors"
    ways_out = "set latents.tokenizer=PATH (the VTP folder the latents are made with, official layout)"
    if needed_for == ["the preview grids"]:
        ways_out += ", or preview.enabled=false to train without grids"
    raise FileNotFoundError(
        f"tokenizer folder {folder} {state}, and {' and '.join(needed_for)} need it: {ways_out} "
        "(`make stage1` writes runs/<run.name>/stage1/tokenizer)"
    )


def check_inputs(cfg: DictConfig) -> None:
    """What the run will need, checked before its first step (the cache's content is checked when opened).

    The tokenizer: to make a missing cache, and to decode the preview grids,
    the last of which comes after training.
    """
    cache = cache_folder(cfg)
    needed_for = []
    if cfg.latents.make_cache and not (is_complete(cache) or is_foreign_cache(cache)):
        needed_for.append("making the latent cache")
    if cfg.preview.enabled:
        needed_for.append("the preview grids")
    if needed_for:
        check_tokenizer_folder(tokenizer_folder(cfg), needed_for)


def runs_on_cpu(trainer_cfg) -> bool:
    return trainer_cfg.accelerator == "cpu" or not torch.cuda.is_available()


def preview_size(cfg: DictConfig) -> tuple[int, int, int]:
    """(rows, samples per row, sampler points) of the preview grids: the recipe's, capped on a CPU.

    A paper recipe's grid (64 samples x 250 Euler points of a 130M-675M model)
    takes hours on a CPU; there ``preview.cpu_*`` cap it (null: no cap).
    """
    preview = cfg.preview
    rows, per_class = preview.rows, preview.per_class
    steps = preview.steps if preview.steps is not None else cfg.sampling.steps
    if runs_on_cpu(cfg.trainer):
        rows = min(rows, preview.cpu_rows) if preview.cpu_rows is not None else rows
        per_class = min(per_class, preview.cpu_per_class) if preview.cpu_per_class is not None else per_class
        steps = min(steps, preview.cpu_steps) if preview.cpu_steps is not None else steps
    return rows, per_class, steps


def open_latents(cfg: DictConfig, folder: Path) -> LatentDataset:
    tokenizer = tokenizer_folder(cfg)
    verify = cfg.latents.verify_tokenizer
    if verify and read_manifest(folder) is None:
        raise ConfigError(
            f"{folder} has no manifest.json, so the tokenizer its latents came from cannot be checked; "
            "set latents.verify_tokenizer=false if you know they come from latents.tokenizer"
        )
    return LatentDataset(
        folder,
        flip_prob=cfg.latents.flip_prob,
        multiplier=cfg.latents.multiplier,
        tokenizer=tokenizer if verify else None,
    )


def build_generator(cfg: DictConfig, latents: LatentDataset) -> torch.nn.Module:
    channels, height, width = latent_shape(latents)
    if height != width:
        raise ValueError(f"the generators take square latents, the cache holds {channels}x{height}x{width}")
    num_classes = cfg.model.num_classes or count_classes(cache_labels(latents))
    overrides = OmegaConf.to_container(cfg.model.overrides, resolve=True)
    for fixed in ("input_size", "in_channels", "num_classes"):
        if fixed in overrides:
            raise ConfigError(f"model.overrides.{fixed}: set by the cache / model.num_classes, not here")
    # The same seed on every rank, so the ranks start from the same weights even before DDP syncs them.
    torch.manual_seed(cfg.run.seed)
    return model_factory(cfg)(input_size=height, in_channels=channels, num_classes=num_classes, **overrides)


def model_factory(cfg: DictConfig):
    try:
        return get_factory(cfg.model.name)
    except UnknownModelError as e:
        raise ConfigError(f"model.name: {e}") from None


def build_transport(cfg: DictConfig) -> Transport:
    t = cfg.transport
    return Transport(
        time_distribution=t.time_distribution,
        logit_mean=t.logit_mean,
        logit_std=t.logit_std,
        cosine_weight=t.cosine_weight,
    )


def adamw_settings(cfg: DictConfig) -> AdamWSettings:
    o = cfg.optim
    return AdamWSettings(
        lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay, eps=o.eps, fused=o.fused
    )


def build_system(cfg: DictConfig, model: torch.nn.Module) -> LatentFlowMatching:
    return LatentFlowMatching(model, build_transport(cfg), adamw_settings(cfg), cfg.ema.decay, cfg.run.seed)


def preview_callback(cfg: DictConfig, folder: Path, latents: LatentDataset, num_classes: int):
    sampling = OmegaConf.to_object(cfg.sampling)
    if cfg.preview.cfg_scale is not None:
        sampling.cfg_scale = cfg.preview.cfg_scale
    rows, per_class, sampling.steps = preview_size(cfg)
    wanted = (cfg.preview.rows, cfg.preview.per_class, cfg.preview.steps or cfg.sampling.steps)
    if (rows, per_class, sampling.steps) != wanted:
        log.info(
            f"preview grids on a CPU: {rows}x{per_class} samples, {sampling.steps} sampler points instead of "
            f"{wanted[0]}x{wanted[1]}, {wanted[2]} (preview.cpu_rows / cpu_per_class / cpu_steps=null lift this)"
        )
    stats = latents.stats

    def make_decoder() -> LatentDecoder:

        return LatentDecoder(load_tokenizer(tokenizer_folder(cfg)), stats)

    return SampleGridCallback(
        folder / "images",
        make_decoder,
        preview_labels(num_classes, rows, per_class),
        sampling_kwargs(sampling),
        every_n_steps=cfg.preview.every_n_steps,
        nrow=per_class,
        seed=cfg.run.seed,
        at_train_end=False,  # run() writes the last grid itself, after the checkpoint and the export
    )


class SpeedMeter(L.Callback):
    """Optimiser steps per second, CPU seconds per step and peak memory, from the second step on.

    The first step pays for warm-up and is not timed. CPU time (all threads of
    this process) does not depend on what else runs on the machine, unlike
    wall time.
    """

    def __init__(self):
        self.steps = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self._first_step: int | None = None
        self._t0 = 0.0
        self._cpu0 = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._first_step is None:
            self._first_step = trainer.global_step
            self._t0, self._cpu0 = time.perf_counter(), time.process_time()
            return
        self.steps = trainer.global_step - self._first_step
        self.seconds = time.perf_counter() - self._t0
        self.cpu_seconds = time.process_time() - self._cpu0
        if self.steps and trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log("train/steps_per_sec", self.steps / self.seconds, rank_zero_only=True)

    def summary(self) -> dict:
        peak_rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        timed = self.steps and self.seconds
        out = {
            "timed_steps": self.steps,
            "timed_seconds": round(self.seconds, 3),
            "steps_per_sec": round(self.steps / self.seconds, 4) if timed else None,
            "cpu_seconds_per_step": round(self.cpu_seconds / self.steps, 4) if timed else None,
            "peak_host_memory_gib": round(peak_rss_kib / 2**20, 3),
        }
        if torch.cuda.is_available():
            out["peak_device_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return out


def check_ranks_agree(trainer: L.Trainer, system: LatentFlowMatching) -> dict[str, str]:
    """Weight digests of this rank, compared with every other rank's (a DDP desync is an error)."""
    digests = system.weight_digests()
    if trainer.world_size > 1:
        every_rank = trainer.strategy.all_gather(
            torch.tensor([list(bytes.fromhex(d)) for d in digests.values()], dtype=torch.uint8)
        )
        if not bool((every_rank == every_rank[0]).all()):
            raise RuntimeError("the ranks finished training with different weights (model or EMA)")
    return digests


def export_generator(
    system: LatentFlowMatching, folder: Path, cfg: DictConfig, cache: Path, step: int, **extra_info
) -> Path:
    """``generator/``: EMA weights (what samples) in the reference layout, stats and recipe beside them.

    ``extra_info`` adds keys to the recorded ``stage2.json`` (text-to-image: its conditioning).
    """

    target = folder / GENERATOR_DIR
    tmp = folder / f".{GENERATOR_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_generator(system.ema.module, tmp)
    shutil.copy2(cache / STATS_FILE, tmp / STATS_FILE)
    info = {
        "step": step,
        "weights": "ema",
        "ema_decay": cfg.ema.decay,
        "model_name": cfg.model.name,
        "latent_cache": str(cache.resolve()),
        "latent_multiplier": cfg.latents.multiplier,
        "tokenizer": str(tokenizer_folder(cfg).resolve()),
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        **extra_info,
    }
    (tmp / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


@dataclass
class FitOutcome:
    trainer: L.Trainer
    digests: dict[str, str]  # weight digests of model and EMA, equal on every rank
    stopped: str  # what to say when a stop signal ended training: where it stopped, what was saved


def fit(cfg: DictConfig, system: LatentFlowMatching, data, folder: Path, callbacks: list) -> FitOutcome:
    """Train ``system`` in ``folder``: resume from its newest fitting checkpoint, save ``last.ckpt`` at the end.

    Shared by class-conditional and text-to-image training. A resume refuses a
    changed seed / batch / flip / multiplier (:class:`FixedSettings`); a stop
    signal ends training after the current step and the checkpoint is still saved.
    """
    stopper = StopOnSignal(folder / "checkpoints", raise_after_fit=False)
    # A checkpoint of another model (say last.ckpt copied from another run) is passed over, not loaded.
    resume = find_resume_checkpoint(folder / "checkpoints", state_dict_mismatch(system.state_dict()))
    if resume is not None:
        log.info(f"resuming from {resume}")
        keep_csv_history(folder / "logs")  # before the CSV logger exists: it deletes metrics.csv
    trainer = build_trainer(
        cfg.trainer,
        folder,
        callbacks=[FixedSettings(cfg), *callbacks, stopper],
        use_distributed_sampler=False,
    )
    if cfg.trainer.compile:
        system.model.compile()
    trainer.fit(system, datamodule=data, ckpt_path=str(resume) if resume else None)
    # Step checkpoints only come every checkpoint_every_n_steps and the step-indexed stream never
    # ends an epoch, so the final state is saved here: last.ckpt is always where the run stopped
    # (a rerun with more trainer.max_steps continues from it). Every rank calls it; rank 0 writes.
    # weights_only=False: a full resume checkpoint (optimiser, loops); said explicitly, or Lightning logs a notice.
    # (A stop signal made the stopper save it at this step already.)
    last = folder / "checkpoints" / "last.ckpt"
    if stopper.stopped_at != trainer.global_step:
        trainer.save_checkpoint(last, weights_only=False)
    digests = check_ranks_agree(trainer, system)
    return FitOutcome(trainer, digests, f"stopped after step {trainer.global_step}; {last} saved")


def training_summary(
    fitted: FitOutcome,
    cfg: DictConfig,
    n_params: int,
    latents: LatentDataset,
    generator: Path,
    speed: SpeedMeter,
    **extra,
) -> dict:
    """``train_summary.json``: what was trained, where it went, how fast (``extra`` adds keys)."""
    trainer = fitted.trainer
    return {
        "step": trainer.global_step,
        "world_size": trainer.world_size,
        "global_batch_size": cfg.train.global_batch_size,
        "model": cfg.model.name,
        "parameters": n_params,
        "latent_shape": list(latent_shape(latents)),
        "weights_sha256": fitted.digests,
        "ranks_agree": True,
        "previews": [],
        "generator": str(generator),
        "torch_threads": torch.get_num_threads(),
        **extra,
        **speed.summary(),
    }


@guarded_step(
    "stage2",
    lambda cfg: run_root(cfg) / "stage2",
    on_stop="the newest checkpoint is kept; rerun the same command to resume",
)
def run(cfg: DictConfig, callbacks: list | None = None) -> Stage2Result:
    # The EMA copy is in eval mode on purpose (no label dropout); Lightning warns about any such module.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    model_factory(cfg)  # an unknown model.name is refused before any caching
    check_inputs(cfg)
    cache = ensure_latent_cache(cfg)
    latents = open_latents(cfg, cache)  # refuses latents of another tokenizer before anything is written
    folder = prepare_run_dir(cfg, "stage2")
    model = build_generator(cfg, latents)
    system = build_system(cfg, model)
    channels, size, _ = latent_shape(latents)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        f"{cfg.model.name}: {n_params / 1e6:.2f}M parameters on {channels}x{size}x{size} latents, "
        f"{model.num_classes} classes; {len(latents)} latents in {cache}"
    )
    data = LatentDataModule(
        latents, cfg.train.global_batch_size, cfg.run.seed, cfg.latents.flip_prob, cfg.train.num_workers
    )
    speed = SpeedMeter()
    preview = preview_callback(cfg, folder, latents, model.num_classes) if cfg.preview.enabled else None
    own_callbacks = [speed, *([preview] if preview else [])]
    fitted = fit(cfg, system, data, folder, [*own_callbacks, *(callbacks or [])])
    trainer = fitted.trainer
    if not trainer.is_global_zero:
        raise_if_requested(f"{fitted.stopped} (by rank 0)")
        return Stage2Result(folder, None, None)
    generator = export_generator(system, folder, cfg, cache, trainer.global_step)
    summary = training_summary(
        fitted,
        cfg,
        n_params,
        latents,
        generator,
        speed,
        per_device_batch_size=data.sampler.batch_size if data.sampler else None,
    )
    write_json_atomic(folder / SUMMARY_FILE, summary)
    raise_if_requested(
        f"{fitted.stopped}, generator (EMA weights) exported to {generator}; rerun the same command to resume"
    )
    rate = f", {summary['steps_per_sec']:.2f} steps/s" if summary["steps_per_sec"] else ""
    log.info(f"trained to step {trainer.global_step}{rate}: checkpoint and generator saved")
    if preview is not None:
        summary["previews"] = write_last_preview(preview, trainer, system, generator)
        write_json_atomic(folder / SUMMARY_FILE, summary)
    log.info(f"done at step {trainer.global_step}; generator -> {generator}")
    sys.stdout.flush()
    return Stage2Result(folder, generator, summary)


def write_last_preview(preview: SampleGridCallback, trainer, system, generator: Path) -> list[str]:
    """The end-of-run grid: optional work, done after everything a rerun or `make sample` needs is saved."""
    if preview.last_step != trainer.global_step:
        rows, per_class = len(preview.labels) // preview.nrow, preview.nrow
        log.info(
            f"end-of-run preview: {rows}x{per_class} samples, {preview.sampling['steps']} sampler points "
            "(preview.enabled=false skips it; a stop signal now loses nothing)"
        )
        system.to(trainer.strategy.root_device)  # the fit's teardown moved it to the CPU
        try:
            preview.write(trainer, system)
        except StopRequested as stop:
            raise StopRequested(
                stop.signum,
                f"{signal_name(stop.signum)} received during the end-of-run preview grid; the checkpoint and "
                f"the generator ({generator}) were saved before it",
                detailed=True,
            ) from None
    return [str(p) for p in preview.written]
