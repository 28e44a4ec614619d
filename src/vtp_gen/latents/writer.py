"""Shard writing: a Lightning prediction-writer callback that turns encoded batches into shards.

Every rank receives only the images of the shards assigned to it (see
:mod:`vtp_gen.latents.encode`), so shards are disjoint and no image is encoded
twice. A shard is buffered until all of its images have arrived (or are known
to be unreadable), then written crash-safely:

1. serialise in memory and hash the bytes (the checksum costs no extra read),
2. write ``.latents_rank.._shard...safetensors.tmp<pid>``, fsync, rename to the final name
   (:func:`~vtp_gen.utils.atomic.atomic_output`; a failed write leaves no file behind),
3. write ``progress/shardNNNNNN.json`` (checksum, counts, float64 moments).

A shard counts as done only when its record exists and names a file of the
recorded size; anything else is redone on the next run, after the stale files
of that shard are removed.
"""

from __future__ import annotations

import json
import struct
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import save as safetensors_bytes

from vtp_gen.latents.manifest import (
    FORMAT_NAME,
    PROGRESS_DIR,
    SHARD_PATTERN,
    read_json,
    sha256_bytes,
    shard_file_name,
    shard_record_path,
)
from vtp_gen.latents.stats import ChannelMoments
from vtp_gen.utils.atomic import is_temporary_name, write_bytes_atomic, write_json_atomic

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ShardLayout:
    """Shard K holds the global indices ``[K * shard_size, min(N, (K + 1) * shard_size))``."""

    num_images: int
    shard_size: int

    def __post_init__(self):
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")

    @property
    def num_shards(self) -> int:
        return (self.num_images + self.shard_size - 1) // self.shard_size

    def bounds(self, shard: int) -> tuple[int, int]:
        start = shard * self.shard_size
        return start, min(self.num_images, start + self.shard_size)

    def size(self, shard: int) -> int:
        start, end = self.bounds(shard)
        return end - start

    def shard_of(self, index: int) -> int:
        return index // self.shard_size


def completed_shards(folder: Path, layout: ShardLayout) -> dict[int, dict]:
    """Shard number -> its progress record, for the shards whose file is whole and recorded."""
    done = {}
    for shard in range(layout.num_shards):
        record = read_json(shard_record_path(folder, shard))
        if record is None or record.get("num_images", 0) + sum(record.get("skipped", {}).values()) != (
            layout.size(shard)
        ):
            continue
        path = Path(folder) / record["file"]
        if path.is_file() and path.stat().st_size == record["bytes"]:
            done[shard] = record
    return done


def remove_stale_files(folder: Path, done: set[int]) -> None:
    """Delete temporary files and shard files that are not part of a completed shard.

    A second file for the same shard number (say from a rank that was killed
    after renaming but before recording) would make LightningDiT's reader see
    those images twice.
    """
    folder = Path(folder)
    for path in folder.iterdir():
        if path.name.startswith(".latents_rank") and is_temporary_name(path.name):
            path.unlink(missing_ok=True)
            continue
        match = SHARD_PATTERN.match(path.name)
        if match and int(match.group(2)) not in done:
            path.unlink(missing_ok=True)
    for record in (folder / PROGRESS_DIR).glob("shard*.json"):
        if int(record.stem.removeprefix("shard")) not in done:
            record.unlink(missing_ok=True)


@dataclass
class _ShardBuffer:
    parts: list[dict] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    received: int = 0


