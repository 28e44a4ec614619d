"""A damaged checkpoint in a real run: detected on resume, the previous good one is used, with a warning.

Stage 2 is killed at step 10 (checkpoints at 4 and 8; `last.ckpt` and
`step00000008.ckpt` both hold step 8). Then `last.ckpt` is truncated, as a
crash in the middle of a non-atomic copy would leave it, or overwritten with
garbage: the rerun warns, resumes from `step00000008.ckpt` and ends identical
to an uninterrupted run. With both damaged it warns twice and starts over,
again ending identical (every draw is a function of the step). CI runs the
truncated case; the other two run in `make test-faults` / `make test-slow`.
"""

import pytest
from test_stage2_helpers import assert_identical, final_state, run_stage2_subprocess, tiny_overrides

pytestmark = pytest.mark.faults("damaged checkpoints")


def killed_run(latents, out, name):
    overrides = tiny_overrides(out, name, latents)
    assert run_stage2_subprocess(overrides, kill_at=10).returncode == -9
    return overrides, out / name / "stage2" / "checkpoints"


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def scribble(path):
    path.write_bytes(b"\x00garbage, not a checkpoint" * 100)


@pytest.mark.parametrize(
    "damage", [truncate, pytest.param(scribble, marks=pytest.mark.slow)], ids=["truncated", "overwritten"]
)
def test_a_damaged_last_checkpoint_falls_back_to_the_step_checkpoint(
    stage2_cache,
    uninterrupted,
    tmp_path,
    damage,
    kill_points,
):
    overrides, checkpoints = killed_run(stage2_cache, tmp_path, "damaged")
    damage(checkpoints / "last.ckpt")
    rerun = run_stage2_subprocess(overrides)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "last.ckpt is truncated or corrupt; trying an older one" in rerun.stderr
    assert "resuming from" in rerun.stdout and "step00000008.ckpt" in rerun.stdout
    assert_identical(final_state(tmp_path / "damaged"), uninterrupted)
    kill_points("stage 2")


@pytest.mark.slow
def test_with_every_checkpoint_damaged_the_run_starts_over_and_still_matches(
    stage2_cache,
    uninterrupted,
    tmp_path,
    kill_points,
):
    overrides, checkpoints = killed_run(stage2_cache, tmp_path, "all_damaged")
    for path in checkpoints.glob("*.ckpt"):
        truncate(path)
    rerun = run_stage2_subprocess(overrides)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert rerun.stderr.count("is truncated or corrupt") == 2
    assert "resuming from" not in rerun.stdout
    assert_identical(final_state(tmp_path / "all_damaged"), uninterrupted)
    kill_points("stage 2")
