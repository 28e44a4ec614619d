"""Multi-crop views and iBOT masks for the SSL branch, as a DataLoader collate step.

Per image (DINOv2's augmentation recipe, torchvision.transforms.v2):

- geometry: RandomResizedCrop (bicubic; global scale (0.32, 1), local
  (0.05, 0.32)) + horizontal flip;
- colour: ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale with p 0.2;
- Gaussian blur (kernel 9, sigma 0.1-2) with p 1.0 on the first global crop,
  0.1 on the second, 0.5 on local crops (the DINO/BYOL values DINOv2's config
  states); solarize (threshold 128) with p 0.2 on the second global crop only;
- ImageNet mean/std normalisation.

Geometry runs per image (the crop boxes differ); the colour operations run on
all crops of a kind at once, each crop with its own draw
(:class:`~vtp_gen.data.photometric.BatchedPhotometric`, bit-identical to
torchvision's transforms for the same draw; the tiny recipe's collate went from
53 to 25 ms per batch).

The same step also gives the plain ADM centre crop (``image``) that the CLIP
and reconstruction branches read, so one DataLoader serves all three
objectives.

DINOv2's code inverts its blur probability (it hands 1 - p to RandomApply:
facebookresearch/dinov2#411, dinov3#286), so its released models were in fact
trained with blur probabilities (0.0, 0.9, 0.5). ``blur_probabilities`` takes
either; the default is the stated recipe, ``DINOV2_EFFECTIVE_BLUR`` the
reproduction of what ran.

Randomness comes from torch's generator only (the masks draw a
Python RNG seeded from it), so ``torch.manual_seed`` - or the per-worker seed
the DataLoader sets - makes a batch reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from vtp_gen.data.decode import Skipped, collate_samples
from vtp_gen.data.masking import BlockMaskGenerator, ibot_mask_weights, sample_batch_masks
from vtp_gen.data.photometric import BatchedPhotometric
from vtp_gen.data.transforms import IMAGENET_MEAN, IMAGENET_STD, center_crop_arr, normalize, pil_to_tensor

# Blur probabilities (first global crop, second global crop, local crops).
STATED_BLUR = (1.0, 0.1, 0.5)
DINOV2_EFFECTIVE_BLUR = (0.0, 0.9, 0.5)


def to_uint8_image(image: Image.Image | torch.Tensor) -> tv_tensors.Image:
    """PIL image, uint8 tensor or [0, 1] float tensor ((C,H,W) or (H,W)) -> uint8 RGB (3,H,W).

    Everything is brought to uint8 so the colour ops (notably solarize at 128)
    behave the same whatever the source.
    """
    if isinstance(image, Image.Image):
        return tv_tensors.Image(TF.pil_to_tensor(image.convert("RGB")))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a PIL image or a tensor, got {type(image).__name__}")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected a (C, H, W) image with 1 or 3 channels, got {tuple(image.shape)}")
    if image.shape[0] == 1:
        image = image.expand(3, -1, -1)
    if image.dtype != torch.uint8:
        if not image.is_floating_point() or image.min() < 0 or image.max() > 1:
            raise ValueError("float images must be in [0, 1] (not ImageNet-normalised); or pass uint8 / PIL")
        image = image.mul(255).round().to(torch.uint8)
    return tv_tensors.Image(image.contiguous())


class MultiCropAugmentation:
    """``aug(image)`` -> {"global_crops": [2 x (3,G,G)], "local_crops": [n x (3,L,L)], "image": (3,S,S)}.

    All outputs are ImageNet-normalised float32. ``image_size`` (default: the
    global crop size) is the plain centre crop for CLIP and reconstruction.
    :meth:`batch_crops` makes the views of many images at once (what the
    collate uses). Picklable, for DataLoader workers.
    """

    def __init__(
        self,
        global_crop_size: int = 256,
        local_crop_size: int = 112,
        n_local_crops: int = 8,
        global_crop_scale: tuple[float, float] = (0.32, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.32),
        image_size: int | None = None,
        blur_kernel_size: int = 9,
        blur_probabilities: tuple[float, float, float] = STATED_BLUR,
    ) -> None:
        self.global_crop_size = global_crop_size
        self.local_crop_size = local_crop_size
        self.n_local_crops = n_local_crops
        self.image_size = image_size or global_crop_size

        def geometry(size: int, scale: tuple[float, float]) -> v2.Transform:
            return v2.Compose(
                [
                    v2.RandomResizedCrop(
                        size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC, antialias=True
                    ),
                    v2.RandomHorizontalFlip(p=0.5),
                ]
            )

        def colour(blur_p: float, solarize_p: float = 0.0) -> BatchedPhotometric:
            # ColorJitter(0.4, 0.4, 0.2, 0.1) p 0.8, grayscale p 0.2, blur sigma 0.1-2 (DINOv2).
            return BatchedPhotometric(
                IMAGENET_MEAN,
                IMAGENET_STD,
                blur_p=blur_p,
                blur_kernel_size=blur_kernel_size,
                solarize_p=solarize_p,
            )

        self.global_geometry = geometry(global_crop_size, global_crop_scale)
        self.local_geometry = geometry(local_crop_size, local_crop_scale)
        blur_1, blur_2, blur_local = blur_probabilities
        self.global_1 = colour(blur_1)
        self.global_2 = colour(blur_2, solarize_p=0.2)
        self.local = colour(blur_local)

    def centre_crop(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """The ADM centre crop used for latent caching, normalised (what CLIP and reconstruction see)."""
        pil = (
            image.convert("RGB") if isinstance(image, Image.Image) else TF.to_pil_image(to_uint8_image(image))
        )
        return normalize(pil_to_tensor(center_crop_arr(pil, self.image_size)))

    def batch_crops(self, images: Sequence[Image.Image | torch.Tensor]) -> dict[str, torch.Tensor]:
        """Views of ``images``, crop-major: ``global_crops`` (2N,3,G,G), ``local_crops`` (nN,3,L,L)."""
        pixels = [to_uint8_image(image) for image in images]

        def views(geometry: v2.Transform, count: int, size: int) -> torch.Tensor:
            # View 0 of every image, then view 1 ...: uint8, ready for the batched colour step.
            crops = [geometry(p).as_subclass(torch.Tensor) for _ in range(count) for p in pixels]
            return torch.stack(crops) if crops else torch.zeros(0, 3, size, size, dtype=torch.uint8)

        global_views = views(self.global_geometry, 2, self.global_crop_size)
        first, second = global_views[: len(pixels)], global_views[len(pixels) :]
        return {
            "global_crops": torch.cat([self.global_1(first), self.global_2(second)]),
            "local_crops": self.local(views(self.local_geometry, self.n_local_crops, self.local_crop_size)),
        }

    def crops(self, image: Image.Image | torch.Tensor) -> dict[str, list[torch.Tensor]]:
        views = self.batch_crops([image])
        return {name: list(stacked) for name, stacked in views.items()}

    def __call__(self, image: Image.Image | torch.Tensor) -> dict:
        return {**self.crops(image), "image": self.centre_crop(image)}


class MultiCropCollate:
    """``collate(samples)`` -> the stage-1 batch dict (use as the DataLoader's ``collate_fn``).

    Samples are the data layer's dicts (``image`` as PIL or tensor, ``caption``,
    optional ``label`` ...) or :class:`~vtp_gen.data.decode.Skipped` records,
    which are dropped and counted in ``data_issues`` as by
    :func:`~vtp_gen.data.decode.collate_samples`. The batch holds every field
    ``collate_samples`` gives (``image`` becomes the normalised centre crop,
    (B,3,S,S)), and:

    - ``text_tokens`` (B, context) when a ``tokenizer`` is given;
    - ``ssl_indices`` (B_ssl,): the samples the SSL views were made from
      (a random ``ssl_fraction`` of the batch, all by default);
    - ``global_crops`` (2 B_ssl, 3, G, G) and ``local_crops``
      (n_local B_ssl, 3, L, L), crop-major (view 0 of every sample, then view 1 ...);
    - ``masks`` (2 B_ssl, (G/patch)^2) bool: block masks on ``mask_probability``
      of the global crops with ratios spread over ``mask_ratio_range``;
    - ``mask_indices`` (M,): positions of the masked patches in ``masks.flatten()``;
    - ``mask_weights`` (M,): 1 / (masked patches of that crop), for the iBOT loss.
    """

    def __init__(
        self,
        augmentation: MultiCropAugmentation,
        patch_size: int,
        mask_ratio_range: tuple[float, float] = (0.1, 0.5),
        mask_probability: float = 0.5,
        ssl_fraction: float = 1.0,
        tokenizer: Callable[[Sequence[str]], torch.Tensor] | None = None,
    ) -> None:
        if augmentation.global_crop_size % patch_size:
            raise ValueError(
                f"global crop size {augmentation.global_crop_size} is not a multiple of patch {patch_size}"
            )
        if not 0.0 < ssl_fraction <= 1.0:
            raise ValueError(f"ssl_fraction must be in (0, 1], got {ssl_fraction}")
        self.augmentation = augmentation
        self.patch_size = patch_size
        self.grid = (augmentation.global_crop_size // patch_size,) * 2
        self.mask_ratio_range = tuple(mask_ratio_range)
        self.mask_probability = mask_probability
        self.ssl_fraction = ssl_fraction
        self.tokenizer = tokenizer
        num_patches = self.grid[0] * self.grid[1]
        self.mask_generator = BlockMaskGenerator(self.grid, max_patches=int(0.5 * num_patches))

    def _ssl_indices(self, batch_size: int) -> torch.Tensor:
        if self.ssl_fraction >= 1.0:
            return torch.arange(batch_size)
        # At least 2 (KoLeo needs a neighbour in the subset), at most what the batch holds.
        count = min(batch_size, max(2, round(batch_size * self.ssl_fraction)))
        return torch.randperm(batch_size)[:count].sort().values

    def __call__(self, samples: Sequence[dict | Skipped]) -> dict:
        good = [s for s in samples if not isinstance(s, Skipped)]
        ssl_indices = self._ssl_indices(len(good))
        views = self.augmentation.batch_crops([good[i]["image"] for i in ssl_indices.tolist()])
        # Replace the raw image by its centre crop, then batch everything else the usual way.
        plain = [{**s, "image": self.augmentation.centre_crop(s["image"])} for s in good]
        batch = collate_samples(plain + [s for s in samples if isinstance(s, Skipped)])
        if self.tokenizer is not None and good:
            batch["text_tokens"] = self.tokenizer([s["caption"] for s in good])

        batch["ssl_indices"] = ssl_indices
        batch["global_crops"] = views["global_crops"]
        batch["local_crops"] = views["local_crops"]
        # The masks draw from a Python RNG seeded by torch's, so one seed fixes the whole batch.
        rng = random.Random(int(torch.randint(2**62, ())))
        masks = sample_batch_masks(
            len(views["global_crops"]),
            self.grid,
            self.mask_ratio_range,
            self.mask_probability,
            self.mask_generator,
            rng,
        )
        batch["masks"] = masks
        batch["mask_indices"] = masks.flatten().nonzero().flatten()
        batch["mask_weights"] = ibot_mask_weights(masks)
        return batch
