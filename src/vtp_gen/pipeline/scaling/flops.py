"""Training FLOPs of a stage-1 recipe, counted on one real training step.

``torch.utils.flop_counter.FlopCounterMode`` records every matrix product
(mm, addmm, bmm, baddbmm), convolution and attention kernel that one step
executes, forward and backward, at 2 FLOPs per multiply-add: the student's
CLIP, SSL and reconstruction forwards, the text tower, the EMA teacher's
forward (no gradient, but computed every step), the DINO head and, when
``lpips_weight > 0``, the frozen LPIPS network. Elementwise work (norms,
activations, losses, the AdamW update, the EMA update) is not counted, the
usual convention for model FLOPs.

Two additions to torch's table: the CPU attention kernels
(``_scaled_dot_product_flash_attention_for_cpu`` and its backward) are counted
with torch's own SDPA formulas; torch registers only the GPU kernels, so on a
CPU attention would otherwise count as zero and the same recipe would cost
less on a laptop than on a GPU.

The step's cost does not depend on the step index (the subsets are fixed
fractions of B, crops fixed sizes; only the number of iBOT-masked patches
varies, and the DINO head is a small share), so the run's training FLOPs are
this count times ``trainer.max_steps`` times the per-device batches in one
optimiser step (:func:`batches_per_step`: devices x nodes x accumulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from vtp_gen.pipeline.stage1.run import build_pretraining_data, build_tokenizer
from vtp_gen.systems.tokenizer_pretraining import TokenizerPretraining
from vtp_gen.utils.flops import count_flops


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one stage-1 pre-training step of one device (its ``data.batch_size`` images)."""

    per_step: int
    trainable_parameters: int
    batch_size: int

    def total(self, steps: int, batches_per_step: int = 1) -> int:
        return self.per_step * steps * batches_per_step


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pretraining_step_flops(cfg: DictConfig, device: str | torch.device = "cpu") -> StepFlops:
    """Count one optimiser step of :class:`TokenizerPretraining` built from the stage-1 config ``cfg``.

    The batch is the run's own first batch (the real data, collate, crops, masks
    and captions); the model is the run's initialisation. The step runs as the
    training loop runs it (losses, backward), in fp32; precision changes the
    speed of a FLOP, not the count.
    """

    device = torch.device(device)
    model = build_tokenizer(cfg)
    system = TokenizerPretraining(
        model, cfg.objectives, cfg.ssl, cfg.optim, total_steps=cfg.trainer.max_steps, seed=cfg.run.seed
    ).to(device)
    system.train()
    loader = build_pretraining_data(cfg, model).train_dataloader()
    batch = next(iter(loader))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    step = cfg.trainer.max_steps // 2  # past the warm-ups; the cost is the same at every step

    def one_step() -> None:
        losses = system.compute_losses(batch, step)
        losses["loss"].backward()

    if system.rec_on and system.rec_loss.lpips_weight > 0:
        system.rec_loss.perceptual  # noqa: B018 - load LPIPS before counting (its loading is not the step)
    flops = count_flops(one_step)
    trainable = sum(p.numel() for p in system.parameters() if p.requires_grad)
    return StepFlops(flops, trainable, int(batch["image"].shape[0]))


def batches_per_step(cfg: DictConfig) -> int:
    """Per-device batches in one optimiser step: devices x nodes x gradient-accumulation micro-batches.

    ``trainer.devices`` must be a number (or a list of device ids) for this to be known before the
    run; "auto" counts as one device, and the study says so when it meets it.
    """
    devices = cfg.trainer.devices
    if isinstance(devices, int):
        count = devices
    elif isinstance(devices, (list, tuple)) or type(devices).__name__ == "ListConfig":
        count = len(devices)
    elif isinstance(devices, str) and devices.isdigit():
        count = int(devices)
    else:
        count = 1
    return max(count, 1) * max(cfg.trainer.num_nodes, 1) * max(cfg.trainer.accumulate_grad_batches, 1)
