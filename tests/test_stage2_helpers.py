"""Shared pieces of the stage-2 tests (no tests here), and a runner for stage 2 in a subprocess.

    python tests/test_stage2_helpers.py [--kill-at STEP] key=value ...

runs ``vtp_gen.pipeline.stage2.run.run`` on the tiny recipe with the overrides
and, with ``--kill-at``, SIGKILLs its own process at the end of that
optimiser step (before that step's checkpoint, if any, is written: Lightning
runs checkpoint callbacks after all others): a real crash, not an exception.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = REPO_ROOT / "configs" / "stage2" / "tiny.yaml"
LATENT_SHAPE = (16, 4, 4)  # the latents of the reference fixture vtp_tiny_default (64 px, patch 16)


def make_latent_cache(folder: Path, num_items: int = 256, num_classes: int = 4, seed: int = 0) -> Path:
    """A small cache in the LightningDiT layout (two shards + latents_stats.pt), without a manifest.

    Each class has its own mean pattern, so a generator has something to learn;
    the flipped latents are the mirrored ones, as a real tokenizer would give
    for symmetric content. Raw scale ~0.1, like VTP latents.
    """
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, *LATENT_SHAPE, generator=generator)
    labels = torch.arange(num_items) % num_classes
    latents = (
        0.1 * (patterns[labels] + 0.3 * torch.randn(num_items, *LATENT_SHAPE, generator=generator)) + 0.05
    )
    flips = latents.flip(-1)
    half = num_items // 2
    for shard, rows in enumerate((slice(0, half), slice(half, num_items))):
        save_file(
            {
                "latents": latents[rows].contiguous(),
                "latents_flip": flips[rows].contiguous(),
                "labels": labels[rows],
            },
            str(folder / f"latents_rank00_shard{shard:03d}.safetensors"),
        )
    channel_values = latents.transpose(0, 1).reshape(LATENT_SHAPE[0], -1)
    stats = {
        "mean": channel_values.mean(1).view(1, -1, 1, 1),
        "std": channel_values.std(1).view(1, -1, 1, 1),
    }
    torch.save(stats, folder / "latents_stats.pt")
    return folder


def tiny_overrides(out_dir: Path, name: str, cache: Path, *extra: str) -> list[str]:
    """A run small enough for tests: a 2-block width-32 LightningDiT on the synthetic cache."""
    return [
        f"run.out_dir={out_dir}",
        f"run.name={name}",
        f"latents.cache_dir={cache}",
        "latents.verify_tokenizer=false",
        "latents.make_cache=false",
        "model.name=LightningDiT-T/1",
        "model.overrides.depth=2",
        "model.overrides.hidden_size=32",
        "model.overrides.num_heads=2",
        "train.global_batch_size=16",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.max_steps=12",
        "trainer.checkpoint_every_n_steps=4",
        "trainer.log_every_n_steps=2",
        "trainer.progress_bar=false",
        "ema.decay=0.9",
        "preview.enabled=false",
        *extra,
    ]


def run_stage2_subprocess(overrides: list[str], kill_at: int | None = None, timeout: float = 300):
    """Run this file as a script; returns the CompletedProcess (returncode -9 when killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, str(Path(__file__).resolve())]
    if kill_at is not None:
        command += ["--kill-at", str(kill_at)]
    return subprocess.run(
        command + overrides, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def final_state(run_folder: Path) -> dict:
    checkpoint = torch.load(run_folder / "stage2" / "checkpoints" / "last.ckpt", weights_only=True)
    return {
        "step": checkpoint["global_step"],
        "weights": checkpoint["state_dict"],
        "optimizer": checkpoint["optimizer_states"][0]["state"],
        "summary": json.loads((run_folder / "stage2" / "train_summary.json").read_text()),
    }


def assert_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["weights"].keys() == b["weights"].keys()
    differing = [k for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
    assert not differing, f"weights differ: {differing[:5]}"
    assert any(k.startswith("ema.module.") for k in a["weights"])  # the EMA is part of the comparison
    for param_id, state in a["optimizer"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"][param_id][key]), (
                f"optimizer state {param_id}.{key} differs"
            )
    assert a["summary"]["weights_sha256"] == b["summary"]["weights_sha256"]


def _main(argv: list[str]) -> None:
    import lightning as L

    from vtp_gen.config import load_config
    from vtp_gen.pipeline.stage2.config import Stage2Config
    from vtp_gen.pipeline.stage2.run import run

    kill_at = None
    if argv[:1] == ["--kill-at"]:
        kill_at, argv = int(argv[1]), argv[2:]

    class KillAtStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == kill_at:
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    torch.set_num_threads(1)
    cfg = load_config(Stage2Config, TINY_RECIPE, argv)
    run(cfg, callbacks=[KillAtStep()] if kill_at is not None else None)


if __name__ == "__main__":
    _main(sys.argv[1:])
