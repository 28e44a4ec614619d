"""``vtp-gen stage1`` / ``make stage1``: pre-train the tokenizer, fine-tune its decoder, export, evaluate.

    runs/<name>/stage1/config.yaml               resolved config
                       checkpoints/              pre-training (Lightning; last.ckpt = resume point)
                       logs/                     pre-training CSV + TensorBoard
                       pretrained_tokenizer/     after pre-training (official VTP layout)
                       decoder_finetune/         checkpoints/ + logs/ of the GAN fine-tune
                       tokenizer/                the final tokenizer (official VTP layout)
                       images/reconstructions.png, images/loss_curves.png
                       metrics.json              final losses, held-out zero-shot top-1, recon L1/PSNR,
                                                 data account (drawn = used + skipped, by kind)

Rerunning the same command resumes each phase from its last checkpoint; on a
finished run it says so and does nothing. Under DDP every rank runs this
function; files are written by global rank 0, and the fine-tune phase takes
the pre-trained weights from memory, so no rank waits on another's file.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import shutil
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import IterableDataset

from vtp_gen.config import TrainerConfig
from vtp_gen.data.build import build_dataset
from vtp_gen.data.decode import collate_samples
from vtp_gen.data.multicrop import MultiCropAugmentation, MultiCropCollate
from vtp_gen.data.text_tokenizer import CLIPTextTokenizer
from vtp_gen.data.transforms import CenterCropNormalize
from vtp_gen.interop.vtp import load_tokenizer
from vtp_gen.metrics.tokenizer import (
    evaluate_reconstruction,
    evaluate_tokenizer_zero_shot,
    evaluation_subset,
    save_reconstruction_grid,
    zero_shot_classes,
)
from vtp_gen.models.discriminator import PatchDiscriminator
from vtp_gen.models.registry import create_model
from vtp_gen.models.tokenizer import VTPModel
from vtp_gen.models.tokenizer.blocks import SelfAttentionBlock
from vtp_gen.pipeline.run_dir import prepare_run_dir, run_root
from vtp_gen.systems.decoder_finetune import OPTIMIZER_STEPS_PER_STEP, DecoderFinetune
from vtp_gen.systems.resume import state_dict_mismatch
from vtp_gen.systems.stage1_data import Stage1Collate, Stage1DataModule, derive_seed
from vtp_gen.systems.tokenizer_pretraining import TokenizerPretraining
from vtp_gen.systems.trainer import build_trainer, csv_logs, find_resume_checkpoint, keep_csv_history
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.compile import compile_blocks
from vtp_gen.utils.log import step_logger
from vtp_gen.utils.plots import plot_loss_curves, read_metrics
from vtp_gen.utils.step_guard import guarded_step

log = step_logger("stage1")

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.json"
PRETRAIN_CURVES = (
    "train/loss",
    "train/clip_loss",
    "train/ssl_loss",
    "train/dino_loss",
    "train/ibot_loss",
    "train/koleo_loss",
    "train/rec_loss",
    "train/rec_l1",
    "train/rec_lpips",
    "train/logit_scale",
    "train/teacher_temp",
    "train/teacher_momentum",
    "train/lr",
)
FINETUNE_CURVES = ("finetune/rec_loss", "finetune/gan_loss", "finetune/disc_loss", "finetune/adaptive_weight")


# ---------------------------------------------------------------------- building blocks
def build_tokenizer(cfg: DictConfig) -> VTPModel:
    """The preset with the config's overrides; text tower / decoder follow the objective weights by default."""
    overrides = dict(OmegaConf.to_container(cfg.model.overrides, resolve=True))
    overrides.setdefault("image_size", cfg.data.image_size)
    overrides.setdefault("train_clip", cfg.objectives.lambda_clip > 0)
    overrides.setdefault("train_reconstruction", cfg.objectives.lambda_rec > 0)
    # Same initial weights on every rank and for every rerun.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.run.seed, "init"))
        model = create_model(cfg.model.preset, **overrides)
    return model.set_grad_checkpointing(cfg.model.grad_checkpointing)


