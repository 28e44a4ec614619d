"""Per-channel latent statistics: exact float64 merging, independent of how the data is split."""

import torch

from vtp_gen.latents.stats import ChannelMoments, stats_subset_mask


def test_merged_shard_moments_equal_moments_of_everything():
    generator = torch.Generator().manual_seed(0)
    # Latent-like: offset means and small stds (the regime where naive sum-of-squares loses digits).
    latents = torch.randn(97, 5, 4, 4, generator=generator) * 0.1 + torch.arange(5).view(1, 5, 1, 1) * 3.0
    whole = ChannelMoments.of(latents)
    for cuts in ([0, 97], [0, 10, 50, 97], [0, 1, 2, 3, 60, 96, 97]):
        merged = ChannelMoments.empty(5)
        for start, end in zip(cuts[:-1], cuts[1:]):
            merged = merged.merge(ChannelMoments.of(latents[start:end]))
        assert merged.count == whole.count == 97 * 16
        torch.testing.assert_close(merged.mean, whole.mean, rtol=0, atol=1e-13)
        torch.testing.assert_close(merged.std, whole.std, rtol=0, atol=1e-13)
    reference = latents.double()
    torch.testing.assert_close(whole.mean, reference.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(whole.std, reference.std(dim=(0, 2, 3)))  # unbiased, as LightningDiT


def test_empty_parts_are_neutral_and_records_round_trip_exactly():
    latents = torch.randn(8, 3, 2, 2)
    moments = ChannelMoments.of(latents)
    assert ChannelMoments.empty(3).merge(moments) is moments
    assert moments.merge(ChannelMoments.of(latents[:0])) is moments
    restored = ChannelMoments.from_record(moments.to_record())
    assert restored.count == moments.count
    assert torch.equal(restored.mean, moments.mean) and torch.equal(restored.m2, moments.m2)


def test_stats_subset_is_seeded_random_and_sized():
    assert stats_subset_mask(100, 0, seed=0) is None
    assert stats_subset_mask(100, 100, seed=0) is None
    mask = stats_subset_mask(1000, 10, seed=3)
    assert int(mask.sum()) == 10
    assert torch.equal(mask, stats_subset_mask(1000, 10, seed=3))
    assert not torch.equal(mask, stats_subset_mask(1000, 10, seed=4))
    assert not mask[:10].all()  # not simply the first N (class-sorted folders would bias it)
