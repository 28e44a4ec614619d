"""Check a latent cache against its manifest: files, checksums, counts, indices, statistics.

    python -m vtp_gen.latents.verify runs/default/cache      # exit status 0 = good, 1 = problems

Every shard is read once: the bytes are hashed and then parsed from the same
buffer, so a full check costs one read of the cache.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes

from vtp_gen.latents.manifest import (
    FORMAT_NAME,
    MANIFEST_FILE,
    SHARD_PATTERN,
    STATS_FILE,
    read_json,
    sha256_bytes,
    sha256_file,
)
from vtp_gen.pretrained.safe_unpickle import load_tensors_only


@dataclass
class VerifyReport:
    folder: Path
    problems: list[str] = field(default_factory=list)
    images: int = 0
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        if self.ok:
            return f"{self.folder}: OK ({self.images} images in {self.shards} shards, checksums and counts match)"
        lines = [f"{self.folder}: {len(self.problems)} problem(s)"] + [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def _check_shard(report: VerifyReport, folder: Path, entry: dict, manifest: dict) -> int:
    """Check one listed shard; returns the number of images it really holds (0 if unusable)."""
    path = folder / entry["file"]
    if not path.is_file():
        report.problems.append(f"{entry['file']}: missing")
        return 0
    data = path.read_bytes()
    if len(data) != entry["bytes"]:
        report.problems.append(f"{entry['file']}: {len(data)} bytes, manifest says {entry['bytes']}")
    if sha256_bytes(data) != entry["sha256"]:
        report.problems.append(f"{entry['file']}: checksum mismatch (corrupted or modified)")
        return 0  # its content cannot be trusted, so do not report derived problems
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError) as e:
        report.problems.append(f"{entry['file']}: unreadable safetensors ({e})")
        return 0
    wanted = {"latents", "labels", "indices"}
    if manifest["preprocessing"]["flips"] != "none":
        wanted.add("latents_flip")
    if not wanted <= set(tensors):
        report.problems.append(f"{entry['file']}: missing tensors {sorted(wanted - set(tensors))}")
        return 0
    n = entry["num_images"]
    shape = tuple(manifest["latent"]["shape"] or ())
    for key in wanted - {"labels", "indices"}:
        if tuple(tensors[key].shape) != (n, *shape):
            report.problems.append(
                f"{entry['file']}: {key} has shape {tuple(tensors[key].shape)}, expected {(n, *shape)}"
            )
        elif not torch.isfinite(tensors[key].float()).all():
            report.problems.append(f"{entry['file']}: {key} holds NaN or inf")
    expected = sorted(set(range(entry["first_index"], entry["end_index"])) - set(entry["skipped_indices"]))
    if tensors["indices"].tolist() != expected:
        report.problems.append(
            f"{entry['file']}: indices are not [{entry['first_index']}, {entry['end_index']}) "
            "minus the skipped images, each once"
        )
    # -1 = no label (webdataset samples without one); anything below is damage.
    if tuple(tensors["labels"].shape) != (n,) or (n and int(tensors["labels"].min()) < -1):
        report.problems.append(f"{entry['file']}: labels must be {n} class ids (or -1 = unlabelled)")
    return len(tensors["indices"])


def _check_stats(report: VerifyReport, folder: Path, manifest: dict) -> None:
    path = folder / STATS_FILE
    if not path.is_file():
        report.problems.append(f"{STATS_FILE}: missing")
        return
    if sha256_file(path) != manifest["stats"]["sha256"]:
        report.problems.append(f"{STATS_FILE}: checksum mismatch")
    try:
        stats = load_tensors_only(path)
        mean, std = stats["mean"], stats["std"]
    except Exception as e:  # any unreadable or unexpected content is a finding, not a crash
        report.problems.append(f"{STATS_FILE}: not a plain {{'mean', 'std'}} tensor file ({e})")
        return
    channels = len(manifest["stats"]["mean"])
    for name, value, recorded in (
        ("mean", mean, manifest["stats"]["mean"]),
        ("std", std, manifest["stats"]["std"]),
    ):
        if tuple(value.shape) != (1, channels, 1, 1):
            report.problems.append(
                f"{STATS_FILE}: {name} has shape {tuple(value.shape)}, expected (1, {channels}, 1, 1)"
            )
            continue
        if not torch.allclose(
            value.double().flatten(), torch.tensor(recorded, dtype=torch.float64), rtol=1e-6
        ):
            report.problems.append(f"{STATS_FILE}: {name} differs from the manifest")
    if tuple(std.shape) == (1, channels, 1, 1) and not (std > 0).all():
        report.problems.append(f"{STATS_FILE}: std must be positive in every channel")


def verify_cache(folder: str | Path) -> VerifyReport:
    """Every check of a finished cache; the report lists each problem found (empty = good)."""
    folder = Path(folder)
    report = VerifyReport(folder)
    manifest = read_json(folder / MANIFEST_FILE)
    if manifest is None or manifest.get("format") != FORMAT_NAME:
        report.problems.append(f"no readable {MANIFEST_FILE} (not a vtp_gen latent cache, or never finished)")
        return report
    if not manifest.get("complete"):
        report.problems.append("the manifest is not marked complete")
    entries = manifest.get("shards", [])
    report.shards = len(entries)
    listed = {e["file"] for e in entries}
    for path in sorted(folder.glob("*.safetensors")):
        if path.name not in listed:
            # LightningDiT's reader globs every *.safetensors: an extra file means extra or duplicate images.
            what = "a shard file" if SHARD_PATTERN.match(path.name) else "a file"
            report.problems.append(f"{path.name}: {what} not in the manifest")
    if len(entries) != manifest["layout"]["num_shards"]:
        report.problems.append(
            f"{len(entries)} shards listed, layout says {manifest['layout']['num_shards']}"
        )
    report.images = sum(_check_shard(report, folder, entry, manifest) for entry in entries)
    skipped = sum(sum(e["skipped"].values()) for e in entries)
    if report.images != manifest["counts"]["images"]:
        report.problems.append(
            f"the shards hold {report.images} readable images, the manifest counts {manifest['counts']['images']}"
        )
    if manifest["counts"]["images"] + skipped != manifest["dataset"]["num_images"]:
        report.problems.append(
            f"{manifest['counts']['images']} cached + {skipped} skipped != "
            f"{manifest['dataset']['num_images']} images in the dataset"
        )
    if not all(math.isfinite(v) for v in manifest["stats"]["mean"] + manifest["stats"]["std"]):
        report.problems.append("manifest statistics are not finite")
    _check_stats(report, folder, manifest)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="a latent cache folder (holding manifest.json)")
    args = parser.parse_args(argv)
    report = verify_cache(args.folder)
    print(report)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