def build_pretraining_data(cfg: DictConfig, model: VTPModel, dataset=None) -> Stage1DataModule:
    """Batches for :class:`TokenizerPretraining`; ``dataset`` replaces the one ``cfg.data`` names."""
    obj, ssl, data = cfg.objectives, cfg.ssl, cfg.data
    patch = model.config.vision_patch_size
    for name, size in (("data.image_size", data.image_size), ("ssl.global_crop_size", ssl.global_crop_size)):
        if size % patch:
            raise ValueError(f"{name}={size} is not a multiple of the patch size {patch}")
    if ssl.n_local_crops and ssl.local_crop_size % patch:
        raise ValueError(
            f"ssl.local_crop_size={ssl.local_crop_size} is not a multiple of the patch size {patch}"
        )
    tokenizer = CLIPTextTokenizer(model.config.text_context_length) if obj.lambda_clip > 0 else None
    multicrop = None
    if obj.lambda_ssl > 0:
        augmentation = MultiCropAugmentation(
            global_crop_size=ssl.global_crop_size,
            local_crop_size=ssl.local_crop_size,
            n_local_crops=ssl.n_local_crops,
            global_crop_scale=tuple(ssl.global_crop_scale),
            local_crop_scale=tuple(ssl.local_crop_scale),
            image_size=data.image_size,
        )
        multicrop = MultiCropCollate(
            augmentation,
            patch,
            mask_ratio_range=(ssl.mask_ratio_min, ssl.mask_ratio_max),
            mask_probability=ssl.mask_probability,
            ssl_fraction=obj.ssl_fraction,
            tokenizer=tokenizer,
        )
    collate = Stage1Collate(
        data.batch_size,
        data.image_size,
        seed=cfg.run.seed,
        tokenizer=tokenizer,
        multicrop=multicrop,
        rec_fraction=obj.rec_fraction if obj.lambda_rec > 0 else None,
    )
    return Stage1DataModule(
        data, collate, data.batch_size, cfg.run.seed, with_captions=obj.lambda_clip > 0, dataset=dataset
    )


def build_finetune_data(cfg: DictConfig, dataset=None) -> Stage1DataModule:
    """Centre-cropped images for :class:`DecoderFinetune` (captions and views are not needed)."""
    batch_size = cfg.decoder_finetune.batch_size or cfg.data.batch_size
    seed = derive_seed(cfg.run.seed, "decoder_finetune")
    collate = Stage1Collate(batch_size, cfg.data.image_size, seed=seed)
    return Stage1DataModule(
        cfg.data,
        collate,
        batch_size,
        seed,
        with_captions=False,
        optimizer_steps_per_batch=OPTIMIZER_STEPS_PER_STEP,
        dataset=dataset,
    )


def tokenizer_block_types() -> tuple[type, ...]:
    """The transformer blocks of the encoder, pixel decoder and text tower: FSDP's and compile's unit."""
    from open_clip.transformer import ResidualAttentionBlock

    return (SelfAttentionBlock, ResidualAttentionBlock)


def resolve_strategy(name: str):
    """``fsdp`` shards per transformer block (encoder, decoder and text tower blocks); other names pass through."""
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import FSDPStrategy

    # use_orig_params keeps the per-parameter names the EMA teacher update and the
    # no-decay parameter groups rely on.
    return FSDPStrategy(auto_wrap_policy=set(tokenizer_block_types()), use_orig_params=True)


def maybe_compile(cfg: DictConfig, system: L.LightningModule, phase: str) -> None:
    """With ``trainer.compile``: regional ``torch.compile`` of the system's transformer blocks.

    Off by default. On the 2-core CPU the tiny step ran 1.09x faster after 24 s
    of compilation, which 400 steps do not repay; on a
    GPU, ``bench/gpu_mfu.py`` measures the same regional compile of VTP-B/L.
    """
    if cfg.trainer.compile:
        count = compile_blocks(system, tokenizer_block_types())
        log.info(f"{phase}: torch.compile on {count} transformer blocks (compiled at their first call)")


def trainer_config(cfg: DictConfig, **changes) -> TrainerConfig:
    values = OmegaConf.to_container(cfg.trainer, resolve=True)
    return dataclasses.replace(TrainerConfig(**values), **changes)


def read_progress(folder: Path) -> dict:
    path = folder / PROGRESS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def record_progress(folder: Path, **values) -> None:
    if rank_zero_only.rank == 0:
        write_json_atomic(folder / PROGRESS_FILE, {**read_progress(folder), **values})


