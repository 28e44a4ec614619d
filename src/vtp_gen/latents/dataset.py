"""Reading a latent cache in stage 2: standardised latents for training, raw latents for decoding.

The DiT is trained on ``(z - mean_c) / std_c * multiplier`` (raw VTP latents
have std ~0.1). Everything it generates lives in that space, so samples must
go through :func:`denormalize_latents` (or :meth:`LatentStats.denormalize`)
before the tokenizer's decoder: decoding standardised latents gives garbage
without any error, a classic pitfall.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors_bytes
from torch import Tensor
from torch.utils.data import Dataset

from vtp_gen.latents.manifest import (
    MANIFEST_FILE,
    SHARD_PATTERN,
    STATS_FILE,
    CacheMismatchError,
    ShardStamps,
    check_shard_bytes,
    check_tokenizer,
    read_manifest,
)
from vtp_gen.pretrained.safe_unpickle import load_tensors_only

# Caches below this size are read into memory once (the embedded default is ~0.5 GB);
# larger ones are read per item through memory-mapped safetensors.
PRELOAD_LIMIT_BYTES = 4 << 30


@dataclass
class LatentStats:
    """Per-channel mean and std of a cache's latents, shape (1, C, 1, 1), plus the multiplier."""

    mean: Tensor
    std: Tensor
    multiplier: float = 1.0

    @classmethod
    def load(cls, folder: str | Path, multiplier: float = 1.0) -> LatentStats:
        path = Path(folder) / STATS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: a latent cache needs its statistics file (run `make cache`)"
            )
        stats = load_tensors_only(path)
        mean, std = stats["mean"].float(), stats["std"].float()
        if mean.dim() != 4 or mean.shape[0] != 1 or mean.shape[2:] != (1, 1) or std.shape != mean.shape:
            raise ValueError(f"{path}: mean/std must have shape (1, C, 1, 1), got {tuple(mean.shape)}")
        return cls(mean, std, multiplier)

    def _broadcast(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean, std = self.mean.to(z.device, z.dtype), self.std.to(z.device, z.dtype)
        # A single latent is (C, H, W): drop the batch axis so the result keeps z's shape.
        return (mean[0], std[0]) if z.dim() == 3 else (mean, std)

    def normalize(self, z: Tensor) -> Tensor:
        """Raw tokenizer latents -> the space the generator is trained in."""
        mean, std = self._broadcast(z)
        return (z - mean) / std * self.multiplier

    def denormalize(self, z: Tensor) -> Tensor:
        """Generator space -> raw tokenizer latents (what ``get_latents_decoded_images`` expects)."""
        mean, std = self._broadcast(z)
        return z / self.multiplier * std + mean


def denormalize_latents(
    z: Tensor, stats: LatentStats | str | Path, multiplier: float | None = None
) -> Tensor:
    """Undo the standardisation of generated latents before decoding them.

    ``stats`` is a :class:`LatentStats` or a cache folder; ``multiplier``
    overrides the one in ``stats`` (it must equal the one used in training).
    """
    if not isinstance(stats, LatentStats):
        stats = LatentStats.load(stats)
    if multiplier is not None:
        stats = LatentStats(stats.mean, stats.std, multiplier)
    return stats.denormalize(z)


def _shard_files(folder: Path) -> tuple[list[Path], list[dict] | None]:
    """The shard files in reading order, and their manifest entries (None for a cache without one)."""
    manifest = read_manifest(folder)
    if manifest is not None:
        if not manifest.get("complete"):
            raise FileNotFoundError(f"{folder}: the latent cache is not complete (rerun `make cache`)")
        entries = manifest["shards"]
        return [folder / shard["file"] for shard in entries], entries
    # A cache written by other tools (e.g. LightningDiT's extract_features): its own sorted-glob order.
    files = sorted(p for p in folder.glob("*.safetensors") if SHARD_PATTERN.match(p.name))
    if not files:
        raise FileNotFoundError(
            f"{folder} holds no latents_rank*_shard*.safetensors files (run `make cache`)"
        )
    return files, None


class LatentDataset(Dataset):
    """(latent, label) pairs from a latent cache, for stage-2 training.

    Each access picks the flipped latent with probability ``flip_prob`` (the
    horizontal-flip augmentation, precomputed), then standardises with the
    cache's per-channel statistics and ``multiplier``. Pass ``tokenizer`` (the
    path stage 2 decodes with) to refuse a cache made with another tokenizer.
    ``normalize=False`` returns the stored latents as they are (no statistics,
    no multiplier).
    A cache with a manifest is checked against it when opened: every shard's
    image count, and its size and SHA-256 unless its file is unchanged since it
    was last hashed (:class:`ShardStamps`; a preloaded shard is hashed from the
    bytes just read). A shard that differs, e.g. one copied in from a cache of
    another tokenizer, raises :class:`CacheMismatchError` before training.
    Randomness comes from torch's generator, which DataLoader seeds per worker.
    """

    def __init__(
        self,
        folder: str | Path,
        flip_prob: float = 0.5,
        normalize: bool = True,
        multiplier: float = 1.0,
        tokenizer: str | Path | None = None,
        preload: bool | None = None,
    ):
        self.folder = Path(folder)
        if tokenizer is not None:
            check_tokenizer(self.folder, tokenizer)
        self.files, self.entries = _shard_files(self.folder)
        self.stats = LatentStats.load(self.folder, multiplier) if normalize else None
        self.flip_prob = flip_prob
        self.counts: list[int] = []
        self.has_flips = True
        for shard, path in enumerate(self.files):
            if self.entries is not None and not path.is_file():
                check_shard_bytes(self.folder, self.entries[shard])  # names the missing shard
            with safe_open(str(path), framework="pt") as f:
                self.counts.append(f.get_slice("labels").get_shape()[0])
                self.has_flips &= "latents_flip" in f.keys()
            if self.entries is not None and self.counts[-1] != self.entries[shard]["num_images"]:
                raise CacheMismatchError(
                    f"latent cache {self.folder}: shard {path.name} holds {self.counts[-1]} latents, "
                    f"{MANIFEST_FILE} says {self.entries[shard]['num_images']}: it was modified or copied from "
                    "another cache. Restore it, or rerun `make cache` with overwrite=true to cache again"
                )
        if flip_prob > 0 and not self.has_flips:
            raise ValueError(f"{self.folder} was cached without flips (flips=false): use flip_prob=0")
        self.offsets = [0]
        for count in self.counts:
            self.offsets.append(self.offsets[-1] + count)
        if preload is None:
            preload = sum(p.stat().st_size for p in self.files) <= PRELOAD_LIMIT_BYTES
        self._stamps = ShardStamps(self.folder) if self.entries is not None else None
        self.memory: dict[str, Tensor] | None = self._load_all() if preload else None
        if not preload and self._stamps is not None:
            for entry in self.entries:
                if not self._stamps.trusted(entry):
                    check_shard_bytes(self.folder, entry)  # one read, before training
                    self._stamps.add(entry)
        if self._stamps is not None:
            self._stamps.save()
        self._stamps = None  # nothing to carry into DataLoader workers
        self._handles: dict[int, object] = {}

    def _read_shard(self, shard: int) -> dict[str, Tensor]:
        # One read: the bytes are hashed (unless stamped unchanged) and parsed from the same buffer.
        data = self.files[shard].read_bytes()
        if self._stamps is not None and not self._stamps.trusted(self.entries[shard]):
            check_shard_bytes(self.folder, self.entries[shard], data)
            self._stamps.add(self.entries[shard])
        return load_safetensors_bytes(data)

    def _load_all(self) -> dict[str, Tensor]:
        keys = ("latents", "latents_flip", "labels") if self.has_flips else ("latents", "labels")
        parts = [self._read_shard(shard) for shard in range(len(self.files))]
        return {key: torch.cat([p[key] for p in parts]) for key in keys}

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getstate__(self) -> dict:
        # Open safetensors handles do not pickle; each DataLoader worker opens its own.
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def raw(self, index: int, flipped: bool = False) -> tuple[Tensor, Tensor]:
        """The stored latent (not standardised) and label of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} latents")
        key = "latents_flip" if flipped else "latents"
        if self.memory is not None:
            return self.memory[key][index], self.memory["labels"][index]
        shard = bisect.bisect_right(self.offsets, index) - 1
        row = index - self.offsets[shard]
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(self.files[shard]), framework="pt")
        return handle.get_slice(key)[row : row + 1][0], handle.get_slice("labels")[row : row + 1][0]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        flipped = self.flip_prob > 0 and bool(torch.rand(()) < self.flip_prob)
        latent, label = self.raw(index, flipped)
        latent = latent.float()
        if self.stats is not None:
            latent = self.stats.normalize(latent)
        return latent, label.long()
