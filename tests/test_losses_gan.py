"""Hinge GAN terms, the adaptive weight and the start step, against hand computations."""

import math

import pytest
import torch

from vtp_gen.losses.gan import (
    AdversarialLoss,
    adaptive_gan_weight,
    generator_hinge_loss,
    hinge_discriminator_loss,
)

REAL = torch.tensor([[2.0, 0.5, -1.0]])
FAKE = torch.tensor([[-2.0, 0.3, 1.0]])


def test_hinge_losses_by_hand():
    # relu(1 - real) = [0, 0.5, 2] -> 5/6; relu(1 + fake) = [0, 1.3, 2] -> 1.1
    assert hinge_discriminator_loss(REAL, FAKE).item() == pytest.approx(0.5 * (5 / 6 + 1.1))
    assert generator_hinge_loss(FAKE).item() == pytest.approx(-(-2.0 + 0.3 + 1.0) / 3)


def _tiny_decoder_step(v=(0.5, -1.0)):
    """Last layer W (2x3) on a fixed input x; rec = sum((Wx - t)^2); D(out) = v . out (one 'patch')."""
    w = torch.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, -0.1]], requires_grad=True)
    x = torch.tensor([1.0, 2.0, -1.0])
    t = torch.tensor([0.5, 0.2])
    out = w @ x
    rec = ((out - t) ** 2).sum()
    logits_fake = (torch.tensor(v) * out).sum().reshape(1, 1)
    return w, x, t, out, rec, logits_fake


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    w, x, t, out, rec, logits_fake = _tiny_decoder_step()
    gan = generator_hinge_loss(logits_fake)
    weight = adaptive_gan_weight(rec, gan, w)
    # d rec / dW = 2 (Wx - t) x^T ; d gan / dW = -v x^T  (outer products: norms multiply)
    residual = (out - t).detach().tolist()
    x_norm = math.sqrt(sum(c * c for c in x.tolist()))
    rec_norm = 2 * math.hypot(*residual) * x_norm
    gan_norm = math.hypot(0.5, -1.0) * x_norm
    assert weight.item() == pytest.approx(rec_norm / (gan_norm + 1e-4), rel=1e-5)
    assert not weight.requires_grad


def test_adaptive_weight_is_clamped():
    w, _, _, _, rec, logits_fake = _tiny_decoder_step(v=(0.0, 0.0))  # no adversarial gradient at all
    assert adaptive_gan_weight(rec, generator_hinge_loss(logits_fake), w).item() == pytest.approx(1e4)


def test_generator_loss_after_start_step():
    w, _, _, _, rec, logits_fake = _tiny_decoder_step()
    adv = AdversarialLoss(disc_weight=0.5, disc_start_step=10)
    terms = adv.generator_loss(rec, logits_fake, w, step=10)
    expected_weight = 0.5 * adaptive_gan_weight(rec, generator_hinge_loss(logits_fake), w)
    torch.testing.assert_close(terms["adaptive_weight"], expected_weight)
    torch.testing.assert_close(terms["loss"], rec + expected_weight * generator_hinge_loss(logits_fake))
    terms["loss"].backward()
    assert w.grad.abs().sum() > 0


def test_nothing_adversarial_before_the_start_step():
    w, _, _, _, rec, logits_fake = _tiny_decoder_step()
    adv = AdversarialLoss(disc_weight=0.5, disc_start_step=10)
    unrelated = torch.zeros(3, requires_grad=True)  # not in the graph: autograd.grad on it would fail
    terms = adv.generator_loss(rec, logits_fake, unrelated, step=9)
    torch.testing.assert_close(terms["loss"], rec)
    assert terms["adaptive_weight"].item() == 0.0 and terms["disc_factor"].item() == 0.0
    d_terms = adv.discriminator_loss(REAL, FAKE, step=9)
    assert d_terms["loss"].item() == 0.0
    assert d_terms["hinge"].item() == pytest.approx(0.5 * (5 / 6 + 1.1))
    assert adv.discriminator_loss(REAL, FAKE, step=10)["loss"].item() == pytest.approx(0.5 * (5 / 6 + 1.1))


def test_validation_without_grad_skips_the_adaptive_weight():
    with torch.no_grad():
        w, _, _, _, rec, logits_fake = _tiny_decoder_step()
        terms = AdversarialLoss(disc_start_step=0).generator_loss(rec, logits_fake, w, step=100)
    torch.testing.assert_close(terms["loss"], rec)
