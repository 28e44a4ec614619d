"""What a latent cache folder holds, and how it proves where its latents came from.

Layout (the LightningDiT reader globs ``*.safetensors`` in the folder, so
nothing else there may end in ``.safetensors``)::

    latents_rank{R:02d}_shard{K:03d}.safetensors   latents, latents_flip, labels (+ indices)
    latents_stats.pt                               {"mean", "std"}: (1, C, 1, 1) float32 tensors
    manifest.json                                  ours: tokenizer, preprocessing, counts, checksums
    verified.json                                  shards already hashed, with their file status then
    config.yaml                                    the resolved config of the last run
    progress/                                      only while caching: plan + one record per shard

``K`` is the global shard number: shard K holds the images with global index in
``[K * shard_size, (K + 1) * shard_size)``, whichever rank ``R`` wrote it. That
makes the content of a shard independent of the number of ranks, so a cache
can be resumed with a different number of GPUs.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from vtp_gen.utils.atomic import write_json_atomic

FORMAT_NAME = "vtp_gen.latent_cache"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STATS_FILE = "latents_stats.pt"
PROGRESS_DIR = "progress"
PLAN_FILE = "plan.json"
# Which shards were hashed and found equal to the manifest, with their file status at the time; a
# shard whose status is unchanged is not hashed again (see ShardStamps).
VERIFIED_FILE = "verified.json"
SHARD_PATTERN = re.compile(r"^latents_rank(\d+)_shard(\d+)\.safetensors$")


class CacheMismatchError(ValueError):
    """A cache that does not belong to the tokenizer, data or settings it is used with."""


def shard_file_name(rank: int, shard: int) -> str:
    return f"latents_rank{rank:02d}_shard{shard:03d}.safetensors"


def shard_record_path(folder: Path, shard: int) -> Path:
    return Path(folder) / PROGRESS_DIR / f"shard{shard:06d}.json"


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_weight_files(path: str | Path) -> list[Path]:
    """The safetensors files holding a tokenizer's weights (one file, or an HF folder, possibly sharded)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(
            f"tokenizer {path} does not exist: pass tokenizer=FOLDER (official VTP layout: config.json + "
            "model.safetensors), e.g. the stage-1 export runs/<run.name>/stage1/tokenizer (`make stage1`) "
            "or an official VTP-*-f16d64 folder"
        )
    # The files load_tokenizer reads: model.safetensors, else the shards its index names.
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    index = read_json(path / "model.safetensors.index.json")
    if index is not None and "weight_map" in index:
        return [path / name for name in sorted(set(index["weight_map"].values()))]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"tokenizer folder {path} holds no *.safetensors weights")
    return files


def tokenizer_identity(path: str | Path) -> dict[str, Any]:
    """Path and content hash of a tokenizer; the hash (not the path) is what identifies it."""
    path = Path(path).resolve()
    digest = hashlib.sha256()
    for file in tokenizer_weight_files(path):
        digest.update(file.name.encode())
        digest.update(bytes.fromhex(sha256_file(file)))
    identity: dict[str, Any] = {"path": str(path), "weights_sha256": digest.hexdigest()}
    config = path / "config.json" if path.is_dir() else None
    if config is not None and config.is_file():
        identity["config_sha256"] = sha256_file(config)
    return identity


def dataset_fingerprint(dataset) -> str:
    """A hash of what a map-style labelled dataset holds, cheap enough for ImageNet.

    In-memory sets (Fashion-MNIST) hash their pixels and labels; file-backed sets
    hash their sorted (relative path, label) list, which changes when files are
    added, removed, renamed or relabelled (not when a file is rewritten in place).
    """
    digest = hashlib.sha256()
    digest.update(type(dataset).__name__.encode())
    digest.update(str(len(dataset)).encode())
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    files = getattr(dataset, "files", None)
    if hasattr(dataset, "fingerprint_lines"):  # webdataset shards indexed for caching
        for line in dataset.fingerprint_lines():
            digest.update(line.encode())
    elif isinstance(images, np.ndarray) and isinstance(labels, np.ndarray):
        digest.update(str(images.shape).encode())
        digest.update(np.ascontiguousarray(images).tobytes())
        digest.update(np.ascontiguousarray(labels.astype(np.int64)).tobytes())
    elif files is not None:
        root = Path(getattr(dataset, "root", "/"))
        for file, label in files:
            file = Path(file)
            name = file.relative_to(root) if file.is_relative_to(root) else file
            digest.update(f"{name}\t{int(label)}\n".encode())
    else:
        raise TypeError(
            f"cannot fingerprint a {type(dataset).__name__}: latent caching needs a map-style labelled "
            "dataset (data.source=fashion_mnist, image_folder or webdataset)"
        )
    return digest.hexdigest()


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_manifest(folder: str | Path) -> dict | None:
    manifest = read_json(Path(folder) / MANIFEST_FILE)
    if manifest is None or manifest.get("format") != FORMAT_NAME:
        return None
    return manifest


def is_complete(folder: str | Path) -> bool:
    manifest = read_manifest(folder)
    return bool(manifest and manifest.get("complete"))


