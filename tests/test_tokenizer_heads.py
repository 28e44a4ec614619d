"""DINO head (weight-normed prototypes) and EMA teacher helpers."""

import copy

import pytest
import torch
from torch import nn

from vtp_gen.models.tokenizer import DINOHead, VisionEncoder, ema_update, make_ema_teacher


def small_head(**overrides):
    torch.manual_seed(0)
    kwargs = dict(in_dim=32, out_dim=100, hidden_dim=64, bottleneck_dim=16, nlayers=3)
    kwargs.update(overrides)
    return DINOHead(**kwargs)


def test_head_shapes_and_structure():
    head = small_head()
    x = torch.randn(5, 32)
    assert head(x).shape == (5, 100)
    linears = [m for m in head.mlp.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 16)]
    assert sum(isinstance(m, nn.GELU) for m in head.mlp.modules()) == 2
    assert isinstance(small_head(nlayers=1).mlp, nn.Linear)
    # Works on token batches too (iBOT: (B, N, D) patch tokens).
    assert head(torch.randn(2, 7, 32)).shape == (2, 7, 100)


def test_prototype_scores_are_cosine_similarities():
    head = small_head()
    x = torch.randn(5, 32)
    features = head(x, no_last_layer=True)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(5))
    prototypes = head.last_layer.weight  # v / ||v|| * g with g = 1
    torch.testing.assert_close(prototypes.norm(dim=-1), torch.ones(100))
    torch.testing.assert_close(head(x), features @ prototypes.T)
    assert head(x).abs().max() <= 1 + 1e-5
    torch.testing.assert_close(head(features, only_last_layer=True), head(x))


def test_weight_norm_gain_is_frozen_by_default():
    head = small_head()
    assert head.last_layer_gain.shape == (100, 1)
    assert not head.last_layer_gain.requires_grad
    trainable = {n for n, p in head.named_parameters() if p.requires_grad}
    assert "last_layer.parametrizations.weight.original1" in trainable  # direction v still learns
    head(torch.randn(4, 32)).sum().backward()
    assert head.last_layer_gain.grad is None
    assert head.last_layer.parametrizations.weight.original1.grad is not None
    assert small_head(freeze_last_layer_gain=False).last_layer_gain.requires_grad


def test_ema_teacher_is_a_frozen_independent_copy():
    torch.manual_seed(0)
    student = nn.ModuleDict(
        {
            "trunk": VisionEncoder(
                image_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, latent_channels=8
            ),
            "head": small_head(),
        }
    )
    teacher = make_ema_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert any(p.requires_grad for p in student.parameters())  # the student is left trainable
    for (name, s), (_, t) in zip(student.named_parameters(), teacher.named_parameters()):
        assert torch.equal(s, t) and s.data_ptr() != t.data_ptr(), name
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        cls = teacher["trunk"].encode_features(images).cls_token
        assert teacher["head"](cls).shape == (2, 100)


def test_ema_update_moves_the_teacher_towards_the_student():
    student = small_head()
    teacher = make_ema_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = copy.deepcopy(teacher)
    ema_update(teacher, student, momentum=0.9)
    for (name, t), (_, t0), (_, s) in zip(
        teacher.named_parameters(), before.named_parameters(), student.named_parameters()
    ):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s, msg=name)
    ema_update(teacher, student, momentum=0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    frozen = copy.deepcopy(teacher)
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    ema_update(teacher, student, momentum=1.0)
    assert all(torch.equal(t, f) for t, f in zip(teacher.parameters(), frozen.parameters()))


def test_ema_update_rejects_mismatched_modules():
    with pytest.raises(ValueError, match="differ"):
        ema_update(small_head(), small_head(nlayers=2), momentum=0.99)
    with pytest.raises(ValueError, match="momentum"):
        ema_update(small_head(), small_head(), momentum=1.5)
