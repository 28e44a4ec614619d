"""``vtp-gen sample`` (``make sample``): N images from a generator, as a PNG folder and an ADM ``.npz``.

    make sample                                                   # this run's stage-2 generator
    make sample CONFIG=configs/stage2/sample_paper.yaml ARGS="devices=8 \\
        generator=runs/vtp_l/stage2/generator tokenizer=/ckpt/VTP-L-f16d64"

Output folder (default ``runs/<name>/samples/<method><steps>-shift<s>-cfg<c>-seed<seed>``)::

    images/000000.png ...     one PNG per sample, written as batches finish
    samples.npz               arr_0: uint8 (N, H, W, 3), arr_1: int64 labels (the ADM evaluator reads arr_0)
    grid.png                  the first samples, for a look
    samples.json              what made them (generator, tokenizer, stats, sampler, seed, labels)

Re-running the same command makes only the missing samples (sample ``i`` is a
function of ``(seed, i)``, see :mod:`vtp_gen.systems.sampling`); a folder
holding samples made with other settings is refused unless ``overwrite=true``.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vtp_gen import load_tokenizer
from vtp_gen.config import ConfigError
from vtp_gen.data.images import load_png, save_grid
from vtp_gen.interop.generators import load_generator
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.latents.manifest import STATS_FILE, read_json, tokenizer_identity
from vtp_gen.models.generators import LightningDiT
from vtp_gen.pipeline.run_dir import run_root
from vtp_gen.pipeline.stage2.run import GENERATOR_DIR, RUN_INFO_FILE
from vtp_gen.pretrained.safe_unpickle import load_tensors_only
from vtp_gen.systems.flow_matching import GENERATOR_CONFIG_KEY, tensor_digest
from vtp_gen.systems.sampling import (
    LABEL_MODES,
    LatentDecoder,
    LatentSampler,
    PngWriter,
    SamplePlanData,
    missing_indices,
    png_path,
    sample_labels,
    sampling_kwargs,
    write_adm_npz,
)
from vtp_gen.systems.trainer import build_predict_trainer
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger
from vtp_gen.utils.step_guard import guarded_step

log = step_logger("sample")

RECORD_FILE = "samples.json"
NPZ_FILE = "samples.npz"
GRID_FILE = "grid.png"
IMAGES_DIR = "images"


@dataclass
class SampleResult:
    folder: Path
    npz: Path | None  # None on ranks other than 0, or with write_npz=false
    num_samples: int
    written: int  # PNGs made by this process in this run


def generator_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """The EMA generator of a stage-2 training checkpoint (loaded with ``weights_only=True``)."""

    prefix = "ema.module."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    model = LightningDiT(**checkpoint[GENERATOR_CONFIG_KEY])
    model.load_state_dict(state, strict=True)
    return model.eval()


def load_any_generator(path: Path) -> torch.nn.Module:
    """A generator folder / file that ``load_generator`` reads, or a stage-2 ``.ckpt`` (its EMA weights)."""
    if path.suffix == ".ckpt" and path.is_file():
        checkpoint = load_tensors_only(path, mmap=True)
        if isinstance(checkpoint, dict) and GENERATOR_CONFIG_KEY in checkpoint:
            return generator_from_checkpoint(checkpoint)
    if not path.exists():
        raise FileNotFoundError(
            f"generator {path} not found: train one with `make stage2`, or pass generator=PATH (a folder with "
            "config.json + model.safetensors, a .safetensors or .pt reference checkpoint, or a stage-2 .ckpt)"
        )

    return load_generator(path)


def load_stats(path: Path, multiplier: float) -> LatentStats:
    """From a cache or generator folder (``latents_stats.pt`` inside) or a stats file itself."""
    if path.is_file():
        stats = load_tensors_only(path)
        return LatentStats(stats["mean"].float(), stats["std"].float(), multiplier)
    return LatentStats.load(path, multiplier)


def generator_folder(cfg: DictConfig) -> Path:
    return Path(cfg.generator) if cfg.generator else run_root(cfg) / "stage2" / GENERATOR_DIR


def run_info(generator_path: Path) -> dict:
    """What stage 2 recorded beside an exported generator (tokenizer, latent cache), if anything."""
    if generator_path.is_dir():
        return read_json(generator_path / RUN_INFO_FILE) or {}
    return {}


def resolve_tokenizer(cfg: DictConfig, info: dict) -> Path:
    if cfg.tokenizer:
        return Path(cfg.tokenizer)
    if info.get("tokenizer"):
        return Path(info["tokenizer"])
    return run_root(cfg) / "stage1" / "tokenizer"


def resolve_stats(cfg: DictConfig, generator_path: Path, info: dict) -> Path:
    if cfg.latent_stats:
        return Path(cfg.latent_stats)
    if generator_path.is_dir() and (generator_path / STATS_FILE).is_file():
        return generator_path / STATS_FILE
    if info.get("latent_cache"):
        return Path(info["latent_cache"])
    return run_root(cfg) / "cache"


def output_folder(cfg: DictConfig) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    s = cfg.sampling
    tag = f"{s.method}{s.steps}-shift{s.shift:g}-cfg{s.cfg_scale:g}-seed{cfg.run.seed}"
    return run_root(cfg) / "samples" / tag


def resolve_precision(cfg: DictConfig) -> str:
    return "32-true" if cfg.precision == "auto" else cfg.precision


def identity(cfg: DictConfig, generator, tokenizer: Path, stats: LatentStats, num_classes: int) -> dict:
    """Everything that decides what sample i looks like; a resumed folder must match it."""
    return {
        "generator_sha256": tensor_digest(generator.state_dict()),
        "tokenizer_sha256": tokenizer_identity(tokenizer)["weights_sha256"],
        "latent_stats_sha256": tensor_digest({"mean": stats.mean, "std": stats.std}),
        "latent_multiplier": stats.multiplier,
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        "seed": cfg.run.seed,
        "labels": cfg.labels,
        "num_classes": num_classes,
        "precision": resolve_precision(cfg),
    }


def prepare_folder(folder: Path, wanted: dict, overwrite: bool) -> dict:
    """Check the folder's record against ``wanted``; returns the record to keep updating."""
    record = read_json(folder / RECORD_FILE)
    has_images = (folder / IMAGES_DIR).is_dir() and any((folder / IMAGES_DIR).glob("*.png"))
    if record is not None or has_images:
        previous = (record or {}).get("identity")
        differs = (
            sorted(k for k in set(wanted) | set(previous or {}) if (previous or {}).get(k) != wanted.get(k))
            if previous is not None
            else ["(images without samples.json)"]
        )
        if differs:
            if not overwrite:
                raise ConfigError(
                    f"{folder} holds samples made with other settings (differs in: {', '.join(differs)}); "
                    "choose another out_dir, or pass overwrite=true to delete them"
                )
            shutil.rmtree(folder / IMAGES_DIR, ignore_errors=True)
            for name in (RECORD_FILE, NPZ_FILE, GRID_FILE):
                (folder / name).unlink(missing_ok=True)
            record = None
    record = record or {"identity": wanted}
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / RECORD_FILE, record)
    return record


