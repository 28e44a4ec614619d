"""Per-channel latent statistics, exact in float64 and independent of the number of ranks.

Each shard writer summarises the (non-flipped) latents of its shard as
(count, mean, M2) per channel in float64; the finaliser merges the shard
summaries in shard order with Chan et al.'s pairwise update. A shard's content
does not depend on how many ranks wrote the cache, and the merge order is
fixed, so 1 rank and 8 ranks give the same numbers (up to the float noise of
the encoder itself). Std is the unbiased one (``torch.std`` default), as in
LightningDiT's ``latents_stats.pt``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ChannelMoments:
    """Count, mean and sum of squared deviations per channel, over (N, H, W)."""

    count: int
    mean: torch.Tensor  # (C,) float64
    m2: torch.Tensor  # (C,) float64

    @classmethod
    def empty(cls, channels: int) -> ChannelMoments:
        zeros = torch.zeros(channels, dtype=torch.float64)
        return cls(0, zeros, zeros.clone())

    @classmethod
    def of(cls, latents: torch.Tensor) -> ChannelMoments:
        """Moments of a (N, C, H, W) batch, computed in float64."""
        x = latents.detach().to("cpu", torch.float64)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        if count == 0:
            return cls.empty(x.shape[1])
        mean = x.mean(dim=(0, 2, 3))
        m2 = (x - mean.view(1, -1, 1, 1)).square().sum(dim=(0, 2, 3))
        return cls(count, mean, m2)

    def merge(self, other: ChannelMoments) -> ChannelMoments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / total)
        m2 = self.m2 + other.m2 + delta.square() * (self.count * other.count / total)
        return ChannelMoments(total, mean, m2)

    @property
    def std(self) -> torch.Tensor:
        if self.count < 2:
            raise ValueError("latent statistics need at least 2 values per channel")
        return (self.m2 / (self.count - 1)).sqrt()

    def to_record(self) -> dict:
        # Python floats are float64 and JSON keeps their repr exactly: the merge stays exact.
        return {"count": self.count, "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_record(cls, record: dict) -> ChannelMoments:
        return cls(
            int(record["count"]),
            torch.tensor(record["mean"], dtype=torch.float64),
            torch.tensor(record["m2"], dtype=torch.float64),
        )


def stats_subset_mask(num_images: int, max_images: int, seed: int) -> torch.Tensor | None:
    """Which global indices feed the statistics: None = all, else a seeded random bool mask.

    A random subset rather than the first N, because image folders are sorted by
    class and the first 10k ImageNet images are 10 classes.
    """
    if max_images <= 0 or max_images >= num_images:
        return None
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(num_images, generator=generator)[:max_images]
    mask = torch.zeros(num_images, dtype=torch.bool)
    mask[chosen] = True
    return mask
