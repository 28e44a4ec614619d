"""Real optimiser steps of the GPU recipes, through the training systems and the Trainer that `make` builds.

The MFU cases time the step's own code; these prove the recipe files themselves:
each GPU recipe is loaded as `make` loads it (``vtp_gen.pipeline.cli.build_config``), its
system is built by the stage's own functions (``stage1_run.build_tokenizer`` +
``TokenizerPretraining``, ``stage2_run.build_generator`` / ``build_system``) and
trained for ``steps`` optimiser steps by ``vtp_gen.systems.trainer.build_trainer``
with the recipe's precision (bf16-mixed), gradient clipping, optimiser (fused
AdamW where the recipe says so), EMA, objectives and strategy, on synthetic data
of the recipe's shapes (256 px image-text pairs through the real stage-1 collate;
a 64x16x16 latent cache in the LightningDiT layout). A case passes when every
step ran and the weights it changed are finite; the report gives the time of the
steps after the first (which pays cuDNN / allocator warm-up) and the peak memory.

Batches per device: VTP-B 128 (its recipe), VTP-L 64 (128 is its per-device batch
under FSDP over many GPUs; one GPU holds the whole model), LightningDiT-XL/1 128
(the recipe's 1024 over 8 GPUs). The strategies are the recipes' own on a GPU
(``ddp``, ``fsdp`` for VTP-L, each on one device); the dry run (``tiny=True``)
keeps everything but shrinks the models to one block of width 64, the images to
64 px and the batches to 8, on the CPU with ``strategy=auto`` (FSDP refuses CPUs).
"""

from __future__ import annotations

import math
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class RecipeCase:
    name: str
    recipe: str  # relative to the repository root
    batch_size: int  # per device on the GPU


RECIPE_CASES = (
    RecipeCase("stage2/lightningdit_xl1", "configs/stage2/lightningdit_xl1.yaml", 128),
    RecipeCase("stage1/vtp_b", "configs/stage1/vtp_b.yaml", 128),
    RecipeCase("stage1/vtp_l", "configs/stage1/vtp_l.yaml", 64),
)
TINY_STAGE1 = (
    "model.overrides.vision_embed_dim=64",
    "model.overrides.vision_num_heads=2",
    "model.overrides.vision_depth=1",
    "model.overrides.text_embed_dim=64",
    "model.overrides.text_num_heads=2",
    "model.overrides.text_depth=1",
    "model.overrides.decoder_embed_dim=64",
    "model.overrides.decoder_num_heads=2",
    "model.overrides.decoder_depth=1",
    "data.image_size=64",
    "ssl.global_crop_size=64",
    "ssl.local_crop_size=32",
)
TINY_STAGE2 = ("model.overrides.depth=1", "model.overrides.hidden_size=64", "model.overrides.num_heads=2")
TINY_BATCH = 8


class StepTimer(L.Callback):
    """Wall time of every training batch (forward, backward, clipping, optimiser step, EMA), synchronised."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started = 0.0

    def _sync(self, module: L.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._started)


class Samples(Dataset):
    def __init__(self, samples: list[dict]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def recipe_overrides(
    case: RecipeCase, device: torch.device, tiny: bool, steps: int, folder: Path
) -> list[str]:
    on_gpu = device.type == "cuda"
    overrides = [
        f"run.out_dir={folder}",
        f"run.name={case.name.replace('/', '_')}",
        f"trainer.accelerator={'gpu' if on_gpu else 'cpu'}",
        "trainer.devices=1",
        f"trainer.max_steps={steps}",
        "trainer.log_every_n_steps=1",
        "trainer.checkpoint_every_n_steps=1000000",  # no checkpoint files: the steps are the point
        "trainer.progress_bar=false",
    ]
    if not on_gpu:
        overrides.append("trainer.strategy=auto")
    stage1 = case.name.startswith("stage1/")
    batch = TINY_BATCH if tiny else case.batch_size
    if stage1:
        overrides += [f"data.batch_size={batch}", f"data.num_workers={0 if tiny else 8}"]
        overrides += list(TINY_STAGE1) if tiny else []
    else:
        overrides += [f"train.global_batch_size={batch}", f"train.num_workers={0 if tiny else 4}"]
        overrides += list(TINY_STAGE2) if tiny else []
    return overrides


def _finite(module: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


def run_stage1_recipe(cfg, device: torch.device, folder: Path, timer: StepTimer) -> dict:
    from vtp_bench.stage1 import perceptual_network, synthetic_samples
    from vtp_gen.pipeline.stage1.run import (
        build_pretraining_data,
        build_tokenizer,
        resolve_strategy,
        trainer_config,
    )
    from vtp_gen.systems.tokenizer_pretraining import TokenizerPretraining
    from vtp_gen.systems.trainer import build_trainer

    model = build_tokenizer(cfg)
    perceptual, _ = perceptual_network(device)  # random LPIPS weights where none are installed: same cost
    system = TokenizerPretraining(
        model, cfg.objectives, cfg.ssl, cfg.optim, cfg.trainer.max_steps, cfg.run.seed, perceptual=perceptual
    )
    count = cfg.data.batch_size * (cfg.trainer.max_steps + 1)
    data = build_pretraining_data(cfg, model, dataset=Samples(synthetic_samples(count, cfg.data.image_size)))
    trainer = build_trainer(
        trainer_config(cfg),
        folder,
        callbacks=[timer],
        use_distributed_sampler=False,
        strategy=resolve_strategy(cfg.trainer.strategy),
    )
    trainer.fit(system, datamodule=data)
    optimizer = trainer.optimizers[0]
    return {
        "steps": trainer.global_step,
        "finite": _finite(system.model),
        "fused_adamw": bool(optimizer.defaults.get("fused")),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }


def write_latent_cache(folder: Path, count: int, shape=(64, 16, 16), num_classes: int = 1000) -> Path:
    """Random latents in the LightningDiT layout (one shard + latents_stats.pt): what the paper caches look like."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(count, *shape, generator=generator)
    labels = torch.arange(count) % num_classes
    save_file(
        {"latents": latents, "latents_flip": latents.flip(-1).contiguous(), "labels": labels},
        str(folder / "latents_rank00_shard000.safetensors"),
    )
    torch.save(
        {"mean": torch.zeros(1, shape[0], 1, 1), "std": torch.ones(1, shape[0], 1, 1)},
        folder / "latents_stats.pt",
    )
    return folder


