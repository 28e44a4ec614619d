"""Pixel reconstruction loss of the tokenizer: L1 + LPIPS (VGG), weights 1:1 by default.

Images and reconstructions live in ImageNet mean/std space (what the encoder
reads and the pixel decoder writes); L1 is taken there, LPIPS on the same
images mapped to [-1, 1] (its expected input range, no clamping so gradients
reach out-of-range reconstructions too).

The perceptual network is a frozen metric, not part of the trained model: it
is kept out of this module's parameters and state dict (the VGG weights are
not written to every checkpoint) and follows the inputs' device on first use.
It is built lazily by :func:`vtp_gen.pretrained.lpips.build_lpips_vgg` unless
one is injected; with ``lpips_weight == 0`` it is never built or run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vtp_gen.data.transforms import denormalize
from vtp_gen.pretrained.lpips import build_lpips_vgg


def imagenet_to_unit_range(images: Tensor) -> Tensor:
    """ImageNet mean/std space -> [-1, 1] (not clamped)."""
    return denormalize(images) * 2.0 - 1.0


def _default_lpips() -> nn.Module:

    return build_lpips_vgg()


class ReconstructionLoss(nn.Module):
    """``ReconstructionLoss()(reconstruction, target)`` -> dict of scalars ``loss``, ``l1``, ``lpips``.

    ``loss = l1_weight * mean|x - x_hat| + lpips_weight * mean_i LPIPS(x_i, x_hat_i)``.
    ``perceptual`` is any module mapping two [-1, 1] image batches to
    per-image distances (N,) (or a zero-argument factory returning one).
    """

    def __init__(
        self,
        l1_weight: float = 1.0,
        lpips_weight: float = 1.0,
        perceptual: nn.Module | Callable[[], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if l1_weight < 0 or lpips_weight < 0:
            raise ValueError("loss weights must be >= 0")
        self.l1_weight = l1_weight
        self.lpips_weight = lpips_weight
        if isinstance(perceptual, nn.Module):
            # A plain attribute (object.__setattr__ bypasses nn.Module registration): see the module docstring.
            object.__setattr__(self, "_perceptual", perceptual.requires_grad_(False).eval())
            self._perceptual_factory = None
        else:
            object.__setattr__(self, "_perceptual", None)
            self._perceptual_factory = perceptual or _default_lpips

    @property
    def perceptual(self) -> nn.Module:
        """The LPIPS network (built on first access)."""
        if self._perceptual is None:
            object.__setattr__(self, "_perceptual", self._perceptual_factory())
            self._perceptual.requires_grad_(False).eval()
        return self._perceptual

    def lpips(self, reconstruction: Tensor, target: Tensor) -> Tensor:
        """Per-image LPIPS distances (N,) between two ImageNet-normalised batches."""
        net = self.perceptual
        first = next(net.parameters(), None)
        if first is not None and first.device != reconstruction.device:
            net.to(reconstruction.device)
        # LPIPS is a fixed metric; fp32 keeps the VGG features and their normalisation exact.
        with torch.autocast(device_type=reconstruction.device.type, enabled=False):
            distances = net(
                imagenet_to_unit_range(reconstruction.float()), imagenet_to_unit_range(target.float())
            )
        return distances.reshape(reconstruction.shape[0], -1).mean(dim=1)

    def forward(self, reconstruction: Tensor, target: Tensor) -> dict[str, Tensor]:
        if reconstruction.shape != target.shape:
            raise ValueError(f"shapes differ: {tuple(reconstruction.shape)} vs {tuple(target.shape)}")
        target = target.detach()
        l1 = (reconstruction.float() - target.float()).abs().mean()
        loss = self.l1_weight * l1
        out = {"l1": l1.detach()}
        if self.lpips_weight > 0:
            lpips = self.lpips(reconstruction, target).mean()
            loss = loss + self.lpips_weight * lpips
            out["lpips"] = lpips.detach()
        out["loss"] = loss
        return out
