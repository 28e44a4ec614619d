"""The linear (rectified-flow) path between noise and data used by SiT and LightningDiT.

Convention: t = 0 is pure noise, t = 1 is data,

    x_t = t * x_data + (1 - t) * noise,      u_t = d x_t / dt = x_data - noise,

and the network predicts the velocity u_t.
"""

from __future__ import annotations

import torch


def expand_like(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) broadcastable against x."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


def interpolate(t: torch.Tensor, noise: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """x_t on the linear path; t has shape (B,)."""
    t = expand_like(t, data)
    return t * data + (1 - t) * noise


def target_velocity(noise: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """The path's (time-independent) velocity, the regression target."""
    return data - noise


def score_from_velocity(velocity: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """grad log p_t(x) implied by a velocity prediction on the linear path.

    With x_t = t x1 + (1 - t) x0, x0 ~ N(0, I): E[x0 | x_t] = x_t - t v, and the
    score is -E[x0 | x_t] / (1 - t) = (t v - x_t) / (1 - t). Undefined at t = 1,
    which is why the SDE sampler stops short of it.
    """
    t = expand_like(t, x)
    return (t * velocity - x) / (1 - t)
