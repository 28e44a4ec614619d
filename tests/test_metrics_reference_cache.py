"""Reference features cached with their key and a checksum (vtp_gen.metrics.reference_cache)."""

import dataclasses

import numpy as np
import pytest

from vtp_gen.metrics.reference_cache import (
    CorruptReferenceError,
    ReferenceKey,
    StaleReferenceError,
    cached_reference,
    load_reference_features,
)

KEY = ReferenceKey(
    dataset="Fashion-MNIST",
    split="test",
    num_images=50,
    image_size=32,
    preprocessing="centre crop 32, grey, 28 px bilinear",
    extractor="fashion-mnist-judge/penultimate-64",
    network="a" * 64,
    data="d" * 64,
)


def features(n: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 8))


def test_computed_once_then_read_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return features()

    first = cached_reference(tmp_path, KEY, compute)
    second = cached_reference(tmp_path, KEY, compute)
    assert len(calls) == 1 and not first.hit and second.hit and second.path == first.path
    np.testing.assert_allclose(second.statistics.mu, first.statistics.mu)
    np.testing.assert_allclose(second.statistics.sigma, np.cov(features(), rowvar=False))
    np.testing.assert_allclose(second.features, features(), atol=1e-6)
    assert second.statistics.num_samples == 50


def test_other_n_network_or_preprocessing_is_computed_afresh(tmp_path):
    cached_reference(tmp_path, KEY, features)
    for change in (
        {"num_images": 60},
        {"network": "b" * 64},
        {"extractor": "inception-v3-compat/pool3"},
        {"preprocessing": "resize 28"},
        {"data": "e" * 64},
    ):
        key = dataclasses.replace(KEY, **change)
        result = cached_reference(tmp_path, key, lambda key=key: features(key.num_images, seed=1))
        assert not result.hit and result.path != tmp_path / KEY.file_name()
    assert len(list(tmp_path.glob("*.safetensors"))) == 6


def test_a_file_holding_another_key_is_refused(tmp_path):
    made = cached_reference(tmp_path, KEY, features)
    other = dataclasses.replace(KEY, network="b" * 64)
    made.path.rename(tmp_path / other.file_name())  # e.g. copied over by hand
    with pytest.raises(StaleReferenceError, match=r"network: 'aaaa.*\(cached\)"):
        cached_reference(tmp_path, other, lambda: pytest.fail("a refused file is not recomputed over"))


def test_checksum_mismatch_is_refused_with_a_clear_message(tmp_path):
    made = cached_reference(tmp_path, KEY, features)
    data = bytearray(made.path.read_bytes())
    data[-5] ^= 0xFF  # one flipped byte inside the stored arrays
    made.path.write_bytes(bytes(data))
    with pytest.raises(CorruptReferenceError, match="checksum mismatch"):
        load_reference_features(made.path, KEY)
    made.path.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(CorruptReferenceError, match="delete it"):
        cached_reference(tmp_path, KEY, features)


def test_features_must_match_the_key_and_no_folder_means_no_cache(tmp_path):
    with pytest.raises(ValueError, match="50 images"):
        cached_reference(tmp_path, KEY, lambda: features(40))
    result = cached_reference(None, KEY, features)
    assert result.path is None and not result.hit and not list(tmp_path.iterdir())
