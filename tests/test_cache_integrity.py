"""A latent cache is checked against its manifest whenever it is read, and its shard bytes are reproducible.

The fault: one shard copied in from a cache made with another tokenizer (same
shapes, same size). Stage 2 must refuse it in one line before training,
`make cache` must not call the folder complete, and caching again must give
the same bytes as the first time (the checksums are only worth something if
equal latents give equal files).
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_save
from test_latents_cache import cache_config
from test_stage2_helpers import tiny_overrides

from vtp_gen.interop.vtp import load_tokenizer, save_pretrained
from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.latents.manifest import CacheMismatchError
from vtp_gen.latents.verify import verify_cache
from vtp_gen.latents.writer import canonical_safetensors_bytes
from vtp_gen.pipeline.cache.run import run
from vtp_gen.pipeline.cli import main as cli_main

pytestmark = [
    pytest.mark.faults("foreign and corrupt files"),
    pytest.mark.usefixtures("fashion_mnist"),
]
SHARD = "latents_rank00_shard001.safetensors"


def checksums(folder: Path) -> list[str]:
    return [s["sha256"] for s in json.loads((folder / "manifest.json").read_text())["shards"]]


@pytest.fixture(scope="module")
def two_caches(reference_dir, tmp_path_factory):
    """A cache of the tiny tokenizer and one of a tokenizer that differs only in one weight."""
    tokenizer_dir = reference_dir / "vtp_tiny_default"
    root = tmp_path_factory.mktemp("integrity")
    other = load_tokenizer(tokenizer_dir)
    with torch.no_grad():
        other.trunk.feature_bottleneck.weight.mul_(1.5)
    other_dir = save_pretrained(other, root / "other_tokenizer")
    good, foreign = root / "good", root / "foreign"
    run(cache_config(tokenizer_dir, good))
    run(cache_config(other_dir, foreign))
    return tokenizer_dir, good, foreign


@pytest.fixture
def salted(two_caches, tmp_path):
    """A copy of the good cache with one shard replaced by the other tokenizer's."""
    tokenizer_dir, good, foreign = two_caches
    salted = shutil.copytree(good, tmp_path / "salted")
    assert (foreign / SHARD).stat().st_size == (salted / SHARD).stat().st_size  # a size check cannot see it
    shutil.copy(foreign / SHARD, salted / SHARD)
    return tokenizer_dir, salted


@pytest.mark.faults
def test_stage2_refuses_a_foreign_shard_in_one_line(salted, tmp_path, capsys):
    tokenizer_dir, folder = salted
    for preload in (True, False):
        with pytest.raises(CacheMismatchError, match=f"shard {SHARD} does not match manifest.json"):
            LatentDataset(folder, tokenizer=tokenizer_dir, preload=preload)
    overrides = tiny_overrides(tmp_path, "salted", folder, "trainer.max_steps=2")
    overrides = [o for o in overrides if not o.startswith("latents.verify_tokenizer")]
    status = cli_main(["stage2", *overrides, f"latents.tokenizer={tokenizer_dir}"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1, err
    assert SHARD in err and "copied from another cache" in err
    assert not (tmp_path / "salted" / "stage2" / "checkpoints").exists()  # refused before training


@pytest.mark.faults
def test_make_cache_does_not_call_a_salted_cache_complete(salted, two_caches):
    tokenizer_dir, folder = salted
    with pytest.raises(CacheMismatchError, match=f"shard {SHARD} does not match"):
        run(cache_config(tokenizer_dir, folder))
    # An extra shard LightningDiT's reader would glob is caught the same way.
    shutil.copy(two_caches[1] / SHARD, folder / "latents_rank01_shard001.safetensors")
    with pytest.raises(CacheMismatchError, match="latents_rank01_shard001.safetensors is not listed"):
        run(cache_config(tokenizer_dir, folder))
    # The advised remedy works, and caching again gives the very same bytes.
    result = run(cache_config(tokenizer_dir, folder, "overwrite=true"))
    assert result.images_encoded == 300
    assert verify_cache(folder).ok
    assert checksums(folder) == checksums(two_caches[1].parent / "good")


@pytest.mark.faults
def test_a_shard_rewritten_with_its_old_mtime_is_still_hashed(two_caches, tmp_path):
    """Reading a cache hashes only shards whose file changed since they were hashed; any write counts."""
    tokenizer_dir, good, foreign = two_caches
    folder = shutil.copytree(good, tmp_path / "copy")
    assert (good / "verified.json").is_file()  # the cache step stamps the shards it just hashed
    LatentDataset(folder, tokenizer=tokenizer_dir)  # the copy has new files: hashed once, stamped
    stamps = json.loads((folder / "verified.json").read_text())["shards"]
    assert sorted(stamps) == sorted(
        s["file"] for s in json.loads((folder / "manifest.json").read_text())["shards"]
    )
    LatentDataset(folder, tokenizer=tokenizer_dir)
    shard = folder / SHARD
    before = shard.stat()
    shard.write_bytes((foreign / SHARD).read_bytes())
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))  # as `touch -r` / `cp -p` would
    assert shard.stat().st_size == before.st_size and shard.stat().st_mtime_ns == before.st_mtime_ns
    with pytest.raises(CacheMismatchError, match=f"shard {SHARD} does not match"):
        LatentDataset(folder, tokenizer=tokenizer_dir, preload=False)
    with pytest.raises(CacheMismatchError, match=f"shard {SHARD} does not match"):
        run(cache_config(tokenizer_dir, folder))


def test_shard_bytes_do_not_depend_on_metadata_order():
    tensors = {"latents": torch.randn(3, 2, 2), "labels": torch.arange(3)}
    keys = ["format", "shard", "first_index", "end_index", "total_size", "dtype"]
    metadata = {k: str(i) for i, k in enumerate(keys)}
    variants = {
        canonical_safetensors_bytes(tensors, dict(reversed(list(metadata.items())))) for _ in range(8)
    }
    variants.add(canonical_safetensors_bytes(tensors, metadata))
    assert len(variants) == 1
    # What the safetensors library alone gives varies (its metadata comes from a hash map).
    assert len({safetensors_save(tensors, metadata=metadata) for _ in range(8)}) > 1
