"""``vtp-gen cache``: encode a labelled dataset with a frozen tokenizer into a latent cache.

    make cache                                   # Fashion-MNIST train, this run's stage-1 tokenizer
    make cache ARGS="devices=8"                  # 8 GPUs, disjoint shards
    vtp-gen cache --config configs/stage2/cache_imagenet.yaml tokenizer=/ckpt/VTP-L-f16d64

Rerunning the same command resumes at the first missing shard; on a finished
cache it checks that the settings still match and does nothing. The format and
guarantees are described in docs/latent-cache.md.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from omegaconf import DictConfig

from vtp_gen import load_tokenizer
from vtp_gen.config import save_config
from vtp_gen.data.build import build_map_dataset
from vtp_gen.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vtp_gen.data.webdataset_index import INDEX_FILE as WEBDATASET_INDEX_FILE
from vtp_gen.latents.encode import CacheDataModule, CenterCropUint8, LatentEncoder
from vtp_gen.latents.finalize import finalize_cache
from vtp_gen.latents.manifest import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_FILE,
    PLAN_FILE,
    PROGRESS_DIR,
    SHARD_PATTERN,
    STATS_FILE,
    VERIFIED_FILE,
    CacheMismatchError,
    dataset_fingerprint,
    find_shard_mismatch,
    plan_differences,
    read_json,
    read_manifest,
    tokenizer_identity,
)
from vtp_gen.latents.stats import stats_subset_mask
from vtp_gen.latents.writer import ShardLayout, ShardWriter, completed_shards
from vtp_gen.pipeline.run_dir import run_root
from vtp_gen.systems.trainer import build_predict_trainer
from vtp_gen.t2i.captions import CAPTIONS_FILE, dataset_captions, write_captions
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger
from vtp_gen.utils.step_guard import guarded_step

log = step_logger("cache")


@dataclass
class CacheResult:
    folder: Path
    manifest: dict | None  # None on ranks other than 0
    images_encoded: int  # by this process, in this run (0 when the cache was already complete)
    encode_seconds: float  # wall time of the encoding loop of this run
    encode_cpu_seconds: float = 0.0  # CPU time of this process in that loop (excludes loader workers)

    @property
    def images_per_second(self) -> float:
        return self.images_encoded / self.encode_seconds if self.encode_seconds else 0.0


def cache_folder(cfg: DictConfig) -> Path:
    return Path(cfg.out_dir) if cfg.out_dir else run_root(cfg) / "cache"


def tokenizer_folder(cfg: DictConfig) -> Path:
    return Path(cfg.tokenizer) if cfg.tokenizer else run_root(cfg) / "stage1" / "tokenizer"


def resolve_precision(cfg: DictConfig) -> str:
    # Latents are data, not activations: fp32 unless asked otherwise (the reference encodes in fp32).
    return "32-true" if cfg.precision == "auto" else cfg.precision


def make_plan(cfg: DictConfig, dataset, tokenizer_path: Path) -> dict:
    """Everything that decides the content of the cache; a resumed or reused cache must match it."""
    layout = ShardLayout(len(dataset), cfg.shard_size)
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "tokenizer": tokenizer_identity(tokenizer_path),
        "dataset": {
            "source": cfg.data.source,
            "split": cfg.data.split,
            "root": cfg.data.root,
            "max_samples": cfg.data.max_samples,
            "num_images": len(dataset),
            "fingerprint": dataset_fingerprint(dataset),
        },
        "preprocessing": {
            "crop": "adm_center_crop",
            "image_size": cfg.data.image_size,
            "normalize": "imagenet_mean_std",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "flips": "horizontal" if cfg.flips else "none",
        },
        "encoding": {
            "function": "get_reconstruction_latents",
            "precision": resolve_precision(cfg),
            "matmul_precision": cfg.matmul_precision,
            "storage_dtype": cfg.storage_dtype,
        },
        "layout": {
            "shard_size": cfg.shard_size,
            "num_shards": layout.num_shards,
            "files": "latents_rank{R:02d}_shard{K:03d}.safetensors, K = global shard number",
        },
        "stats": {
            "max_images": cfg.stats_max_images,
            "seed": cfg.run.seed,
            "over": "latents (not flips), per channel over N, H, W",
            "ddof": 1,
            "accumulated_in": "float64",
        },
    }


def _comparable(plan: dict) -> dict:
    # Where a tokenizer or dataset lives does not change the latents; their content hashes do.
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in plan.items()}
    out["tokenizer"] = {k: v for k, v in out["tokenizer"].items() if k != "path"}
    out["dataset"] = {k: v for k, v in out["dataset"].items() if k != "root"}
    return out


def _project(manifest: dict, plan: dict) -> dict:
    """The plan-shaped part of a manifest (which also holds results)."""
    out = {}
    for key, value in plan.items():
        have = manifest.get(key)
        out[key] = (
            {k: have.get(k) for k in value} if isinstance(value, dict) and isinstance(have, dict) else have
        )
    return out


def clear_cache_files(folder: Path) -> None:
    """Delete what a cache consists of, and nothing else the user may keep in that folder."""
    for path in folder.iterdir():
        if (
            SHARD_PATTERN.match(path.name)
            or path.name in (STATS_FILE, MANIFEST_FILE, VERIFIED_FILE)
            or (path.name.startswith(".latents_rank"))
        ):
            path.unlink(missing_ok=True)  # another rank of a torchrun launch may have removed it
    shutil.rmtree(folder / PROGRESS_DIR, ignore_errors=True)


def prepare_folder(folder: Path, plan: dict, overwrite: bool) -> bool:
    """Check what ``folder`` holds against ``plan``; True when it is already the complete cache."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    previous = _project(manifest, plan) if manifest else read_json(folder / PROGRESS_DIR / PLAN_FILE)
    has_shards = any(SHARD_PATTERN.match(p.name) for p in folder.iterdir())
    if previous is not None or has_shards:
        diffs = (
            plan_differences(_comparable(previous), _comparable(plan))
            if previous is not None
            else ["(shards of unknown origin, no manifest)"]
        )
        if not diffs and manifest is not None and manifest.get("complete"):
            # Complete only if every shard still is what the manifest says (one read of the cache).
            problem = find_shard_mismatch(folder, manifest)
            if problem is None:
                return True
            if not overwrite:
                raise CacheMismatchError(problem)
            diffs = ["shards"]
        if diffs:
            if not overwrite:
                made_with = (previous or {}).get("tokenizer", {}).get("path", "?")
                raise CacheMismatchError(
                    f"{folder} already holds a {'complete' if manifest else 'partial'} latent cache made with "
                    f"other settings (differs in: {', '.join(diffs)}; its tokenizer: {made_with}). Choose another "
                    "out_dir, or pass overwrite=true to delete it and cache again."
                )
            clear_cache_files(folder)
    write_json_atomic(folder / PROGRESS_DIR / PLAN_FILE, plan)
    return False


