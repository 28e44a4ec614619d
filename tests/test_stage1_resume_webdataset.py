"""SIGKILL `stage1` while it reads webdataset shards (epoch mode, 2 loader workers), rerun: identical weights.

The stream resumes at the exact sample and the collate seeds its views from
the batch index the samples carry, so the run ends bit-identical to an
uninterrupted one, as on map-style data.
"""

import pytest
from test_stage1_resume import (
    assert_pretraining_identical,
    command,
    run_and_kill_when,
    run_to_end,
)

from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.data.write_shards import shard_pattern, write_shards

pytestmark = [
    pytest.mark.faults("kill and rerun"),
    pytest.mark.usefixtures("fashion_mnist"),
]


def test_sigkill_on_a_webdataset_stream_then_rerun_ends_with_identical_weights(tmp_path, kill_points):
    source = FashionMNIST(split="train", with_captions=True, max_samples=100)
    # 100 pairs in shards of 30, 30, 30, 10: the two workers' epochs differ in length (60 and 40).
    shards = shard_pattern(write_shards(source, tmp_path / "shards", shard_size=30, image_size=32))
    extra = [
        "data.source=webdataset",
        f"data.shards={shards}",
        "data.resampled=false",
        "data.num_workers=2",
        "data.max_samples=0",
        "trainer.max_steps=10",  # 160 pairs: past the end of both workers' first epoch
        "decoder_finetune.enabled=false",
        "evaluation.reconstruction_images=16",
        "evaluation.zero_shot_images=16",
    ]
    run_to_end(command(tmp_path, "uninterrupted", extra))
    killed = command(tmp_path, "killed", extra)
    stage = tmp_path / "killed" / "stage1"
    run_and_kill_when(killed, stage / "checkpoints" / "step00000004.ckpt")
    output = run_to_end(killed)
    assert "resuming pre-training from" in output
    assert_pretraining_identical(
        tmp_path / "uninterrupted" / "stage1", stage, exported="pretrained_tokenizer"
    )
    kill_points("stage 1")
