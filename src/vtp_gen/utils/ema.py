"""Exponential moving average of model weights.

Used for the stage-2 generator (decay 0.9999, sampling uses the average) and
for stage 1's DINO teacher (a scheduled momentum, hence the per-call decay).

    ema = EMA(model, decay=0.9999)      # a frozen copy, in eval mode
    ...after each optimiser step:
    ema.update(model)                   # or ema.update(model, decay=momentum_at_step)
    ema.module(x, t, y)                 # the averaged model

    ema_update(teacher, student, decay=0.996)   # the same update on two existing modules
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

# Wrappers that prefix parameter names: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _strip_wrappers(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _named(tensors) -> dict[str, torch.Tensor]:
    return {_strip_wrappers(name): tensor for name, tensor in tensors}


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float, copy_buffers: bool = True) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every floating-point parameter, in place.

    Parameters are matched by name (DDP / torch.compile prefixes ignored), so the
    two modules must have the same structure; frozen parameters (e.g. DiT's fixed
    ``pos_embed``) are averaged too, as the reference does. ``decay=0`` copies the
    weights. Buffers are copied when ``copy_buffers`` (they are statistics or
    constants, not weights to average).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    ema_params = _named(ema_model.named_parameters())
    model_params = _named(model.named_parameters())
    if ema_params.keys() != model_params.keys():
        missing = sorted(ema_params.keys() ^ model_params.keys())[:5]
        raise ValueError(f"EMA and model parameters differ, e.g. {missing}")
    targets, sources = [], []
    for name, ema_param in ema_params.items():
        if ema_param.is_floating_point():
            targets.append(ema_param)
            sources.append(model_params[name].detach())
        else:
            ema_param.copy_(model_params[name])
    if targets:
        # One fused kernel per group instead of one per tensor: ~1000 tensors in an XL model.
        torch._foreach_mul_(targets, decay)
        torch._foreach_add_(targets, sources, alpha=1.0 - decay)
    if copy_buffers:
        model_buffers = _named(model.named_buffers())
        for name, buffer in _named(ema_model.named_buffers()).items():
            if name in model_buffers:
                buffer.copy_(model_buffers[name])


class EMA(nn.Module):
    """A frozen, eval-mode copy of ``model`` whose weights track an exponential moving average.

    Being an ``nn.Module`` it follows its owner across devices and into
    checkpoints (``ema.module.state_dict()`` has the model's own keys).
    ``num_updates`` counts the updates made.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def train(self, mode: bool = True) -> EMA:
        # The averaged model never trains (no label dropout, no stochastic depth), whatever its owner does.
        super().train(mode)
        self.module.eval()
        return self

    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """One EMA step towards ``model``; ``decay`` overrides the default for this call (momentum schedules)."""
        ema_update(self.module, model, self.decay if decay is None else decay)
        self.num_updates += 1

    def copy_from(self, model: nn.Module) -> None:
        """Reset the average to ``model``'s weights (e.g. after loading or syncing ranks)."""
        ema_update(self.module, model, 0.0)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
