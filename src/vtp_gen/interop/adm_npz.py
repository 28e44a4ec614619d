"""The ADM evaluator's ``.npz`` files: sample batches and reference batches.

A sample batch holds ``arr_0``: uint8 images, NHWC, RGB (what DiT, SiT and
LightningDiT's ``sample_ddp.py`` write). A reference batch such as
``VIRTUAL_imagenet256_labeled.npz`` also holds the Inception pool3 statistics
``mu`` (2048,) and ``sigma`` (2048, 2048) (and ``mu_s``/``sigma_s`` for sFID).
Everything is read with ``allow_pickle=False``: an ``.npz`` can carry pickled
objects, and a data file must never run code.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vtp_gen.utils.atomic import atomic_output

IMAGES_KEY = "arr_0"


@dataclass
class ADMBatch:
    """Contents of an ADM ``.npz``; absent entries are None."""

    images: np.ndarray | None  # (N, H, W, 3) uint8
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    extra: dict[str, np.ndarray] | None = None  # e.g. mu_s / sigma_s, labels


def check_images_uint8_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def save_adm_npz(
    path: str | os.PathLike,
    images_uint8_nhwc: np.ndarray,
    mu: np.ndarray | None = None,
    sigma: np.ndarray | None = None,
    **extra: np.ndarray,
) -> Path:
    """Write ``arr_0`` (+ optional reference statistics) exactly as the ADM evaluator reads them.

    Uncompressed, like ``np.savez`` in the reference samplers, which also lets
    :func:`iter_adm_npz_images` stream the images without loading them all.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: an ADM batch file must end in .npz")
    arrays = {IMAGES_KEY: check_images_uint8_nhwc(images_uint8_nhwc)}
    if (mu is None) != (sigma is None):
        raise ValueError("give both mu and sigma, or neither")
    if mu is not None:
        arrays["mu"], arrays["sigma"] = np.asarray(mu, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
        if arrays["sigma"].shape != (arrays["mu"].shape[0],) * 2:
            raise ValueError(f"sigma {arrays['sigma'].shape} does not match mu {arrays['mu'].shape}")
    arrays.update({k: np.asarray(v) for k, v in extra.items()})
    with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **arrays)
    return path


def load_adm_npz(path: str | os.PathLike, load_images: bool = True) -> ADMBatch:
    """Read an ADM sample or reference batch (``allow_pickle=False``).

    ``load_images=False`` reads only the statistics, which is all FID needs
    from a reference batch and avoids loading 10k-50k images into memory.
    """
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        images = check_images_uint8_nhwc(data[IMAGES_KEY]) if load_images and IMAGES_KEY in keys else None
        mu = data["mu"] if "mu" in keys else None
        sigma = data["sigma"] if "sigma" in keys else None
        extra = {k: data[k] for k in sorted(keys - {IMAGES_KEY, "mu", "sigma"})}
    if images is None and load_images and mu is None:
        raise ValueError(f"{path}: neither images ({IMAGES_KEY}) nor statistics (mu, sigma)")
    return ADMBatch(images=images, mu=mu, sigma=sigma, extra=extra or None)


def adm_npz_keys(path: str | os.PathLike) -> list[str]:
    with np.load(path, allow_pickle=False) as data:
        return list(data.files)


def adm_npz_image_count(path: str | os.PathLike) -> int:
    """Number of images in ``arr_0``, from the array header alone."""
    with zipfile.ZipFile(path) as zf, zf.open(IMAGES_KEY + ".npy") as f:
        shape, _ = _read_npy_header(f)
    return int(shape[0])


def _read_npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if fortran:
        raise ValueError("Fortran-ordered image arrays are not supported")
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{IMAGES_KEY} must be uint8 (N, H, W, 3), got {dtype} {shape}")
    return shape, dtype


def iter_adm_npz_images(path: str | os.PathLike, batch_size: int) -> Iterator[np.ndarray]:
    """Stream ``arr_0`` in batches of uint8 NHWC images without loading the whole array.

    A 50k x 256 x 256 sample file is ~9.8 GB; this reads ``batch_size`` images
    at a time straight out of the zip member (compressed members work too,
    just slower).
    """
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    with zipfile.ZipFile(path) as zf, zf.open(IMAGES_KEY + ".npy") as f:
        shape, _ = _read_npy_header(f)
        per_image = int(np.prod(shape[1:]))
        remaining = shape[0]
        while remaining > 0:
            count = min(batch_size, remaining)
            raw = f.read(count * per_image)
            if len(raw) != count * per_image:
                raise ValueError(f"{path}: {IMAGES_KEY} is truncated")
            # bytearray: a writable buffer, so torch.from_numpy downstream needs no copy of its own.
            yield np.frombuffer(bytearray(raw), dtype=np.uint8).reshape(count, *shape[1:])
            remaining -= count