def is_complete_tokenizer(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file()


# ---------------------------------------------------------------------- phases
def set_aside_stale_finetune(folder: Path) -> None:
    """Pre-training is about to (re)train: a fine-tune made from an older encoder no longer applies.

    This happens when ``trainer.max_steps`` grows after a finished run. The old
    fine-tune folder and tokenizer are renamed (kept, not deleted) and the fine-tune
    restarts from the new encoder. Runs before any process group exists, on rank 0 only.
    """
    progress = read_progress(folder)
    if rank_zero_only.rank != 0 or "finetune_steps" not in progress:
        return
    tag = f"before_pretrain_step{progress.get('pretrain_steps')}"
    for name in ("decoder_finetune", "tokenizer"):
        if (folder / name).exists():
            (folder / name).rename(folder / f"{name}.{tag}")
    progress.pop("finetune_steps")
    write_json_atomic(folder / PROGRESS_FILE, progress)
    log.info(f"pre-training continues, so the earlier decoder fine-tune was moved to *.{tag}")


def pretrain(cfg: DictConfig, folder: Path) -> VTPModel | None:
    """Phase 1; returns the trained tokenizer (None when an earlier run finished this phase)."""
    target = folder / "pretrained_tokenizer"
    if read_progress(folder).get("pretrain_steps") == cfg.trainer.max_steps and is_complete_tokenizer(target):
        log.info(f"pre-training already done ({cfg.trainer.max_steps} steps), using {target}")
        return None
    set_aside_stale_finetune(folder)
    model = build_tokenizer(cfg)
    system = TokenizerPretraining(
        model, cfg.objectives, cfg.ssl, cfg.optim, total_steps=cfg.trainer.max_steps, seed=cfg.run.seed
    )
    maybe_compile(cfg, system, "pre-training")
    datamodule = build_pretraining_data(cfg, model)
    resume = find_resume_checkpoint(folder / "checkpoints", state_dict_mismatch(system.state_dict()))
    if resume is not None:
        log.info(f"resuming pre-training from {resume}")
        keep_csv_history(folder / "logs")
    trainer = build_trainer(
        cfg.trainer, folder, use_distributed_sampler=False, strategy=resolve_strategy(cfg.trainer.strategy)
    )
    started = time.time()
    trainer.fit(system, datamodule=datamodule, ckpt_path=resume)
    if trainer.global_step < cfg.trainer.max_steps:
        raise RuntimeError(f"pre-training stopped at step {trainer.global_step} of {cfg.trainer.max_steps}")
    data = system.final_data_account()
    if trainer.is_global_zero:
        system.export_tokenizer(target)
        record_progress(
            folder,
            pretrain_steps=cfg.trainer.max_steps,
            pretrain_seconds=time.time() - started,
            pretrain_data=data,
        )
    return model


def finetune_decoder(cfg: DictConfig, folder: Path, model: VTPModel | None) -> None:
    """Phase 2 (or a copy of the pre-trained tokenizer when it is disabled)."""
    ft = cfg.decoder_finetune
    target = folder / "tokenizer"
    pretrained = folder / "pretrained_tokenizer"
    if model is None:
        model = load_tokenizer(pretrained, eval_mode=False).set_grad_checkpointing(
            cfg.model.grad_checkpointing
        )
    if not ft.enabled or model.pixel_decoder is None:
        if rank_zero_only.rank == 0:
            shutil.copytree(pretrained, target, dirs_exist_ok=True)
            record_progress(folder, finetune_steps=0)
        return
    if read_progress(folder).get("finetune_steps") == ft.max_steps and is_complete_tokenizer(target):
        log.info(f"decoder fine-tune already done ({ft.max_steps} steps), using {target}")
        return

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.run.seed, "discriminator"))
        discriminator = PatchDiscriminator(
            channels=ft.disc_channels, n_layers=ft.disc_layers, norm=ft.disc_norm
        )
    system = DecoderFinetune(model, discriminator, ft)
    maybe_compile(cfg, system, "decoder fine-tune")
    phase_folder = folder / "decoder_finetune"
    resume = find_resume_checkpoint(phase_folder / "checkpoints", state_dict_mismatch(system.state_dict()))
    if resume is not None:
        log.info(f"resuming decoder fine-tune from {resume}")
        keep_csv_history(phase_folder / "logs")
    # Two optimiser steps per training step (see DecoderFinetune); clipping is done by the system.
    steps = OPTIMIZER_STEPS_PER_STEP
    trainer = build_trainer(
        trainer_config(
            cfg,
            max_steps=ft.max_steps * steps,
            checkpoint_every_n_steps=cfg.trainer.checkpoint_every_n_steps * steps,
            accumulate_grad_batches=1,
            gradient_clip_val=0.0,
        ),
        phase_folder,
        optimizer_steps_per_batch=steps,
        use_distributed_sampler=False,
        strategy=resolve_strategy(cfg.trainer.strategy),
    )
    started = time.time()
    with warnings.catch_warnings():
        # Both optimisers step inside training_step, so a checkpoint holds the state after the step:
        # exactly what a resume needs (Lightning warns about this for every manual-optimisation run).
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        trainer.fit(system, datamodule=build_finetune_data(cfg), ckpt_path=resume)
    if system.finetune_step < ft.max_steps:
        raise RuntimeError(f"decoder fine-tune stopped at step {system.finetune_step} of {ft.max_steps}")
    data = system.final_data_account()
    if trainer.is_global_zero:
        system.export_tokenizer(target)
        record_progress(
            folder,
            finetune_steps=ft.max_steps,
            finetune_seconds=time.time() - started,
            finetune_data=data,
        )


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_tokenizer(cfg: DictConfig, tokenizer: VTPModel, images_dir: Path) -> dict:
    """Held-out reconstruction PSNR / SSIM / L1, a reconstruction grid, and zero-shot accuracy (when CLIP was trained).

    The same evaluator as ``make eval`` (:mod:`vtp_gen.metrics.tokenizer`), on
    the same kind of subset (:func:`~vtp_gen.metrics.tokenizer.evaluation_subset`),
    without the networks of LPIPS and rFID (``make eval`` adds them).
    """
    ev = cfg.evaluation
    data = evaluation_data(cfg)
    dataset = build_dataset(data, transform=CenterCropNormalize(data.image_size), with_captions=False)
    out: dict = {"source": data.source, "split": data.split}
    if tokenizer.pixel_decoder is not None:
        batches = (batch["image"] for batch in _batches(dataset, ev.reconstruction_images, ev.batch_size))
        report = evaluate_reconstruction(tokenizer, batches, grid_images=ev.grid_images)
        out["reconstruction"] = report.metrics
        save_reconstruction_grid(report.grid, images_dir / "reconstructions.png")
    classes = zero_shot_classes(data.source, dataset)
    if tokenizer.text is not None and classes is not None:
        batches = _batches(dataset, ev.zero_shot_images, ev.batch_size)
        out["zero_shot"] = evaluate_tokenizer_zero_shot(tokenizer, batches, *classes)
    return out


