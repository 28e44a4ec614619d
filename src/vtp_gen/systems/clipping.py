"""Gradient clipping that works with the optimisers, precisions and strategies the recipes use.

Lightning refuses two combinations the paper recipes are made of:

- a fused AdamW (``optim.fused: true``) under ``bf16-mixed`` with
  ``gradient_clip_val`` > 0: its mixed-precision plugin assumes a fused
  optimiser unscales fp16 gradients inside its step and stops ("does not allow
  for gradient clipping because it performs unscaling of gradients
  internally"), although bf16 autocast has no gradient scaler and so nothing to
  unscale;
- norm clipping under FSDP (``vtp_l.yaml``): its FSDP plugin has no handle on
  the sharded gradients and raises.

The systems clip here instead (``configure_gradient_clipping`` for automatic
optimisation, :func:`clip_gradients_` by hand in the decoder fine-tune):

- without a gradient scaler (``bf16-mixed``, ``32-true``, ``bf16-true``):
  ``torch.nn.utils.clip_grad_norm_`` over the optimiser's parameters, the very
  call Lightning makes for an unfused optimiser, so results are unchanged;
- FSDP: each rank holds a shard of every gradient, so the norm is the square
  root of the all-reduced sum of the shards' squared norms, and every shard is
  scaled by the same factor (what FSDP's own ``clip_grad_norm_`` computes,
  restricted to one optimiser's parameters);
- ``16-mixed`` (a GradScaler: gradients must be unscaled first): Lightning's
  own clipping, with its checks (no recipe uses fp16).

The :class:`~vtp_gen.systems.nonfinite.NonFiniteGuard` keeps its meaning: in
automatic optimisation it looks at the gradients before they are clipped
(``on_before_optimizer_step`` comes first), and in the decoder fine-tune, which
clips before ``optimizer.step()``, a NaN spread by the norm still leaves every
gradient non-finite, so the step is dropped whole either way.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.optim import Optimizer


def optimizer_parameters(optimizer: Optimizer) -> list[torch.nn.Parameter]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def uses_grad_scaler(trainer: L.Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def uses_sharded_gradients(trainer: L.Trainer) -> bool:
    from lightning.pytorch.strategies import FSDPStrategy

    return isinstance(trainer.strategy, FSDPStrategy)


def sharded_clip_grad_norm_(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Norm clipping of gradients sharded over the ranks (each rank calls it with its shards).

    A rank that holds no piece of these parameters still joins the all-reduce
    with a zero. Returns the total norm before clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    device = grads[0].device if grads else next(iter(parameters)).device
    squared = torch.zeros((), device=device, dtype=torch.float32)
    for grad in grads:
        squared += torch.linalg.vector_norm(grad, dtype=torch.float32).square()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(squared)
    total = squared.sqrt()
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for grad in grads:
        grad.mul_(factor.to(grad.dtype))
    return total


def clip_gradients_(
    module: L.LightningModule,
    optimizer: Optimizer,
    clip_val: float | None,
    algorithm: str | None = "norm",
) -> None:
    """Clip the gradients of ``optimizer``'s parameters to ``clip_val`` (norm or value); 0 / None: nothing."""
    if not clip_val or clip_val <= 0:
        return
    trainer = module.trainer
    algorithm = str(getattr(algorithm, "value", algorithm) or "norm")
    if uses_grad_scaler(trainer):
        module.clip_gradients(optimizer, gradient_clip_val=clip_val, gradient_clip_algorithm=algorithm)
        return
    parameters = optimizer_parameters(optimizer)
    if algorithm == "value":
        torch.nn.utils.clip_grad_value_(parameters, clip_val)
    elif algorithm != "norm":
        raise ValueError(f"unknown gradient clipping algorithm {algorithm!r} (norm or value)")
    elif uses_sharded_gradients(trainer):
        sharded_clip_grad_norm_(parameters, clip_val)
    else:
        torch.nn.utils.clip_grad_norm_(parameters, clip_val)


class ClipsGradients:
    """Mixin for LightningModules: the Trainer's ``gradient_clip_val`` applied by :func:`clip_gradients_`."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        clip_gradients_(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
