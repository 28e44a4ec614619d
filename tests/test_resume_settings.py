"""What a stage-2 resume takes from the command line and what it refuses, each refusal in one line.

A `last.ckpt` of another model size (copied in from another run) is passed
over with a warning and the valid step checkpoint beside it is resumed from;
a resume that changes the model or the seed is refused, naming the setting.
(The learning rate taken from the command line: tests/test_divergence_recovery.py.)
"""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_stage2_helpers import REPO_ROOT, make_latent_cache, run_stage2_subprocess, tiny_overrides

pytestmark = [pytest.mark.faults("config and environment"), pytest.mark.slow]  # ~90 s: five tiny stage-2 runs


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "vtp_gen.pipeline.cli", *args]
    return subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> bool:
    """No traceback; the error is the last line (the config-diff warning may come before it)."""
    return "Traceback" not in result.stderr and result.stderr.strip().splitlines()[-1].startswith(
        "vtp-gen stage2: error: "
    )


def test_resume_passes_over_another_models_checkpoint_and_refuses_changed_settings(tmp_path):
    cache = make_latent_cache(tmp_path / "latents")
    overrides = tiny_overrides(tmp_path, "run", cache, "trainer.max_steps=8")
    assert run_stage2_subprocess(overrides).returncode == 0
    wider = tiny_overrides(tmp_path, "wider", cache, "trainer.max_steps=2", "model.overrides.hidden_size=64")
    assert run_stage2_subprocess(wider).returncode == 0
    checkpoints = tmp_path / "run" / "stage2" / "checkpoints"
    shutil.copy(tmp_path / "wider" / "stage2" / "checkpoints" / "last.ckpt", checkpoints / "last.ckpt")

    resumed = cli("stage2", *overrides, "trainer.max_steps=12")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        "last.ckpt does not fit this model (model.pos_embed is (1, 16, 64) there, (1, 16, 32) in this model); passed over"
        in resumed.stderr
    )
    assert "resuming from" in resumed.stdout and "step00000008.ckpt" in resumed.stdout
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 12

    changed_model = cli("stage2", *overrides, "trainer.max_steps=16", "model.overrides.hidden_size=64")
    assert changed_model.returncode == 1
    assert one_line_error(changed_model), changed_model.stderr
    assert "does not fit" not in changed_model.stderr  # no fallback, so no warning per checkpoint
    assert "no checkpoint in" in changed_model.stderr and "cannot change on a resume" in changed_model.stderr

    changed_seed = cli("stage2", *overrides, "trainer.max_steps=16", "run.seed=7")
    assert changed_seed.returncode == 1
    assert one_line_error(changed_seed), changed_seed.stderr
    assert "run.seed=7 differs from the 0 this run was started with" in changed_seed.stderr
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 12  # untouched
