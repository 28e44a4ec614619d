"""DINO (CLS tokens) and iBOT (masked patch tokens) self-distillation losses, as in DINOv2.

The teacher's head outputs become targets by one of two centerings:

- ``"softmax_center"``: softmax((t - c) / T) with c an EMA (momentum 0.9) of the
  mean teacher output over the global batch (all-reduced, so every rank holds
  the same centre). The centre used at a step is the one from earlier steps;
  the current batch updates it afterwards (DINO/DINOv2 order).
- ``"sinkhorn_knopp"``: a few Sinkhorn-Knopp iterations (3) that make every
  prototype receive equal mass over the global batch and every sample a
  probability vector (SwAV/DINOv2). Stateless.

The student side is always a softmax at temperature 0.1; the loss is the
cross-entropy -sum(p_teacher * log p_student) over prototypes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vtp_gen.data.masking import ibot_mask_weights
from vtp_gen.utils.distributed import all_reduce_max, all_reduce_sum

CENTERING_MODES = ("softmax_center", "sinkhorn_knopp")
Centering = Literal["softmax_center", "sinkhorn_knopp"]


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, teacher_temp: float, n_iterations: int = 3) -> Tensor:
    """(N_local, K) teacher logits -> (N_local, K) soft assignments; rows sum to 1.

    Alternately normalises the exp-logit matrix so that each prototype holds
    1/K of the mass and each sample 1/N of it, where N is the number of rows
    summed over all ranks (ranks may hold different numbers of rows, as for
    masked patches). After the final column step every row is a probability
    vector; each prototype's column then sums to ~N/K over the global batch
    (exactly in the limit of many iterations).
    """
    logits = teacher_logits.float()
    n_prototypes = logits.shape[-1]
    n_rows = all_reduce_sum(torch.tensor(float(logits.shape[0]), device=logits.device))
    # Subtracting the global maximum changes nothing after the first normalisation
    # but keeps exp() finite for any logit range (DINOv2 exponentiates directly).
    local_max = logits.max() if logits.numel() else logits.new_tensor(float("-inf"))
    q = torch.exp((logits - all_reduce_max(local_max)) / teacher_temp).t()  # (K, N_local)
    q /= all_reduce_sum(q.sum())
    for _ in range(n_iterations):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # every prototype: total mass 1 ...
        q /= n_prototypes  # ... then 1/K
        q /= q.sum(dim=0, keepdim=True)  # every sample: mass 1 ...
        q /= n_rows  # ... then 1/N
    return (q * n_rows).t()


class TeacherCentering(nn.Module):
    """Turns teacher head outputs (N, K) into target distributions, with an all-reduced EMA centre if needed."""

    def __init__(
        self,
        out_dim: int,
        mode: Centering = "softmax_center",
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        if mode not in CENTERING_MODES:
            raise ValueError(f"centering must be one of {CENTERING_MODES}, got {mode!r}")
        self.mode = mode
        self.center_momentum = center_momentum
        self.sinkhorn_iterations = sinkhorn_iterations
        # Kept (and checkpointed) in both modes so a run can switch mode on resume.
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """Targets for this step; in training mode the EMA centre is updated afterwards."""
        teacher_logits = teacher_logits.float()
        if self.mode == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, teacher_temp, self.sinkhorn_iterations)
        targets = F.softmax((teacher_logits - self.center) / teacher_temp, dim=-1)
        if self.training:
            self.update_center(teacher_logits)
        return targets

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """c <- m * c + (1 - m) * mean of the teacher outputs over all ranks' rows."""
        total = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        count = all_reduce_sum(torch.tensor(float(teacher_logits.shape[0]), device=teacher_logits.device))
        if count.item() == 0:  # nothing masked anywhere this step: keep the centre (same on all ranks)
            return
        updated = self.center * self.center_momentum + (total / count) * (1.0 - self.center_momentum)
        # A NaN/Inf teacher output (a corrupt batch; the step itself is then skipped by the
        # trainer's NonFiniteGuard) must not poison the centre for the rest of the run.
        self.center.copy_(torch.where(torch.isfinite(updated), updated, self.center))


def _cross_entropy(teacher_probs: Tensor, student_log_probs: Tensor) -> Tensor:
    """Per-row -sum_k p_teacher * log p_student."""
    return -(teacher_probs * student_log_probs).sum(dim=-1)


class _SelfDistillationLoss(nn.Module):
    """What DINO and iBOT share: the student temperature and the teacher's centring."""

    def __init__(
        self,
        out_dim: int,
        student_temp: float = 0.1,
        centering: Centering = "softmax_center",
        center_momentum: float = 0.9,
        sinkhorn_iterations: int = 3,
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.centering = TeacherCentering(out_dim, centering, center_momentum, sinkhorn_iterations)


class DINOLoss(_SelfDistillationLoss):
    """Multi-crop DINO loss on CLS-token head outputs.

    ``forward(student_global, teacher_global, teacher_temp, student_local=None)``
    with global tensors (2B, K) ordered crop-major (first crop of every image,
    then the second: what :mod:`vtp_gen.data.multicrop` produces) and local
    tensors (n_local * B, K) in the same order. Each student global crop is
    compared to the teacher's *other* global crop, each local crop to both;
    the result is the mean over those 2 + 2 * n_local (crop pair) terms of the
    batch-mean cross-entropy, as in DINOv2 (which divides by
    2 + max(2 * n_local, 1), so by 3 without local crops; here always by the
    number of terms present).
    """

    def forward(
        self,
        student_global: Tensor,
        teacher_global: Tensor,
        teacher_temp: float,
        student_local: Tensor | None = None,
    ) -> Tensor:
        if student_global.shape != teacher_global.shape or student_global.shape[0] % 2:
            raise ValueError(
                "student and teacher global outputs must both be (2B, K), "
                f"got {tuple(student_global.shape)} and {tuple(teacher_global.shape)}"
            )
        batch = student_global.shape[0] // 2
        teacher_probs = self.centering(teacher_global, teacher_temp).chunk(2)
        student_global_lp = F.log_softmax(student_global.float() / self.student_temp, dim=-1).chunk(2)
        # Crop swap: student view 1 learns from teacher view 2 and vice versa.
        terms = [
            _cross_entropy(teacher_probs[1], student_global_lp[0]).mean(),
            _cross_entropy(teacher_probs[0], student_global_lp[1]).mean(),
        ]
        if student_local is not None and student_local.shape[0] > 0:
            if student_local.shape[0] % batch:
                raise ValueError(
                    f"local outputs ({student_local.shape[0]} rows) are not a multiple of B={batch}"
                )
            student_local_lp = F.log_softmax(student_local.float() / self.student_temp, dim=-1)
            for local_view in student_local_lp.split(batch):
                terms += [_cross_entropy(t, local_view).mean() for t in teacher_probs]
        return torch.stack(terms).mean()


class iBOTPatchLoss(_SelfDistillationLoss):
    """iBOT masked-image-modelling loss on the head outputs of masked patch tokens.

    ``forward(student_masked, teacher_masked, teacher_temp, masks, mask_weights=None)``:
    the (M, K) outputs at the M masked positions (``masks`` is the (2B, N)
    bool mask of the global crops; rows follow ``masks.nonzero()`` order; the
    teacher saw the unmasked crops). Every image weighs the same whatever its
    masked area: a patch of image i counts 1 / (masked patches of i), and the
    sum is divided by the number of global crops (2B, unmasked ones included),
    as in DINOv2. ``mask_weights`` (M,) may be passed in precomputed (the
    multi-crop collate returns them). With the softmax centre, the centre is
    an EMA of the mean over all ranks' masked patches (DINOv2 averages over its
    padded buffer of teacher tokens instead, padding included).
    """

    def forward(
        self,
        student_masked: Tensor,
        teacher_masked: Tensor,
        teacher_temp: float,
        masks: Tensor,
        mask_weights: Tensor | None = None,
    ) -> Tensor:
        n_masked = int(masks.sum())
        if student_masked.shape != teacher_masked.shape or student_masked.shape[0] != n_masked:
            raise ValueError(
                f"expected ({n_masked}, K) student and teacher outputs for the masked patches, "
                f"got {tuple(student_masked.shape)} and {tuple(teacher_masked.shape)}"
            )
        if mask_weights is None:
            mask_weights = ibot_mask_weights(masks)
        # Runs even with nothing masked locally: the centering's collectives must run on every rank.
        teacher_probs = self.centering(teacher_masked, teacher_temp)
        student_lp = F.log_softmax(student_masked.float() / self.student_temp, dim=-1)
        per_patch = _cross_entropy(teacher_probs, student_lp)
        return (per_patch * mask_weights.to(per_patch.dtype)).sum() / masks.shape[0]
