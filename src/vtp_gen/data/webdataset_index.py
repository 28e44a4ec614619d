"""Random access to img2dataset webdataset shards, for latent caching.

Caching needs a map-style dataset: a stable global index to split into cache
shards, to resume at the first missing one, and to key the captions by. A tar
shard is a sequence, so this module indexes it once: every sample (the
members sharing a key: ``key.jpg|png|webp``, ``key.txt``, ``key.json``) gets
the global index

    index = (samples in all earlier shards) + (its position in its shard)

with shards in the order ``data.shards`` expands to and samples in the order
of their first member in the tar. Reading a sample then seeks to its members'
byte offsets; nothing else of the shard is read.

The index is recorded in a JSON file (the cache's ``webdataset_index.json``):
per shard its path, size, modification time, first global index and, per
sample, its key and members' offsets. A later run (a resume, the caption
writer) reuses it when every shard still has the recorded size and time, and
scans again otherwise, so the mapping from global index to (shard, key) is
the same one the first run used; the cache's dataset fingerprint (keys and
member sizes) refuses a resume over shards whose content changed.

Decoding is that of the streaming reader (:mod:`vtp_gen.data.webdataset`):
an unreadable image, bad JSON or (with ``require_caption``) an empty caption
is a counted :class:`~vtp_gen.data.decode.Skipped` record, never a crash.
Samples without a label get label ``-1``.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import webdataset as wds
from torch.utils.data import Dataset

from vtp_gen.data.decode import DEFAULT_MAX_PIXELS, UNREADABLE_FILE, Skipped, decode_caption
from vtp_gen.data.webdataset import _sample_from_raw, check_local_shards
from vtp_gen.utils.atomic import write_json_atomic

INDEX_FILE = "webdataset_index.json"  # its name in a latent cache
INDEX_FORMAT = "vtp_gen.webdataset_index"
INDEX_VERSION = 1
NO_LABEL = -1


def shard_paths(shards: str | list[str]) -> list[str]:
    """``data.shards`` expanded, in order; only local uncompressed tars can be read by offset."""
    if not shards:
        raise ValueError("webdataset source needs data.shards, e.g. '/data/shards/{00000..00099}.tar'")
    urls = wds.shardlists.expand_urls(shards) if isinstance(shards, str) else list(shards)
    remote = [u for u in urls if "://" in u or u.startswith("pipe:")]
    if remote:
        raise ValueError(
            f"caching reads webdataset shards by byte offset, so they must be local files (got {remote[0]}); "
            "copy the shards to a local or mounted folder first"
        )
    check_local_shards(urls)
    return urls


def scan_shard(path: str) -> list[list]:
    """``[key, {ext: [offset, size]}]`` per sample of one tar, in the order of first appearance."""
    samples: dict[str, dict[str, list[int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:  # "r:": headers only, data is seeked over
            for info in tar:
                if not info.isreg() or info.name.startswith("__"):
                    continue
                key, ext = wds.tariterators.base_plus_ext(info.name)
                if not key or not ext:
                    continue
                samples.setdefault(key, {})[ext.lower()] = [info.offset_data, info.size]
    except tarfile.ReadError as e:
        raise ValueError(
            f"{path}: not an uncompressed tar ({e}); caching reads img2dataset shards (plain .tar)"
        ) from e
    return [[key, members] for key, members in samples.items()]


def _stat(path: str) -> list[int]:
    status = os.stat(path)
    return [status.st_size, status.st_mtime_ns]


def build_index(paths: list[str], index_file: str | Path | None = None) -> list[dict]:
    """Per shard ``{"path", "bytes", "mtime_ns", "first_index", "samples"}``; reuses ``index_file``
    when it records exactly these shards, unchanged, and writes it otherwise."""
    stats = [_stat(p) for p in paths]
    if index_file is not None and Path(index_file).is_file():
        try:
            record = json.loads(Path(index_file).read_text())
        except ValueError:
            record = {}
        shards = record.get("shards") if record.get("format") == INDEX_FORMAT else None
        if (
            record.get("version") == INDEX_VERSION
            and isinstance(shards, list)
            and [s.get("path") for s in shards] == paths
            and [[s.get("bytes"), s.get("mtime_ns")] for s in shards] == stats
        ):
            return shards
    shards, first = [], 0
    for path, (size, mtime) in zip(paths, stats):
        samples = scan_shard(path)
        shards.append(
            {"path": path, "bytes": size, "mtime_ns": mtime, "first_index": first, "samples": samples}
        )
        first += len(samples)
    if index_file is not None:
        Path(index_file).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(
            index_file,
            {"format": INDEX_FORMAT, "version": INDEX_VERSION, "num_images": first, "shards": shards},
        )
    return shards


class IndexedImageTextShards(Dataset):
    """Webdataset shards as a map-style dataset: ``dataset[i]`` is sample ``i`` of the global order.

    Items are dicts (``image``, ``caption``, ``label`` (-1 when the sample has
    none), ``key``, ``issues``) or :class:`Skipped` records, as from the
    streaming reader. ``caption(i)`` reads only the caption member.
    """

    def __init__(
        self,
        shards: str | list[str],
        transform=None,
        require_caption: bool = True,
        max_samples: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        index_file: str | Path | None = None,
    ):
        self.paths = shard_paths(shards)
        self.shards = build_index(self.paths, index_file)
        self.entries = [
            (n, key, members) for n, shard in enumerate(self.shards) for key, members in shard["samples"]
        ]
        if max_samples:
            self.entries = self.entries[:max_samples]
        self.transform = transform
        self.require_caption = require_caption
        self.max_pixels = max_pixels
        self._handles: dict[int, object] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:  # DataLoader workers open their own files
        return {**self.__dict__, "_handles": {}}

    def __del__(self) -> None:
        for handle in getattr(self, "_handles", {}).values():
            handle.close()

    def fingerprint_lines(self):
        """What the cache's dataset fingerprint hashes: shard names, keys and member sizes, in index order."""
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in self.paths])
        for n, key, members in self.entries:
            name = os.path.relpath(os.path.abspath(self.paths[n]), root)
            sizes = ",".join(f"{ext}:{size}" for ext, (_, size) in sorted(members.items()))
            yield f"{name}\t{key}\t{sizes}\n"

    def location(self, index: int) -> tuple[str, str]:
        """(shard path, sample key) of global index ``index``."""
        n, key, _ = self.entries[index]
        return self.paths[n], key

    def _read(self, shard: int, offset: int, size: int) -> bytes:
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = open(self.paths[shard], "rb")  # noqa: SIM115 (kept open)
        handle.seek(offset)
        return handle.read(size)

    def _raw(self, index: int, extensions=None) -> dict | Skipped:
        n, key, members = self.entries[index]
        raw: dict = {"__key__": key, "__url__": self.paths[n]}
        try:
            for ext, (offset, size) in members.items():
                if extensions is None or ext in extensions:
                    raw[ext] = self._read(n, offset, size)
        except OSError as e:
            return Skipped(UNREADABLE_FILE, key, f"{self.paths[n]}: {e}")
        return raw

    def caption(self, index: int) -> str:
        """The caption of sample ``index`` (``.txt``, else the ``.json`` ``caption``), without its image;
        "" when it has none."""
        raw = self._raw(index, ("txt", "json"))
        if isinstance(raw, Skipped):
            return ""
        source = raw.get("txt")
        if source is None and "json" in raw:
            try:
                meta = json.loads(raw["json"])
            except (ValueError, UnicodeDecodeError):
                meta = None
            source = meta.get("caption") if isinstance(meta, dict) else None
        return decode_caption(source)[0] or ""

    def __getitem__(self, index: int) -> dict | Skipped:
        raw = self._raw(index)
        if isinstance(raw, Skipped):
            return raw
        sample = _sample_from_raw(raw, self.transform, self.require_caption, self.max_pixels)
        if isinstance(sample, dict):
            sample.setdefault("label", NO_LABEL)
        return sample
