"""Image-text webdataset shards in the img2dataset layout (DataComp-style corpora).

A shard is a tar of samples sharing a key: ``key.jpg|png|webp`` + ``key.txt``
(caption) and/or ``key.json`` (``caption``, optional ``label``). Shards are
split by rank and worker (epoch mode) or resampled with replacement for
endless streams (``resampled=True``; each rank/worker draws its own shard
sequence from the seed, so no split is needed and epochs are nominal).

Broken input never crashes the stream and is never silently lost: a malformed
tar member, an undecodable image or an empty caption becomes a counted
:class:`~vtp_gen.data.decode.Skipped` record (see ``collate_samples``).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable, Iterator

import webdataset as wds
from torch.utils.data import IterableDataset

from vtp_gen.data.decode import (
    BAD_TAR_MEMBER,
    DEFAULT_MAX_PIXELS,
    EMPTY_CAPTION,
    Skipped,
    decode_caption,
    decode_image,
)

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


class _TarErrorTap:
    """A webdataset error handler that records the error instead of raising.

    The records are emitted as Skipped samples by the decode stage, which runs
    in the same worker process, so the counts reach the batch.
    """

    def __init__(self) -> None:
        self.pending: list[Skipped] = []

    def __call__(self, exn: Exception) -> bool:
        self.pending.append(Skipped(BAD_TAR_MEMBER, "", f"{type(exn).__name__}: {exn}"))
        return True  # keep going with the next member / shard


def _tar_members(sources: Iterable[dict], tap: _TarErrorTap) -> Iterator[dict]:
    """Yield the regular files of each opened shard, recovering from damaged member headers.

    The stdlib tar reader silently stops at the first damaged header; with
    ``ignore_zeros`` it scans on to the next good header instead. Every gap
    between where a member should start and where the next one does is one or
    more lost members, recorded as a bad tar member so it is counted.
    """
    for source in sources:
        url = source.get("url", "")
        try:
            stream = tarfile.open(fileobj=source["stream"], mode="r|*", ignore_zeros=True)
            expected_offset = 0
            for info in stream:
                if info.offset != expected_offset:
                    tap(tarfile.ReadError(f"damaged member header at byte {expected_offset} of {url}"))
                expected_offset = (
                    info.offset_data
                    + (info.size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
                )
                if not info.isreg() or info.name.startswith("__"):
                    continue
                data = stream.extractfile(info).read()
                yield {"fname": info.name, "data": data, "__url__": url}
                stream.members = []  # streaming: do not keep every header in memory
        except (tarfile.TarError, OSError, EOFError) as e:
            tap(e)
        finally:
            close = getattr(source.get("stream"), "close", None)
            if close:
                close()


def _sample_from_raw(raw: dict, transform, require_caption: bool, max_pixels: int) -> dict | Skipped:
    key = raw.get("__key__", "")
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
        except (ValueError, UnicodeDecodeError):
            issues.append("bad_json")
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
    label = meta.get("label", meta.get("cls"))
    if label is not None:
        sample["label"] = int(label)
    return sample


class ImageTextShards(IterableDataset):
    """Iterate (image, caption[, label]) dicts or Skipped records from tar shards."""

    def __init__(
        self,
        shards: str | list[str],
        transform=None,
        resampled: bool = False,
        require_caption: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__()
        if not shards:
            raise ValueError("webdataset source needs data.shards, e.g. '/data/shards/{00000..00099}.tar'")
        self.shards = shards
        self.transform = transform
        self.resampled = resampled
        self.require_caption = require_caption
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.max_pixels = max_pixels

    def _pipeline(self, tap: _TarErrorTap) -> wds.DataPipeline:
        if self.resampled:
            stages = [wds.ResampledShards(self.shards, seed=self.seed, deterministic=True)]
        else:
            stages = [wds.SimpleShardList(self.shards), wds.split_by_node, wds.split_by_worker]
        stages += [
            wds.filters.pipelinefilter(wds.tariterators.url_opener)(handler=tap),
            wds.filters.pipelinefilter(_tar_members)(tap),
            wds.filters.pipelinefilter(wds.tariterators.group_by_keys)(handler=tap),
        ]
        if self.shuffle_buffer:
            stages.append(wds.shuffle(self.shuffle_buffer, seed=self.seed))
        return wds.DataPipeline(*stages)

    def __iter__(self) -> Iterator[dict | Skipped]:
        tap = _TarErrorTap()
        for raw in self._pipeline(tap):
            while tap.pending:
                yield tap.pending.pop(0)
            yield _sample_from_raw(raw, self.transform, self.require_caption, self.max_pixels)
        yield from tap.pending
