"""One tokenizer evaluation: reconstruction (PSNR, SSIM, L1, LPIPS, rFID) and CLIP zero-shot.

Stage 1's end-of-run check and ``make eval`` both call these functions; the
caller passes the data (batches of ImageNet-normalised images, the first
``limit`` of :func:`evaluation_subset`) and the networks (LPIPS, the FID
feature network), so the same numbers come out of both and tests can hand in
small stand-ins.

    report = evaluate_reconstruction(tokenizer, batches, lpips=lpips, feature_network=inception)
    report.metrics   # {"num_images", "psnr", "ssim", "l1", "lpips"?, "rfid"?}
    report.grid      # uint8 (2n, 3, H, W): n originals, then their reconstructions

    classes = zero_shot_classes("imagenet_folder", dataset)      # None: no class names known
    evaluate_tokenizer_zero_shot(tokenizer, batches, *classes)     # {"top1", "top5", "chance", ...}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from vtp_gen.data.images import save_grid
from vtp_gen.data.text_tokenizer import CLIPTextTokenizer
from vtp_gen.data.transforms import to_uint8
from vtp_gen.metrics.reconstruction import ReconstructionMetrics
from vtp_gen.metrics.templates import Template, openai_imagenet_templates, zero_shot_setup
from vtp_gen.metrics.zero_shot import zero_shot_accuracy

SUBSET_SEED = 0


def evaluation_subset(length: int, limit: int) -> list[int]:
    """A fixed random subset (seed 0) of ``limit`` indices, or all of them in order.

    Random, not the first N: class-sorted folders (ImageNet val) would otherwise
    give one class. Prefixes agree (subset(n) starts with subset(m) for m < n), so
    the reconstruction images are the first of the FID reference images.
    """
    if limit <= 0 or limit >= length:
        return list(range(length))
    order = torch.randperm(length, generator=torch.Generator().manual_seed(SUBSET_SEED))
    return order[:limit].tolist()


def uint8_nchw(normalised: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised float (B, 3, H, W) -> uint8 (B, 3, H, W), as a PNG round trip would give."""
    return to_uint8(normalised.float().cpu()).permute(0, 3, 1, 2).contiguous()


@dataclass
class ReconstructionReport:
    metrics: dict[str, float | int]
    grid: torch.Tensor | None  # uint8 (2n, 3, H, W): originals, then reconstructions


@torch.no_grad()
def evaluate_reconstruction(
    tokenizer,
    batches: Iterable[torch.Tensor],
    device: str | torch.device = "cpu",
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    feature_network: torch.nn.Module | None = None,
    reference_features: np.ndarray | None = None,
    grid_images: int = 0,
    progress: bool = False,
) -> ReconstructionReport:
    """Encode and decode every batch; PSNR / SSIM / L1 always, LPIPS and rFID when their networks are given.

    ``batches`` yields ImageNet-normalised (B, 3, H, W) images. All metrics see
    8-bit pixels (:mod:`vtp_gen.metrics.reconstruction`); L1 is the mean
    absolute error of those pixels in [0, 1]. rFID compares the feature
    network's features of the reconstructions with those of the originals, or
    with the first rows of ``reference_features`` when the caller already has
    them for exactly these images (the FID reference of the same split).
    """
    device = torch.device(device)
    accumulator = ReconstructionMetrics(lpips, feature_network, device, reference_features)
    grid = None
    for images in tqdm(batches, desc="reconstruction", disable=not progress, leave=False):
        images = images.to(device)
        decoded = tokenizer.get_latents_decoded_images(tokenizer.get_reconstruction_latents(images))
        original, reconstruction = uint8_nchw(images), uint8_nchw(decoded)
        accumulator.update(original, reconstruction)
        if grid is None and grid_images > 0:
            count = min(grid_images, len(original))
            grid = torch.cat([original[:count], reconstruction[:count]])
    return ReconstructionReport(accumulator.compute(), grid)


def zero_shot_classes(
    source: str, dataset, classes: str = ""
) -> tuple[Sequence[str], Sequence[Template]] | None:
    """(class names, templates) of a labelled set, or None when its class names are unknown.

    ``classes`` names a set explicitly (``imagenet``, ``fashion_mnist``); otherwise
    Fashion-MNIST sources use its names, a folder of the 1000 ImageNet synsets
    (``n01440764`` ...) the ImageNet names in sorted-synset order, and any other
    dataset its own ``class_names``.
    """
    if classes:
        return zero_shot_setup(classes)
    if source == "fashion_mnist":
        return zero_shot_setup("fashion_mnist")
    folders = getattr(dataset, "classes", None) or []
    if len(folders) == 1000 and all(re.fullmatch(r"n\d{8}", f) for f in folders):
        return zero_shot_setup("imagenet")
    class_names = getattr(dataset, "class_names", None)
    return (list(class_names), openai_imagenet_templates()) if class_names else None


@torch.no_grad()
def evaluate_tokenizer_zero_shot(
    tokenizer,
    batches: Iterable,
    class_names: Sequence[str],
    templates: Sequence[Template],
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict[str, float | int]:
    """CLIP zero-shot top-1 / top-5 (percent) of the tokenizer's image and text towers, and chance level."""

    if tokenizer.text is None:
        raise ValueError("the tokenizer has no text tower (e.g. an AE-only run): no zero-shot accuracy")
    result = zero_shot_accuracy(
        tokenizer,
        CLIPTextTokenizer.from_config(tokenizer.config),
        list(class_names),
        templates,
        batches,
        device,
        progress,
    )
    return {**result, "chance": 100.0 / len(class_names)}


def save_reconstruction_grid(grid: torch.Tensor, path, min_side: int = 64):
    """A report's grid as a PNG: originals (top row) above their reconstructions; small images enlarged."""

    upscale = max(1, min_side // grid.shape[-1])
    if upscale > 1:
        grid = torch.nn.functional.interpolate(grid.float(), scale_factor=upscale, mode="nearest").to(
            torch.uint8
        )
    return save_grid(grid.permute(0, 2, 3, 1).numpy(), path, nrow=len(grid) // 2)
