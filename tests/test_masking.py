"""Block-wise iBOT masks: rectangles, budgets, ratio spread over a batch, per-crop weights."""

import random

import numpy as np
import torch

from vtp_gen.data.masking import BlockMaskGenerator, ibot_mask_weights, sample_batch_masks


def test_one_rectangle_is_filled_and_within_the_aspect_range():
    gen = BlockMaskGenerator((16, 16), min_patches=4, min_aspect=0.3)
    rng = random.Random(0)
    for _ in range(200):
        mask = np.zeros((16, 16), dtype=bool)
        added = gen._add_rectangle(mask, budget=40, rng=rng)
        assert 0 < added <= 40 and mask.sum() == added
        rows, cols = np.nonzero(mask)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert h * w == added  # a solid axis-aligned rectangle
        # aspect in [0.3, 1/0.3] before rounding each side to an integer
        assert 0.3 * w - 1 <= h <= w / 0.3 + 1


def test_mask_hits_the_request_without_exceeding_it():
    gen = BlockMaskGenerator((16, 16), max_patches=128)
    rng = random.Random(1)
    for request in (0, 10, 40, 80, 128):
        counts = [int(gen(request, rng).sum()) for _ in range(30)]
        assert max(counts) <= request
        if request:
            # Rectangles are only refused after 10 failed tries, so masks come close to the request.
            assert np.mean(counts) >= 0.85 * request


def test_each_rectangle_respects_max_patches():
    gen = BlockMaskGenerator((16, 16), max_patches=10)
    rng = random.Random(2)
    mask = np.zeros((16, 16), dtype=bool)
    for _ in range(50):
        assert gen._add_rectangle(mask.copy(), budget=10, rng=rng) <= 10


def test_batch_masks_spread_ratios_and_mask_the_requested_share():
    grid = (8, 8)
    masks = sample_batch_masks(8, grid, (0.1, 0.5), probability=0.5, rng=random.Random(3))
    assert masks.shape == (8, 64) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    assert int((counts > 0).sum()) == 4  # int(8 * 0.5) crops masked
    # The i-th smallest mask falls in the i-th ratio bin [0.1, 0.2], [0.2, 0.3], ...
    upper = [int(64 * r) for r in (0.2, 0.3, 0.4, 0.5)]
    assert all(c <= u for c, u in zip(sorted(counts[counts > 0].tolist()), upper))
    assert counts.max() <= 32


def test_batch_masks_are_reproducible_and_shuffled():
    a = sample_batch_masks(16, (8, 8), rng=random.Random(4))
    b = sample_batch_masks(16, (8, 8), rng=random.Random(4))
    assert torch.equal(a, b)
    positions = set()
    for seed in range(10):
        m = sample_batch_masks(4, (8, 8), probability=0.5, rng=random.Random(seed))
        positions.update(m.any(dim=1).nonzero().flatten().tolist())
    assert positions == {0, 1, 2, 3}  # masked crops are not always the first ones


def test_mask_weights_make_every_masked_crop_weigh_one():
    masks = sample_batch_masks(6, (8, 8), rng=random.Random(5))
    weights = ibot_mask_weights(masks)
    assert weights.shape == (int(masks.sum()),)
    crop_of_patch = masks.nonzero()[:, 0]
    per_crop = torch.zeros(6).index_add_(0, crop_of_patch, weights)
    torch.testing.assert_close(per_crop, (masks.sum(1) > 0).float())


def test_no_crops():
    assert sample_batch_masks(0, (4, 4)).shape == (0, 16)
