"""Is bf16 training close to fp32? One forward + backward of a training step each way, compared.

For a stage-1 pre-training step (all objectives) and a stage-2 flow-matching
step, on the same batch and the same random draws (the generator is reseeded
before each pass):

- the reference: fp32 with TF32 off (full-precision matmuls, also on GPUs);
- the test: bf16 autocast, as the recipes train on GPUs (``precision: auto``).

Reported per loss term: the relative difference; for the gradients of all
trainable parameters: the cosine between the two flattened gradients, the
relative error of their difference, and the parameter tensor with the lowest
cosine. Both steps first take ``WARM_STEPS`` optimiser steps (the recipe's
precision: bf16 on GPUs), so the comparison is of a model in training rather
than at its initialisation. ``passed`` asks that every loss term be within ``LOSS_TOLERANCE`` and
the global gradient cosine at least ``GRADIENT_COSINE``: bf16 keeps 8
significant bits (relative rounding 2^-9), so a deep network's loss moves by
~1e-3 and its gradient direction stays well above 0.99; a broken cast (a loss
softmax in bf16, a wrong scale) shows as percent-level losses or a cosine far
below it.

``bench/gpu_mfu.py`` runs it on the GPU sizes before the MFU cases; the dry
run on tiny stand-ins uses CPU autocast.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

LOSS_TOLERANCE = 0.02
GRADIENT_COSINE = 0.99
# Not 0: the benchmarks draw their fixed latents from a generator seeded 0, and noise drawn after
# torch.manual_seed(0) would equal them (a zero target velocity, zero gradients).
PASS_SEED = 1234
# Optimiser steps before the comparison: a fresh DiT's zero-initialised output layer predicts exactly 0,
# where the cosine term of the velocity loss is singular; a few steps leave that point, as training does.
WARM_STEPS = 3


@dataclass
class StepUnderTest:
    """What a precision check needs from a training step: its losses and its trainable parameters."""

    name: str
    losses: Callable[[], dict[str, Tensor]]  # scalar terms, "loss" the one to backpropagate
    parameters: list[tuple[str, nn.Parameter]]


@contextlib.contextmanager
def full_fp32_matmuls() -> Iterator[None]:
    """TF32 off for the reference pass (it is on in gpu_mfu.py, as in GPU training)."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]


def one_pass(
    step: StepUnderTest, device: torch.device, bf16: bool, seed: int
) -> tuple[dict[str, float], list[Tensor]]:
    """Loss terms and fp32 copies of the gradients of one forward + backward."""
    torch.manual_seed(seed)
    for _, parameter in step.parameters:
        parameter.grad = None
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        losses = step.losses()
    losses["loss"].backward()
    terms = {
        name: float(value.detach().float())
        for name, value in losses.items()
        if isinstance(value, Tensor) and value.ndim == 0 and value.is_floating_point()
    }
    grads = [
        torch.zeros_like(p, dtype=torch.float32) if p.grad is None else p.grad.detach().float().clone()
        for _, p in step.parameters
    ]
    for _, parameter in step.parameters:
        parameter.grad = None
    return terms, grads


def _dot(a: Tensor, b: Tensor) -> float:
    # float64 sums: over hundreds of millions of fp32 products a float32 sum drifts (cosines of 1.015 seen).
    return float((a.double() * b.double()).sum())


def _cosine(dot: float, a_squared: float, b_squared: float) -> float:
    denominator = math.sqrt(a_squared * b_squared)
    return dot / denominator if denominator > 0 else float("nan")


