"""Skipping optimiser steps whose gradients are NaN or infinite, and stopping when they keep coming.

One bad batch (a corrupt image that decodes to garbage, an overflow in a loss)
must not poison the weights, the optimiser moments or the EMA. The
:class:`NonFiniteGuard` callback looks at the gradients right before every
optimiser step (after the DDP all-reduce, so every rank decides the same way;
before clipping, which would spread one NaN over every gradient). When any is
not finite it drops them all (``grad = None``): AdamW then leaves every
parameter and its state untouched. The system sees the decision through
:func:`step_was_skipped` and skips its EMA / teacher update too. A NaN loss
gives NaN gradients, so it is caught the same way. Lightning still counts the
step, so the data position and the step-seeded random draws move on exactly as
in a run without the fault.

``max_consecutive`` skipped steps in a row mean the run itself has diverged:
the guard stops it with :class:`NonFiniteTrainingError`. The weights were never
changed by a bad step, so every checkpoint on disk, including ``last.ckpt``,
holds the weights from before the fault.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

SKIPPED_ATTRIBUTE = "_nonfinite_step_skipped"


class NonFiniteTrainingError(RuntimeError):
    """Too many optimiser steps in a row had NaN / infinite gradients."""


def step_was_skipped(module: L.LightningModule) -> bool:
    """Whether the guard dropped the gradients of the optimiser step just taken."""
    return getattr(module, SKIPPED_ATTRIBUTE, False)


def gradients_are_finite(parameters) -> bool:
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    # One sum per tensor, one sync for the whole model. A sum is finite exactly when every element
    # is (a NaN or an infinity of either sign makes it NaN or infinite), except that finite values
    # so large their sum overflows float32 (gradients near 1e30) also count as non-finite: the
    # safe side. torch.isfinite(g).all() gave the same answer ~10x slower on the CPU (2.4 vs 0.23
    # ms per step for the tiny LightningDiT's 1.3M gradient values, ~3 % of its training step).
    sums = torch.stack([g.sum(dtype=torch.float32) for g in grads])
    return bool(torch.isfinite(sums).all())


class NonFiniteGuard(Callback):
    def __init__(self, max_consecutive: int = 5):
        if max_consecutive < 1:
            raise ValueError(f"trainer.max_nonfinite_steps must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped_total = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        finite = gradients_are_finite(parameters)
        setattr(pl_module, SKIPPED_ATTRIBUTE, not finite)
        if finite:
            self.consecutive = 0
            return
        for parameter in parameters:
            parameter.grad = None
        self.consecutive += 1
        self.skipped_total += 1
        step = trainer.global_step
        print(
            f"[non-finite] step {step}: NaN/Inf gradients, step skipped "
            f"({self.consecutive} in a row, {self.skipped_total} in this run)",
            flush=True,
        )
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteTrainingError(
                f"{self.consecutive} optimiser steps in a row (up to step {step}) had NaN/Inf gradients: "
                "the run has diverged. No weights were changed by those steps, so the last checkpoint "
                "holds the weights from before the fault; lower the learning rate or check the data, "
                "then rerun to resume (trainer.max_nonfinite_steps sets the limit)."
            )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.skipped_total:
            pl_module.log("train/skipped_nonfinite", float(self.skipped_total))

    def state_dict(self) -> dict:
        return {"skipped_total": self.skipped_total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped_total = int(state_dict.get("skipped_total", 0))