@guarded_step(
    "sample",
    output_folder,
    on_stop="finished PNGs are kept; rerun the same command to make the rest",
)
def run(cfg: DictConfig) -> SampleResult:
    if cfg.labels not in LABEL_MODES:
        raise ConfigError(f"labels={cfg.labels!r}: expected one of {', '.join(LABEL_MODES)}")
    if cfg.num_samples <= 0:
        raise ConfigError("num_samples must be positive")
    generator_path = generator_folder(cfg)
    generator = load_any_generator(generator_path)
    info = run_info(generator_path)
    tokenizer_path = resolve_tokenizer(cfg, info)
    stats = load_stats(resolve_stats(cfg, generator_path, info), cfg.latent_multiplier)
    num_classes = cfg.num_classes or generator.num_classes
    folder = output_folder(cfg)
    images = folder / IMAGES_DIR
    record = prepare_folder(
        folder, identity(cfg, generator, tokenizer_path, stats, num_classes), cfg.overwrite
    )
    pending = missing_indices(images, cfg.num_samples)
    log.info(
        f"{cfg.num_samples} samples ({len(pending)} to make) of {generator.num_classes}-class generator "
        f"{generator_path} -> {folder}"
    )
    writer = PngWriter(images)
    trainer = build_predict_trainer(cfg, [writer], resolve_precision(cfg))
    if pending:
        sampler = LatentSampler(
            generator,
            LatentDecoder(load_tokenizer(tokenizer_path), stats),
            sampling_kwargs(cfg.sampling),
            seed=cfg.run.seed,
        )
        plan = SamplePlanData(images, cfg.num_samples, num_classes, cfg.labels, cfg.run.seed, cfg.batch_size)
        trainer.predict(sampler, datamodule=plan, return_predictions=False)
        trainer.strategy.barrier("samples written")
    if not trainer.is_global_zero:
        return SampleResult(folder, None, cfg.num_samples, writer.written)
    still_missing = missing_indices(images, cfg.num_samples)
    if still_missing:
        raise RuntimeError(
            f"{len(still_missing)} samples are missing after sampling, e.g. {still_missing[:5]}"
        )
    npz = folder / NPZ_FILE
    if cfg.write_npz and (
        writer.written or record.get("npz_num_samples") != cfg.num_samples or not npz.is_file()
    ):
        labels = sample_labels(range(cfg.num_samples), num_classes, cfg.labels, cfg.run.seed)
        write_adm_npz(npz, images, cfg.num_samples, labels)
        record["npz_num_samples"] = cfg.num_samples
    if cfg.grid_images > 0:
        count = min(cfg.grid_images, cfg.num_samples)
        pixels = np.stack([load_png(png_path(images, i)) for i in range(count)])
        save_grid(pixels, folder / GRID_FILE, nrow=math.ceil(math.sqrt(count)))
    record["num_samples"] = cfg.num_samples
    write_json_atomic(folder / RECORD_FILE, record)
    log.info(f"done: {cfg.num_samples} samples in {images}" + (f", {npz}" if cfg.write_npz else ""))
    return SampleResult(folder, npz if cfg.write_npz else None, cfg.num_samples, writer.written)


def summary(folder: str | Path) -> dict:
    """The record of a sample folder (for evaluation reports)."""
    return json.loads((Path(folder) / RECORD_FILE).read_text())