def evaluation_data(cfg: DictConfig) -> DictConfig:
    """The data section of the held-out set: the training source's ``evaluation.split``, or another source."""
    ev = cfg.evaluation
    changes = {"split": ev.split, "resampled": False, "max_samples": 0}
    if ev.source:
        changes.update(source=ev.source, root=ev.root)
    return OmegaConf.merge(cfg.data, changes)


def _batches(dataset, wanted: int, batch_size: int):
    """Batches of the evaluation subset: ``evaluation_subset`` of a map-style set, the first ``wanted`` of a stream."""
    if isinstance(dataset, IterableDataset):
        if not wanted:
            raise ValueError("evaluating on a stream needs a number of images (evaluation.*_images > 0)")
        items = itertools.islice(iter(dataset), wanted)
    else:
        items = (dataset[i] for i in evaluation_subset(len(dataset), wanted))
    while chunk := list(itertools.islice(items, batch_size)):
        batch = collate_samples(chunk)
        if batch["size"]:  # skipped (unreadable) samples are dropped
            yield batch


def final_values(metrics: dict[str, list[tuple[int, float]]], prefix: str, window: int = 20) -> dict:
    """Per logged key: first and last value and the mean of the last ``window`` values (raw values are noisy)."""
    out = {}
    for key, series in metrics.items():
        if key.startswith(prefix) and series:
            values = [v for _, v in series]
            tail = values[-window:]
            out[key] = {"first": values[0], "last": values[-1], "last_mean": sum(tail) / len(tail)}
    return out


