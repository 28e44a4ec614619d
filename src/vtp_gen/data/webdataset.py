"""Image-text webdataset shards in the img2dataset layout (DataComp-style corpora).

A shard is a tar of samples sharing a key: ``key.jpg|png|webp`` + ``key.txt``
(caption) and/or ``key.json`` (``caption``, optional ``label``). Two modes:

- epoch mode (``resampled=False``): shards are split by rank and then by
  loader worker, each worker reads its shards in order through a seeded
  shuffle buffer. With ``repeat=True`` the worker goes on with epoch 1, 2, ...
  (each reshuffled with its own seed), so a rank whose shards hold fewer
  samples never runs dry. The stream of a worker is a pure function of (seed,
  rank, worker), which makes resume exact: ``resume_after_batches`` skips
  exactly the samples the first run's batches consumed, without decoding them.
- resampled (``resampled=True``): each rank/worker draws its own shard sequence
  with replacement from the seed; the stream is endless and epochs are
  nominal. A resumed run is given a new seed instead of skipping (skipping
  would mean re-reading everything read so far), see docs/reliability.md.

Broken input never crashes the stream and is never silently lost: a malformed
tar member, an undecodable image or an empty caption becomes a counted
:class:`~vtp_gen.data.decode.Skipped` record (see ``collate_samples``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from vtp_gen.data.decode import (
    BAD_JSON,
    BAD_LABEL,
    BAD_TAR_MEMBER,
    DEFAULT_MAX_PIXELS,
    EMPTY_CAPTION,
    Skipped,
    decode_caption,
    decode_image,
)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


# How a tar problem is counted (see _TarErrorTap): a plain record is one lost sample; a record that
# explains a damaged sample is merged into it ("merge or count": counted alone when no sample is
# damaged; "merge only": dropped then, because the shard's sample count already covers the loss).
RECORD, MERGE_OR_COUNT, MERGE_ONLY = "record", "merge_or_count", "merge_only"
DAMAGED = "__damaged__"  # set on a raw sample that lost a member to a tar fault


class _TarErrorTap:
    """A webdataset error handler that records the error instead of raising.

    The records are emitted as Skipped samples by the decode stage, which runs
    in the same worker process, so the counts reach the batch. Each planted
    fault must be counted once: a damaged header or a truncation usually
    takes one member of a sample, whose other members still arrive as an
    incomplete sample; that sample is then counted as the bad tar member (not
    also as a missing image or caption). Such a fault can only have hit the
    sample before it or the one after it (``candidates``).
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Skipped, str, tuple[str, ...]]] = []

    def __call__(self, exn: Exception) -> bool:
        self.pending.append((Skipped(BAD_TAR_MEMBER, "", f"{type(exn).__name__}: {exn}"), RECORD, ()))
        return True  # keep going with the next member / shard

    def damaged(self, detail: str, counted_by_shard_size: bool, candidates: tuple[str, ...]) -> None:
        mode = MERGE_ONLY if counted_by_shard_size else MERGE_OR_COUNT
        self.pending.append((Skipped(BAD_TAR_MEMBER, "", detail), mode, candidates))

    def lost(self, url: str, count: int) -> None:
        for _ in range(count):
            self.pending.append((Skipped(BAD_TAR_MEMBER, url, "sample missing from the shard"), RECORD, ()))

    def merge_into(self, raw: dict, require_caption: bool) -> dict:
        """``raw`` marked as damaged when it lacks a member and a pending fault explains it."""
        has_image = any(k in raw for k in IMAGE_KEYS)
        has_caption = "txt" in raw or "json" in raw
        if has_image and (has_caption or not require_caption):
            return raw
        for i, (record, mode, candidates) in enumerate(self.pending):
            if mode != RECORD and raw.get("__key__") in candidates:
                del self.pending[i]
                return {**raw, DAMAGED: record.detail}
        return raw

    def flush(self, after_key: str | None = None) -> Iterator[Skipped]:
        """The records to count now; a fault waits until its last candidate sample (``after_key``) went by."""
        keep, out = [], []
        for entry in self.pending:
            record, mode, candidates = entry
            if mode == RECORD:
                out.append(record)
            elif after_key is not None and candidates and after_key != candidates[-1]:
                keep.append(entry)
            elif mode == MERGE_OR_COUNT:
                out.append(record)
        self.pending = keep
        yield from out


