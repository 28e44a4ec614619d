"""``make eval CONFIG=configs/eval/t2i_tiny.yaml``: prompt agreement, CLIP score and FID of a text-to-image model.

Writes ``runs/<name>/t2i_eval/``: ``metrics.json``, ``report.md``,
``grid.png`` (one captioned row per held-out prompt) and the garment judge's
weights (``judge.safetensors``, reused by later runs). See
:mod:`vtp_gen.t2i.evaluate` for what each number means and
:mod:`vtp_gen.metrics.domain` for the judge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from vtp_gen import load_tokenizer
from vtp_gen.config import ConfigError
from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.data.images import captioned_grid, save_png
from vtp_gen.interop.generators import load_text_generator
from vtp_gen.latents.encode import CenterCropUint8
from vtp_gen.metrics.domain import agreement, load_or_train_judge
from vtp_gen.metrics.generation import evaluate_generation
from vtp_gen.pipeline.run_dir import run_root
from vtp_gen.pipeline.sample.run import (
    load_any_generator,
    load_stats,
    resolve_stats,
    resolve_tokenizer,
    run_info,
)
from vtp_gen.pipeline.stage2.run import GENERATOR_DIR
from vtp_gen.pipeline.t2i.config import HELD_OUT_PROMPTS
from vtp_gen.pipeline.t2i.run import RUN_STEP
from vtp_gen.pipeline.t2i.sample import pick_device
from vtp_gen.systems.sampling import LatentDecoder, sample_noise
from vtp_gen.t2i.evaluate import clip_score
from vtp_gen.t2i.sampling import generate, sampling_settings, uint8_pixels
from vtp_gen.t2i.text_features import CaptionEncoder
from vtp_gen.transport import sample as transport_sample
from vtp_gen.utils.atomic import write_json_atomic
from vtp_gen.utils.log import step_logger

log = step_logger("t2i-eval")

GRID_PER_PROMPT = 8


@torch.no_grad()
def class_samples(
    generator, decoder, labels: list[int], seed: int, sampling: dict, batch: int, device
) -> np.ndarray:
    shape = (generator.in_channels, generator.input_size, generator.input_size)
    out = []
    for i in range(0, len(labels), batch):
        indices = list(range(i, min(i + batch, len(labels))))
        noise = sample_noise(indices, shape, seed).to(device)
        y = torch.tensor([labels[j] for j in indices], device=device)
        latents = transport_sample(generator, noise, y, **sampling)
        out.append(uint8_pixels(decoder(latents.float())))
    return np.concatenate(out)


def text_samples(
    generator, encoder, decoder, prompts: list[str], seed: int, sampling: dict, batch: int
) -> np.ndarray:
    out = []
    for i in range(0, len(prompts), batch):
        indices = list(range(i, min(i + batch, len(prompts))))
        out.append(
            uint8_pixels(
                generate(generator, encoder, decoder, prompts[i : i + batch], indices, seed, sampling)
            )
        )
    return np.concatenate(out)


def fid(samples: np.ndarray, real: np.ndarray, device) -> float:

    result = evaluate_generation(samples, real, metrics=("fid",), device=device, progress=False)
    return round(float(result["fid"]), 3)


def run(cfg: DictConfig) -> dict:
    if cfg.per_prompt <= 0:
        raise ConfigError("per_prompt must be positive")
    device = pick_device(cfg.accelerator)
    folder = Path(cfg.out_dir) if cfg.out_dir else run_root(cfg) / "t2i_eval"
    folder.mkdir(parents=True, exist_ok=True)
    generator_path = Path(cfg.generator) if cfg.generator else run_root(cfg) / RUN_STEP / GENERATOR_DIR
    generator = load_text_generator(generator_path).to(device)
    info = run_info(generator_path)

    tokenizer = load_tokenizer(resolve_tokenizer(cfg, info)).to(device).eval()
    stats_cfg = OmegaConf.create({"latent_stats": ""})
    stats = load_stats(resolve_stats(stats_cfg, generator_path, info), info.get("latent_multiplier", 1.0))
    decoder = LatentDecoder(tokenizer, stats).to(device)
    encoder = CaptionEncoder.from_tokenizer(tokenizer)
    sampling = sampling_settings(cfg.sampling)
    seed = cfg.run.seed

    judge, judge_accuracy = load_or_train_judge(
        folder / "judge.safetensors", epochs=cfg.judge_epochs, max_images=cfg.judge_train_images
    )
    log.info(f"garment judge: {judge_accuracy:.4f} accuracy on the Fashion-MNIST test split")
    targets = [k for k in range(len(HELD_OUT_PROMPTS)) for _ in range(cfg.per_prompt)]
    prompts = [HELD_OUT_PROMPTS[k] for k in targets]
    log.info(f"text model: {len(prompts)} samples of {len(HELD_OUT_PROMPTS)} held-out prompts")
    pixels = text_samples(generator, encoder, decoder, prompts, seed, sampling, cfg.batch_size)
    metrics: dict = {
        "judge_test_accuracy": round(judge_accuracy, 4),
        "samples_per_prompt": cfg.per_prompt,
        "sampling": OmegaConf.to_container(cfg.sampling, resolve=True),
        "held_out_prompts": list(HELD_OUT_PROMPTS),
        "text_model": {
            "generator": str(generator_path),
            **agreement(judge, pixels, targets),
            "clip_score": clip_score(tokenizer, pixels, prompts),
        },
    }
    per_row = min(GRID_PER_PROMPT, cfg.per_prompt)
    rows = [k * cfg.per_prompt + j for k in range(len(HELD_OUT_PROMPTS)) for j in range(per_row)]
    save_png(
        captioned_grid(torch.from_numpy(pixels[rows]), list(HELD_OUT_PROMPTS), per_row),
        folder / "grid.png",
    )

    class_pixels = None
    if cfg.class_generator != "none":
        class_path = (
            Path(cfg.class_generator) if cfg.class_generator else run_root(cfg) / "stage2" / "generator"
        )
        if class_path.exists():
            class_generator = load_any_generator(class_path).to(device).eval()
            log.info(f"class-conditional yardstick: {len(targets)} samples of {class_path}")
            class_pixels = class_samples(
                class_generator, decoder, targets, seed, sampling, cfg.batch_size, device
            )
            metrics["class_model"] = {
                "generator": str(class_path),
                **agreement(judge, class_pixels, targets),
                "clip_score": clip_score(tokenizer, class_pixels, prompts),
            }
        else:
            log.info(f"no class-conditional generator at {class_path}: no yardstick")
    if cfg.fid_real_images > 0:
        real = FashionMNIST(None, "test", max_samples=cfg.fid_real_images)

        size = pixels.shape[1]
        crop = CenterCropUint8(size)
        real_pixels = np.stack([crop(real[i]["image"]).permute(1, 2, 0).numpy() for i in range(len(real))])
        metrics["fid_real_images"] = len(real_pixels)
        metrics["text_model"]["fid"] = fid(pixels, real_pixels, device)
        if class_pixels is not None:
            metrics["class_model"]["fid"] = fid(class_pixels, real_pixels, device)
    write_json_atomic(folder / "metrics.json", metrics)
    (folder / "report.md").write_text(report(metrics))
    log.info(f"done -> {folder / 'metrics.json'}")
    print(report(metrics), flush=True)
    return metrics


def report(metrics: dict) -> str:
    lines = [
        "# Text-to-image evaluation (held-out prompts)",
        "",
        f"Garment judge (small CNN, Fashion-MNIST train split): {100 * metrics['judge_test_accuracy']:.2f}% test accuracy.",
        f"{metrics['samples_per_prompt']} samples per prompt; cfg scale {metrics['sampling']['cfg_scale']}.",
        "",
        "| model | prompt agreement | CLIP score (tokenizer's own towers) | FID |",
        "|---|---|---|---|",
    ]
    for key, name in (("text_model", "text-to-image"), ("class_model", "class-conditional (yardstick)")):
        if key in metrics:
            m = metrics[key]
            fid_text = f"{m['fid']:.2f}" if "fid" in m else "-"
            lines.append(f"| {name} | {100 * m['agreement']:.1f}% | {m['clip_score']:.2f} | {fid_text} |")
    lines += ["", "Per prompt agreement (text model):", ""]
    for name, value in metrics["text_model"]["per_class"].items():
        lines.append(f"- {name}: {100 * value:.0f}%")
    return "\n".join(lines) + "\n"
