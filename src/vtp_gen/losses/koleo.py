"""KoLeo regulariser (Kozachenko-Leonenko differential-entropy estimator), as DINOv2 uses it.

Spreads features over the unit sphere: for each L2-normalised feature, the
distance to its nearest neighbour in the batch is pushed up through
-mean(log(distance)). DINOv2 applies it (weight 0.1) to the student's
backbone CLS tokens of each global crop separately and sums the crops'
values; ``groups=2`` does exactly that on the crop-major (2B, D) tensor.
It is computed on the local batch only (no gathering), as in DINOv2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KoLeoLoss(nn.Module):
    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, features: Tensor, groups: int = 1) -> Tensor:
        """(n, D) features -> scalar; with ``groups`` > 1 the rows are split into equal groups and the values summed."""
        if features.shape[0] % groups:
            raise ValueError(f"{features.shape[0]} rows do not split into {groups} equal groups")
        # fp32 throughout (as DINOv2): nearest-neighbour distances of unit vectors are small differences.
        with torch.autocast(device_type=features.device.type, enabled=False):
            return sum(self._single(chunk) for chunk in features.float().chunk(groups))

    def _single(self, features: Tensor) -> Tensor:
        if features.shape[0] < 2:
            raise ValueError("KoLeo needs at least 2 samples per group (a nearest neighbour)")
        x = F.normalize(features, p=2, dim=-1, eps=self.eps)
        with torch.no_grad():
            similarity = x @ x.t()
            similarity.fill_diagonal_(-2.0)  # below any cosine: a sample is never its own neighbour
            nearest = similarity.argmax(dim=1)
        # pairwise_distance adds eps to the difference, like the PairwiseDistance module DINOv2 uses.
        distances = F.pairwise_distance(x, x[nearest], p=2, eps=self.eps)
        return -torch.log(distances + self.eps).mean()
