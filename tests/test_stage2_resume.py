"""Kill-and-rerun: a stage-2 run SIGKILLed at a step and started again ends bit-identical to an uninterrupted one.

The guarantee (docs/stage2.md): same device, same thread count, same config ->
identical model weights, EMA weights and optimiser state, because the data
position and every random draw are functions of the step number.
"""

from pathlib import Path

import pytest
from test_stage2_helpers import assert_identical, final_state, run_stage2_subprocess, tiny_overrides

pytestmark = pytest.mark.faults("kill and rerun")


def kill_and_rerun(cache: Path, out: Path, kill_at: int) -> dict:
    overrides = tiny_overrides(out, f"killed{kill_at}", cache)
    killed = run_stage2_subprocess(overrides, kill_at=kill_at)
    assert killed.returncode == -9, f"expected SIGKILL, got {killed.returncode}: {killed.stderr[-3000:]}"
    folder = out / f"killed{kill_at}" / "stage2"
    assert not (folder / "train_summary.json").exists()  # it really died mid-run
    rerun = run_stage2_subprocess(overrides)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    if kill_at > 4:  # a checkpoint existed (every 4 steps): the rerun must resume, not restart
        assert "resuming from" in rerun.stdout
    return final_state(out / f"killed{kill_at}")


def test_kill_between_checkpoints_then_rerun_matches_uninterrupted(
    stage2_cache, uninterrupted, tmp_path, kill_points
):
    assert_identical(kill_and_rerun(stage2_cache, tmp_path, kill_at=6), uninterrupted)
    kill_points("stage 2")


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 4, 5, 8, 11])
def test_kill_at_many_points(stage2_cache, uninterrupted, tmp_path, kill_at, kill_points):
    # 1: before any checkpoint (restart from scratch); 4, 8: at a checkpoint step, before it is written
    # (Lightning runs checkpoint callbacks last), so the rerun starts from the previous one; 5: just after one.
    assert_identical(kill_and_rerun(stage2_cache, tmp_path, kill_at), uninterrupted)
    kill_points("stage 2")


@pytest.mark.slow
def test_resume_with_gradient_accumulation(stage2_cache, tmp_path, kill_points):
    extra = ("trainer.accumulate_grad_batches=2",)
    straight = run_stage2_subprocess(tiny_overrides(tmp_path, "straight", stage2_cache, *extra))
    assert straight.returncode == 0, straight.stderr[-3000:]
    overrides = tiny_overrides(tmp_path, "killed", stage2_cache, *extra)
    assert run_stage2_subprocess(overrides, kill_at=6).returncode == -9
    assert run_stage2_subprocess(overrides).returncode == 0
    assert_identical(final_state(tmp_path / "killed"), final_state(tmp_path / "straight"))
    kill_points("stage 2")


def test_a_finished_run_continues_when_given_more_steps(stage2_cache, uninterrupted, tmp_path):
    # The final state is checkpointed even off the checkpoint grid: 7 steps, then on to 12.
    overrides = tiny_overrides(tmp_path, "extended", stage2_cache)
    first = run_stage2_subprocess([*overrides, "trainer.max_steps=7"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert final_state(tmp_path / "extended")["step"] == 7
    second = run_stage2_subprocess(overrides)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout
    assert_identical(final_state(tmp_path / "extended"), uninterrupted)
