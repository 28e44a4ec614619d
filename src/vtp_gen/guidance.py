"""Classifier-free guidance arithmetic shared by the model's ``forward_with_cfg`` and the samplers.

Two modes:

- ``"all_channels"`` (default for new work): ``uncond + scale * (cond - uncond)``
  on every predicted channel.
- ``"reference"``: guidance on the first 3 channels only, the rest is the
  conditional prediction. DiT, SiT and LightningDiT all ship this (a leftover of
  DiT's 4-channel SD-VAE latents); it is what their published numbers were
  computed with, so it is kept for reproduction.

Channels past ``predicted_channels`` (DiT's learned-variance outputs) are never
guided: they pass through from the conditional prediction in both modes.
"""

from __future__ import annotations

import torch

GUIDANCE_MODES = ("all_channels", "reference")
REFERENCE_GUIDED_CHANNELS = 3


def guided_channel_count(mode: str, predicted_channels: int) -> int:
    """How many leading channels guidance acts on."""
    if mode == "all_channels":
        return predicted_channels
    if mode == "reference":
        return min(REFERENCE_GUIDED_CHANNELS, predicted_channels)
    raise ValueError(f"unknown guidance mode {mode!r}; expected one of {GUIDANCE_MODES}")


def combine_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    mode: str = "all_channels",
    predicted_channels: int | None = None,
    active: torch.Tensor | None = None,
) -> torch.Tensor:
    """Guided prediction for the conditional half of a guidance batch.

    cond, uncond: (B, C, ...) conditional / null-class predictions.
    predicted_channels: channels that are the model's prediction (default: all of C).
    active: optional (B,) bool, False where guidance is switched off (guidance
      interval); there the conditional prediction is returned unchanged.
    """
    n = guided_channel_count(mode, cond.shape[1] if predicted_channels is None else predicted_channels)
    guided_part = uncond[:, :n] + scale * (cond[:, :n] - uncond[:, :n])
    if active is not None:
        mask = active.reshape(-1, *([1] * (cond.dim() - 1)))
        guided_part = torch.where(mask, guided_part, cond[:, :n])
    return torch.cat([guided_part, cond[:, n:]], dim=1)
