"""L1 + LPIPS reconstruction loss: hand-checked L1, the [-1, 1] conversion, real LPIPS-VGG when available."""

import pytest
import torch
from torch import nn

from vtp_gen.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from vtp_gen.losses.reconstruction import ReconstructionLoss, imagenet_to_unit_range


class RecordingDistance(nn.Module):
    """A stand-in perceptual metric: per-image mean squared difference; remembers its inputs."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # something that must not leak into state_dict
        self.calls = []

    def forward(self, x, y):
        self.calls.append((x.detach(), y.detach()))
        return self.scale * (x - y).pow(2).flatten(1).mean(1)


def _images(seed=0, shape=(2, 3, 8, 8)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_l1_by_hand_and_lpips_weight_zero_never_builds_lpips():
    def must_not_build():
        raise AssertionError("LPIPS was built with lpips_weight=0")

    loss_fn = ReconstructionLoss(l1_weight=2.0, lpips_weight=0.0, perceptual=must_not_build)
    x = torch.tensor([[[[0.5, -1.0], [2.0, 0.0]]]])
    y = torch.tensor([[[[0.0, 1.0], [2.5, 0.0]]]])
    out = loss_fn(x, y)
    # |0.5| + |-2| + |-0.5| + 0 = 3 over 4 pixels.
    assert out["l1"].item() == pytest.approx(0.75)
    assert out["loss"].item() == pytest.approx(1.5)
    assert "lpips" not in out


def test_perceptual_term_sees_unit_range_images_and_is_weighted():
    distance = RecordingDistance()
    loss_fn = ReconstructionLoss(l1_weight=1.0, lpips_weight=0.5, perceptual=distance)
    reconstruction, target = _images(0), _images(1)
    out = loss_fn(reconstruction, target)

    x_seen, y_seen = distance.calls[0]
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x_seen, (reconstruction * std + mean) * 2 - 1)
    torch.testing.assert_close(y_seen, (target * std + mean) * 2 - 1)
    expected_lpips = ((x_seen - y_seen) ** 2).flatten(1).mean(1).mean()
    expected_l1 = (reconstruction - target).abs().mean()
    torch.testing.assert_close(out["lpips"], expected_lpips)
    torch.testing.assert_close(out["loss"], expected_l1 + 0.5 * expected_lpips)
    # A frozen metric: not a parameter of the loss, not in its checkpoint, not trained.
    assert list(loss_fn.parameters()) == [] and loss_fn.state_dict() == {}
    assert not distance.scale.requires_grad


def test_default_perceptual_module_is_built_lazily(monkeypatch):
    built = []

    def factory():
        built.append(True)
        return RecordingDistance()

    loss_fn = ReconstructionLoss(perceptual=factory)
    assert built == []
    loss_fn(_images(0), _images(1))
    loss_fn(_images(0), _images(1))
    assert built == [True]


def test_unit_range_round_trip():
    pixels = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(imagenet_to_unit_range(normalize(pixels)), pixels * 2 - 1)


@pytest.fixture(scope="module")
def real_lpips():
    try:
        from vtp_gen.pretrained.cache import WeightsNotFoundError
        from vtp_gen.pretrained.lpips import build_lpips_vgg
    except ImportError as err:
        pytest.skip(f"vtp_gen.pretrained.lpips not importable: {err}")
    try:
        return build_lpips_vgg()
    except WeightsNotFoundError as err:
        pytest.skip(f"LPIPS VGG weights not available offline: {err}")


def _photo(size=64):
    skdata = pytest.importorskip("skimage.data")
    image = torch.from_numpy(skdata.astronaut()[::8, ::8][:size, :size].copy()).permute(2, 0, 1).float() / 255
    return normalize(image).unsqueeze(0)


def test_real_lpips_grows_with_degradation_and_gives_gradients(real_lpips):
    loss_fn = ReconstructionLoss(perceptual=real_lpips)
    target = _photo()
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    assert loss_fn(target.clone(), target)["lpips"].item() == pytest.approx(0.0, abs=1e-6)
    light = loss_fn(target + 0.1 * noise, target)["lpips"].item()
    heavy = loss_fn(target + 0.5 * noise, target)["lpips"].item()
    assert 0.0 < light < heavy

    reconstruction = (target + 0.3 * noise).requires_grad_(True)
    out = loss_fn(reconstruction, target)
    out["loss"].backward()
    assert reconstruction.grad.abs().sum() > 0
    # The same number as calling the metric directly on [-1, 1] images.
    direct = real_lpips(
        imagenet_to_unit_range(reconstruction.detach()), imagenet_to_unit_range(target)
    ).mean()
    torch.testing.assert_close(out["lpips"], direct)
