"""Exact bad-data accounting: every planted fault counted once, under its own kind, in both data paths.

The image folder and the webdataset shards are read the way training reads
them (DataLoader + ``collate_samples``) and summed in a :class:`DataAccount`;
for each kind, what the account says equals what was planted, and
used + skipped = drawn = planted, with nothing unaccounted. Planted here on
top of ``salted_corpus``: a symlink loop and an empty class folder; a damaged
tar header, a shard truncated inside a sample (with and without the sample
count beside it), a json label "abc" and a json that is not JSON.
"""

import json
import os
import tarfile
from collections import Counter

import pytest
from salted_corpus import (
    MAX_PIXELS,
    damage_member_header,
    jpeg_bytes,
    photo,
    planted_in_shard,
    salted_files,
    write_salted_shard,
)
from torch.utils.data import DataLoader

from vtp_gen.data.accounting import SKIP_KINDS, DataAccount
from vtp_gen.data.decode import collate_samples
from vtp_gen.data.image_folder import LabelledImageFolder
from vtp_gen.data.webdataset import ImageTextShards

pytestmark = pytest.mark.faults("bad input")


def account_of(dataset, batch_size: int = 8) -> DataAccount:
    account = DataAccount()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=lambda items: (len(items), items))
    for drawn, items in loader:
        batch = collate_samples(items)
        account.count({**batch, "samples_drawn": drawn, "samples_used": batch["size"]})
    return account


def assert_matches(account: DataAccount, planted: Counter) -> None:
    skipped = {k: n for k, n in planted.items() if k in SKIP_KINDS}
    repaired = {k: n for k, n in planted.items() if k not in SKIP_KINDS and k != "ok"}
    assert account.skipped == dict(sorted(skipped.items()))
    assert account.repaired == dict(sorted(repaired.items()))
    assert account.drawn == sum(planted.values()) == account.used + sum(account.skipped.values())
    assert account.used == sum(planted.values()) - sum(skipped.values())
    assert account.unaccounted == 0


def test_image_folder_counts_each_planted_file_once(tmp_path):
    root = tmp_path / "images"
    planted = Counter()
    for cls in ("boot", "shirt"):
        (root / cls).mkdir(parents=True)
        for name, (data, kind) in salted_files().items():
            (root / cls / name).write_bytes(data)
            planted[kind] += 1  # greyscale included: converted_l, a counted repair
        (root / cls / "extra.jpg").write_bytes(jpeg_bytes(photo(seed=7)))
        planted["ok"] += 1
    os.symlink("loop.jpg", root / "boot" / "loop.jpg")  # a link to itself: reading it fails with ELOOP
    planted["unreadable_file"] += 1
    (root / "empty_class").mkdir()
    with pytest.raises(ValueError, match="class folder.s. empty_class hold no images"):
        LabelledImageFolder(root, max_pixels=MAX_PIXELS)
    (root / "empty_class").rmdir()
    assert_matches(account_of(LabelledImageFolder(root, max_pixels=MAX_PIXELS)), planted)


def truncate_inside_a_sample(path, member: str) -> int:
    """Cut ``path`` in the middle of ``member``'s data; returns how many samples start before the cut."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    info = next(m for m in members if m.name == member)
    path.write_bytes(path.read_bytes()[: info.offset_data + info.size // 2])
    return len({m.name.split(".")[0] for m in members if m.offset < info.offset_data})


def test_webdataset_counts_each_planted_fault_once(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    damaged, truncated = shards / "shard-000000.tar", shards / "shard-000001.tar"
    write_salted_shard(damaged, n_good=6, metadata_faults=True)
    damage_member_header(damaged, "0003.jpg")  # sample 0003 loses its image: one bad tar member
    planted = planted_in_shard(n_good=6, metadata_faults=True)
    planted.update({"ok": -1, "bad_tar_member": 1})

    write_salted_shard(truncated, n_good=6)
    total = sum(planted_in_shard(n_good=6).values())
    (shards / "shard-000001_stats.json").write_text(json.dumps({"count": total}))
    started = truncate_inside_a_sample(truncated, "0003.txt")
    assert started == 4  # 0000-0002 whole, 0003 cut in its caption, the other 13 gone
    planted.update({"ok": 3, "bad_tar_member": total - 3})

    stream = ImageTextShards(f"{shards}/shard-{{000000..000001}}.tar", max_pixels=MAX_PIXELS)
    assert_matches(account_of(stream), planted)

    # Without the sample count, a truncated shard can only be counted as one fault (and the cut sample
    # is that fault, not also an empty caption).
    (shards / "shard-000001_stats.json").unlink()
    alone = Counter(
        s.kind if not isinstance(s, dict) else "ok"
        for s in ImageTextShards(str(truncated), max_pixels=MAX_PIXELS)
    )
    assert alone == {"ok": 3, "bad_tar_member": 1}


def test_a_malformed_label_names_file_and_key(tmp_path):
    shard = tmp_path / "labels.tar"
    write_salted_shard(shard, n_good=1, metadata_faults=True)
    skipped = {
        s.key: s.detail for s in ImageTextShards(str(shard), max_pixels=MAX_PIXELS) if not isinstance(s, dict)
    }
    assert skipped["badlabel"] == f"{shard}: badlabel.json 'label' is 'abc'"
    assert skipped["badjson"].startswith(f"{shard}: badjson.json: ")


def test_written_shards_carry_their_sample_count(tmp_path):
    from vtp_gen.data.write_shards import write_shards

    items = [{"image": photo(seed=i), "label": i % 2, "caption": f"photo {i}"} for i in range(5)]
    paths = write_shards(items, tmp_path, shard_size=3)
    counts = [json.loads(p.with_name(f"{p.stem}_stats.json").read_text())["count"] for p in paths]
    assert counts == [3, 2]
