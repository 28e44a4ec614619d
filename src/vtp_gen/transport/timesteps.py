"""Time sampling for training and time grids for sampling."""

from __future__ import annotations

import torch

TIME_DISTRIBUTIONS = ("uniform", "logit_normal")


def sample_training_times(
    batch_size: int,
    distribution: str = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B,) float32 training times in [0, 1].

    ``uniform``: t ~ U(0, 1). ``logit_normal``: t = sigmoid(n), n ~ N(logit_mean,
    logit_std**2); a negative mean puts more samples near the noise end (t = 0),
    which VTP uses: (-0.75, 1.0) for VTP-L, (-0.5, 1.25) for S/B; LightningDiT's
    ``use_lognorm`` is (0, 1).
    """
    if distribution == "uniform":
        return torch.rand(batch_size, device=device, generator=generator)
    if distribution == "logit_normal":
        normal = torch.randn(batch_size, device=device, generator=generator)
        return torch.sigmoid(normal * logit_std + logit_mean)
    raise ValueError(f"unknown time distribution {distribution!r}; expected one of {TIME_DISTRIBUTIONS}")


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t), LightningDiT's timestep shift (0 and 1 stay fixed).

    s < 1 spends more of the grid near the noise end (t = 0). As in the reference,
    ``shift <= 0`` means "no shift" (so does s = 1, the identity).
    """
    if shift <= 0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def time_grid(
    steps: int,
    shift: float = 0.0,
    start: float = 0.0,
    end: float = 1.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``steps`` float32 points from ``start`` to ``end`` (both included), then shifted.

    This is the reference grid: ``steps`` counts grid points, so a fixed-step
    solver makes ``steps - 1`` updates (LightningDiT's "250 steps" = 249 Euler updates).
    """
    if steps < 2:
        raise ValueError(f"a time grid needs at least 2 points, got steps={steps}")
    return shift_timesteps(torch.linspace(start, end, steps, device=device), shift)
