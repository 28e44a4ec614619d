"""Kill `vtp-gen stage1` with SIGKILL, rerun the same command: it resumes and ends bit-identical.

The CI-fast test kills pre-training once; the slow variant kills several
times, in both phases. Each run is a real subprocess of the CLI on the
embedded Fashion-MNIST set (skipped where it is not installed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


pytestmark = [
    pytest.mark.faults("kill and rerun"),
    pytest.mark.usefixtures("fashion_mnist"),
]

SMALL = [
    "trainer.max_steps=8",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.log_every_n_steps=2",
    "trainer.progress_bar=false",
    "trainer.accelerator=cpu",
    "data.batch_size=16",
    "data.max_samples=512",
    "model.overrides.vision_depth=2",
    "model.overrides.decoder_depth=1",
    "model.overrides.text_depth=1",
    "ssl.prototypes=128",
    "ssl.head_hidden_dim=64",
    "ssl.n_local_crops=2",
    "ssl.teacher_temp_warmup_steps=4",
    "ssl.freeze_last_layer_steps=2",
    "optim.warmup_steps=2",
    # Random stochastic-depth paths must replay identically after a resume too.
    "objectives.drop_path_ssl=0.2",
    "objectives.drop_path_clip=0.1",
    "decoder_finetune.batch_size=8",
    "decoder_finetune.disc_layers=2",
    "decoder_finetune.disc_channels=8",
    "decoder_finetune.lpips_weight=0",
    "evaluation.reconstruction_images=32",
    "evaluation.zero_shot_images=64",
    "evaluation.grid_images=4",
]


def command(out_dir: Path, name: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        str(REPO / "stage1/train.py"),
        f"run.out_dir={out_dir}",
        f"run.name={name}",
        *SMALL,
        *extra,
    ]


def environment() -> dict[str, str]:
    # One thread: identical arithmetic in every run, and no fight over the two cores.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_to_end(cmd: list[str]) -> str:
    done = subprocess.run(cmd, env=environment(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def run_and_kill_when(cmd: list[str], path: Path, timeout: float = 300) -> None:
    """Start ``cmd`` and SIGKILL it as soon as ``path`` exists (it must not finish first)."""
    process = subprocess.Popen(cmd, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    try:
        while not path.exists():
            assert process.poll() is None, f"the run ended (code {process.returncode}) before {path} appeared"
            assert time.time() < deadline, f"{path} did not appear within {timeout} s"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


def max_abs_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_pretraining_identical(reference: Path, stage: Path, exported: str = "tokenizer") -> None:
    """Everything in the last Lightning checkpoint (student, EMA teacher, DINO head, loss centres) and
    the exported tokenizer of the resumed run equal the uninterrupted run's."""
    difference = max_abs_difference(
        checkpoint_state(reference / "checkpoints" / "last.ckpt"),
        checkpoint_state(stage / "checkpoints" / "last.ckpt"),
    )
    print(f"max abs difference after SIGKILL + resume: {difference}")
    assert difference == 0.0
    weights = [load_file(str(s / exported / "model.safetensors")) for s in (reference, stage)]
    assert max_abs_difference(*weights) == 0.0


def test_sigkill_during_pretraining_then_rerun_ends_with_identical_weights(tmp_path, kill_points):
    extra = ["decoder_finetune.enabled=false"]
    run_to_end(command(tmp_path, "uninterrupted", extra))
    killed = command(tmp_path, "killed", extra)
    stage = tmp_path / "killed" / "stage1"
    run_and_kill_when(killed, stage / "checkpoints" / "step00000004.ckpt")
    assert not (stage / "pretrained_tokenizer").exists()
    output = run_to_end(killed)
    assert "resuming pre-training from" in output

    assert_pretraining_identical(tmp_path / "uninterrupted" / "stage1", stage)
    # The curves keep the history from before the kill (a rerun of a finished run is tested in test_stage1_run).
    assert list((stage / "logs").glob("metrics.part*.csv"))
    kill_points("stage 1")


@pytest.mark.slow
def test_repeated_sigkills_in_both_phases_end_with_identical_weights(tmp_path, kill_points):
    extra = ["decoder_finetune.max_steps=6", "decoder_finetune.disc_start_step=2", "trainer.max_steps=10"]
    run_to_end(command(tmp_path, "uninterrupted", extra))
    killed = command(tmp_path, "killed", extra)
    stage = tmp_path / "killed" / "stage1"
    run_and_kill_when(killed, stage / "checkpoints" / "step00000002.ckpt")
    run_and_kill_when(killed, stage / "checkpoints" / "step00000006.ckpt")
    # Fine-tune checkpoints count two optimiser steps per step: step 4 of the fine-tune is global step 8.
    run_and_kill_when(killed, stage / "decoder_finetune" / "checkpoints" / "step00000008.ckpt")
    output = run_to_end(killed)
    assert "resuming decoder fine-tune from" in output
    reference = tmp_path / "uninterrupted" / "stage1"
    for relative in ("checkpoints/last.ckpt", "decoder_finetune/checkpoints/last.ckpt"):
        assert (
            max_abs_difference(checkpoint_state(reference / relative), checkpoint_state(stage / relative))
            == 0.0
        )
    exported = [load_file(str(s / "tokenizer" / "model.safetensors")) for s in (reference, stage)]
    assert max_abs_difference(*exported) == 0.0
    kill_points("stage 1", 3)
