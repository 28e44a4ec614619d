"""Image grids and PNG files, written atomically.

Pixels travel as uint8 (N, H, W, 3) arrays, the layout of the ADM ``.npz`` and
of PNG files. Float tensors are converted on the way in:

- ``(N, 3, H, W)`` in ImageNet mean/std space (what every model here reads and
  writes): ``to_pixels(x, normalized=True)``;
- ``(N, 3, H, W)`` in [0, 1]: ``to_pixels(x)``.

    save_grid(decoded_images, "grid.png", nrow=8, normalized=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vtp_gen.data.transforms import to_uint8
from vtp_gen.utils.atomic import atomic_output


def to_pixels(images: torch.Tensor | np.ndarray, normalized: bool = False) -> np.ndarray:
    """Any supported image batch -> uint8 (N, H, W, 3) numpy array.

    uint8 input must already be (N, H, W, 3) (or (H, W, 3)); float input is
    (N, 3, H, W) (or (3, H, W)), in ImageNet mean/std space when ``normalized``,
    else in [0, 1]. Values outside the range are clipped. Greyscale (1 channel)
    is repeated to RGB.
    """
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    images = images.detach().cpu()
    if images.dtype == torch.uint8:
        pixels = images if images.dim() == 4 else images.unsqueeze(0)
        if pixels.shape[-1] == 1:
            pixels = pixels.expand(*pixels.shape[:-1], 3)
        if pixels.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (N, H, W, 3), got {tuple(images.shape)}")
        return np.ascontiguousarray(pixels.numpy())
    if not images.is_floating_point():
        raise TypeError(f"images must be uint8 or floating point, got {images.dtype}")
    images = images.float()
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"float images must be (N, 3, H, W), got {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    if normalized:
        return to_uint8(images).numpy()
    return images.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def make_grid(
    images: torch.Tensor | np.ndarray,
    nrow: int = 8,
    padding: int = 2,
    pad_value: int = 255,
    normalized: bool = False,
) -> np.ndarray:
    """Tile a batch row by row, ``nrow`` images per row; returns uint8 (H, W, 3)."""
    pixels = to_pixels(images, normalized)
    n, h, w, _ = pixels.shape
    if n == 0:
        raise ValueError("cannot make a grid of zero images")
    ncol = max(1, min(nrow, n))
    nrows = -(-n // ncol)
    grid = np.full(
        (nrows * h + (nrows + 1) * padding, ncol * w + (ncol + 1) * padding, 3), pad_value, dtype=np.uint8
    )
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[top : top + h, left : left + w] = pixels[i]
    return grid


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write one uint8 (H, W, 3) image; a reader never sees a partial file (write, then rename)."""
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return Path(path)


def save_grid(
    images: torch.Tensor | np.ndarray,
    path: str | Path,
    nrow: int = 8,
    padding: int = 2,
    normalized: bool = False,
) -> Path:
    """Save a batch as one PNG grid (see :func:`to_pixels` for the accepted inputs)."""
    return save_png(make_grid(images, nrow, padding, normalized=normalized), path)


def load_png(path: str | Path) -> np.ndarray:
    """uint8 (H, W, 3) pixels of a PNG (or any image PIL reads), converted to RGB."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def captioned_grid(
    images: torch.Tensor, prompts: Sequence[str], per_row: int, normalized: bool = True
) -> np.ndarray:
    """One row per prompt (``per_row`` images each), the prompt written to the left of its row."""
    grid = make_grid(images, nrow=per_row, normalized=normalized)
    rows = len(prompts)
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = 8 + max(int(probe.textlength(p, font=font)) for p in prompts)
    canvas = Image.new("RGB", (label_width + grid.shape[1], grid.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(grid), (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = grid.shape[0] / rows
    for r, prompt in enumerate(prompts):
        draw.text((4, int(r * row_height + row_height / 2 - 5)), prompt, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)
