"""Stage 2 on 2 gloo CPU ranks through the real entry point (Lightning's ddp strategy launches rank 1).

The run itself all-gathers each rank's weight digests at the end and fails on
any difference; the test also checks that the exported generator is that
common state and that the ranks really split the batch.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from test_stage2_helpers import REPO_ROOT, make_latent_cache, tiny_overrides

from vtp_gen.interop.generators import load_generator


@pytest.mark.distributed
def test_two_gloo_ranks_train_and_agree_on_weights(tmp_path):
    cache = make_latent_cache(tmp_path / "latents")
    overrides = tiny_overrides(
        tmp_path, "ddp", cache, "trainer.devices=2", "trainer.strategy=ddp", "trainer.max_steps=6"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "stage2" / "train.py"), *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    folder = tmp_path / "ddp" / "stage2"
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_agree"] is True
    assert summary["step"] == 6
    assert summary["per_device_batch_size"] == 8  # each rank takes its half of the global batch of 16
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 6
    ema = load_generator(folder / "generator")
    for name, value in ema.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"ema.module.{name}"])