def compare(step: StepUnderTest, device: torch.device, seed: int = PASS_SEED) -> dict:
    """fp32 (TF32 off) against bf16 autocast on the same draws; a plain dict."""
    with full_fp32_matmuls():
        reference, reference_grads = one_pass(step, device, bf16=False, seed=seed)
    test, test_grads = one_pass(step, device, bf16=True, seed=seed)
    losses = {}
    for name, value in reference.items():
        if name in test:
            relative = abs(test[name] - value) / max(abs(value), 1e-6)
            losses[name] = {"fp32": value, "bf16": test[name], "relative_difference": relative}
    # Per tensor: <r, t>, |r|^2, |t|^2; the global numbers are their sums.
    sums = [(_dot(r, t), _dot(r, r), _dot(t, t)) for r, t in zip(reference_grads, test_grads)]
    per_tensor = [
        (name, _cosine(*tensor_sums))
        for (name, _), tensor_sums in zip(step.parameters, sums)
        if tensor_sums[1] > 0
    ]
    worst_name, worst_cosine = min(per_tensor, key=lambda item: item[1]) if per_tensor else ("-", math.nan)
    dot, reference_squared, test_squared = (sum(column) for column in zip(*sums))
    gradient_cosine = _cosine(dot, reference_squared, test_squared)
    difference_squared = max(reference_squared + test_squared - 2.0 * dot, 0.0)
    relative_error = math.sqrt(difference_squared / reference_squared) if reference_squared > 0 else math.nan
    worst_loss = max((entry["relative_difference"] for entry in losses.values()), default=math.nan)
    return {
        "name": step.name,
        "losses": losses,
        "gradient_cosine": gradient_cosine,
        "gradient_relative_error": relative_error,
        "worst_tensor": {"name": worst_name, "cosine": worst_cosine},
        "worst_loss_difference": worst_loss,
        "tolerances": {"loss": LOSS_TOLERANCE, "gradient_cosine": GRADIENT_COSINE},
        "passed": bool(worst_loss <= LOSS_TOLERANCE and gradient_cosine >= GRADIENT_COSINE),
    }


def format_comparison(result: dict) -> str:
    """A few lines for the console: each loss term, then the gradients."""
    verdict = "ok" if result["passed"] else "OUTSIDE TOLERANCE"
    lines = [f"== bf16 vs fp32: {result['name']}: {verdict}"]
    for name, entry in result["losses"].items():
        lines.append(
            f"   {name:16s} fp32 {entry['fp32']:+.6g}  bf16 {entry['bf16']:+.6g}"
            f"  rel. diff {entry['relative_difference']:.2e}"
        )
    worst = result["worst_tensor"]
    lines.append(
        f"   gradients: cosine {result['gradient_cosine']:.5f}, relative error "
        f"{result['gradient_relative_error']:.3e}; lowest tensor cosine {worst['cosine']:.4f} ({worst['name']})"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------- the two training steps
def stage1_under_test(size: str, device: torch.device) -> StepUnderTest:
    """The pre-training step of the ``size`` setting (all objectives), past its warm-ups."""
    from vtp_bench.stage1 import PretrainingStep, load_stage1_config, perceptual_network
    from vtp_bench.suite import Settings

    settings = Settings(device=device)
    step = PretrainingStep(load_stage1_config(size), settings, perceptual_network(device)[0])
    for _ in range(WARM_STEPS):
        step()
    names = {id(p): name for name, p in step.system.named_parameters()}
    return StepUnderTest(
        name=f"stage1/{size} pre-training step",
        losses=lambda: step.system.compute_losses(step.batch, step.step_index),
        parameters=[(names.get(id(p), "?"), p) for p in step.parameters],
    )


def stage2_under_test(size: str, device: torch.device) -> StepUnderTest:
    """The flow-matching step of the ``size`` setting: the transport's loss on one latent batch."""
    from vtp_bench.stage2 import GENERATOR_SETTINGS, FlowMatchingStep
    from vtp_bench.suite import Settings

    setting = GENERATOR_SETTINGS[size]
    step = FlowMatchingStep(setting, Settings(device=device), setting.batch_size)
    for _ in range(WARM_STEPS):
        step()

    def losses() -> dict[str, Tensor]:
        terms = step.system.transport.training_losses(step.model, step.latents, y=step.labels)
        return {"loss": terms["loss"].mean()}

    return StepUnderTest(
        name=f"stage2/{size} flow-matching step",
        losses=losses,
        parameters=[(n, p) for n, p in step.model.named_parameters() if p.requires_grad],
    )
