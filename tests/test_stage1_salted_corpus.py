"""A whole `stage1` run (pre-training and decoder fine-tune) on corpora salted with every kind of broken input.

The run must finish, and its data account (printed, and kept in metrics.json)
must balance: every sample drawn is either used or counted as skipped by kind,
repairs are counted, nothing is lost. On the image folder, each phase covers
exactly one epoch, so the account is compared with the corpus itself.
"""

import json
from collections import Counter
from pathlib import Path

import pytest
from salted_corpus import (
    MAX_PIXELS,
    damage_member_header,
    jpeg_bytes,
    photo,
    salted_files,
    write_salted_shard,
)
from test_stage1_resume import command, run_to_end

pytestmark = pytest.mark.faults("bad input")

BATCH = 8
EXTRA_GOOD_PER_CLASS = 11  # + 9 salted files = 20 per class, 40 in all: 5 batches of 8 = one epoch


def tiny_run(out_dir: Path, data: list[str], pretrain_steps: int, finetune_steps: int) -> dict:
    cmd = command(
        out_dir,
        "salted",
        [
            *data,
            f"data.batch_size={BATCH}",
            "data.max_samples=0",
            f"data.max_image_pixels={MAX_PIXELS}",
            f"trainer.max_steps={pretrain_steps}",
            f"decoder_finetune.max_steps={finetune_steps}",
            f"decoder_finetune.batch_size={BATCH}",
            "decoder_finetune.disc_start_step=1",
            "evaluation.reconstruction_images=16",
            "evaluation.zero_shot_images=16",
        ],
    )
    output = run_to_end(cmd)
    print(output)
    assert "[stage1] pre-training data:" in output and "[stage1] decoder fine-tune data:" in output
    return json.loads((out_dir / "salted" / "stage1" / "metrics.json").read_text())["data"]


def assert_balanced(account: dict) -> None:
    assert account["unaccounted"] == 0
    assert account["drawn"] == account["used"] + sum(account["skipped"].values())
    assert account["used"] > 0


def test_stage1_on_a_salted_image_folder_uses_or_counts_every_file(tmp_path):
    root = tmp_path / "salted_folder"
    expected: Counter[str] = Counter()
    for label, cls in enumerate(("shirt", "boot")):
        (root / cls).mkdir(parents=True)
        for name, (data, kind) in salted_files().items():
            (root / cls / name).write_bytes(data)
            expected[kind] += 1
        for i in range(EXTRA_GOOD_PER_CLASS):
            (root / cls / f"extra{i:02d}.jpg").write_bytes(jpeg_bytes(photo(seed=100 * label + i)))
            expected["ok"] += 1
    total = sum(expected.values())
    skip_kinds = {"truncated_image", "empty_file", "not_an_image", "too_large_image"}
    steps = total // BATCH
    data = tiny_run(tmp_path, ["data.source=image_folder", f"data.root={root}"], steps, steps)

    for phase in ("pretrain", "finetune"):  # each phase draws the whole folder exactly once
        account = data[phase]
        assert_balanced(account)
        assert account["drawn"] == total
        assert account["skipped"] == {k: n for k, n in expected.items() if k in skip_kinds}
        assert account["repaired"] == {k: n for k, n in expected.items() if k.startswith("converted")}
        assert account["used"] == total - sum(account["skipped"].values())
        assert account["refilled_with_repeats"] == sum(account["skipped"].values())


def test_stage1_on_salted_webdataset_shards_with_a_damaged_member(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_salted_shard(shards / "shard-000000.tar", n_good=6)
    damage_member_header(shards / "shard-000000.tar", "0003.jpg")
    write_salted_shard(shards / "shard-000001.tar", n_good=6)
    data = tiny_run(
        tmp_path,
        [
            "data.source=webdataset",
            f"data.shards={shards}/shard-{{000000..000001}}.tar",
            "data.resampled=false",
        ],
        pretrain_steps=6,  # 48 samples drawn: more than one pass over the two shards
        finetune_steps=2,
    )
    pretrain = data["pretrain"]
    assert_balanced(pretrain)
    assert pretrain["drawn"] == 6 * BATCH
    skip_kinds = {
        "truncated_image",
        "empty_file",
        "not_an_image",
        "too_large_image",
        "empty_caption",
        "bad_tar_member",
    }
    assert skip_kinds <= set(pretrain["skipped"])
    assert {"converted_cmyk", "converted_16bit", "converted_p", "caption_not_utf8"} <= set(
        pretrain["repaired"]
    )
    assert_balanced(data["finetune"])
    assert data["finetune"]["drawn"] == 2 * BATCH
