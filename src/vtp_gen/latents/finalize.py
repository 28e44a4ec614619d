"""Turn a folder of written shards into a finished cache: statistics, then the manifest.

Runs on one process after every rank has written its shards. It reads only
the per-shard records (no latents), so it takes milliseconds even at ImageNet
scale. The manifest is written last: a folder with a complete manifest is a
complete cache, whatever happened before.
"""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import torch

from vtp_gen import __version__
from vtp_gen.latents.manifest import (
    MANIFEST_FILE,
    PROGRESS_DIR,
    STATS_FILE,
    ShardStamps,
    sha256_file,
)
from vtp_gen.latents.stats import ChannelMoments
from vtp_gen.latents.writer import ShardLayout, completed_shards
from vtp_gen.utils.atomic import atomic_output, write_json_atomic


def save_stats(folder: Path, mean: torch.Tensor, std: torch.Tensor) -> Path:
    """``latents_stats.pt`` as LightningDiT reads it: plain float32 (1, C, 1, 1) tensors.

    float32 because the DiT's input is (z - mean) / std and float64 stats would
    silently promote every training batch to float64.
    """
    path = Path(folder) / STATS_FILE
    stats = {
        "mean": mean.to(torch.float32).view(1, -1, 1, 1).clone(),
        "std": std.to(torch.float32).view(1, -1, 1, 1).clone(),
    }
    with atomic_output(path) as tmp:
        torch.save(stats, tmp)
    return path


def finalize_cache(folder: str | Path, plan: dict, layout: ShardLayout) -> dict:
    """Merge per-shard moments in shard order, write ``latents_stats.pt`` and ``manifest.json``."""
    folder = Path(folder)
    records = completed_shards(folder, layout)
    missing = [k for k in range(layout.num_shards) if k not in records]
    if missing:
        raise RuntimeError(f"{folder}: cannot finalise, shards not written: {missing[:20]}")
    ordered = [records[k] for k in range(layout.num_shards)]
    shapes = {tuple(r["latent_shape"]) for r in ordered if r["num_images"]}
    if len(shapes) > 1:
        raise RuntimeError(f"{folder}: shards disagree on the latent shape: {sorted(shapes)}")
    channels = len(ordered[0]["moments"]["mean"])
    moments = ChannelMoments.empty(channels)
    for record in ordered:
        moments = moments.merge(ChannelMoments.from_record(record["moments"]))
    save_stats(folder, moments.mean, moments.std)
    skipped = Counter()
    for record in ordered:
        skipped.update(record["skipped"])
    manifest = {
        **plan,
        "complete": True,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "vtp_gen_version": __version__,
        "latent": {"shape": list(shapes.pop()) if shapes else None, "dtype": ordered[0]["dtype"]},
        "counts": {
            "images": sum(r["num_images"] for r in ordered),
            "skipped": dict(skipped),
            "shards": layout.num_shards,
        },
        "stats": {
            **plan["stats"],
            "file": STATS_FILE,
            "sha256": sha256_file(folder / STATS_FILE),
            "values_counted": moments.count,
            "mean": moments.mean.tolist(),
            "std": moments.std.tolist(),
        },
        "shards": [
            {
                k: r[k]
                for k in (
                    "file",
                    "sha256",
                    "bytes",
                    "rank",
                    "first_index",
                    "end_index",
                    "num_images",
                    "skipped",
                    "skipped_indices",
                )
            }
            for r in ordered
        ],
    }
    write_json_atomic(folder / MANIFEST_FILE, manifest)
    # Each shard was hashed from the very bytes written: stamp them, so reading the cache costs no rehash.
    stamps = ShardStamps(folder)
    for entry in manifest["shards"]:
        stamps.add(entry)
    stamps.save()
    shutil.rmtree(folder / PROGRESS_DIR, ignore_errors=True)
    return manifest
