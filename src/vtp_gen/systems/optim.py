"""AdamW parameter groups and the per-step wiring of the lr / weight-decay schedules.

Weight decay is applied to weight matrices only (DINOv2 / OpenCLIP practice):
never to norms, biases, layer-scale gammas, the learned tokens (CLS, mask,
register), positional embeddings or the CLIP logit scale, which all have a
meaningful scale that decay would drag to zero. The schedules themselves are
the step functions of :mod:`vtp_gen.losses.schedules`; :func:`apply_schedule`
writes their values into the optimiser before each step, so a resumed run gets
exactly the values an uninterrupted one would have had.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

# Parameter names (last component) that are learned tokens or embeddings of positions.
NO_DECAY_NAMES = (
    "cls_token",
    "mask_token",
    "storage_tokens",
    "register_tokens",
    "positional_embedding",
    "pos_embed",
    "logit_scale",
    "logit_bias",
)


def skips_weight_decay(name: str, param: nn.Parameter) -> bool:
    """True for norms, biases, gammas and scales (ndim < 2) and for learned tokens / position embeddings."""
    return param.ndim < 2 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


def parameter_groups(named_parameters: Iterable[tuple[str, nn.Parameter]]) -> list[dict]:
    """Two AdamW groups, ``decay`` and ``no_decay`` (trainable parameters only, each listed once).

    Each group carries ``apply_weight_decay`` so the scheduled decay lands only where it belongs,
    and ``param_names`` for inspection and tests.
    """
    groups = {
        "decay": {"params": [], "param_names": [], "apply_weight_decay": True, "name": "decay"},
        "no_decay": {"params": [], "param_names": [], "apply_weight_decay": False, "name": "no_decay"},
    }
    seen: set[int] = set()
    for name, param in named_parameters:
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        group = groups["no_decay" if skips_weight_decay(name, param) else "decay"]
        group["params"].append(param)
        group["param_names"].append(name)
    return [g for g in groups.values() if g["params"]]


def build_adamw(
    named_parameters: Iterable[tuple[str, nn.Parameter]],
    lr: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    fused: bool = False,
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`; ``weight_decay`` is the initial value for the decay group."""
    groups = parameter_groups(named_parameters)
    for group in groups:
        group["weight_decay"] = weight_decay if group["apply_weight_decay"] else 0.0
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Set this step's learning rate (times a group's ``lr_scale``) and weight decay (decay groups only)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None:
            group["weight_decay"] = weight_decay if group.get("apply_weight_decay", True) else 0.0
