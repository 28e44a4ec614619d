"""A real stage-2 run diverges at a huge learning rate; the advised rerun at a sane one recovers.

The tiny LightningDiT is trained 4 steps at the recipe's lr, then resumed with
`optim.lr=1.0`: the resume must train with that lr (it used to keep the
checkpoint's), the loss jumps by orders of magnitude at step 5, and the guard
stops the run with `last.ckpt` holding step 4, the weights from before the
loss left its range (not the wrecked ones of the finite steps that followed).
The rerun with the recipe's lr then ends bit-identical to a run that never
diverged.
"""

import pytest
import torch
from test_stage2_helpers import (
    assert_identical,
    final_state,
    make_latent_cache,
    run_stage2_subprocess,
    tiny_overrides,
)

pytestmark = pytest.mark.faults("numerical faults")


def max_weight(checkpoint: dict) -> float:
    return max(v.abs().max().item() for k, v in checkpoint["state_dict"].items() if k.startswith("model."))


def test_divergence_keeps_the_checkpoint_from_before_it_and_a_lower_lr_recovers(tmp_path):
    cache = make_latent_cache(tmp_path / "latents")
    every_step = "trainer.checkpoint_every_n_steps=1"
    straight = run_stage2_subprocess(tiny_overrides(tmp_path, "straight", cache, every_step))
    assert straight.returncode == 0, straight.stderr[-3000:]

    overrides = tiny_overrides(tmp_path, "diverged", cache, every_step)
    first = run_stage2_subprocess([*overrides, "trainer.max_steps=4"])
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = tmp_path / "diverged" / "stage2" / "checkpoints"
    before = torch.load(checkpoints / "last.ckpt", weights_only=True)

    diverged = run_stage2_subprocess([*overrides, "optim.lr=1.0"])
    assert diverged.returncode == 1
    assert "[divergence] step 5: loss" in diverged.stdout  # finite, but far out of its range
    message = diverged.stderr.strip().splitlines()[-1]
    assert "the run has diverged; it left that range at step 5" in message, message
    assert "last.ckpt now holds step 4" in message and "Lower the learning rate (optim.lr" in message
    # Step 5's checkpoint (weights after the first lr-1.0 update) was written, then deleted; none after.
    assert sorted(p.name for p in checkpoints.glob("*.ckpt")) == ["last.ckpt", "step00000004.ckpt"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and max_weight(last) < 2.0
    assert all(torch.equal(last["state_dict"][k], v) for k, v in before["state_dict"].items())

    recovered = run_stage2_subprocess(overrides)  # the recipe's lr again, as the message advises
    assert recovered.returncode == 0, recovered.stderr[-3000:]
    assert "resuming from" in recovered.stdout and "last.ckpt" in recovered.stdout
    assert_identical(final_state(tmp_path / "diverged"), final_state(tmp_path / "straight"))
