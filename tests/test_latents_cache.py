"""Latent caching end to end on one process, with the official-layout tiny VTP fixture.

The fixture tokenizer reads 64 px images (patch 16 -> 16x4x4 latents); the
images are real Fashion-MNIST ones through the ADM centre crop.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from vtp_gen.config import load_config
from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.data.transforms import CenterCropNormalize
from vtp_gen.interop.vtp import load_tokenizer, save_pretrained
from vtp_gen.latents.dataset import LatentDataset, LatentStats, denormalize_latents
from vtp_gen.latents.manifest import CacheMismatchError, check_tokenizer
from vtp_gen.latents.verify import main as verify_main
from vtp_gen.latents.verify import verify_cache
from vtp_gen.pipeline.cache.config import CacheConfig
from vtp_gen.pipeline.cache.run import run
from vtp_gen.utils.run_lock import LOCK_FILE

pytestmark = pytest.mark.usefixtures("fashion_mnist")

NUM_IMAGES = 300


def cache_config(tokenizer: Path, out_dir: Path, *overrides: str):
    return load_config(
        CacheConfig,
        None,
        [
            f"tokenizer={tokenizer}",
            f"out_dir={out_dir}",
            "data.image_size=64",
            f"data.max_samples={NUM_IMAGES}",
            "data.batch_size=50",  # batches straddle shard boundaries
            "shard_size=128",  # 128 + 128 + 44
            "stats_max_images=0",
            "accelerator=cpu",
            "devices=1",
            "progress_bar=false",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def cache(tokenizer_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    result = run(cache_config(tokenizer_dir, folder))
    assert result.images_encoded == NUM_IMAGES
    return folder


def read_all_shards(folder: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((folder / "manifest.json").read_text())
    parts = [load_file(str(folder / shard["file"])) for shard in manifest["shards"]]
    return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}


def test_cached_latents_are_the_tokenizer_outputs_of_adm_cropped_images(cache, tokenizer_dir):
    report = verify_cache(cache)
    assert report.ok, str(report)
    assert (report.images, report.shards) == (NUM_IMAGES, 3)
    stored = read_all_shards(cache)
    assert torch.equal(stored["indices"], torch.arange(NUM_IMAGES))
    dataset = FashionMNIST(split="train", transform=CenterCropNormalize(64), max_samples=NUM_IMAGES)
    images = torch.stack([dataset[i]["image"] for i in range(NUM_IMAGES)])
    assert torch.equal(stored["labels"], torch.as_tensor(dataset.labels))
    model = load_tokenizer(tokenizer_dir)
    with torch.inference_mode():
        expected = model.get_reconstruction_latents(images)
        expected_flip = model.get_reconstruction_latents(images.flip(-1))
    assert stored["latents"].shape == (NUM_IMAGES, 16, 4, 4) and stored["latents"].dtype == torch.float32
    torch.testing.assert_close(stored["latents"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stored["latents_flip"], expected_flip, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stored["latents"], stored["latents_flip"], atol=1e-3)


def test_stats_file_is_what_lightningdit_reads(cache):
    stats = torch.load(cache / "latents_stats.pt", map_location="cpu", weights_only=True)
    assert set(stats) == {"mean", "std"}
    latents = read_all_shards(cache)["latents"].double()
    for key, expected in (("mean", latents.mean(dim=(0, 2, 3))), ("std", latents.std(dim=(0, 2, 3)))):
        assert stats[key].shape == (1, 16, 1, 1) and stats[key].dtype == torch.float32
        torch.testing.assert_close(stats[key].double().flatten(), expected, rtol=1e-6, atol=1e-7)
    # LightningDiT's reader globs every *.safetensors in the folder and reads these three keys.
    files = sorted(cache.glob("*.safetensors"))
    assert [f.name for f in files] == [f"latents_rank00_shard{k:03d}.safetensors" for k in range(3)]
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            assert {"latents", "latents_flip", "labels"} <= set(f.keys())


def test_latent_dataset_flips_standardises_and_inverts(cache):
    raw = read_all_shards(cache)
    stats = LatentStats.load(cache)
    plain = LatentDataset(cache, flip_prob=0.0, multiplier=0.5)
    assert len(plain) == NUM_IMAGES
    latent, label = plain[7]
    torch.testing.assert_close(latent, (raw["latents"][7] - stats.mean[0]) / stats.std[0] * 0.5)
    assert label.dtype == torch.long and int(label) == int(raw["labels"][7])
    torch.testing.assert_close(denormalize_latents(latent, cache, multiplier=0.5), raw["latents"][7])
    flipped = LatentDataset(cache, flip_prob=1.0, preload=False)  # the memory-mapped path
    torch.testing.assert_close(stats.denormalize(flipped[299][0]), raw["latents_flip"][299])
    # Standardised latents: zero mean and unit std per channel over the whole set.
    everything = torch.stack([plain[i][0] for i in range(NUM_IMAGES)]) / 0.5
    torch.testing.assert_close(everything.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(everything.std(dim=(0, 2, 3)), torch.ones(16), atol=1e-5, rtol=0)
    # p = 0.5: count how often the flipped latent comes back for one image.
    torch.manual_seed(0)
    half = LatentDataset(cache, flip_prob=0.5, normalize=False)
    flips = sum(torch.equal(half[3][0], raw["latents_flip"][3]) for _ in range(400))
    assert 160 <= flips <= 240  # Binomial(400, 0.5): outside is a > 5-sigma event
    loader = torch.utils.data.DataLoader(half, batch_size=64, num_workers=0)
    latents, labels = next(iter(loader))
    assert latents.shape == (64, 16, 4, 4) and labels.shape == (64,)


def test_rerun_on_a_complete_cache_does_nothing(cache, tokenizer_dir):
    def untouched():  # the run holds the folder's lock file while it checks
        skip = ("config.yaml", LOCK_FILE)
        return {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.name not in skip}

    before = untouched()
    result = run(cache_config(tokenizer_dir, cache))
    assert result.images_encoded == 0
    assert result.manifest["counts"]["images"] == NUM_IMAGES
    assert untouched() == before


def test_verify_detects_corrupted_missing_and_extra_files(cache, tmp_path, capsys):
    copy = shutil.copytree(cache, tmp_path / "copy")
    assert verify_main([str(copy)]) == 0
    shard = copy / "latents_rank00_shard001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the latents
    shard.write_bytes(bytes(data))
    report = verify_cache(copy)
    assert not report.ok and any("shard001" in p and "checksum" in p for p in report.problems)
    assert verify_main([str(copy)]) == 1
    assert "checksum mismatch" in capsys.readouterr().out
    shutil.copy(cache / "latents_rank00_shard001.safetensors", shard)
    (copy / "latents_rank00_shard002.safetensors").unlink()
    shutil.copy(shard, copy / "latents_rank01_shard001.safetensors")  # a duplicate LightningDiT would read
    problems = " | ".join(verify_cache(copy).problems)
    assert "shard002.safetensors: missing" in problems
    assert "latents_rank01_shard001.safetensors: a shard file not in the manifest" in problems
    assert "hold 256 readable images, the manifest counts 300" in problems


def test_cache_of_another_tokenizer_is_refused(cache, tokenizer_dir, tmp_path):
    other = load_tokenizer(tokenizer_dir)
    with torch.no_grad():
        other.trunk.feature_bottleneck.weight.mul_(1.5)  # a different tokenizer with the same architecture
    other_dir = save_pretrained(other, tmp_path / "other_tokenizer")
    check_tokenizer(cache, tokenizer_dir)  # the right one passes
    with pytest.raises(
        CacheMismatchError, match="made with tokenizer .*vtp_tiny_default.* configured with .*other"
    ):
        LatentDataset(cache, tokenizer=other_dir)
    # Caching into the same folder with the other tokenizer is refused too, not silently mixed.
    with pytest.raises(CacheMismatchError, match="tokenizer.weights_sha256"):
        run(cache_config(other_dir, cache))
    assert verify_cache(cache).ok


def test_unreadable_images_are_counted_not_lost(tokenizer_dir, tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / cls / f"{i}.png")
        (tmp_path / "images" / cls / "broken.png").write_bytes(b"not a png at all")
    cfg = cache_config(
        tokenizer_dir,
        tmp_path / "cache",
        "data.source=image_folder",
        f"data.root={tmp_path / 'images'}",
        "data.max_samples=0",
        "shard_size=4",
        "data.batch_size=3",
    )
    manifest = run(cfg).manifest
    assert manifest["counts"] == {"images": 10, "skipped": {"not_an_image": 2}, "shards": 3}
    assert verify_cache(tmp_path / "cache").ok
    dataset = LatentDataset(tmp_path / "cache", flip_prob=0.0)
    assert len(dataset) == 10
    assert sorted(int(dataset[i][1]) for i in range(10)) == [0] * 5 + [1] * 5


def test_missing_webdataset_shards_are_named(tokenizer_dir, tmp_path):
    # Webdataset shards are cached by index (tests/test_cache_webdataset.py); a wrong pattern is one line.
    cfg = cache_config(tokenizer_dir, tmp_path, "data.source=webdataset", "data.shards=x.tar")
    with pytest.raises(FileNotFoundError, match="1 of 1 shards do not exist"):
        run(cfg)
