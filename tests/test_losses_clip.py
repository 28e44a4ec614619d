"""CLIP InfoNCE: a hand computation and the logit-scale cap (2-rank checks: test_losses_distributed.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from vtp_gen.losses.clip import MAX_LOG_LOGIT_SCALE, CLIPLoss, clamp_logit_scale_

GLOBAL_BATCH, DIM = 8, 5


def _features(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=g), dim=-1)
    texts = F.normalize(images + 0.8 * torch.randn(GLOBAL_BATCH, DIM, generator=g), dim=-1)
    return images, texts


def _hand_infonce(images, texts, scale: float) -> float:
    """-log softmax of the matching pair, rows (image->text) and columns (text->image), averaged."""
    n = len(images)
    sim = [[scale * float(images[i] @ texts[j]) for j in range(n)] for i in range(n)]
    i2t = sum(-sim[i][i] + math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return (i2t + t2i) / 2


def test_matches_hand_computation():
    images, texts = _features()
    log_scale = torch.tensor(math.log(1 / 0.07))
    loss = CLIPLoss()(images[:3], texts[:3], log_scale)
    assert loss.item() == pytest.approx(_hand_infonce(images[:3], texts[:3], 1 / 0.07), rel=1e-5)


def test_logit_scale_is_capped_at_100():
    images, texts = _features()
    loss_fn = CLIPLoss()
    capped = loss_fn(images, texts, torch.tensor(10.0))  # exp(10) ~ 22026 would be used without the cap
    assert capped.item() == pytest.approx(_hand_infonce(images, texts, 100.0), rel=1e-5)
    assert loss_fn.logit_scale_value(torch.tensor(1.0)).item() == pytest.approx(math.e)

    param = torch.nn.Parameter(torch.tensor(7.0))
    clamp_logit_scale_(param)
    assert param.item() == pytest.approx(MAX_LOG_LOGIT_SCALE)


def test_gradient_reaches_features_and_scale():
    images, texts = _features()
    images.requires_grad_(True)
    log_scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    CLIPLoss()(images, texts, log_scale).backward()
    assert images.grad.abs().sum() > 0 and log_scale.grad.abs() > 0
