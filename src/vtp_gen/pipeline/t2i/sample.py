"""Sampling from prompts (``make sample CONFIG=configs/stage2/sample_t2i_tiny.yaml``).

Output folder (default ``runs/<name>/t2i_samples/<method><steps>-shift<s>-cfg<c>-seed<seed>``)::

    images/000000.png ...   sample i = prompt i // per_prompt, noise of (seed, i)
    samples.npz             arr_0: uint8 (N, H, W, 3); arr_1: int64 prompt number of each sample
    prompts.txt             the prompts, one per line (line k = prompt number k)
    grid.png                one row per prompt, captioned with it
    samples.json            what made them (identity: generator, tokenizer, stats, sampler, prompts)

Re-running makes only the missing PNGs; a folder made with other settings is
refused unless ``overwrite=true``. ``devices=N`` samples on N processes (GPUs, or
CPU ranks), each making its own aligned blocks of the missing samples; sample
``i`` does not depend on which rank makes it. Rank 0 then writes the .npz and
the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vtp_gen import load_tokenizer
from vtp_gen.config import ConfigError
from vtp_gen.data.images import captioned_grid, load_png, save_png
from vtp_gen.interop.generators import load_text_generator
from vtp_gen.latents.manifest import tokenizer_identity
from vtp_gen.pipeline.run_dir import run_root
from vtp_gen.pipeline.sample.run import (
    IMAGES_DIR,
    NPZ_FILE,
    RECORD_FILE,
    load_stats,
    prepare_folder,
    resolve_precision,
    resolve_stats,
    resolve_tokenizer,
    run_info,
)
from vtp_gen.pipeline.stage2.run import GENERATOR_DIR
from vtp_gen.pipeline.t2i.config import HELD_OUT_PROMPTS
from vtp_gen.pipeline.t2i.run import RUN_STEP
from vtp_gen.systems.flow_matching import tensor_digest
from vtp_gen.systems.sampling import (
    LatentDecoder,
    PngWriter,
    SamplePlanData,
    missing_indices,
    png_path,
    write_adm_npz,
)
from vtp_gen.systems.trainer import build_predict_trainer
from vtp_gen.t2i.sampling import PromptSampler, sampling_settings
from vtp_gen.t2i.text_features import CaptionEncoder
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger

log = step_logger("t2i-sample")

PROMPTS_FILE = "prompts.txt"
GRID_FILE = "grid.png"


@dataclass
class PromptSampleResult:
    folder: Path
    npz: Path | None
    prompts: list[str]
    num_samples: int
    written: int


def read_prompts(cfg: DictConfig) -> list[str]:
    """``prompts_file`` (one prompt per line, blank lines skipped), else ``prompts``, else the held-out set."""
    if cfg.prompts_file:
        path = Path(cfg.prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts_file {path} not found")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ConfigError(f"prompts_file {path} holds no prompt")
        return prompts
    return list(cfg.prompts) or list(HELD_OUT_PROMPTS)


def output_folder(cfg: DictConfig) -> Path:
    if cfg.out_dir:
        return Path(cfg.out_dir)
    s = cfg.sampling
    tag = f"{s.method}{s.steps}-shift{s.shift:g}-cfg{s.cfg_scale:g}-seed{cfg.run.seed}"
    return run_root(cfg) / "t2i_samples" / tag


def pick_device(accelerator: str) -> torch.device:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def run(cfg: DictConfig) -> PromptSampleResult:
    if cfg.per_prompt <= 0:
        raise ConfigError("per_prompt must be positive")
    prompts = read_prompts(cfg)
    generator_path = Path(cfg.generator) if cfg.generator else run_root(cfg) / RUN_STEP / GENERATOR_DIR
    if not generator_path.exists():
        raise FileNotFoundError(
            f"generator {generator_path} not found: train one with "
            "`make stage2 CONFIG=configs/stage2/t2i_tiny.yaml`, or pass generator=FOLDER"
        )
    generator = load_text_generator(generator_path)
    info = run_info(generator_path)
    tokenizer_path = resolve_tokenizer(cfg, info)
    stats = load_stats(resolve_stats(cfg, generator_path, info), cfg.latent_multiplier)
    num_samples = len(prompts) * cfg.per_prompt
    folder = output_folder(cfg)
    images = folder / IMAGES_DIR
    identity = {
        "generator_sha256": tensor_digest(generator.state_dict()),
        "tokenizer_sha256": tokenizer_identity(tokenizer_path)["weights_sha256"],
        "latent_stats_sha256": tensor_digest({"mean": stats.mean, "std": stats.std}),
        "latent_multiplier": stats.multiplier,
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        "seed": cfg.run.seed,
        "prompts": prompts,
        "per_prompt": cfg.per_prompt,
    }
    record = prepare_folder(folder, identity, cfg.overwrite)
    prompt_of = [k for k in range(len(prompts)) for _ in range(cfg.per_prompt)]
    pending = missing_indices(images, num_samples)
    log.info(f"{len(prompts)} prompts x {cfg.per_prompt} ({len(pending)} to make) -> {folder}")
    writer = PngWriter(images)
    # Every rank makes its own aligned blocks of missing indices (as class-conditional sampling).
    trainer = build_predict_trainer(cfg, [writer], resolve_precision(cfg))
    if pending:
        tokenizer = load_tokenizer(tokenizer_path)
        sampler = PromptSampler(
            generator,
            CaptionEncoder.from_tokenizer(tokenizer),
            LatentDecoder(tokenizer, stats),
            prompts,
            cfg.per_prompt,
            sampling_settings(cfg.sampling),
            seed=cfg.run.seed,
        )
        plan = SamplePlanData(images, num_samples, 1, "uniform", cfg.run.seed, cfg.batch_size)
        trainer.predict(sampler, datamodule=plan, return_predictions=False)
        trainer.strategy.barrier("samples written")
    written = writer.written
    if not trainer.is_global_zero:
        return PromptSampleResult(folder, None, prompts, num_samples, written)
    still_missing = missing_indices(images, num_samples)
    if still_missing:
        raise RuntimeError(
            f"{len(still_missing)} samples are missing after sampling, e.g. {still_missing[:5]}"
        )
    npz = folder / NPZ_FILE
    if cfg.write_npz and (pending or not npz.is_file()):  # pending: made by any rank
        write_adm_npz(npz, images, num_samples, torch.tensor(prompt_of, dtype=torch.long))
    (folder / PROMPTS_FILE).write_text("".join(p + "\n" for p in prompts))
    grid_pixels = np.stack([load_png(png_path(images, i)) for i in range(num_samples)])
    save_png(captioned_grid(torch.from_numpy(grid_pixels), prompts, cfg.per_prompt), folder / GRID_FILE)
    record["num_samples"] = num_samples
    write_json_atomic(folder / RECORD_FILE, record)
    log.info(f"done: {num_samples} samples in {images}" + (f", {npz}" if cfg.write_npz else ""))
    return PromptSampleResult(folder, npz if cfg.write_npz else None, prompts, num_samples, written)
