"""Sampling: per-sample plans, latent decoding, grids, the ADM .npz, and resumable `vtp-gen sample` runs."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from test_stage2_helpers import LATENT_SHAPE, TINY_RECIPE

from vtp_gen.config import ConfigError, load_config
from vtp_gen.data.images import load_png, make_grid, save_grid, save_png, to_pixels
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.pipeline.sample.run import run as sample_run
from vtp_gen.pipeline.stage2.config import SampleConfig
from vtp_gen.systems.sampling import (
    LatentDecoder,
    preview_labels,
    sample_label,
    sample_labels,
    sample_noise,
    write_adm_npz,
)


def test_balanced_labels_cover_every_class_per_block_and_do_not_depend_on_the_total():
    labels = sample_labels(range(30), 10, "balanced", seed=0)
    for block in labels.view(3, 10):
        assert sorted(block.tolist()) == list(range(10))
    assert labels[:10].tolist() != labels[10:20].tolist()  # a new order per block
    assert sample_labels(range(13), 10, "balanced", 0).tolist() == labels[:13].tolist()
    assert [sample_label(i, 10, "balanced", 0) for i in (0, 17, 29)] == labels[[0, 17, 29]].tolist()


def test_uniform_labels_are_per_sample_and_seeded():
    labels = sample_labels(range(2000), 10, "uniform", seed=1)
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() > 150 and counts.max() < 250
    assert sample_labels([5, 1999], 10, "uniform", 1).tolist() == labels[[5, 1999]].tolist()
    assert sample_labels(range(50), 10, "uniform", 2).tolist() != labels[:50].tolist()
    with pytest.raises(ValueError, match="label mode"):
        sample_label(0, 10, "random", 0)


def test_noise_depends_only_on_seed_and_index():
    batch = sample_noise([3, 8, 9], LATENT_SHAPE, seed=5)
    torch.testing.assert_close(sample_noise([8], LATENT_SHAPE, seed=5)[0], batch[1], rtol=0, atol=0)
    assert not torch.equal(sample_noise([8], LATENT_SHAPE, seed=6)[0], batch[1])
    assert abs(float(batch.std()) - 1.0) < 0.2


def test_preview_labels_spread_rows_over_the_classes():
    assert preview_labels(1000, 4, 2).tolist() == [0, 0, 333, 333, 666, 666, 999, 999]
    assert preview_labels(3, 10, 1).tolist() == [0, 1, 2]


def test_pixels_and_grids(tmp_path):
    unit = torch.rand(5, 3, 6, 7)
    pixels = to_pixels(unit)
    assert pixels.shape == (5, 6, 7, 3) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels, to_pixels(torch.from_numpy(pixels)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    np.testing.assert_array_equal(to_pixels((unit - mean) / std, normalized=True), pixels)
    grid = make_grid(pixels, nrow=2, padding=1)
    assert grid.shape == (3 * 6 + 4, 2 * 7 + 3, 3)
    np.testing.assert_array_equal(grid[1:7, 1:8], pixels[0])
    np.testing.assert_array_equal(grid[8:14, 9:16], pixels[3])
    path = save_grid(unit, tmp_path / "g.png", nrow=2, padding=1)
    np.testing.assert_array_equal(load_png(path), grid)
    assert not list(tmp_path.glob(".*tmp*"))


class RecordingDecoder(torch.nn.Module):
    def get_latents_decoded_images(self, latents):
        self.seen = latents
        return latents[:, :3].repeat_interleave(2, -1).repeat_interleave(2, -2)


def test_latent_decoder_undoes_the_standardisation():
    stats = LatentStats(torch.randn(1, 4, 1, 1), torch.rand(1, 4, 1, 1) + 0.5, multiplier=0.7)
    raw = torch.randn(2, 4, 3, 3)
    tokenizer = RecordingDecoder()
    LatentDecoder(tokenizer, stats)(stats.normalize(raw))
    torch.testing.assert_close(tokenizer.seen, raw)


def test_adm_npz_layout(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 8, 6, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        save_png(image, tmp_path / "png" / f"{i:06d}.png")
    labels = torch.tensor([3, 1, 4, 1, 5])
    path = write_adm_npz(tmp_path / "s.npz", tmp_path / "png", 5, labels)
    with np.load(path) as archive:  # what the ADM evaluator does: np.load(path)["arr_0"]
        assert archive.files == ["arr_0", "arr_1"]
        assert archive["arr_0"].dtype == np.uint8 and archive["arr_0"].shape == (5, 8, 6, 3)
        np.testing.assert_array_equal(archive["arr_0"], images)
        np.testing.assert_array_equal(archive["arr_1"], labels.numpy())
    # Our evaluation's streaming reader agrees (it parses the header itself).
    from vtp_gen.interop.adm_npz import adm_npz_image_count, iter_adm_npz_images

    assert adm_npz_image_count(path) == 5
    np.testing.assert_array_equal(np.concatenate(list(iter_adm_npz_images(path, 2))), images)
    # A prefix of the samples, without labels.
    with np.load(write_adm_npz(tmp_path / "p.npz", tmp_path / "png", 3, None)) as archive:
        assert archive.files == ["arr_0"]
        np.testing.assert_array_equal(archive["arr_0"], images[:3])


# ---------------------------------------------------------------------------
# `vtp-gen sample` end to end, with the reference tiny VTP tokenizer (16x4x4 latents -> 64 px) and the
# tiny generator of conftest.py (`generator_folder`).


def sample_config(generator: Path, tokenizer: Path, out: Path, *overrides: str):
    return load_config(
        SampleConfig,
        TINY_RECIPE.with_name("sample_tiny.yaml"),
        [
            f"generator={generator}",
            f"tokenizer={tokenizer}",
            f"out_dir={out}",
            "sampling.steps=4",
            "progress_bar=false",
            "grid_images=4",
            *overrides,
        ],
    )


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "images").glob("*.png"))}


def test_sampling_resumes_without_duplicates_and_matches_a_fresh_run(
    generator_folder, reference_dir, tmp_path
):
    tokenizer = reference_dir / "vtp_tiny_default"
    out = tmp_path / "resumed"
    first = sample_run(sample_config(generator_folder, tokenizer, out, "num_samples=6", "batch_size=4"))
    assert first.written == 6
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").glob("*.png")}
    (out / "images" / "000002.png").unlink()  # e.g. lost in a crash
    second = sample_run(sample_config(generator_folder, tokenizer, out, "num_samples=10", "batch_size=4"))
    assert second.written == 5  # 2, 6, 7, 8, 9: nothing made twice
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"{i:06d}.png" for i in range(10)]
    for name, mtime in before.items():
        if name != "000002.png":
            assert (out / "images" / name).stat().st_mtime_ns == mtime
    # The same samples as a run made in one go: batches are aligned blocks, so sample i is computed
    # in the same batch as before and the bytes match.
    fresh = sample_run(
        sample_config(generator_folder, tokenizer, tmp_path / "fresh", "num_samples=10", "batch_size=4")
    )
    assert png_bytes(out) == png_bytes(tmp_path / "fresh")
    # Another batch size changes the batches: the same images up to float rounding.
    other = sample_run(
        sample_config(generator_folder, tokenizer, tmp_path / "other", "num_samples=10", "batch_size=3")
    )
    assert other.written == 10
    worst = max(
        np.abs(load_png(a).astype(int) - load_png(b).astype(int)).max()
        for a, b in zip(
            sorted((out / "images").glob("*.png")), sorted((tmp_path / "other" / "images").glob("*.png"))
        )
    )
    print(f"max pixel difference across batch sizes: {worst} level(s)")
    assert worst <= 2
    with np.load(second.npz) as archive:
        images = archive["arr_0"]
        assert images.dtype == np.uint8 and images.shape == (10, 64, 64, 3)
        np.testing.assert_array_equal(images[7], load_png(out / "images" / "000007.png"))
        assert sorted(archive["arr_1"][:4].tolist()) == [0, 1, 2, 3]  # balanced labels
    assert images.std() > 0
    assert (out / "grid.png").is_file() and fresh.num_samples == 10


def test_sampling_refuses_a_folder_made_with_other_settings(generator_folder, reference_dir, tmp_path):
    tokenizer = reference_dir / "vtp_tiny_default"
    sample_run(sample_config(generator_folder, tokenizer, tmp_path, "num_samples=2"))
    with pytest.raises(ConfigError, match=r"other settings \(differs in: seed\)"):
        sample_run(sample_config(generator_folder, tokenizer, tmp_path, "num_samples=2", "run.seed=1"))
    redone = sample_run(
        sample_config(generator_folder, tokenizer, tmp_path, "num_samples=2", "run.seed=1", "overwrite=true")
    )
    assert redone.written == 2


def test_sampling_needs_a_generator(tmp_path):
    cfg = sample_config(tmp_path / "nothing", tmp_path / "tok", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="make stage2"):
        sample_run(cfg)
    assert not os.path.exists(tmp_path / "out" / "images")