def write_report(cfg: DictConfig, folder: Path) -> dict:
    """Loss curves, reconstruction grid, evaluation, ``metrics.json`` (rank 0)."""
    images_dir = folder / "images"
    logged = {
        **read_metrics(csv_logs(folder / "logs")),
        **read_metrics(csv_logs(folder / "decoder_finetune" / "logs")),
    }
    curves = [key for key in (*PRETRAIN_CURVES, *FINETUNE_CURVES) if logged.get(key)]
    if curves:
        plot_loss_curves(logged, curves, images_dir / "loss_curves.png", title=f"stage 1: {cfg.run.name}")
    else:
        log.info(
            f"no loss was logged (runs shorter than trainer.log_every_n_steps={cfg.trainer.log_every_n_steps}); no curves"
        )
    tokenizer = load_tokenizer(folder / "tokenizer")
    started = time.time()
    evaluation = evaluate_tokenizer(cfg, tokenizer, images_dir)
    progress = read_progress(folder)
    metrics = {
        "tokenizer": str(folder / "tokenizer"),
        "objectives": {k: cfg.objectives[k] for k in ("lambda_clip", "lambda_ssl", "lambda_rec")},
        "pretrain_steps": progress.get("pretrain_steps"),
        "finetune_steps": progress.get("finetune_steps"),
        "seconds": {
            "pretrain": progress.get("pretrain_seconds"),
            "finetune": progress.get("finetune_seconds"),
            "evaluation": time.time() - started,
        },
        "pretrain": final_values(logged, "train/"),
        "finetune": final_values(logged, "finetune/"),
        # drawn = used + skipped, per phase and summed over ranks (vtp_gen.data.accounting)
        "data": {
            phase: progress[f"{phase}_data"]
            for phase in ("pretrain", "finetune")
            if f"{phase}_data" in progress
        },
        "evaluation": evaluation,
    }
    write_json_atomic(folder / METRICS_FILE, metrics)
    return metrics


def finetune_steps_wanted(cfg: DictConfig) -> int:
    has_decoder = cfg.model.overrides.get("train_reconstruction", cfg.objectives.lambda_rec > 0)
    return cfg.decoder_finetune.max_steps if cfg.decoder_finetune.enabled and has_decoder else 0


def is_finished(cfg: DictConfig, folder: Path) -> bool:
    progress = read_progress(folder)
    return (
        (folder / METRICS_FILE).is_file()
        and is_complete_tokenizer(folder / "tokenizer")
        and progress.get("pretrain_steps") == cfg.trainer.max_steps
        and progress.get("finetune_steps") == finetune_steps_wanted(cfg)
    )


def summary_line(metrics: dict) -> str:
    evaluation = metrics.get("evaluation", {})
    parts = []
    if "reconstruction" in evaluation:
        rec = evaluation["reconstruction"]
        parts.append(
            f"held-out recon L1 {rec['l1']:.4f}, PSNR {rec['psnr']:.2f} dB, SSIM {rec['ssim']:.3f} "
            f"({rec['num_images']} images)"
        )
    if "zero_shot" in evaluation:
        zs = evaluation["zero_shot"]
        parts.append(
            f"zero-shot top-1 {zs['top1']:.1f}% ({zs['num_images']} images, chance {zs['chance']:.0f}%)"
        )
    return "; ".join(parts)


# ---------------------------------------------------------------------- entry point
@guarded_step(
    "stage1",
    lambda cfg: run_root(cfg) / "stage1",
    on_stop="the newest checkpoint and finished exports are kept; rerun the same command to resume",
)
def run(cfg: DictConfig) -> dict | None:
    """The whole stage; returns the metrics on global rank 0 (None on other ranks)."""
    folder = prepare_run_dir(cfg, "stage1")
    if is_finished(cfg, folder):
        metrics = json.loads((folder / METRICS_FILE).read_text())
        log.info(f"already complete in {folder} (tokenizer: {folder / 'tokenizer'}); nothing to do.")
        log.info(f"{summary_line(metrics)}")
        return metrics
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    model = pretrain(cfg, folder)
    finetune_decoder(cfg, folder, model)
    if rank_zero_only.rank != 0:
        return None
    metrics = write_report(cfg, folder)
    log.info(f"done, tokenizer in {folder / 'tokenizer'}; {summary_line(metrics)}")
    if not math.isfinite(metrics["pretrain"].get("train/loss", {}).get("last", 0.0)):
        raise RuntimeError("pre-training loss is not finite; see the loss curves")
    return metrics
