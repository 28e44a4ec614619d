"""PatchGAN discriminator: output grid, receptive field, parameter count, norms."""

import pytest
import torch

from vtp_gen.models.discriminator import PatchDiscriminator


def _logit_side(size: int, n_layers: int) -> int:
    for _ in range(n_layers):  # 4x4 stride-2 convs, padding 1: exact halving
        size //= 2
    return size - 2  # two 4x4 stride-1 convs, padding 1: -1 each


@pytest.mark.parametrize("size,n_layers", [(256, 3), (64, 3), (32, 2), (32, 1)])
def test_output_is_one_logit_per_patch(size, n_layers):
    disc = PatchDiscriminator(channels=8, n_layers=n_layers).eval()
    logits = disc(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 1, _logit_side(size, n_layers), _logit_side(size, n_layers))
    if size == 256:
        assert logits.shape[-1] == 30  # the classic 30 x 30 PatchGAN map


def test_each_logit_sees_a_70_pixel_patch():
    disc = PatchDiscriminator(channels=4, n_layers=3).eval()  # eval: BatchNorm does not mix positions
    image = torch.randn(1, 3, 128, 128, requires_grad=True)
    logits = disc(image)
    logits[0, 0, 7, 7].backward()
    rows = image.grad.abs().sum(dim=(0, 1, 3)).nonzero().flatten()
    cols = image.grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
    assert rows.max() - rows.min() + 1 == 70
    assert cols.max() - cols.min() + 1 == 70


def test_parameter_count_matches_the_layer_formula():
    disc = PatchDiscriminator(channels=64, n_layers=3, norm="batch")
    conv = lambda cin, cout, bias: cin * cout * 16 + (cout if bias else 0)  # noqa: E731
    expected = (
        conv(3, 64, True)
        + conv(64, 128, False) + 2 * 128
        + conv(128, 256, False) + 2 * 256
        + conv(256, 512, False) + 2 * 512
        + conv(512, 1, True)
    )  # fmt: skip
    assert sum(p.numel() for p in disc.parameters()) == expected == 2_765_633


def test_group_norm_trains_on_a_single_image():
    disc = PatchDiscriminator(channels=32, n_layers=2, norm="group").train()
    assert any(isinstance(m, torch.nn.GroupNorm) for m in disc.modules())
    logits = disc(torch.randn(1, 3, 32, 32))
    logits.mean().backward()
    assert all(p.grad is not None for p in disc.parameters())


def test_initialisation_and_bad_arguments():
    disc = PatchDiscriminator(channels=16, n_layers=2)
    first = disc.layers[0]
    assert abs(first.weight.std().item() - 0.02) < 0.005 and first.bias.abs().sum() == 0
    with pytest.raises(ValueError):
        PatchDiscriminator(norm="layer")
    with pytest.raises(ValueError):
        PatchDiscriminator(n_layers=0)