def plan_differences(old: dict, new: dict) -> list[str]:
    """Top-level (and one level down) keys whose values differ between two plans."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(key)
    return diffs


def check_tokenizer(folder: str | Path, tokenizer: str | Path) -> dict:
    """Refuse a cache that was not made with ``tokenizer`` (compared by weight hash).

    Returns the manifest. Stage 2 calls this (through :class:`LatentDataset`),
    because latents of one tokenizer decoded by another give garbage without
    any error.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or not manifest.get("complete"):
        raise FileNotFoundError(
            f"{folder} is not a complete latent cache (no complete {MANIFEST_FILE}); run `make cache`"
        )
    made_with = manifest["tokenizer"]
    wanted = tokenizer_identity(tokenizer)
    if made_with["weights_sha256"] != wanted["weights_sha256"]:
        raise CacheMismatchError(
            f"latent cache {folder} was made with tokenizer {made_with['path']} (weights sha256 "
            f"{made_with['weights_sha256'][:12]}), but this run is configured with {wanted['path']} "
            f"(weights sha256 {wanted['weights_sha256'][:12]}). Latents of one tokenizer are meaningless to "
            'another: re-cache with `make cache ARGS="tokenizer=... out_dir=..."` or point this run at the '
            "tokenizer the cache was made with."
        )
    return manifest


def check_shard_bytes(folder: str | Path, entry: dict, data: bytes | None = None) -> bytes:
    """Refuse a shard whose size or checksum differs from its manifest entry; returns its bytes.

    Pass ``data`` when the shard was already read (the check then costs one hash, no read).
    A shard copied in from another cache, even one of the same shape, has another checksum.
    """
    path = Path(folder) / entry["file"]
    if data is None:
        if not path.is_file():
            raise CacheMismatchError(
                f"latent cache {folder}: shard {entry['file']} listed in {MANIFEST_FILE} is missing; "
                "restore it, or rerun `make cache` with overwrite=true to cache again"
            )
        data = path.read_bytes()
    if len(data) != entry["bytes"] or sha256_bytes(data) != entry["sha256"]:
        raise CacheMismatchError(
            f"latent cache {folder}: shard {entry['file']} does not match {MANIFEST_FILE} (sha256 "
            f"{sha256_bytes(data)[:12]}, {len(data)} bytes; the manifest says {entry['sha256'][:12]}, "
            f"{entry['bytes']} bytes): it was modified or copied from another cache. Restore it, or rerun "
            "`make cache` with overwrite=true to cache again"
        )
    return data


def file_status(path: Path) -> list[int]:
    """Size, mtime, ctime and inode: any write, copy or rename onto ``path`` changes one of them.

    ctime cannot be set back by a user (``touch -r`` and ``cp -p`` restore mtime only), so a shard
    replaced by a copy from elsewhere never keeps the status it was verified with.
    """
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


class ShardStamps:
    """The shards of a cache already hashed against the manifest; unchanged ones are not hashed again.

    Written by the cache step right after it wrote and hashed each shard, and after any full check.
    Checking a cache is then a ``stat`` per shard; a shard that was touched in any way is hashed
    (one read) before it is trusted. A read-only cache folder just keeps no stamps.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        stamps = read_json(self.folder / VERIFIED_FILE)
        shards = stamps.get("shards") if isinstance(stamps, dict) else None
        self.shards: dict[str, dict] = shards if isinstance(shards, dict) else {}
        self.changed = False

    def trusted(self, entry: dict) -> bool:
        stamp = self.shards.get(entry["file"])
        path = self.folder / entry["file"]
        return (
            isinstance(stamp, dict)
            and stamp.get("sha256") == entry["sha256"]
            and path.is_file()
            and stamp.get("status") == file_status(path)
        )

    def add(self, entry: dict) -> None:
        self.shards[entry["file"]] = {
            "sha256": entry["sha256"],
            "status": file_status(self.folder / entry["file"]),
        }
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return

        try:
            write_json_atomic(self.folder / VERIFIED_FILE, {"shards": self.shards})
        except OSError:
            pass  # a read-only cache: every run hashes its shards again, which is correct, only slower
        self.changed = False


def find_shard_mismatch(folder: str | Path, manifest: dict) -> str | None:
    """The first shard that is missing, differs from the manifest or is not listed.

    A ``stat`` per shard when the stamps say the shards are unchanged since they were hashed, else
    one read of each changed shard.
    """
    listed = {entry["file"] for entry in manifest.get("shards", [])}
    for path in sorted(Path(folder).glob("*.safetensors")):
        if SHARD_PATTERN.match(path.name) and path.name not in listed:
            # LightningDiT's reader globs every shard file: an unlisted one adds images.
            return (
                f"latent cache {folder}: shard {path.name} is not listed in {MANIFEST_FILE}; remove it, or "
                "rerun `make cache` with overwrite=true to cache again"
            )
    stamps = ShardStamps(folder)
    for entry in manifest.get("shards", []):
        if stamps.trusted(entry):
            continue
        try:
            check_shard_bytes(folder, entry)
        except CacheMismatchError as e:
            return str(e)
        stamps.add(entry)
    stamps.save()
    return None