def run_stage2_recipe(cfg, device: torch.device, folder: Path, timer: StepTimer) -> dict:
    from vtp_gen.pipeline.stage2.run import build_generator, build_system, open_latents
    from vtp_gen.systems.latent_data import LatentDataModule
    from vtp_gen.systems.trainer import build_trainer

    latents = open_latents(cfg, Path(cfg.latents.cache_dir))
    model = build_generator(cfg, latents)
    system = build_system(cfg, model)
    data = LatentDataModule(
        latents, cfg.train.global_batch_size, cfg.run.seed, cfg.latents.flip_prob, cfg.train.num_workers
    )
    trainer = build_trainer(cfg.trainer, folder, callbacks=[timer], use_distributed_sampler=False)
    trainer.fit(system, datamodule=data)
    optimizer = trainer.optimizers[0]
    return {
        "steps": trainer.global_step,
        "finite": _finite(system.model) and _finite(system.ema.module),
        "fused_adamw": bool(optimizer.defaults.get("fused")),
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
    }


def run_recipe_case(case: RecipeCase, device: torch.device, tiny: bool, steps: int = 2) -> dict:
    """``steps`` optimiser steps of one recipe; never raises (a failure is the result)."""
    from vtp_gen.pipeline.cli import build_config

    started = time.perf_counter()
    result: dict = {"name": f"recipe/{case.name}", "recipe": case.recipe, "passed": False}
    timer = StepTimer()
    with tempfile.TemporaryDirectory(prefix="vtp-recipe-") as tmp:
        folder = Path(tmp)
        try:
            overrides = recipe_overrides(case, device, tiny, steps, folder)
            stage1 = case.name.startswith("stage1/")
            if not stage1:
                batch = TINY_BATCH if tiny else case.batch_size
                cache = write_latent_cache(folder / "cache", count=batch * (steps + 1))
                overrides += [
                    f"latents.cache_dir={cache}",
                    "latents.verify_tokenizer=false",
                    "latents.make_cache=false",
                    "preview.enabled=false",
                ]
            cfg = build_config(
                "stage1" if stage1 else "stage2", [str(REPO_ROOT / case.recipe)], None, overrides
            )
            result.update(
                precision=cfg.trainer.precision,
                gradient_clip_val=float(cfg.trainer.gradient_clip_val),
                strategy=str(cfg.trainer.strategy),
                batch_size=int(cfg.data.batch_size if stage1 else cfg.train.global_batch_size),
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            run = run_stage1_recipe if stage1 else run_stage2_recipe
            result.update(run(cfg, device, folder / "run", timer))
            result["passed"] = result["steps"] == steps and result["finite"]
            if not result["finite"]:
                result["error"] = "non-finite weights after the steps"
        except Exception as error:  # reported; the other cases and the MFU minutes go on
            result["error"] = f"{type(error).__name__}: {error}"
            result["traceback"] = traceback.format_exc(limit=8)
    timed = timer.seconds[1:] or timer.seconds
    result["step_s"] = round(sum(timed) / len(timed), 4) if timed else None
    result["first_step_s"] = round(timer.seconds[0], 3) if timer.seconds else None
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        torch.cuda.empty_cache()
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    return result


def format_recipe_result(result: dict) -> str:
    verdict = "PASS" if result["passed"] else "FAIL"
    settings = (
        f"{result.get('precision', '?')}, clip {result.get('gradient_clip_val', '?')}, "
        f"{'fused' if result.get('fused_adamw') else 'foreach'} AdamW, {result.get('strategy', '?')}, "
        f"B={result.get('batch_size', '?')}"
    )
    line = f"== {result['name']}: {verdict} ({settings})"
    if result.get("step_s") is not None and math.isfinite(result["step_s"]):
        line += f"; step {result['step_s'] * 1000:.0f} ms"
    if result.get("peak_memory_gib") is not None:
        line += f", peak {result['peak_memory_gib']} GiB"
    if result.get("error"):
        line += f"\n   {result['error']}"
    return line
