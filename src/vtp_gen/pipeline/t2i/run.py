"""Text-to-image training (``make stage2 CONFIG=configs/stage2/t2i_tiny.yaml``).

The class-conditional stage-2 run with captions: make the latent cache when
missing (the same library step), write its ``captions.json`` when missing,
open both, build a ``TextDiT-*`` generator whose caption inputs match the
tokenizer's text tower, train (resuming from ``checkpoints/last.ckpt``),
write prompt grids and export ``runs/<name>/t2i/generator/`` (EMA weights,
``config.json`` + ``model.safetensors``, latent statistics, the recipe's
sampler and the tokenizer it conditions on).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vtp_gen import load_tokenizer
from vtp_gen.config import ConfigError
from vtp_gen.data.build import build_map_dataset
from vtp_gen.data.webdataset_index import INDEX_FILE as WEBDATASET_INDEX_FILE
from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.latents.manifest import dataset_fingerprint
from vtp_gen.models.registry import create_model
from vtp_gen.pipeline.run_dir import prepare_run_dir, run_root
from vtp_gen.pipeline.stage2.run import (
    SUMMARY_FILE,
    SpeedMeter,
    adamw_settings,
    build_transport,
    ensure_latent_cache,
    export_generator,
    fit,
    open_latents,
    tokenizer_folder,
    training_summary,
)
from vtp_gen.pipeline.t2i.config import HELD_OUT_PROMPTS
from vtp_gen.systems.latent_data import latent_shape
from vtp_gen.systems.sampling import LatentDecoder
from vtp_gen.t2i.captions import (
    CAPTIONS_FILE,
    CacheCaptions,
    captions_made_from,
    dataset_captions,
    write_captions,
)
from vtp_gen.t2i.data import CaptionedLatentDataModule
from vtp_gen.t2i.sampling import PromptGridCallback, sampling_settings
from vtp_gen.t2i.system import CaptionFeatureBank, TextFlowMatching
from vtp_gen.t2i.text_features import CaptionEncoder
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger
from vtp_gen.utils.step_guard import guarded_step
from vtp_gen.utils.stop_signals import raise_if_requested

log = step_logger("t2i")

RUN_STEP = "t2i"


@dataclass
class T2IResult:
    folder: Path
    generator: Path | None
    summary: dict | None


def label_caption_set(cfg: DictConfig) -> str:
    return "labels+name_variants" if cfg.text.name_variants else "labels"


def ensure_captions(cfg: DictConfig, cache: Path) -> Path:
    """``captions.json`` of the cache, written from ``cfg.data`` (captions only, no image decoding) when
    missing, or when vtp_gen made it from labels with the other ``text.name_variants`` setting."""
    path = cache / CAPTIONS_FILE
    wanted = label_caption_set(cfg)
    made_from = captions_made_from(cache)
    from_labels = made_from in ("labels", "labels+name_variants")
    if path.is_file() and (not from_labels or made_from == wanted or not cfg.text.write_captions):
        return path
    if not cfg.text.write_captions:
        raise FileNotFoundError(f"{path} not found and text.write_captions=false")

    dataset = build_map_dataset(cfg.data, with_captions=True, index_file=cache / WEBDATASET_INDEX_FILE)
    if cfg.data.source == "webdataset":  # captions from the shards, written by the cache step
        return write_captions(cache, dataset_captions(dataset), dataset_fingerprint(dataset))
    reason = f"it holds the {made_from!r} captions" if path.is_file() else "missing"
    log.info(f"writing the {wanted!r} captions of {len(dataset)} images -> {path} ({reason})")
    captions = dataset_captions(dataset, name_variants=cfg.text.name_variants)
    return write_captions(cache, captions, dataset_fingerprint(dataset), made_from=wanted)


def build_text_generator(cfg: DictConfig, latents: LatentDataset, encoder: CaptionEncoder) -> torch.nn.Module:
    channels, height, width = latent_shape(latents)
    if height != width:
        raise ValueError(f"the generators take square latents, the cache holds {channels}x{height}x{width}")
    overrides = OmegaConf.to_container(cfg.model.overrides, resolve=True)
    for fixed in ("input_size", "in_channels", "text_dim", "pooled_dim"):
        if fixed in overrides:
            raise ConfigError(f"model.overrides.{fixed}: set by the cache / the tokenizer, not here")
    torch.manual_seed(cfg.run.seed)  # same initial weights on every rank
    return create_model(
        cfg.model.name,
        input_size=height,
        in_channels=channels,
        text_dim=encoder.width,
        pooled_dim=encoder.pooled_dim,
        caption_dropout_prob=cfg.text.caption_dropout_prob,
        **overrides,
    )


def build_text_system(cfg: DictConfig, model: torch.nn.Module, bank: CaptionFeatureBank) -> TextFlowMatching:
    return TextFlowMatching(
        model,
        build_transport(cfg),
        bank,
        cfg.text.caption_dropout_prob,
        adamw_settings(cfg),
        cfg.ema.decay,
        cfg.run.seed,
    )


def preview_callback(cfg, folder, latents, tokenizer, encoder) -> PromptGridCallback:
    sampling = OmegaConf.to_object(cfg.sampling)
    if cfg.preview.cfg_scale is not None:
        sampling.cfg_scale = cfg.preview.cfg_scale
    if cfg.preview.steps is not None:
        sampling.steps = cfg.preview.steps
    prompts = list(cfg.preview.prompts) or list(HELD_OUT_PROMPTS)
    return PromptGridCallback(
        folder / "images",
        lambda: LatentDecoder(tokenizer, latents.stats),
        encoder,
        prompts[: cfg.preview.rows],
        cfg.preview.per_class,
        sampling_settings(sampling),
        every_n_steps=cfg.preview.every_n_steps,
        seed=cfg.run.seed,
    )


@guarded_step(
    RUN_STEP,
    lambda cfg: run_root(cfg) / RUN_STEP,
    on_stop="the newest checkpoint is kept; rerun the same command to resume",
)
def run(cfg: DictConfig, callbacks: list | None = None) -> T2IResult:
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")

    cache = ensure_latent_cache(cfg)
    latents = open_latents(cfg, cache)
    ensure_captions(cfg, cache)
    captions = CacheCaptions.load(cache, latents.files)
    folder = prepare_run_dir(cfg, RUN_STEP)
    tokenizer = load_tokenizer(tokenizer_folder(cfg))
    encoder = CaptionEncoder.from_tokenizer(tokenizer)
    model = build_text_generator(cfg, latents, encoder)
    bank = CaptionFeatureBank(encoder, captions.captions, int(cfg.text.feature_table_max_gib * 2**30))
    system = build_text_system(cfg, model, bank)
    channels, size, _ = latent_shape(latents)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    table = "precomputed" if bank.table is not None else "encoded per batch"
    log.info(
        f"{cfg.model.name}: {n_params / 1e6:.2f}M parameters on {channels}x{size}x{size} latents; "
        f"{len(latents)} latents, {len(captions.captions)} distinct captions (features {table})"
    )
    data = CaptionedLatentDataModule(
        latents,
        captions,
        cfg.train.global_batch_size,
        cfg.run.seed,
        cfg.latents.flip_prob,
        cfg.train.num_workers,
    )
    speed = SpeedMeter()
    preview = preview_callback(cfg, folder, latents, tokenizer, encoder) if cfg.preview.enabled else None
    own_callbacks = [speed, preview] if preview else [speed]
    fitted = fit(cfg, system, data, folder, [*own_callbacks, *(callbacks or [])])
    trainer = fitted.trainer
    if not trainer.is_global_zero:
        raise_if_requested(f"{fitted.stopped} (by rank 0)")
        return T2IResult(folder, None, None)
    generator = export_generator(
        system,
        folder,
        cfg,
        cache,
        trainer.global_step,
        conditioning="text",
        caption_dropout_prob=cfg.text.caption_dropout_prob,
    )
    summary = training_summary(
        fitted, cfg, n_params, latents, generator, speed, distinct_captions=len(captions.captions)
    )
    summary["previews"] = [str(p) for p in preview.written] if preview else []
    write_json_atomic(folder / SUMMARY_FILE, summary)
    raise_if_requested(
        f"{fitted.stopped}, generator (EMA weights) exported to {generator}; rerun the same command to resume"
    )
    rate = f", {summary['steps_per_sec']:.2f} steps/s" if summary["steps_per_sec"] else ""
    log.info(f"done at step {trainer.global_step}{rate}; generator -> {generator}")
    sys.stdout.flush()
    return T2IResult(folder, generator, summary)
