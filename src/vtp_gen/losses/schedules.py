"""Step-indexed schedules of the stage-1 recipe (DINOv2 / OpenCLIP style).

Plain functions of the optimiser step, so the training system can evaluate
them at any step (including right after a resume) without carrying state:

- learning rate: linear warm-up from 0, then cosine to ``min_lr``;
- weight decay: cosine 0.04 -> 0.2;
- EMA teacher momentum: cosine 0.992 -> 1.0;
- teacher temperature: linear warm-up 0.04 -> 0.07, then constant.

Cosine segments run over ``[warmup_steps, total_steps]`` and hold their final
value afterwards.
"""

from __future__ import annotations

import math


def _check(step: int, total_steps: int, warmup_steps: int = 0) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), total > 0")


def cosine_schedule(
    step: int,
    total_steps: int,
    start: float,
    end: float,
    warmup_steps: int = 0,
    warmup_start: float = 0.0,
) -> float:
    """Linear warm-up ``warmup_start -> start`` over ``warmup_steps``, then half-cosine ``start -> end``."""
    _check(step, total_steps, warmup_steps)
    if step < warmup_steps:
        return warmup_start + (start - warmup_start) * step / warmup_steps
    if total_steps == warmup_steps:
        return end
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def learning_rate(
    step: int, total_steps: int, peak_lr: float, warmup_steps: int, min_lr: float = 0.0
) -> float:
    """0 -> ``peak_lr`` linearly over ``warmup_steps``, then cosine down to ``min_lr`` at ``total_steps``."""
    return cosine_schedule(step, total_steps, peak_lr, min_lr, warmup_steps, warmup_start=0.0)


def weight_decay(step: int, total_steps: int, start: float = 0.04, end: float = 0.2) -> float:
    """Cosine ramp of the AdamW weight decay (DINOv2: 0.04 -> 0.2)."""
    return cosine_schedule(step, total_steps, start, end)


def teacher_momentum(step: int, total_steps: int, start: float = 0.992, end: float = 1.0) -> float:
    """Cosine ramp of the EMA teacher momentum towards 1 (the teacher freezes at the end)."""
    return cosine_schedule(step, total_steps, start, end)


def teacher_temperature(step: int, warmup_steps: int, start: float = 0.04, end: float = 0.07) -> float:
    """Linear warm-up ``start -> end`` over ``warmup_steps``, then constant ``end``.

    A cold teacher early on avoids collapse while the prototypes are still random.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps
