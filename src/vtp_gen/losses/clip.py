"""CLIP image-text contrastive loss (symmetric InfoNCE) over the global batch.

The arithmetic is open_clip's ``ClipLoss`` (kept in step with OpenCLIP's
training code, which VTP says it follows); this module adds what the VTP
recipe needs around it: the process group is read at call time (the loss can
be built before ``init_process_group``), and the learnable *log* scale is
clamped to ln(100) before exponentiation, as OpenCLIP does.

Two ways to spread the work over ranks (both give the loss of the
concatenated global batch):

- default (``local_loss=False, gather_with_grad=False``): every rank gathers
  all features, computes the full (B_global x B_global) logits and keeps the
  gradient for its own slice only. The per-rank feature gradient equals the
  single-process gradient of that slice; after DDP's gradient *averaging* the
  parameter gradient is the single-process one divided by the world size
  (OpenCLIP's default behaviour).
- ``local_loss=True, gather_with_grad=True``: each rank scores only its own
  rows against the gathered batch (B_local x B_global logits, cheaper at large
  scale) and the all-gather back-propagates to every rank, so after DDP's
  averaging the parameter gradient equals the single-process one exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vtp_gen.utils.distributed import get_rank, get_world_size

# OpenCLIP clamps the learned temperature so logits never exceed 100 * cosine.
MAX_LOG_LOGIT_SCALE = math.log(100.0)


class CLIPLoss(nn.Module):
    """``loss = CLIPLoss()(image_features, text_features, logit_scale)``.

    Features are (B_local, D) and should already be L2-normalised (the model's
    ``normalize=True`` outputs). ``logit_scale`` is the learnable log-scale
    parameter (ln(1/0.07) at init); the value used is
    ``exp(min(logit_scale, ln 100))``. Per-rank batches must have equal size.
    """

    def __init__(
        self,
        local_loss: bool = False,
        gather_with_grad: bool = False,
        max_log_logit_scale: float = MAX_LOG_LOGIT_SCALE,
    ) -> None:
        super().__init__()
        # Imported here: open_clip pulls in timm/torchvision, which `import vtp_gen.losses` should not pay for.
        from open_clip.loss import ClipLoss

        self.max_log_logit_scale = max_log_logit_scale
        self._clip_loss = ClipLoss(local_loss=local_loss, gather_with_grad=gather_with_grad)

    def logit_scale_value(self, logit_scale: Tensor | float) -> Tensor:
        """The multiplicative scale actually applied to cosine similarities."""
        return torch.as_tensor(logit_scale).clamp(max=self.max_log_logit_scale).exp()

    def forward(self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
        if image_features.shape != text_features.shape:
            raise ValueError(
                f"image and text features must pair up: {tuple(image_features.shape)} vs {tuple(text_features.shape)}"
            )
        # The process group is read on every call: Lightning creates it after the modules are built.
        self._clip_loss.rank = get_rank()
        self._clip_loss.world_size = get_world_size()
        scale = self.logit_scale_value(logit_scale).to(image_features.device)
        # fp32 logits: at a scale of 100, bf16 products would be off by ~0.4 in the logits.
        with torch.autocast(device_type=image_features.device.type, enabled=False):
            return self._clip_loss(image_features.float(), text_features.float(), scale.float())


@torch.no_grad()
def clamp_logit_scale_(logit_scale: nn.Parameter, max_log_logit_scale: float = MAX_LOG_LOGIT_SCALE) -> None:
    """Clamp the learnable log-scale in place to [0, ln 100] (OpenCLIP does this after every optimiser step).

    Without it, a parameter pushed above the cap would sit in the zero-gradient
    region of the clamp in :class:`CLIPLoss` and could never come back down.
    """
    logit_scale.clamp_(0.0, max_log_logit_scale)
