"""Stage-1 pre-training under Lightning DDP on 2 gloo CPU ranks: students and EMA teachers stay identical."""

from __future__ import annotations

import os

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from vtp_gen.utils.distributed import run_on_gloo_ranks

pytestmark = pytest.mark.distributed
STEPS = 3


class FirstBatch(L.Callback):
    def __init__(self) -> None:
        self.images: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.images is None:
            self.images = batch["image"].clone()


def _train_on_rank(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    # The gloo group exists already; these variables tell Lightning it was launched externally.
    os.environ.update(LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE=str(world_size), RANK=str(rank))
    from test_stage1_system import make_system, stage1_config

    cfg = stage1_config("vtp", overrides=("objectives.drop_path_ssl=0.2",))
    system, datamodule = make_system(cfg)
    initial_teacher = {k: v.clone() for k, v in system.teacher.state_dict().items()}
    first_batch = FirstBatch()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy=DDPStrategy(process_group_backend="gloo"),
        max_steps=STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        gradient_clip_val=3.0,
        callbacks=[first_batch],
    )
    trainer.fit(system, datamodule=datamodule)
    assert trainer.world_size == world_size and trainer.global_rank == rank
    out = {f"teacher.{k}": v for k, v in system.teacher.state_dict().items()}
    out.update({f"student.{k}": v for k, v in system.model.state_dict().items()})
    out.update({f"initial_teacher.{k}": v for k, v in initial_teacher.items()})
    out["first_images"] = first_batch.images
    out["global_step"] = torch.tensor(trainer.global_step)
    return out


def test_teacher_and_student_identical_on_both_ranks_after_steps():
    ranks = run_on_gloo_ranks(_train_on_rank, world_size=2, timeout_s=300)
    zero, one = ranks
    assert int(zero["global_step"]) == int(one["global_step"]) == STEPS
    teacher_keys = [k for k in zero if k.startswith("teacher.")]
    assert teacher_keys
    for key in teacher_keys + [k for k in zero if k.startswith("student.")]:
        assert torch.equal(zero[key], one[key]), key
    # The teacher did move (EMA of a student that learned), and the ranks saw different data.
    assert any(not torch.equal(zero[k], zero[f"initial_{k}"]) for k in teacher_keys)
    assert not torch.equal(zero["first_images"], one["first_images"])


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_stage1_command_with_two_ddp_processes(tmp_path):
    """`vtp-gen stage1` launched once with devices=2: Lightning starts the second rank, both phases run."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from test_stage1_resume import SMALL

    command = [
        sys.executable,
        str(Path(__file__).resolve().parents[1] / "stage1/train.py"),
        *SMALL,
        f"run.out_dir={tmp_path}",
        "run.name=ddp",
        "trainer.strategy=ddp",
        "trainer.devices=2",
        "trainer.max_steps=4",
        "decoder_finetune.max_steps=3",
        "decoder_finetune.disc_start_step=1",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "MEMBER: 2/2" in done.stdout + done.stderr
    metrics = json.loads((tmp_path / "ddp" / "stage1" / "metrics.json").read_text())
    assert metrics["pretrain_steps"] == 4 and metrics["finetune_steps"] == 3
    # The data account adds up both ranks: 4 steps x 2 ranks x 16 pairs, 3 x 2 x 8 fine-tune images.
    assert metrics["data"]["pretrain"]["drawn"] == metrics["data"]["pretrain"]["used"] == 4 * 2 * 16
    assert metrics["data"]["finetune"]["drawn"] == 3 * 2 * 8
