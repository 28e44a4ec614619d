"""Data position after a resume on webdataset streams (epoch mode): nothing replayed, nothing skipped.

An uninterrupted loader is compared batch by batch with loaders restarted at
several batch indices, with 0 and 2 workers, shards of unequal size (so the
workers' epochs end at different times) and a shuffle buffer.
"""

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from vtp_gen.data.decode import Skipped
from vtp_gen.data.webdataset import ImageTextShards, batches_delivered_by_worker
from vtp_gen.data.write_shards import shard_pattern, write_shards

pytestmark = pytest.mark.faults("resume data position")

NUM_SAMPLES = 30
BATCH = 4


def synthetic_pairs(count: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "image": Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
            "label": i % 3,
            "caption": f"picture {i}",
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    # 30 samples in shards of 7: 7, 7, 7, 7, 2. With 2 workers, worker 0 reads 16 and worker 1 14.
    paths = write_shards(synthetic_pairs(NUM_SAMPLES), tmp_path_factory.mktemp("wds"), shard_size=7)
    return shard_pattern(paths)


def keys_of(items: list) -> list[str]:
    return [item.key if isinstance(item, Skipped) else item["key"] for item in items]


def batches(stream: ImageTextShards, num_workers: int, count: int) -> list[list[str]]:
    loader = DataLoader(stream, batch_size=BATCH, num_workers=num_workers, collate_fn=keys_of)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            return out
    raise AssertionError(f"the stream ended after {len(out)} batches")


def test_which_worker_delivered_how_many_batches():
    assert [batches_delivered_by_worker(5, w, 2) for w in (0, 1)] == [3, 2]
    assert [batches_delivered_by_worker(1, w, 3) for w in (0, 1, 2)] == [1, 0, 0]
    assert batches_delivered_by_worker(0, 0, 1) == 0 and batches_delivered_by_worker(7, 0, 1) == 7


def test_one_epoch_holds_every_sample_exactly_once(shards):
    stream = ImageTextShards(shards, shuffle_buffer=10).training_stream(
        seed=3, start_batch=0, batch_size=BATCH
    )
    seen = [key for batch in batches(stream, 0, 15) for key in batch]  # 60 samples = 2 epochs
    first, second = seen[:NUM_SAMPLES], seen[NUM_SAMPLES:]
    assert sorted(first) == sorted(second) == [f"{i:09d}" for i in range(NUM_SAMPLES)]
    assert first != second  # each epoch is reshuffled


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("resume_at", [1, 3, 7, 9, 17])  # mid-epoch, at and across epoch ends
def test_a_resumed_stream_continues_exactly_where_the_first_run_stopped(shards, num_workers, resume_at):
    template = ImageTextShards(shards, shuffle_buffer=10)
    uninterrupted = batches(
        template.training_stream(seed=3, start_batch=0, batch_size=BATCH), num_workers, 24
    )
    resumed = batches(
        template.training_stream(seed=3, start_batch=resume_at, batch_size=BATCH), num_workers, 24 - resume_at
    )
    assert resumed == uninterrupted[resume_at:]


def test_a_one_pass_stream_still_ends(shards):
    assert len(keys_of(list(ImageTextShards(shards)))) == NUM_SAMPLES


def test_too_few_shards_for_the_workers_is_a_clear_error(tmp_path):
    path = write_shards(synthetic_pairs(5), tmp_path, shard_size=5)[0]
    stream = ImageTextShards(str(path)).training_stream(seed=0, start_batch=0, batch_size=2)
    with pytest.raises(Exception, match="needs at least world_size x num_workers non-empty shards"):
        batches(stream, num_workers=2, count=6)


def steps_of(items: list) -> list[int]:
    return [item["step"] for item in items if not isinstance(item, Skipped)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_each_sample_is_tagged_with_the_batch_it_lands_in(shards, num_workers):
    # The stage-1 collate seeds crops and subsets from this tag, so a resumed run makes the same views.
    for start in (0, 5):
        stream = ImageTextShards(shards).training_stream(seed=1, start_batch=start, batch_size=BATCH)
        loader = DataLoader(stream, batch_size=BATCH, num_workers=num_workers, collate_fn=steps_of)
        for index, steps in zip(range(start, start + 9), loader):
            assert steps == [index] * BATCH
