"""Image sets for the metrics, in whatever form they arrive, as uint8 NCHW batches.

Accepted sources:
* a uint8 ``torch.Tensor`` (N, 3, H, W),
* a uint8 numpy array (N, H, W, 3) (the ADM / PNG layout),
* a folder of image files (png, jpg, ...; sorted by name, read as RGB),
* an ADM ``.npz`` (``arr_0``, streamed batch by batch),
* any iterable of such tensors / arrays (e.g. batches straight from a sampler).

Float images are refused on purpose: every published number is computed on
8-bit images, so converting is the caller's explicit step
(:func:`float_to_uint8`), not a silent guess about the value range.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from vtp_gen.data.decode import Skipped, decode_image
from vtp_gen.interop.adm_npz import adm_npz_image_count, iter_adm_npz_images

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
ImageSource = torch.Tensor | np.ndarray | str | os.PathLike | Iterable


def float_to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Float images in ``value_range`` -> uint8 in [0, 255], rounded to nearest (as saving a PNG does)."""
    low, high = value_range
    scaled = (images.float() - low) * (255.0 / (high - low))
    return scaled.round().clamp(0, 255).to(torch.uint8)


def as_uint8_nchw(batch, what: str = "images") -> torch.Tensor:
    """A uint8 (N, 3, H, W) tensor, or a uint8 (N, H, W, 3) numpy array -> uint8 (N, 3, H, W) tensor."""
    if isinstance(batch, np.ndarray):
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(
                f"{what}: numpy images must be uint8 (N, H, W, 3), got {batch.dtype} {batch.shape}"
            )
        return torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
    if isinstance(batch, torch.Tensor):
        if batch.dtype != torch.uint8:
            raise ValueError(
                f"{what}: tensor images must be uint8 (N, 3, H, W), got {batch.dtype}; "
                "convert with vtp_gen.metrics.images.float_to_uint8(images, value_range)"
            )
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{what}: tensor images must be (N, 3, H, W), got {tuple(batch.shape)}")
        return batch
    raise TypeError(f"{what}: unsupported batch type {type(batch).__name__}")


def list_image_files(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
    return files


def _read_image(path: Path) -> np.ndarray:

    decoded = decode_image(path.read_bytes(), key=str(path))
    if isinstance(decoded, Skipped):
        # A metric over a silently smaller set would be a different number: stop instead.
        raise ValueError(f"cannot read {path}: {decoded.kind} {decoded.detail}".strip())
    image, _repair = decoded
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _folder_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    pending: list[np.ndarray] = []
    for path in files:
        image = _read_image(path)
        if pending and (image.shape != pending[0].shape or len(pending) == batch_size):
            # Images of another size start a new batch (the feature network resizes each batch).
            yield as_uint8_nchw(np.stack(pending), str(path.parent))
            pending = []
        pending.append(image)
    if pending:
        yield as_uint8_nchw(np.stack(pending), str(files[-1].parent))


def count_images(source: ImageSource) -> int | None:
    """Number of images in the source, when it can be known without reading them all."""
    if isinstance(source, torch.Tensor | np.ndarray):
        return int(source.shape[0])
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        return adm_npz_image_count(path) if path.suffix == ".npz" else len(list_image_files(path))
    return None


def iter_image_batches(source: ImageSource, batch_size: int = 50) -> Iterator[torch.Tensor]:
    """uint8 (B, 3, H, W) CPU batches of at most ``batch_size`` images from any accepted source."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    if isinstance(source, torch.Tensor | np.ndarray):
        images = as_uint8_nchw(source, "images")
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.suffix == ".npz":
            for batch in iter_adm_npz_images(path, batch_size):
                yield as_uint8_nchw(batch, str(path))
        elif path.is_dir():
            yield from _folder_batches(list_image_files(path), batch_size)
        else:
            raise FileNotFoundError(f"{path} is neither an image folder nor an ADM .npz")
        return
    if isinstance(source, Iterable):
        for batch in source:
            images = as_uint8_nchw(batch, "image batch")
            for start in range(0, images.shape[0], batch_size):
                yield images[start : start + batch_size]
        return
    raise TypeError(f"unsupported image source {type(source).__name__}")
