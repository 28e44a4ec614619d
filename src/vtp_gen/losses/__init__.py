"""Stage-1 losses: CLIP InfoNCE, DINO / iBOT / KoLeo self-distillation, L1 + LPIPS reconstruction, PatchGAN terms.

Each is a small ``nn.Module`` (or function) on tensors; the training system
composes them with the tokenizer. :mod:`vtp_gen.losses.schedules` holds the
step-indexed schedules of the recipe (lr, weight decay, teacher momentum and
temperature).
"""

from vtp_gen.losses.clip import MAX_LOG_LOGIT_SCALE, CLIPLoss, clamp_logit_scale_
from vtp_gen.losses.dino import CENTERING_MODES, DINOLoss, TeacherCentering, iBOTPatchLoss, sinkhorn_knopp
from vtp_gen.losses.gan import (
    AdversarialLoss,
    adaptive_gan_weight,
    generator_hinge_loss,
    hinge_discriminator_loss,
)
from vtp_gen.losses.koleo import KoLeoLoss
from vtp_gen.losses.reconstruction import ReconstructionLoss, imagenet_to_unit_range

__all__ = [
    "AdversarialLoss",
    "CENTERING_MODES",
    "CLIPLoss",
    "DINOLoss",
    "KoLeoLoss",
    "MAX_LOG_LOGIT_SCALE",
    "ReconstructionLoss",
    "TeacherCentering",
    "adaptive_gan_weight",
    "clamp_logit_scale_",
    "generator_hinge_loss",
    "hinge_discriminator_loss",
    "iBOTPatchLoss",
    "imagenet_to_unit_range",
    "sinkhorn_knopp",
]