def expected_samples(url: str) -> int | None:
    """The sample count a shard's ``<name>_stats.json`` records (ours: ``count``; img2dataset: ``successes``)."""
    if "://" in url or url.startswith("pipe:") or not url.endswith(".tar"):
        return None
    try:
        stats = json.loads(Path(url[: -len(".tar")] + "_stats.json").read_text())
    except (OSError, ValueError):
        return None
    count = stats.get("count", stats.get("successes")) if isinstance(stats, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _tar_members(sources: Iterable[dict], tap: _TarErrorTap) -> Iterator[dict]:
    """Yield the regular files of each opened shard, recovering from damaged member headers.

    The stdlib tar reader silently stops at the first damaged header; with
    ``ignore_zeros`` it scans on to the next good header instead. Every gap
    between where a member should start and where the next one does is one or
    more lost members; a read error ends the shard (truncated). When the
    shard's ``_stats.json`` says how many samples it holds, every sample that
    never appeared is counted; otherwise each fault counts as one.
    """
    for source in sources:
        url = source.get("url", "")
        expected = expected_samples(url)
        keys: set[str] = set()
        last_key = ""
        try:
            stream = tarfile.open(fileobj=source["stream"], mode="r|*", ignore_zeros=True)
            expected_offset = 0
            for info in stream:
                if info.offset != expected_offset:
                    after = wds.tariterators.base_plus_ext(info.name)[0] or ""
                    tap.damaged(
                        f"damaged member header at byte {expected_offset} of {url}",
                        expected is not None,
                        tuple(k for k in (last_key, after) if k),
                    )
                expected_offset = (
                    info.offset_data
                    + (info.size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
                )
                if not info.isreg() or info.name.startswith("__"):
                    continue
                data = stream.extractfile(info).read()
                last_key = wds.tariterators.base_plus_ext(info.name)[0] or ""
                keys.add(last_key)
                yield {"fname": info.name, "data": data, "__url__": url}
                stream.members = []  # streaming: do not keep every header in memory
        except (tarfile.TarError, OSError, EOFError) as e:
            tap.damaged(
                f"{type(e).__name__} in {url}: {e} (truncated shard?)",
                expected is not None,
                (last_key,) if last_key else (),
            )
        finally:
            close = getattr(source.get("stream"), "close", None)
            if close:
                close()
        if expected is not None and expected > len(keys):
            tap.lost(url, expected - len(keys))
        yield {}  # the end of the shard: group_by_keys hands over its last (maybe partial) sample now


def _sample_from_raw(raw: dict, transform, require_caption: bool, max_pixels: int) -> dict | Skipped:
    key = raw.get("__key__", "")
    if DAMAGED in raw:
        return Skipped(BAD_TAR_MEMBER, key, raw[DAMAGED])
    image_bytes = next((raw[k] for k in IMAGE_KEYS if k in raw), None)
    decoded = decode_image(image_bytes, key, max_pixels)
    if isinstance(decoded, Skipped):
        return decoded
    image, repair = decoded
    issues = [repair] if repair else []

    meta: dict = {}
    if "json" in raw:
        try:
            meta = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as e:
            return Skipped(BAD_JSON, key, f"{raw.get('__url__', '')}: {key}.json: {e}")
        if not isinstance(meta, dict):
            return Skipped(BAD_JSON, key, f"{raw.get('__url__', '')}: {key}.json is not an object")
    caption_source = raw.get("txt", meta.get("caption"))
    caption, caption_repair = decode_caption(caption_source)
    if caption_repair:
        issues.append(caption_repair)
    if require_caption and not caption:
        return Skipped(EMPTY_CAPTION, key)

    sample = {
        "image": transform(image) if transform else image,
        "caption": caption,
        "key": key,
        "issues": issues,
    }
    label_key = "label" if "label" in meta else "cls"
    label = meta.get(label_key)
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, (int, str)) or not str(label).strip().isdigit():
            return Skipped(BAD_LABEL, key, f"{raw.get('__url__', '')}: {key}.json {label_key!r} is {label!r}")
        sample["label"] = int(label)
    return sample


def _every_nth(first: int, step: int):
    """A pipeline stage keeping shards ``first, first + step, ...`` (webdataset's split_by_worker, by a given id)."""

    def stage(source: Iterable):
        yield from itertools.islice(source, first, None, step)

    return stage


def batches_delivered_by_worker(batches: int, worker: int, num_workers: int) -> int:
    """Of the first ``batches`` batches of a DataLoader over an iterable dataset, how many came from ``worker``.

    The DataLoader asks its workers for batches in turn (0, 1, ..., W-1, 0, ...)
    and hands them out in that order, so batch k is worker k mod W's.
    """
    return max(0, (batches - worker + num_workers - 1) // num_workers)


def check_local_shards(shards: str | list[str]) -> None:
    """A configured local shard that does not exist is an error naming it (remote URLs are not checked)."""
    urls = wds.shardlists.expand_urls(shards) if isinstance(shards, str) else list(shards)
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    missing = [u for u in local if not os.path.isfile(u)]
    if missing:
        raise FileNotFoundError(
            f"data.shards: {len(missing)} of {len(urls)} shards do not exist (first: {missing[0]}); "
            "fix the pattern, e.g. '/data/shards/{00000..00099}.tar'"
        )


class ImageTextShards(IterableDataset):
    """Iterate (image, caption[, label]) dicts or Skipped records from tar shards.

    ``repeat`` (epoch mode only) makes the stream endless, epoch after epoch, and
    tags each sample with the index of the batch it will land in (``step``);
    ``resume_after_batches`` and ``batch_size`` say how many batches of that
    size this rank's DataLoader delivered before a restart, so every worker
    skips exactly its share of them (see :func:`batches_delivered_by_worker`).
    """

    def __init__(
        self,
        shards: str | list[str],
        transform=None,
        resampled: bool = False,
        require_caption: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        repeat: bool = False,
        resume_after_batches: int = 0,
        batch_size: int = 1,
    ):
        super().__init__()
        if not shards:
            raise ValueError("webdataset source needs data.shards, e.g. '/data/shards/{00000..00099}.tar'")
        if resampled and resume_after_batches:
            raise ValueError("a resampled stream is resumed with a new seed, not by skipping batches")
        check_local_shards(shards)
        self.shards = shards
        self.transform = transform
        self.resampled = resampled
        self.require_caption = require_caption
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.max_pixels = max_pixels
        self.repeat = repeat
        self.resume_after_batches = resume_after_batches
        self.batch_size = batch_size

    def training_stream(self, seed: int, start_batch: int, batch_size: int) -> ImageTextShards:
        """This stream as a training run starting at batch ``start_batch`` of ``batch_size`` samples needs it.

        Epoch mode: endless, seeded by ``seed`` alone, and skipping what batches
        0 .. start_batch - 1 consumed, so a resumed run reads exactly what an
        uninterrupted one would. Resampled: a fresh stream seeded by (seed,
        start_batch), so a resume does not replay the draws of the first run.
        """
        stream = copy.copy(self)
        if self.resampled:
            stream.seed = int(np.random.SeedSequence([seed, start_batch]).generate_state(1)[0])
        else:
            stream.seed, stream.repeat = seed, True
            stream.resume_after_batches, stream.batch_size = start_batch, batch_size
        return stream

    def _pipeline(self, tap: _TarErrorTap, epoch: int, worker: int, num_workers: int) -> wds.DataPipeline:
        if self.resampled:
            stages = [wds.ResampledShards(self.shards, seed=self.seed, deterministic=True)]
        else:
            stages = [wds.SimpleShardList(self.shards), wds.split_by_node, _every_nth(worker, num_workers)]
        stages += [
            wds.filters.pipelinefilter(wds.tariterators.url_opener)(handler=tap),
            wds.filters.pipelinefilter(_tar_members)(tap),
            wds.filters.pipelinefilter(wds.tariterators.group_by_keys)(handler=tap),
        ]
        if self.shuffle_buffer:
            # Epoch 0 keeps the plain seed, so a one-pass stream is what it always was.
            stages.append(wds.shuffle(self.shuffle_buffer, seed=self.seed + 1_000_003 * epoch))
        return wds.DataPipeline(*stages)

    def _epoch_items(self, epoch: int, worker: int = 0, num_workers: int = 1) -> Iterator[dict | Skipped]:
        """One pass: raw (undecoded) samples and the Skipped records of damaged tar members, in stream order."""
        tap = _TarErrorTap()
        for raw in self._pipeline(tap, epoch, worker, num_workers):
            raw = tap.merge_into(raw, self.require_caption)
            yield from tap.flush(after_key=raw.get("__key__", ""))
            yield raw
        yield from tap.flush()

    def _decode(self, item: dict | Skipped) -> dict | Skipped:
        if isinstance(item, Skipped):
            return item
        return _sample_from_raw(item, self.transform, self.require_caption, self.max_pixels)

    def __iter__(self) -> Iterator[dict | Skipped]:
        if self.resampled:
            yield from map(self._decode, self._epoch_items(0))
            return
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # A new DataLoader asks worker 0 first, but batch ``resume_after_batches`` of the first run came
        # from worker (resume_after_batches mod W): the workers take over the roles (shards and position)
        # of the first run's workers, rotated by that much.
        worker = (worker + self.resume_after_batches) % num_workers
        position = self.batch_size * batches_delivered_by_worker(
            self.resume_after_batches, worker, num_workers
        )
        for item in self._worker_stream(worker, num_workers, skip=position):
            sample = self._decode(item)
            if self.repeat and isinstance(sample, dict):
                # The run-wide index of the batch this sample lands in (batch j of worker w is batch
                # j * W + w): the stage-1 collate seeds its crops and subsets from it, as on map-style data.
                sample["step"] = position // self.batch_size * num_workers + worker
            position += 1
            yield sample

    def _worker_stream(self, worker: int, num_workers: int, skip: int) -> Iterator[dict | Skipped]:
        """This worker's undecoded items, epoch after epoch when repeating, without the first ``skip``."""
        epoch, epoch_length = 0, None
        while True:
            if epoch_length and skip >= epoch_length:
                # Whole epochs to skip: every epoch of a worker holds the same samples, reshuffled.
                epoch += skip // epoch_length
                skip %= epoch_length
            count = 0
            for item in self._epoch_items(epoch, worker, num_workers):
                count += 1
                if skip:
                    skip -= 1
                    continue
                yield item
            if count == 0 and (self.repeat or skip):
                raise ValueError(
                    f"data loader worker {worker} of {num_workers} got no samples from data.shards={self.shards!r}: "
                    "epoch mode splits the shards by rank and then by worker, so it needs at least "
                    "world_size x num_workers non-empty shards (or set data.resampled=true)"
                )
            if not self.repeat:
                if skip:
                    raise ValueError(
                        f"cannot resume after {self.resume_after_batches} batches: the stream holds fewer samples"
                    )
                return
            epoch_length, epoch = count, epoch + 1