def share_cpu_cores(trainer: L.Trainer) -> None:
    """Several CPU ranks on one machine: split the cores instead of each rank taking all of them
    (oversubscribed intra-op threads make every rank slower than one rank alone)."""
    local_ranks = trainer.num_devices
    if isinstance(trainer.accelerator, CPUAccelerator) and local_ranks > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_ranks))


def write_shard_captions(cfg: DictConfig, folder: Path, dataset, plan: dict) -> None:
    """Webdataset shards carry captions: write the cache's ``captions.json`` (docs/text-to-image.md)
    from their ``.txt`` / ``.json`` members when it is missing or belongs to other shards."""
    if cfg.data.source != "webdataset":
        return
    fingerprint = plan["dataset"]["fingerprint"]
    path = folder / CAPTIONS_FILE
    if path.is_file():
        try:
            if json.loads(path.read_text()).get("dataset_fingerprint") == fingerprint:
                return
        except ValueError:
            pass
    log.info(f"writing the captions of {len(dataset)} webdataset samples -> {path}")
    write_captions(folder, dataset_captions(dataset), fingerprint)


@guarded_step("cache", cache_folder, on_stop="finished shards are kept; rerun the same command to resume")
def run(cfg: DictConfig) -> CacheResult:
    """Encode ``cfg.data`` with the tokenizer into ``cfg.out_dir``; resume or no-op as the folder says.

    Webdataset shards also get the cache's ``captions.json`` from their captions."""
    folder = cache_folder(cfg)
    tokenizer_path = tokenizer_folder(cfg)
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    # Webdataset shards are indexed for random access (global index = shard order x position),
    # the index recorded in the cache so a resume reads the same mapping.
    dataset = build_map_dataset(
        cfg.data, CenterCropUint8(cfg.data.image_size), index_file=folder / WEBDATASET_INDEX_FILE
    )
    if len(dataset) == 0:
        raise ValueError(f"the dataset ({cfg.data.source}, split {cfg.data.split}) holds no images")
    plan = make_plan(cfg, dataset, tokenizer_path)
    if prepare_folder(folder, plan, cfg.overwrite):
        log.info(f"{folder} is already a complete cache for these settings; nothing to do")
        write_shard_captions(cfg, folder, dataset, plan)
        return CacheResult(folder, read_manifest(folder), 0, 0.0)
    save_config(cfg, folder / "config.yaml")
    layout = ShardLayout(len(dataset), cfg.shard_size)
    pending = layout.num_shards - len(completed_shards(folder, layout))
    log.info(
        f"{len(dataset)} images in {layout.num_shards} shards ({pending} to write) -> {folder}; "
        f"tokenizer {plan['tokenizer']['path']}"
    )
    encoded, seconds, cpu_seconds = 0, 0.0, 0.0
    is_global_zero = True
    if pending:
        writer = ShardWriter(
            folder,
            layout,
            stats_subset_mask(len(dataset), cfg.stats_max_images, cfg.run.seed),
            cfg.storage_dtype,
        )
        encoder = LatentEncoder(load_tokenizer(str(tokenizer_path)), cfg.data.image_size, cfg.flips)
        trainer = build_predict_trainer(cfg, [writer], resolve_precision(cfg), folder)
        share_cpu_cores(trainer)
        trainer.predict(
            encoder, datamodule=CacheDataModule(dataset, layout, folder, cfg.data), return_predictions=False
        )
        seconds, cpu_seconds = writer.loop_seconds, writer.loop_cpu_seconds
        encoded = sum(r["num_images"] for r in writer.written)
        trainer.strategy.barrier("latent shards written")
        is_global_zero = trainer.is_global_zero
    if not is_global_zero:
        return CacheResult(folder, None, encoded, seconds, cpu_seconds)
    manifest = finalize_cache(folder, plan, layout)
    write_shard_captions(cfg, folder, dataset, plan)
    counts = manifest["counts"]
    skipped = f", skipped {counts['skipped']}" if counts["skipped"] else ""
    rate = f", {encoded / seconds:.1f} images/s on rank 0" if seconds else ""
    log.info(
        f"done: {counts['images']} images in {counts['shards']} shards{skipped}{rate}; "
        f"latent {manifest['latent']['shape']}; stats over {manifest['stats']['values_counted']} values"
    )
    return CacheResult(folder, manifest, encoded, seconds, cpu_seconds)
