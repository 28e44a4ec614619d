"""The step-indexed latent stream: what makes stage-2 resume exact and rank-count independent."""

from collections import Counter

import pytest
import torch
from test_stage2_helpers import LATENT_SHAPE, make_latent_cache

from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.systems.latent_data import (
    KeyedLatents,
    StepIndexedBatchSampler,
    cache_labels,
    count_classes,
    derive_seed,
    latent_shape,
    per_device_batch_size,
)


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_batches_are_a_function_of_their_number():
    a = take(StepIndexedBatchSampler(100, 8, seed=3), 30)
    resumed = take(StepIndexedBatchSampler(100, 8, seed=3, start_batch=17), 13)
    assert resumed == a[17:]
    assert [key[0] for batch in a for key in batch] == [k for k in range(30) for _ in range(8)]
    other_seed = take(StepIndexedBatchSampler(100, 8, seed=4), 30)
    assert other_seed != a


def test_each_epoch_is_a_permutation_cut_to_whole_global_batches():
    n, b = 100, 8  # 12 batches per epoch, 4 items dropped per epoch
    batches = take(StepIndexedBatchSampler(n, b, seed=0), 24)
    for epoch in range(2):
        indices = [i for batch in batches[epoch * 12 : (epoch + 1) * 12] for _, i, _ in batch]
        assert len(indices) == len(set(indices)) == 96
    first = [i for batch in batches[:12] for _, i, _ in batch]
    second = [i for batch in batches[12:] for _, i, _ in batch]
    assert first != second  # a new order every epoch


def test_rank_slices_partition_the_global_batch_and_match_one_big_rank():
    one_rank = take(StepIndexedBatchSampler(200, 12, seed=1), 20)
    ranks = [take(StepIndexedBatchSampler(200, 4, rank=r, world_size=3, seed=1), 20) for r in range(3)]
    for k in range(20):
        combined = [key for r in range(3) for key in ranks[r][k]]
        assert combined == one_rank[k]  # the same items, flips and numbers, whatever the world size


def test_flip_draws_follow_the_probability():
    keys = [
        key for batch in take(StepIndexedBatchSampler(1000, 100, seed=0, flip_prob=0.5), 50) for key in batch
    ]
    share = sum(flipped for _, _, flipped in keys) / len(keys)
    assert 0.45 < share < 0.55
    never = take(StepIndexedBatchSampler(1000, 100, seed=0, flip_prob=0.0), 5)
    assert not any(flipped for batch in never for _, _, flipped in batch)


def test_sampler_refuses_a_cache_smaller_than_a_global_batch():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepIndexedBatchSampler(10, 4, world_size=3)


def test_per_device_batch_size():
    assert per_device_batch_size(1024, 8, 1) == 128
    assert per_device_batch_size(1024, 4, 2) == 128
    with pytest.raises(ValueError, match="not divisible"):
        per_device_batch_size(1024, 3, 1)


def test_derive_seed_is_stable_and_separates_keys():
    assert derive_seed("a", 1, 2) == derive_seed("a", 1, 2)
    assert len({derive_seed("a", 1, k) for k in range(1000)}) == 1000
    assert 0 <= derive_seed("x") < 2**63


@pytest.mark.parametrize("preload", [True, False])
def test_keyed_latents_standardise_and_pick_the_flip(tmp_path, preload):
    folder = make_latent_cache(tmp_path / "cache", num_items=64, num_classes=4)
    latents = LatentDataset(folder, flip_prob=0.5, preload=preload)
    keyed = KeyedLatents(latents)
    keys = [(7, 3, False), (7, 40, True), (7, 3, True)]
    batch, labels, numbers = keyed.__getitems__(keys)
    assert batch.shape == (3, *LATENT_SHAPE) and batch.dtype == torch.float32
    assert numbers.tolist() == [7, 7, 7]
    assert labels.tolist() == [3 % 4, 40 % 4, 3 % 4]
    stats = latents.stats
    raw, _ = latents.raw(40, flipped=True)
    torch.testing.assert_close(batch[1], (raw - stats.mean[0]) / stats.std[0])
    torch.testing.assert_close(batch[2], batch[0].flip(-1))  # the synthetic flips are mirror images
    assert latent_shape(latents) == LATENT_SHAPE
    assert count_classes(cache_labels(latents)) == 4
    # Standardised over the whole cache: per-channel mean ~0, std ~1.
    everything, _, _ = keyed.__getitems__([(0, i, False) for i in range(64)])
    channel_mean = everything.mean(dim=(0, 2, 3))
    assert channel_mean.abs().max() < 1e-4


def test_count_classes_counts_from_zero():
    assert count_classes(torch.tensor([0, 3, 1])) == 4
    counts = Counter((torch.arange(20) % 5).tolist())
    assert len(counts) == count_classes(torch.arange(20) % 5)
