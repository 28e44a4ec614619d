"""Crash safety: a caching process killed with SIGKILL leaves a folder that a rerun completes exactly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vtp_gen.config import load_config
from vtp_gen.data.fashion_mnist import find_root
from vtp_gen.latents.config import CacheConfig
from vtp_gen.latents.run import run
from vtp_gen.latents.verify import verify_cache


def _fashion_available() -> bool:
    try:
        find_root()
        return True
    except FileNotFoundError:
        return False


pytestmark = pytest.mark.skipif(
    not _fashion_available(), reason="Fashion-MNIST not installed: run `make setup`"
)

NUM_IMAGES = 300
SHARD_SIZE = 20


def overrides(tokenizer: Path, folder: Path, *extra: str) -> list[str]:
    return [
        f"tokenizer={tokenizer}",
        f"out_dir={folder}",
        "data.image_size=64",
        f"data.max_samples={NUM_IMAGES}",
        "data.batch_size=10",
        f"shard_size={SHARD_SIZE}",
        "stats_max_images=0",  # explicit: the CLI reads cache_tiny.yaml, run(cfg) here the schema defaults
        "accelerator=cpu",
        "progress_bar=false",
        *extra,
    ]


def start_and_kill(args: list[str], folder: Path, after_shards: int, timeout: float = 120.0) -> int:
    """Run `vtp-gen cache` in its own process group and SIGKILL the group once `after_shards` shards
    are recorded; returns how many were recorded at that moment."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vtp_gen.cli", "cache", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # SIGKILL reaches every rank it started
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            recorded = len(list((folder / "progress").glob("shard*.json")))
            if recorded >= after_shards:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return recorded
            if process.poll() is not None:
                raise AssertionError(f"cache exited before the kill point: {process.stderr.read()[-2000:]}")
            time.sleep(0.01)
        raise AssertionError("the kill point was not reached in time")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def assert_complete_and_exact(folder: Path) -> None:
    report = verify_cache(folder)
    assert report.ok, str(report)
    seen = []
    for path in sorted(folder.glob("*.safetensors")):  # the files LightningDiT's reader would use
        seen += load_file(str(path))["indices"].tolist()
    assert sorted(seen) == list(range(NUM_IMAGES))  # each image exactly once
    assert not list(folder.glob(".*tmp*"))


def test_rerun_after_sigkill_resumes_and_completes(reference_dir, tmp_path):
    tokenizer = reference_dir / "vtp_tiny_default"
    folder = tmp_path / "cache"
    recorded = start_and_kill(overrides(tokenizer, folder), folder, after_shards=2)
    assert not (folder / "manifest.json").exists()
    assert recorded < NUM_IMAGES // SHARD_SIZE
    # A larger batch on resume is fine: batch size does not change what a shard holds.
    result = run(
        load_config(CacheConfig, None, overrides(tokenizer, folder, "devices=1", "data.batch_size=60"))
    )
    # Resumed, not restarted: the shards recorded before the kill were kept.
    assert result.images_encoded <= NUM_IMAGES - recorded * SHARD_SIZE
    assert result.manifest["counts"]["images"] == NUM_IMAGES
    assert_complete_and_exact(folder)
    stats = torch.load(folder / "latents_stats.pt", weights_only=True)
    assert stats["mean"].shape == (1, 16, 1, 1)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_killed_again_and_again_still_completes_exactly(reference_dir, tmp_path, devices):
    """Kill at several points (including with 2 ranks writing), then finish; compare with an uncut run."""
    tokenizer = reference_dir / "vtp_tiny_default"
    folder = tmp_path / "cache"
    args = overrides(tokenizer, folder, f"devices={devices}")
    for kill_point in (1, 3, 6, 10):
        start_and_kill(args, folder, after_shards=kill_point)
        assert not (folder / "manifest.json").exists()
    done = subprocess.run(
        [sys.executable, "-m", "vtp_gen.cli", "cache", *args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_complete_and_exact(folder)
    uncut = tmp_path / "uncut"
    run(load_config(CacheConfig, None, overrides(tokenizer, uncut, "devices=1")))
    for key in ("mean", "std"):
        torch.testing.assert_close(
            torch.load(folder / "latents_stats.pt", weights_only=True)[key],
            torch.load(uncut / "latents_stats.pt", weights_only=True)[key],
            rtol=1e-6,
            atol=1e-7,
        )