class ShardWriter(BasePredictionWriter):
    """Collects ``predict_step`` outputs per shard and writes each shard once it is complete.

    ``predict_step`` returns a dict with ``index`` (global indices), ``latents``,
    ``latents_flip`` (when flips are on), ``labels`` and ``skipped`` (a list of
    (index, kind) for images that could not be decoded).
    """

    def __init__(
        self,
        folder: str | Path,
        layout: ShardLayout,
        stats_mask: torch.Tensor | None = None,
        storage_dtype: str = "float32",
    ):
        super().__init__(write_interval="batch")
        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"storage_dtype must be one of {', '.join(STORAGE_DTYPES)}, got {storage_dtype!r}"
            )
        self.folder = Path(folder)
        self.layout = layout
        self.stats_mask = stats_mask
        self.storage_dtype = STORAGE_DTYPES[storage_dtype]
        self.buffers: dict[int, _ShardBuffer] = {}
        self.empty_part: dict[str, torch.Tensor] = {}
        self.written: list[dict] = []
        self.loop_seconds = self.loop_cpu_seconds = 0.0
        self._loop_start = self._loop_cpu_start = 0.0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.add(prediction, rank=trainer.global_rank)

    def add(self, prediction: dict, rank: int = 0) -> None:
        """Buffer one batch of predictions; write every shard it completes."""
        index = prediction["index"].cpu()
        # Remember the latent layout: a shard whose images were all unreadable still gets a file.
        self.empty_part = {k: prediction[k][:0].cpu() for k in ("latents", "latents_flip") if k in prediction}
        self.empty_part.update(index=index[:0], labels=torch.zeros(0, dtype=torch.long))
        shards = index // self.layout.shard_size
        touched = set(shards.tolist())
        for shard in shards.unique().tolist():
            rows = (shards == shard).nonzero().squeeze(1)
            part = {"index": index[rows]}
            for key in ("latents", "latents_flip", "labels"):
                if key in prediction:
                    part[key] = prediction[key][rows.to(prediction[key].device)].cpu()
            buffer = self.buffers.setdefault(shard, _ShardBuffer())
            buffer.parts.append(part)
            buffer.received += len(rows)
        for item_index, kind in prediction.get("skipped", ()):
            shard = self.layout.shard_of(int(item_index))
            buffer = self.buffers.setdefault(shard, _ShardBuffer())
            buffer.skipped.append((int(item_index), str(kind)))
            buffer.received += 1
            touched.add(shard)
        for shard in sorted(touched):
            buffer = self.buffers[shard]
            if buffer.received > self.layout.size(shard):
                raise RuntimeError(
                    f"shard {shard} received {buffer.received} images for {self.layout.size(shard)}"
                )
            if buffer.received == self.layout.size(shard):
                self.written.append(self._write(shard, self.buffers.pop(shard), rank))

    def on_predict_start(self, trainer, pl_module) -> None:
        # After process-group init and loader setup: the loop time is what throughput is about.
        self._loop_start = time.perf_counter()
        self._loop_cpu_start = time.process_time()

    def on_predict_end(self, trainer, pl_module) -> None:
        self.loop_seconds = time.perf_counter() - self._loop_start
        # CPU time of this process (all its threads): a load-independent measure on shared CPUs.
        self.loop_cpu_seconds = time.process_time() - self._loop_cpu_start
        self.check_flushed()

    def check_flushed(self) -> None:
        if self.buffers:
            missing = {k: self.layout.size(k) - b.received for k, b in self.buffers.items()}
            self.buffers.clear()
            raise RuntimeError(f"prediction ended with incomplete shards (shard: images missing): {missing}")

    def _write(self, shard: int, buffer: _ShardBuffer, rank: int) -> dict:
        start, end = self.layout.bounds(shard)
        tensors = _concat_sorted(buffer.parts or [self.empty_part], self.storage_dtype)
        indices = tensors["indices"]
        expected = torch.tensor(
            sorted(set(range(start, end)) - {i for i, _ in buffer.skipped}), dtype=torch.long
        )
        if not torch.equal(indices, expected):
            raise RuntimeError(f"shard {shard}: received indices do not cover [{start}, {end}) exactly once")
        stats_rows = self.stats_mask[indices] if self.stats_mask is not None else slice(None)
        moments = ChannelMoments.of(tensors["latents"][stats_rows])
        name = shard_file_name(rank, shard)
        metadata = {
            "format": FORMAT_NAME,
            "shard": str(shard),
            "first_index": str(start),
            "end_index": str(end),
            "total_size": str(len(indices)),
            "dtype": str(tensors["latents"].dtype).removeprefix("torch."),
        }
        data = canonical_safetensors_bytes(tensors, metadata)
        write_bytes_atomic(self.folder / name, data, fsync=True)
        record = {
            "shard": shard,
            "file": name,
            "rank": rank,
            "sha256": sha256_bytes(data),
            "bytes": len(data),
            "first_index": start,
            "end_index": end,
            "num_images": len(indices),
            "skipped": dict(Counter(kind for _, kind in buffer.skipped)),
            "skipped_indices": sorted(i for i, _ in buffer.skipped),
            "latent_shape": list(tensors["latents"].shape[1:]),
            "dtype": metadata["dtype"],
            "moments": moments.to_record(),
        }
        write_json_atomic(shard_record_path(self.folder, shard), record)
        return record


def canonical_safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file whose bytes depend only on the tensors and the metadata, not on the process.

    The safetensors library writes ``__metadata__`` from a Rust hash map, whose order changes from
    one call to the next, so equal shards got different checksums. The header is rewritten here
    as sorted, compact JSON (padded with spaces to 8 bytes, as the format allows); tensor offsets
    are relative to the data block and do not move.
    """
    data = safetensors_bytes(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


def _concat_sorted(parts: list[dict], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    index = torch.cat([p["index"] for p in parts])
    order = index.argsort()
    out = {}
    for key in ("latents", "latents_flip"):
        if key in parts[0]:
            out[key] = torch.cat([p[key] for p in parts])[order].to(dtype).contiguous()
    out["labels"] = torch.cat([p["labels"] for p in parts])[order].to(torch.long).contiguous()
    out["indices"] = index[order].contiguous()
    return out
