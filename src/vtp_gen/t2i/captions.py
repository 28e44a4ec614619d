"""Captions of a latent cache: the ``captions.json`` sidecar file.

The latent shards stay exactly as the class-conditional path writes and
reads them; the captions live beside them in one JSON file, so a captioned
cache is still a valid class-conditional cache and an old cache becomes a
captioned one by adding the file (``vtp-gen stage2`` with a text recipe
writes it when missing)::

    {
      "format": "vtp_gen.captions", "version": 1,
      "dataset_fingerprint": "<the manifest's dataset fingerprint, or null>",
      "num_images": N,                      # images of the dataset (global indices 0..N-1)
      "captions": ["a photo of a bag.", ...],  # every distinct caption once
      "per_image": [[0], [5, 17], [], ...]     # per global index: ids into "captions"
    }

Global indices are those of the shards' ``indices`` tensors (caches written
by other tools have none: there the position in the cache is the index). An
image may carry several captions; each training step draws one of them.
The fingerprint ties the file to the cache's dataset: a cache re-made from
another dataset refuses a stale caption file instead of mislabelling it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open

from vtp_gen.data.captions import variant_caption
from vtp_gen.latents.manifest import read_manifest
from vtp_gen.utils.atomic import write_json_atomic

CAPTIONS_FILE = "captions.json"
FORMAT = "vtp_gen.captions"
VERSION = 1


def cache_fingerprint(folder: Path) -> str | None:
    manifest = read_manifest(folder)
    return None if manifest is None else manifest.get("dataset", {}).get("fingerprint")


def dataset_captions(dataset, name_variants: bool = False) -> list[list[str]]:
    """Every image's captions, by global index. Datasets with a ``caption(index)`` method answer
    without decoding images (the embedded Fashion-MNIST, indexed webdataset shards); any other reads
    its items. An image without a caption gets none.

    ``name_variants``: labelled sets (those with ``class_name(index)``) give each image a second
    caption naming its class by another name, the plural or a synonym
    (:func:`vtp_gen.data.captions.variant_caption`); training draws one of the two each step.
    """
    if hasattr(dataset, "caption"):
        out = [[c] if (c := dataset.caption(i)) else [] for i in range(len(dataset))]
        if name_variants and hasattr(dataset, "class_name"):
            for i, captions in enumerate(out):
                if captions and (variant := variant_caption(dataset.class_name(i), i)):
                    captions.append(variant)
        return out
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        caption = item.get("caption") if isinstance(item, dict) else None
        out.append([caption] if caption else [])
    return out


def write_captions(
    folder: str | Path,
    captions: Sequence[Sequence[str]],
    dataset_fingerprint: str | None = None,
    made_from: str | None = None,
) -> Path:
    """Write ``captions.json`` for the cache in ``folder`` (captions[i]: the captions of global index i).

    ``dataset_fingerprint``: that of the dataset the captions come from; refused when the cache's
    manifest names another dataset. ``made_from``: how vtp_gen made them (e.g. ``"labels"``),
    recorded so that a recipe asking for another caption set rewrites the file; files without it
    (written by you) are never rewritten.
    """
    folder = Path(folder)
    expected = cache_fingerprint(folder)
    if dataset_fingerprint is not None and expected is not None and dataset_fingerprint != expected:
        raise ValueError(
            f"the captions' dataset is not the one the cache in {folder} was made from (check data.* "
            "against the cache's manifest.json, e.g. data.max_samples)"
        )
    ids: dict[str, int] = {}
    per_image = [[ids.setdefault(c, len(ids)) for c in image_captions] for image_captions in captions]
    record = {
        "format": FORMAT,
        "version": VERSION,
        "dataset_fingerprint": dataset_fingerprint or expected,
        "num_images": len(per_image),
        "captions": list(ids),
        "per_image": per_image,
    }
    if made_from is not None:
        record["made_from"] = made_from
    path = folder / CAPTIONS_FILE
    write_json_atomic(path, record)
    return path


def shard_indices(files: Sequence[Path]) -> torch.Tensor:
    """Global index of every cached latent, in cache order (its position for caches without ``indices``)."""
    parts, count, complete = [], 0, True
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            count += f.get_slice("labels").get_shape()[0]
            if "indices" in f.keys():
                parts.append(f.get_tensor("indices"))
            else:
                complete = False
    return torch.cat(parts).long() if complete and parts else torch.arange(count)


class CacheCaptions:
    """Captions of each cached latent: ``choices`` (N, K) caption ids padded with -1, and the strings."""

    def __init__(self, captions: list[str], choices: torch.Tensor):
        self.captions = captions
        self.choices = choices

    @classmethod
    def load(cls, folder: str | Path, files: Sequence[Path]) -> CacheCaptions:
        folder = Path(folder)
        path = folder / CAPTIONS_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: text-to-image training needs the captions of the cache "
                "(written from `data` when text.write_captions=true; format in docs/text-to-image.md)"
            )
        record = json.loads(path.read_text())
        if record.get("format") != FORMAT or record.get("version") != VERSION:
            raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file")
        expected = cache_fingerprint(folder)
        if expected is not None and record.get("dataset_fingerprint") not in (None, expected):
            raise ValueError(
                f"{path} belongs to another dataset than the cache's (fingerprints differ): delete it "
                "and rerun to write it again"
            )
        per_image = record["per_image"]
        indices = shard_indices(files)
        if len(indices) and int(indices.max()) >= len(per_image):
            raise ValueError(f"{path} holds captions of {len(per_image)} images, the cache indexes more")
        rows = [per_image[i] for i in indices.tolist()]
        empty = [int(i) for i, r in zip(indices.tolist(), rows) if not r]
        if empty:
            raise ValueError(f"{path}: {len(empty)} cached images have no caption (first: index {empty[0]})")
        width = max(len(r) for r in rows)
        choices = torch.full((len(rows), width), -1, dtype=torch.long)
        for n, r in enumerate(rows):
            choices[n, : len(r)] = torch.tensor(r)
        return cls(list(record["captions"]), choices)

    def __len__(self) -> int:
        return self.choices.shape[0]


def captions_made_from(folder: str | Path) -> str | None:
    """The ``made_from`` of the cache's ``captions.json`` (None: absent, unreadable, or written by hand)."""
    try:
        return json.loads((Path(folder) / CAPTIONS_FILE).read_text()).get("made_from")
    except (OSError, ValueError, AttributeError):
        return None
