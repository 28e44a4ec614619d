"""Adversarial terms for the decoder fine-tuning stage: hinge loss and the LDM/VQGAN adaptive weight.

Generator side: ``loss = rec_loss + factor * w * (-mean(D(x_hat)))`` with
``w = disc_weight * ||grad rec_loss|| / (||grad gan_loss|| + 1e-4)`` (gradients
w.r.t. the decoder's last layer weight, clamped to [0, 1e4], no gradient
through w), so the adversarial gradient is kept at the scale of the
reconstruction gradient whatever their raw magnitudes. ``factor`` is 0 before
``disc_start_step`` (the decoder first settles on L1/LPIPS) and
``disc_factor`` after. The discriminator sees reconstructions detached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def hinge_discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat))))."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_hinge_loss(logits_fake: Tensor) -> Tensor:
    """-mean(D(x_hat)): the generator pushes its patches' logits up."""
    return -logits_fake.mean()


def adaptive_gan_weight(
    rec_loss: Tensor, gan_loss: Tensor, last_layer_weight: Tensor, max_weight: float = 1e4, eps: float = 1e-4
) -> Tensor:
    """||d rec / d W|| / (||d gan / d W|| + eps), clamped to [0, max_weight] and detached.

    Both losses must still have their graphs (they are kept for the real backward).
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer_weight, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan_loss, last_layer_weight, retain_graph=True)[0]
    weight = rec_grad.norm() / (gan_grad.norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


class AdversarialLoss(nn.Module):
    """Hinge PatchGAN objective with adaptive weight and a start step; holds no parameters.

    Generator step::

        terms = adv.generator_loss(rec_loss, discriminator(x_hat), last_layer_weight, step)
        terms["loss"].backward()

    Discriminator step::

        terms = adv.discriminator_loss(discriminator(x), discriminator(x_hat.detach()), step)
    """

    def __init__(
        self,
        disc_weight: float = 0.5,
        disc_start_step: int = 0,
        disc_factor: float = 1.0,
        max_adaptive_weight: float = 1e4,
    ) -> None:
        super().__init__()
        self.disc_weight = disc_weight
        self.disc_start_step = disc_start_step
        self.disc_factor = disc_factor
        self.max_adaptive_weight = max_adaptive_weight

    def factor(self, step: int) -> float:
        """0 before ``disc_start_step``, ``disc_factor`` from it on."""
        return self.disc_factor if step >= self.disc_start_step else 0.0

    def generator_loss(
        self, rec_loss: Tensor, logits_fake: Tensor, last_layer_weight: Tensor, step: int
    ) -> dict[str, Tensor]:
        """``loss`` = rec + factor * adaptive weight * generator hinge term; also the parts, detached."""
        gan_loss = generator_hinge_loss(logits_fake)
        factor = self.factor(step)
        if factor > 0 and self.disc_weight > 0 and torch.is_grad_enabled():
            weight = self.disc_weight * adaptive_gan_weight(
                rec_loss, gan_loss, last_layer_weight, self.max_adaptive_weight
            )
        else:
            # Before the start step (or in validation) the extra backward passes are skipped.
            weight = torch.zeros((), device=rec_loss.device)
        loss = rec_loss + factor * weight * gan_loss
        return {
            "loss": loss,
            "gan_loss": gan_loss.detach(),
            "adaptive_weight": weight,
            "disc_factor": torch.tensor(factor),
        }

    def discriminator_loss(self, logits_real: Tensor, logits_fake: Tensor, step: int) -> dict[str, Tensor]:
        """``loss`` = factor * hinge; also the mean logits (a quick check that D separates the two)."""
        hinge = hinge_discriminator_loss(logits_real, logits_fake)
        return {
            "loss": self.factor(step) * hinge,
            "hinge": hinge.detach(),
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
