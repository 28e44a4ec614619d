"""Robust decoding of untrusted image and caption bytes, with every problem counted.

Large crawled corpora always hold broken files. The rule here: a bad sample
never crashes a run and is never dropped silently. Decoders return either a
good value or a :class:`Skipped` record saying why; samples that were usable
after a repair (a CMYK or 16-bit image converted, a caption that was not UTF-8)
carry the repair kind in ``sample["issues"]``. :func:`collate_samples` drops the
skipped records and puts the counts of both into ``batch["data_issues"]``, so
they travel with the batch out of DataLoader workers and reach the logger.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

# Skip kinds (sample dropped).
EMPTY_FILE = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED_IMAGE = "truncated_image"
TOO_LARGE = "too_large_image"
BAD_TAR_MEMBER = "bad_tar_member"
MISSING_IMAGE = "missing_image"
EMPTY_CAPTION = "empty_caption"
UNREADABLE_FILE = (
    "unreadable_file"  # the file system refused to read it (symlink loop, permissions, I/O error)
)
BAD_JSON = "bad_json"  # a sample's metadata is not a JSON object
BAD_LABEL = "bad_label"  # a sample's label is not a non-negative integer
# Repair kinds (sample kept).
CAPTION_NOT_UTF8 = "caption_not_utf8"
CONVERTED_MODE = "converted_{mode}"

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own default bomb limit


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be used; counted by ``kind``, never silently lost."""

    kind: str
    key: str = ""
    detail: str = ""


def _to_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Any Pillow mode -> 8-bit RGB. Returns the repair kind when the mode was unusual."""
    mode = image.mode
    if mode == "RGB":
        return image, None
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit greyscale: scale by the format's range instead of clipping at 255.
        arr = np.asarray(image).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB"), CONVERTED_MODE.format(mode="16bit")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB"), CONVERTED_MODE.format(mode="alpha")
    # Greyscale ("L", 1-bit "1") is converted and counted like every other mode (converted_l, converted_1).
    return image.convert("RGB"), CONVERTED_MODE.format(mode=mode.lower().replace(";", ""))


def decode_image(data: bytes | None, key: str = "", max_pixels: int = DEFAULT_MAX_PIXELS):
    """Bytes -> (RGB PIL image, repair kind or None), or a :class:`Skipped`."""
    if data is None:
        return Skipped(MISSING_IMAGE, key)
    if len(data) == 0:
        return Skipped(EMPTY_FILE, key)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # header only: no pixels decoded yet
            if width * height > max_pixels:
                return Skipped(TOO_LARGE, key, f"{width}x{height}")
            image.load()
    except Image.DecompressionBombError as e:
        return Skipped(TOO_LARGE, key, str(e))
    except UnidentifiedImageError:
        return Skipped(NOT_AN_IMAGE, key)
    except (OSError, SyntaxError, ValueError) as e:
        return Skipped(TRUNCATED_IMAGE, key, str(e))
    try:
        rgb, repair = _to_rgb(image)
    except (OSError, ValueError) as e:
        return Skipped(NOT_AN_IMAGE, key, f"mode {image.mode}: {e}")
    return rgb, repair


def decode_caption(data: bytes | str | None) -> tuple[str, str | None]:
    """Caption bytes -> (text, repair kind or None). Invalid UTF-8 is repaired, not fatal."""
    if data is None:
        return "", None
    if isinstance(data, str):
        return data.strip(), None
    try:
        return data.decode("utf-8").strip(), None
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace").strip(), CAPTION_NOT_UTF8


def _stack(values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
        return torch.tensor(values, dtype=torch.long)
    if isinstance(first, float):
        return torch.tensor(values, dtype=torch.float32)
    return list(values)


def collate_samples(samples: Sequence[dict | Skipped]) -> dict:
    """Batch dict samples; drop :class:`Skipped` ones and count every issue by kind.

    Tensors are stacked, ints become a LongTensor, anything else (captions, PIL
    images, keys) stays a list. ``batch["data_issues"]`` maps kind -> count and
    ``batch["size"]`` is the number of usable samples (may be 0).
    """
    issues: Counter[str] = Counter()
    good: list[dict] = []
    for sample in samples:
        if isinstance(sample, Skipped):
            issues[sample.kind] += 1
            continue
        issues.update(sample.get("issues", ()))
        good.append(sample)
    batch: dict[str, Any] = {"data_issues": dict(issues), "size": len(good)}
    if good:
        # Only fields every sample has (e.g. webdataset labels are optional per sample).
        shared = [k for k in good[0] if k != "issues" and all(k in s for s in good)]
        for key in shared:
            batch[key] = _stack([s[key] for s in good])
    return batch
