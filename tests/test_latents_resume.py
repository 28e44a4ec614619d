"""Crash safety: a caching process killed with SIGKILL leaves a folder that a rerun completes exactly.

"Exactly" is checked bit for bit against a cache made in one go: every image's
latent, flipped latent and label, and the statistics file. Neither the batch
size nor the number of ranks changes a latent (measured: identical with
batch 10, batch 60 and 2 ranks), so a rerun may use other values for both.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vtp_gen.config import load_config
from vtp_gen.latents.verify import verify_cache
from vtp_gen.pipeline.cache.config import CacheConfig
from vtp_gen.pipeline.cache.run import run

pytestmark = [
    pytest.mark.faults("kill and rerun"),
    pytest.mark.usefixtures("fashion_mnist"),
]

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


def start_and_kill(
    args: list[str], folder: Path, after_shards: int, delay: float = 0.0, timeout: float = 120.0
) -> int:
    """Run `vtp-gen cache` in its own process group and SIGKILL the group ``delay`` seconds after
    `after_shards` shards are recorded (mid-shard when the delay is short); returns how many were
    recorded when the kill was decided.

    From one record before the kill point on, the folder is polled every millisecond instead of every
    10: the statistics follow the last record by 4-7 ms and the manifest follows them by 2 ms
    (measured), and a kill meant for that finalisation window must not miss it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vtp_gen.pipeline.cli", "cache", *args],
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
                time.sleep(delay)
                if process.poll() is not None:
                    raise AssertionError(f"cache finished within the {delay:.2f} s delay; lower it")
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return recorded
            if process.poll() is not None:
                raise AssertionError(f"cache exited before the kill point: {process.stderr.read()[-2000:]}")
            time.sleep(0.001 if recorded >= after_shards - 1 else 0.01)
        raise AssertionError("the kill point was not reached in time")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cached_rows(folder: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Image index -> its latent, flipped latent and label, from the files LightningDiT's reader uses."""
    rows: dict[int, dict[str, torch.Tensor]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors = load_file(str(path))
        for row, index in enumerate(tensors.pop("indices").tolist()):
            assert index not in rows, f"image {index} cached twice"
            rows[index] = {name: values[row] for name, values in tensors.items()}
    return rows


def assert_complete_and_exact(folder: Path, uncut: Path) -> None:
    """Verified, each image exactly once, and every tensor and the statistics equal to the uncut cache's."""
    report = verify_cache(folder)
    assert report.ok, str(report)
    rows, reference = cached_rows(folder), cached_rows(uncut)
    assert sorted(rows) == list(range(NUM_IMAGES))
    differing = [i for i in reference if any(not torch.equal(rows[i][k], v) for k, v in reference[i].items())]
    assert not differing, f"{len(differing)} images differ from the uncut cache, e.g. {differing[:5]}"
    stats, reference_stats = (torch.load(f / "latents_stats.pt", weights_only=True) for f in (folder, uncut))
    assert all(torch.equal(stats[k], reference_stats[k]) for k in ("mean", "std"))
    assert not list(folder.glob(".*tmp*"))


@pytest.fixture(scope="module")
def uncut(reference_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("uncut") / "cache"
    run(load_config(CacheConfig, None, overrides(reference_dir / "vtp_tiny_default", folder, "devices=1")))
    return folder


def test_rerun_after_sigkill_resumes_and_completes(reference_dir, uncut, tmp_path, kill_points):
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
    assert_complete_and_exact(folder, uncut)
    kill_points("caching")


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_killed_again_and_again_still_completes_exactly(reference_dir, uncut, tmp_path, devices, kill_points):
    """Kill at several points, right after a shard record and mid-shard (a seeded random delay), while
    the last shard is written, and in the finalisation (all shards written, no manifest yet), with 1 and
    2 ranks writing; then finish and compare every latent and the statistics with the uncut cache."""
    tokenizer = reference_dir / "vtp_tiny_default"
    folder = tmp_path / "cache"
    args = overrides(tokenizer, folder, f"devices={devices}")
    delays = random.Random(devices)
    # Shard records come every 15-20 ms here; delays of 5-40 ms land mid-shard.
    kills = [
        (after, 0.0 if after in (1, 6) else round(delays.uniform(0.005, 0.04), 3)) for after in (1, 3, 6, 10)
    ]
    kills += [(14, 0.0), (15, 0.0)]  # the last shard being written; the statistics and manifest not yet
    print(f"kill points (shards recorded, delay s): {kills}")
    for after, delay in kills:
        start_and_kill(args, folder, after_shards=after, delay=delay)
        assert not (folder / "manifest.json").exists(), f"the kill at {after} shards came after the manifest"
    stats_written = (folder / "latents_stats.pt").exists()
    print(f"finalisation kill: statistics {'written' if stats_written else 'not yet written'}, no manifest")
    done = subprocess.run(
        [sys.executable, "-m", "vtp_gen.pipeline.cli", "cache", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(0 to write)" in done.stdout  # the last rerun only finalises: every shard survived the kill
    assert_complete_and_exact(folder, uncut)
    kill_points("caching", len(kills))
