"""Reference features computed once per machine, stored with what made them and a checksum.

A reference set's features depend on the images (which data, which split, how many),
on how they were brought to size, and on the feature network's weights. A cache that
silently survives a change to any of these gives wrong numbers that look right, so:

* the file's name carries a digest of the :class:`ReferenceKey` (another N, network or
  preprocessing lands in another file and is computed afresh);
* the file's header repeats the whole key, and a file whose key differs from the one
  asked for is refused (:class:`StaleReferenceError`, naming the fields that differ):
  a copied or renamed cache is never used for another reference;
* the header holds a sha256 of the stored arrays, checked on every load: a file that was
  modified or truncated is refused (:class:`CorruptReferenceError`), never recomputed
  over, so that the damage is seen.

Files are safetensors (``features`` float32, ``mu`` / ``sigma`` float64).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from vtp_gen.metrics.generation import FeatureStatistics
from vtp_gen.utils.atomic import atomic_output

CACHE_FORMAT = "1"


class StaleReferenceError(ValueError):
    """The cached reference was made from other data, network or preprocessing than asked for."""


class CorruptReferenceError(ValueError):
    """The cached reference's arrays do not match their checksum (modified or truncated file)."""


@dataclass(frozen=True)
class ReferenceKey:
    """Everything the reference features depend on.

    ``data``: a fingerprint of the images and labels (e.g. ``dataset_fingerprint``);
    ``preprocessing``: how images were brought to the network (crop, size, grey conversion);
    ``extractor``: the feature network's name; ``network``: a digest of its weights, for
    networks trained here (the judge), "" when the name pins the weights.
    """

    dataset: str
    split: str
    num_images: int
    image_size: int
    preprocessing: str
    extractor: str
    network: str = ""
    data: str = ""

    def digest(self) -> str:
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def file_name(self) -> str:
        slug = f"{self.dataset}-{self.split}-{self.image_size}px-{self.num_images}".replace(" ", "_")
        return f"{slug}-{self.digest()}.safetensors"

    def differences(self, other: ReferenceKey) -> list[str]:
        return [
            f"{f.name}: {getattr(other, f.name)!r} (cached) vs {getattr(self, f.name)!r} (asked)"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


@dataclass
class CachedReference:
    statistics: FeatureStatistics
    features: np.ndarray
    key: ReferenceKey
    path: Path | None
    hit: bool  # read from the cache (False: computed now)
    seconds: float  # time to compute (or to read, on a hit)


def network_digest(network) -> str:
    """sha256 of a torch module's parameters and buffers: which weights made the features."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def arrays_checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_reference_features(path: str | Path, key: ReferenceKey, features: np.ndarray) -> FeatureStatistics:
    """Write ``features`` and their statistics with ``key`` and the checksum; returns the statistics."""
    statistics = FeatureStatistics.from_features(features)
    arrays = {
        "features": np.asarray(features, dtype=np.float32),
        "mu": statistics.mu,
        "sigma": statistics.sigma,
    }
    metadata = {
        "format": CACHE_FORMAT,
        "key": json.dumps(dataclasses.asdict(key), sort_keys=True),
        "sha256": arrays_checksum(arrays),
    }
    with atomic_output(path) as tmp:  # two processes sharing a cache never read half a file
        save_file(arrays, str(tmp), metadata=metadata)
    return statistics


def load_reference_features(path: str | Path, key: ReferenceKey) -> tuple[FeatureStatistics, np.ndarray]:
    """Read a cached reference made for exactly ``key``; refuse anything else (see the module doc)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            arrays = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CorruptReferenceError(
            f"{path}: unreadable reference cache ({error}); delete it to compute the reference again"
        ) from error
    if metadata.get("format") != CACHE_FORMAT or "key" not in metadata:
        raise StaleReferenceError(f"{path} is not a reference cache of format {CACHE_FORMAT}; delete it")
    cached = ReferenceKey(**json.loads(metadata["key"]))
    if cached != key:
        raise StaleReferenceError(
            f"{path} holds another reference than the one asked for ("
            + "; ".join(key.differences(cached))
            + "). It is not used; delete it or point the cache elsewhere."
        )
    if arrays_checksum(arrays) != metadata.get("sha256"):
        raise CorruptReferenceError(
            f"{path}: checksum mismatch (the stored features were modified or the file is damaged). "
            "It is not used; delete it to compute the reference again."
        )
    statistics = FeatureStatistics(arrays["mu"], arrays["sigma"], int(arrays["features"].shape[0]))
    return statistics, arrays["features"]


def cached_reference(
    folder: str | Path | None, key: ReferenceKey, compute: Callable[[], np.ndarray]
) -> CachedReference:
    """The reference for ``key``: read from ``folder`` when there, else ``compute()``d and stored.

    ``folder=None`` computes without caching. ``compute`` returns (N, D) features; N must
    equal ``key.num_images``, so a key can never describe features it does not hold.
    """
    started = time.time()
    path = Path(folder) / key.file_name() if folder is not None else None
    if path is not None and path.is_file():
        statistics, features = load_reference_features(path, key)
        return CachedReference(statistics, features, key, path, True, time.time() - started)
    features = np.asarray(compute())
    if features.ndim != 2 or features.shape[0] != key.num_images:
        raise ValueError(f"computed features {features.shape} do not match the key's {key.num_images} images")
    if path is not None:
        statistics = save_reference_features(path, key, features)
    else:
        statistics = FeatureStatistics.from_features(features)
    return CachedReference(statistics, features.astype(np.float32), key, path, False, time.time() - started)
