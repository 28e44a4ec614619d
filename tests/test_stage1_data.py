"""Stage-1 batches: step-indexed sampling, seeded subsets and views, refilled skips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vtp_gen.data.decode import Skipped
from vtp_gen.data.multicrop import MultiCropAugmentation, MultiCropCollate
from vtp_gen.data.text_tokenizer import CLIPTextTokenizer
from vtp_gen.systems.stage1_data import (
    REFILLED,
    Stage1Collate,
    StepBatchSampler,
    StepIndexedDataset,
    derive_seed,
    subset_size,
)

pytestmark = pytest.mark.faults("bad input")


def toy_samples(count: int, step: int | None = 0) -> list[dict]:
    rng = np.random.default_rng(0)
    samples = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
        sample = {
            "image": Image.fromarray(pixels).convert("RGB"),
            "label": i % 3,
            "caption": f"a photo of item {i}",
        }
        if step is not None:
            sample["step"] = step
        samples.append(sample)
    return samples


def full_collate(batch_size: int, seed: int = 0, rank: int = 0) -> Stage1Collate:
    augmentation = MultiCropAugmentation(32, 16, n_local_crops=2, image_size=32)
    tokenizer = CLIPTextTokenizer(32)
    multicrop = MultiCropCollate(augmentation, patch_size=4, ssl_fraction=0.5, tokenizer=tokenizer)
    return Stage1Collate(batch_size, 32, seed, rank, tokenizer, multicrop, rec_fraction=0.25)


def test_derive_seed_is_stable_and_separates_keys():
    assert derive_seed(0, "batch", 3, 0) == derive_seed(0, "batch", 3, 0)
    seeds = {derive_seed(0, "batch", s, r) for s in range(20) for r in range(2)}
    assert len(seeds) == 40
    assert derive_seed(1, "batch", 3, 0) != derive_seed(0, "batch", 3, 0)
    assert 0 <= derive_seed(123, "x") < 2**63


def test_sampler_resumes_mid_run_with_the_same_batches_and_ranks_split_the_global_batch():
    full = StepBatchSampler(50, batch_size=8, seed=3)
    it = iter(full)
    from_start = [next(it) for _ in range(20)]  # 160 samples: crosses three epoch boundaries
    resumed = iter(StepBatchSampler(50, batch_size=8, seed=3, start_step=13))
    assert [next(resumed) for _ in range(7)] == from_start[13:]
    assert [s for s, _ in from_start[5]] == [5] * 8

    # Every epoch is a permutation: the first 50 drawn indices are all different.
    drawn = [i for batch in from_start for _, i in batch]
    assert sorted(drawn[:50]) == list(range(50))
    assert drawn[:50] != drawn[50:100]  # a new order each epoch

    # Two ranks take disjoint halves of the same global batch.
    ranks = [StepBatchSampler(50, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in range(6):
        halves = [r.indices_for_step(step) for r in ranks]
        assert halves[0] + halves[1] == full.indices_for_step(step)


def test_step_indexed_dataset_tags_samples_and_passes_skips():
    data = toy_samples(3, step=None) + [Skipped("not_an_image", "bad")]
    wrapped = StepIndexedDataset(data)
    assert wrapped[(7, 1)]["step"] == 7
    assert isinstance(wrapped[(7, 3)], Skipped)


def test_collate_is_a_function_of_the_step_and_rank():
    collate = full_collate(8)
    first = collate(toy_samples(8, step=4))
    again = collate(toy_samples(8, step=4))
    for key in ("image", "global_crops", "local_crops", "masks", "ssl_indices", "rec_indices", "text_tokens"):
        assert torch.equal(first[key], again[key]), key
    other_step = collate(toy_samples(8, step=5))
    assert not torch.equal(first["global_crops"], other_step["global_crops"])
    other_rank = full_collate(8, rank=1)(toy_samples(8, step=4))
    assert not torch.equal(first["global_crops"], other_rank["global_crops"])
    # The centre crops do not depend on randomness.
    assert torch.equal(first["image"], other_step["image"])
    # The collate leaves torch's global generator alone.
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    collate(toy_samples(8, step=9))
    assert torch.equal(torch.rand(3), expected)


def test_collate_shapes_and_subsets():
    batch = full_collate(8)(toy_samples(8, step=0))
    assert batch["image"].shape == (8, 3, 32, 32)
    assert batch["text_tokens"].shape == (8, 32)
    assert batch["ssl_indices"].shape == (4,)
    assert batch["global_crops"].shape == (8, 3, 32, 32)  # 2 views x B_ssl
    assert batch["local_crops"].shape == (8, 3, 16, 16)  # 2 local views x B_ssl
    assert batch["masks"].shape == (8, 64) and batch["masks"].dtype == torch.bool
    assert batch["rec_indices"].shape == (subset_size(8, 0.25),)
    assert batch["rec_indices"].unique().numel() == batch["rec_indices"].numel()
    assert int(batch["step"]) == 0


def test_disabled_branches_get_no_inputs():
    plain = Stage1Collate(8, 32, seed=0)  # e.g. the decoder fine-tune: images only
    batch = plain(toy_samples(8, step=1))
    assert batch["image"].shape == (8, 3, 32, 32)
    for key in ("global_crops", "local_crops", "masks", "text_tokens", "rec_indices"):
        assert key not in batch
    with_text = Stage1Collate(8, 32, seed=0, tokenizer=CLIPTextTokenizer(32), rec_fraction=0.5)
    batch = with_text(toy_samples(8, step=1))
    assert batch["text_tokens"].shape == (8, 32) and "global_crops" not in batch
    assert batch["rec_indices"].shape == (4,)


@pytest.mark.parametrize("with_ssl", [True, False])
def test_skipped_samples_are_refilled_and_counted_once(with_ssl):
    # Three good samples, one of them repaired, and five skipped: the refill repeats the repaired
    # sample, whose repair must still be counted once.
    good = toy_samples(3, step=2)
    good[0]["issues"] = ["converted_cmyk"]
    samples = good + [Skipped("truncated_image", str(i)) for i in range(5)]
    collate = full_collate(8) if with_ssl else Stage1Collate(8, 32, seed=0)
    batch = collate(samples)
    assert batch["image"].shape[0] == 8  # every rank keeps the same batch size
    assert batch["data_issues"] == {"truncated_image": 5, "converted_cmyk": 1, REFILLED: 5}
    assert (batch["samples_drawn"], batch["samples_used"]) == (8, 3)
    with pytest.raises(ValueError, match="no usable image"):
        full_collate(8)([Skipped("not_an_image", "x")] * 8)


def test_subset_size_bounds():
    assert subset_size(16000, 0.25) == 4000
    assert subset_size(16000, 0.125) == 2000
    assert subset_size(4, 0.01) == 2  # KoLeo needs a neighbour
    assert subset_size(4, 1.0) == 4
