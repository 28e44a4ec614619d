"""Block-wise patch masking for iBOT (BEiT-style rectangles, DINOv2's MaskingGenerator semantics).

A mask over an (h, w) patch grid is grown from random rectangles until the
requested number of patches is masked: each rectangle has a random area in
[min_patches, remaining budget] and an aspect ratio log-uniform in
[min_aspect, 1 / min_aspect]; it is kept only if it adds at least one new
patch without overshooting the budget (10 tries per rectangle, then the mask
is returned as is, possibly a little below the request).

:func:`sample_batch_masks` spreads the masking ratios of a batch evenly over
the ratio range (one ratio bin per masked crop, DINOv2's collate) and leaves
the other crops unmasked, in random order.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch


class BlockMaskGenerator:
    """``BlockMaskGenerator((h, w))(num_patches)`` -> (h, w) bool numpy mask with ~num_patches True."""

    def __init__(
        self,
        grid_size: tuple[int, int],
        min_patches: int = 4,
        max_patches: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        attempts: int = 10,
    ) -> None:
        self.height, self.width = grid_size
        self.num_patches = self.height * self.width
        self.min_patches = min_patches
        # DINOv2 caps one rectangle at half the grid.
        self.max_patches = self.num_patches if max_patches is None else max_patches
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect_range = (math.log(min_aspect), math.log(max_aspect))
        self.attempts = attempts

    def _add_rectangle(self, mask: np.ndarray, budget: int, rng: random.Random) -> int:
        """Mask one random rectangle; returns how many new patches it covered (0 if all tries failed)."""
        for _ in range(self.attempts):
            area = rng.uniform(self.min_patches, budget)
            aspect = math.exp(rng.uniform(*self.log_aspect_range))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if w < self.width and h < self.height:
                top = rng.randint(0, self.height - h)
                left = rng.randint(0, self.width - w)
                region = mask[top : top + h, left : left + w]
                new = h * w - int(region.sum())
                if 0 < new <= budget:
                    region[...] = True
                    return new
        return 0

    def __call__(self, num_masked: int = 0, rng: random.Random | None = None) -> np.ndarray:
        rng = rng or random
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masked:
            budget = min(num_masked - count, self.max_patches)
            added = self._add_rectangle(mask, budget, rng)
            if added == 0:
                break
            count += added
        return mask


def sample_batch_masks(
    n_crops: int,
    grid_size: tuple[int, int],
    ratio_range: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    generator: BlockMaskGenerator | None = None,
    rng: random.Random | None = None,
) -> torch.Tensor:
    """(n_crops, h * w) bool masks: ``int(n_crops * probability)`` crops masked, the rest not.

    The i-th masked crop draws its ratio uniformly from the i-th of equal
    sub-intervals of ``ratio_range``, so a batch always spans the whole range.
    """
    rng = rng or random
    num_patches = grid_size[0] * grid_size[1]
    if generator is None:
        generator = BlockMaskGenerator(grid_size, max_patches=int(0.5 * num_patches))
    n_masked = int(n_crops * probability)
    bounds = np.linspace(ratio_range[0], ratio_range[1], n_masked + 1)
    masks = [
        generator(int(num_patches * rng.uniform(bounds[i], bounds[i + 1])), rng) for i in range(n_masked)
    ]
    masks += [np.zeros(grid_size, dtype=bool) for _ in range(n_crops - n_masked)]
    rng.shuffle(masks)
    if not masks:
        return torch.zeros(0, num_patches, dtype=torch.bool)
    return torch.from_numpy(np.stack(masks).reshape(n_crops, num_patches))


def ibot_mask_weights(masks: torch.Tensor) -> torch.Tensor:
    """(n_crops, N) bool masks -> (M,) weights 1 / (masked patches of its crop), one per masked patch.

    Row-major order, i.e. aligned with ``masks.nonzero()`` and ``masks.flatten().nonzero()``.
    """
    per_crop = 1.0 / masks.sum(dim=-1, keepdim=True).clamp(min=1).float()
    return per_crop.expand(masks.shape)[masks]
