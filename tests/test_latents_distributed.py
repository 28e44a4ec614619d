"""Two gloo CPU ranks write the same cache as one rank: same (index, label, latent) triples, same stats."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vtp_gen.config import load_config
from vtp_gen.latents.verify import verify_cache
from vtp_gen.pipeline.cache.config import CacheConfig
from vtp_gen.pipeline.cache.run import run

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.usefixtures("fashion_mnist"),
]

# 5 shards over 2 ranks: rank 0 writes 3, rank 1 writes 2, and the last shard is short.
OVERRIDES = [
    "data.image_size=64",
    "data.max_samples=130",
    "data.batch_size=20",
    "shard_size=30",
    "stats_max_images=70",  # a random subset: must be the same images whatever the rank count
    "accelerator=cpu",
    "progress_bar=false",
]


def read_cache(folder: Path) -> dict[int, tuple[int, torch.Tensor, torch.Tensor]]:
    """Global index -> (label, latent, flipped latent), asserting no index appears twice."""
    triples = {}
    for path in sorted(folder.glob("*.safetensors")):  # what LightningDiT's reader sees
        shard = load_file(str(path))
        for row, index in enumerate(shard["indices"].tolist()):
            assert index not in triples, f"image {index} cached twice"
            triples[index] = (int(shard["labels"][row]), shard["latents"][row], shard["latents_flip"][row])
    return triples


def test_two_ranks_write_disjoint_shards_with_the_same_content_and_stats(reference_dir, tmp_path):
    tokenizer = reference_dir / "vtp_tiny_default"
    one = tmp_path / "one_rank"
    run(load_config(CacheConfig, None, [f"tokenizer={tokenizer}", f"out_dir={one}", "devices=1", *OVERRIDES]))
    two = tmp_path / "two_ranks"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "vtp_gen.pipeline.cli",
        "cache",
        f"tokenizer={tokenizer}",
        f"out_dir={two}",
    ]
    done = subprocess.run(
        [*command, "devices=2", "strategy=ddp", *OVERRIDES],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr

    assert verify_cache(one).ok and verify_cache(two).ok
    manifest = json.loads((two / "manifest.json").read_text())
    assert sorted(s["rank"] for s in manifest["shards"]) == [0, 0, 0, 1, 1]
    first, second = read_cache(one), read_cache(two)
    assert sorted(first) == sorted(second) == list(range(130))
    for index, (label, latent, flipped) in first.items():
        assert second[index][0] == label
        torch.testing.assert_close(second[index][1], latent, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(second[index][2], flipped, rtol=1e-5, atol=1e-6)
    stats_one = torch.load(one / "latents_stats.pt", weights_only=True)
    stats_two = torch.load(two / "latents_stats.pt", weights_only=True)
    for key in ("mean", "std"):
        torch.testing.assert_close(stats_two[key], stats_one[key], rtol=1e-6, atol=1e-7)
    assert manifest["stats"]["values_counted"] == 70 * 16  # 70 images x 4x4 positions
