"""The Fashion-MNIST domain metric: the garment judge, its features, its Frechet distance, label agreement."""

import numpy as np
import pytest
import scipy.linalg
import torch
from safetensors.torch import save_file

from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.metrics.domain import (
    GarmentJudge,
    agreement,
    agreement_hits,
    judge_features,
    judge_outputs,
    load_or_train_judge,
    train_judge,
)
from vtp_gen.metrics.generation import FeatureStatistics, FrechetToReference, frechet_distance
from vtp_gen.metrics.reference_cache import network_digest


@pytest.fixture(scope="module")
def small_judge():
    # 2k training images, one epoch: a few seconds, far above chance (10 %); measured 0.56.
    return train_judge(epochs=1, max_images=2000)


def test_judge_test_accuracy_is_reported_and_well_above_chance(small_judge):
    judge, accuracy = small_judge
    assert 0.4 < accuracy <= 1.0  # measured on all 10k test images
    test = FashionMNIST(None, "test")
    _, predicted = judge_outputs(judge, test.images)
    assert (predicted == test.labels).mean() == pytest.approx(accuracy, abs=1e-6)


def test_features_are_the_penultimate_layer(small_judge):
    judge, _ = small_judge
    pixels = FashionMNIST(None, "test", max_samples=50).images
    features, predicted = judge_outputs(judge, pixels, batch=16)
    assert features.shape == (50, GarmentJudge.feature_dim) and (features >= 0).all()  # after the ReLU
    from vtp_gen.metrics.domain import judge_inputs

    with torch.no_grad():
        logits = judge(judge_inputs(pixels))
        np.testing.assert_allclose(judge.head[-1](torch.as_tensor(features).float()), logits, atol=1e-5)
    np.testing.assert_array_equal(predicted, logits.argmax(1).numpy())
    # RGB uint8 samples at another size read the same way as the greyscale originals at 28 px.
    rgb = np.repeat(pixels[..., None], 3, axis=-1)
    np.testing.assert_allclose(judge_features(judge, rgb), features, atol=1e-5)


def reference_frechet(x: np.ndarray, y: np.ndarray) -> float:
    """Written out from the definition, independently of vtp_gen.metrics.generation."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x, cov_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cov_x @ cov_y).real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(cov_x + cov_y - 2 * root))


def test_frechet_distance_on_judge_sized_features_matches_a_scipy_reference():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 64)) @ rng.normal(size=(64, 64)) * 0.3
    y = rng.normal(1.0, 1.5, size=(800, 64))
    ours = frechet_distance(FeatureStatistics.from_features(x), FeatureStatistics.from_features(y))
    assert ours == pytest.approx(reference_frechet(x, y), rel=1e-6)
    # The fixed-reference route (bootstrap, floors) is the same number without a sqrtm per call.
    to_y = FrechetToReference(FeatureStatistics.from_features(y))
    assert to_y(x) == pytest.approx(reference_frechet(x, y), rel=1e-6)
    assert np.isfinite(to_y(x[:20]))  # fewer vectors than dimensions: still real, no sqrtm to fail
    same = frechet_distance(FeatureStatistics.from_features(x), FeatureStatistics.from_features(x))
    assert abs(same) < 1e-6


def test_agreement_counts_samples_classified_as_their_label(small_judge):
    judge, _ = small_judge
    test = FashionMNIST(None, "test", max_samples=300)
    _, predicted = judge_outputs(judge, test.images)
    result = agreement(judge, test.images, test.labels.tolist())
    assert result["agreement"] == pytest.approx((predicted == test.labels).mean(), abs=1e-4)
    wrong = (test.labels + 1) % 10  # every label shifted: agreement is the share predicted as label + 1
    assert agreement(judge, test.images, wrong.tolist())["agreement"] == pytest.approx(
        (predicted == wrong).mean(), abs=1e-4
    )
    np.testing.assert_array_equal(agreement_hits([1, 2, 3], [1, 0, 3]), [1.0, 0.0, 1.0])


def test_stored_judge_is_reused_and_old_key_names_load(small_judge, tmp_path):
    judge, accuracy = small_judge
    # A judge file written before the trunk was called `trunk`: same layers under `features.*`.
    old = {k.replace("trunk.", "features."): v for k, v in judge.state_dict().items()}
    save_file({**old, "test_accuracy": torch.tensor(accuracy)}, tmp_path / "judge.safetensors")
    loaded, stored = load_or_train_judge(tmp_path / "judge.safetensors")
    assert stored == pytest.approx(accuracy) and network_digest(loaded) == network_digest(judge)


def test_domain_evaluation_puts_real_images_at_the_floor_and_noise_far_above(small_judge):
    from vtp_gen.metrics.domain_eval import DomainReference, evaluate_domain, reference_hits

    judge, accuracy = small_judge
    test, train = FashionMNIST(None, "test", max_samples=2000), FashionMNIST(None, "train", max_samples=1400)
    test_features = judge_features(judge, test.images)
    reference = DomainReference(
        judge,
        accuracy,
        FeatureStatistics.from_features(test_features),
        reference_hits(judge, test_features, test.labels),
        judge_features(judge, train.images[:1000]),  # the floor's pool
    )
    real = evaluate_domain(
        train.images[1000:], train.labels[1000:], reference, resamples=100, floor_repeats=20
    )
    assert real.num_samples == 400 and real.num_reference == 2000 and real.judge_accuracy == accuracy
    assert real.frechet.low < real.frechet.value < real.frechet.high
    # Real images are at the floor: their interval overlaps the floor's range.
    assert real.frechet.low <= real.frechet_floor.high and real.frechet.high >= real.frechet_floor.low
    assert real.frechet.low >= 0.0  # a distance: the interval stops at 0
    direct = FrechetToReference(reference.reference)(judge_features(judge, train.images[1000:]))
    assert real.frechet.value == pytest.approx(direct)
    _, predicted = judge_outputs(judge, train.images[1000:])
    assert real.agreement.value == pytest.approx((predicted == train.labels[1000:]).mean())
    assert abs(real.agreement_floor.value - accuracy) < 0.1  # the judge's accuracy at N = 400
    noise = np.random.default_rng(0).integers(0, 256, (400, 28, 28), dtype=np.uint8)
    far = evaluate_domain(noise, None, reference, resamples=100, floor_repeats=20)
    assert far.frechet.low > 5 * real.frechet_floor.high and far.agreement is None
    assert set(far.to_dict()) == {
        "num_samples",
        "num_reference",
        "judge_test_accuracy",
        "domain_fd",
        "domain_fd_floor",
    }
