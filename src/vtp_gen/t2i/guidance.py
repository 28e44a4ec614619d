"""Classifier-free guidance for text: the null condition is the empty caption's features."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vtp_gen.guidance import combine_guidance
from vtp_gen.t2i.text_features import TextFeatures
from vtp_gen.transport.samplers import integrate


def text_guided_velocity(
    model: Callable[..., torch.Tensor],
    cond: TextFeatures,
    null: TextFeatures,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
    guidance_mode: str = "all_channels",
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """v(x, t) of ``model(x, t, **caption features)``; guided where t >= cfg_interval_start.

    ``null`` is one row (the empty caption) or one row per sample. Where no sample
    of the batch is inside the guidance interval the null pass is skipped.
    """
    guided = cfg_scale != 1.0
    if guided:
        null = null.repeat(len(cond)) if len(null) == 1 else null
        both = TextFeatures.cat([cond, null])

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        active = t >= cfg_interval_start
        if not guided or not bool(active.any()):
            return model(x, t, **cond.as_kwargs())
        out = model(torch.cat([x, x]), torch.cat([t, t]), **both.as_kwargs())
        conditional, unconditional = out.chunk(2)
        return combine_guidance(conditional, unconditional, cfg_scale, guidance_mode, active=active)

    return velocity


@torch.no_grad()
def sample_text(
    model: torch.nn.Module,
    z: torch.Tensor,
    cond: TextFeatures,
    null: TextFeatures,
    method: str = "euler",
    steps: int = 50,
    shift: float = 0.0,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
    guidance_mode: str = "all_channels",
    **solver_kwargs,
) -> torch.Tensor:
    """Latents from noise ``z`` for caption features ``cond``: the text counterpart of ``transport.sample``."""
    velocity = text_guided_velocity(model, cond, null, cfg_scale, cfg_interval_start, guidance_mode)
    return integrate(model, z, velocity, method, steps, shift, **solver_kwargs)
