"""Turn a class-conditional generator into a velocity function v(x, t), with optional guidance."""

from __future__ import annotations

from collections.abc import Callable

import torch

from vtp_gen.guidance import combine_guidance

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided_velocity(
    model: Callable[..., torch.Tensor],
    y: torch.Tensor,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
    guidance_mode: str = "all_channels",
    null_class: int | None = None,
) -> VelocityFn:
    """v(x, t) of ``model(x, t, y)`` under classifier-free guidance.

    Guidance (``cfg_scale != 1``) evaluates the model on the batch doubled with
    the null class (``null_class``, default ``model.num_classes``) and mixes the
    two predictions (``guidance_mode``: ``"all_channels"`` or ``"reference"``, see
    ``vtp_gen.guidance``), only where t >= cfg_interval_start;
    elsewhere the conditional prediction is used and the null-class pass is
    skipped when no sample needs it. Output channels beyond the input's (DiT's
    learned variances) are dropped.
    """
    guided = cfg_scale != 1.0
    if guided:
        null_class = model.num_classes if null_class is None else null_class
        null_labels = torch.full_like(y, null_class)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1]
        active = t >= cfg_interval_start
        if not guided or not bool(active.any()):
            return model(x, t, y)[:, :channels]
        out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null_labels]))
        cond, uncond = out.chunk(2)
        return combine_guidance(
            cond[:, :channels], uncond[:, :channels], cfg_scale, guidance_mode, active=active
        )

    return velocity
