"""Pixel preprocessing shared by every stage: ADM centre crop and ImageNet normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> Image.Image:
    """The ADM / DiT / LightningDiT centre crop.

    Halve with a box filter while the short side is at least twice the target
    (cheap anti-aliasing for large photos), resize the short side to the target
    with bicubic, then cut the centre square. Using exactly this keeps our
    latents comparable with every published DiT-family number.
    """
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size), resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return Image.fromarray(arr[top : top + image_size, left : left + image_size])


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> ImageNet mean/std space (the space every model here reads and writes)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(-1, 1, 1)
    return (images - mean) / std


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std space -> [0, 1] (not clamped)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(-1, 1, 1)
    return images * std + mean


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Normalised (B,3,H,W) float -> uint8 (B,H,W,3), the layout of the ADM .npz and PNG files."""
    pixels = denormalize(images).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous()


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float (3,H,W) in [0, 1]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class CenterCropNormalize:
    """PIL RGB image -> ADM centre crop -> normalised tensor (picklable, for DataLoader workers)."""

    def __init__(self, image_size: int, flip: bool = False):
        self.image_size = image_size
        self.flip = flip

    def __call__(self, image: Image.Image) -> torch.Tensor:
        tensor = normalize(pil_to_tensor(center_crop_arr(image, self.image_size)))
        if self.flip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        return tensor
