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

import json
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vtp_gen import load_tokenizer
from vtp_gen.config import ConfigError
from vtp_gen.data.build import build_dataset
from vtp_gen.interop.generators import save_generator
from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.latents.manifest import STATS_FILE, dataset_fingerprint
from vtp_gen.models.registry import create_model
from vtp_gen.pipeline.run_dir import prepare_run_dir
from vtp_gen.pipeline.stage2.run import (
    RUN_INFO_FILE,
    SUMMARY_FILE,
    SpeedMeter,
    check_ranks_agree,
    ensure_latent_cache,
    open_latents,
    tokenizer_folder,
)
from vtp_gen.pipeline.t2i.config import HELD_OUT_PROMPTS
from vtp_gen.systems.flow_matching import AdamWSettings
from vtp_gen.systems.latent_data import latent_shape
from vtp_gen.systems.sampling import LatentDecoder
from vtp_gen.systems.trainer import build_trainer, find_resume_checkpoint, keep_csv_history
from vtp_gen.t2i.captions import CAPTIONS_FILE, CacheCaptions, dataset_captions, write_captions
from vtp_gen.t2i.data import CaptionedLatentDataModule
from vtp_gen.t2i.sampling import PromptGridCallback, sampling_settings
from vtp_gen.t2i.system import CaptionFeatureBank, TextFlowMatching
from vtp_gen.t2i.text_features import CaptionEncoder
from vtp_gen.transport import Transport
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger

log = step_logger("t2i")

RUN_STEP = "t2i"
GENERATOR_DIR = "generator"


@dataclass
class T2IResult:
    folder: Path
    generator: Path | None
    summary: dict | None


def ensure_captions(cfg: DictConfig, cache: Path) -> Path:
    """``captions.json`` of the cache, written from ``cfg.data`` (captions only, no image decoding) when missing."""
    path = cache / CAPTIONS_FILE
    if path.is_file():
        return path
    if not cfg.text.write_captions:
        raise FileNotFoundError(f"{path} not found and text.write_captions=false")

    dataset = build_dataset(cfg.data, with_captions=True)
    log.info(f"writing the captions of {len(dataset)} images -> {path}")
    return write_captions(cache, dataset_captions(dataset), dataset_fingerprint(dataset))


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
    transport = Transport(
        time_distribution=cfg.transport.time_distribution,
        logit_mean=cfg.transport.logit_mean,
        logit_std=cfg.transport.logit_std,
        cosine_weight=cfg.transport.cosine_weight,
    )
    optimizer = AdamWSettings(
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        weight_decay=cfg.optim.weight_decay,
        eps=cfg.optim.eps,
        fused=cfg.optim.fused,
    )
    return TextFlowMatching(
        model, transport, bank, cfg.text.caption_dropout_prob, optimizer, cfg.ema.decay, cfg.run.seed
    )


def export_text_generator(
    system: TextFlowMatching, folder: Path, cfg: DictConfig, cache: Path, step: int
) -> Path:

    target = folder / GENERATOR_DIR
    tmp = folder / f".{GENERATOR_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_generator(system.ema.module, tmp)
    shutil.copy2(cache / STATS_FILE, tmp / STATS_FILE)
    info = {
        "step": step,
        "weights": "ema",
        "conditioning": "text",
        "ema_decay": cfg.ema.decay,
        "model_name": cfg.model.name,
        "latent_cache": str(cache.resolve()),
        "latent_multiplier": cfg.latents.multiplier,
        "tokenizer": str(tokenizer_folder(cfg).resolve()),
        "caption_dropout_prob": cfg.text.caption_dropout_prob,
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
    }
    (tmp / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


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
    resume = find_resume_checkpoint(folder / "checkpoints")
    if resume is not None:
        log.info(f"resuming from {resume}")
        keep_csv_history(folder / "logs")
    trainer = build_trainer(
        cfg.trainer, folder, callbacks=[*own_callbacks, *(callbacks or [])], use_distributed_sampler=False
    )
    if cfg.trainer.compile:
        model.compile()
    trainer.fit(system, datamodule=data, ckpt_path=str(resume) if resume else None)
    trainer.save_checkpoint(folder / "checkpoints" / "last.ckpt", weights_only=False)
    digests = check_ranks_agree(trainer, system)
    if not trainer.is_global_zero:
        return T2IResult(folder, None, None)
    generator = export_text_generator(system, folder, cfg, cache, trainer.global_step)
    summary = {
        "step": trainer.global_step,
        "world_size": trainer.world_size,
        "global_batch_size": cfg.train.global_batch_size,
        "model": cfg.model.name,
        "parameters": n_params,
        "latent_shape": [channels, size, size],
        "distinct_captions": len(captions.captions),
        "weights_sha256": digests,
        "ranks_agree": True,
        "previews": [str(p) for p in preview.written] if preview else [],
        "generator": str(generator),
        **speed.summary(),
    }
    write_json_atomic(folder / SUMMARY_FILE, summary)
    rate = f", {summary['steps_per_sec']:.2f} steps/s" if summary["steps_per_sec"] else ""
    log.info(f"done at step {trainer.global_step}{rate}; generator -> {generator}")
    sys.stdout.flush()
    return T2IResult(folder, generator, summary)
