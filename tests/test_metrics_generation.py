"""Generation metrics: FID, KID, IS and precision/recall against direct numpy/scipy computations.

The fast tests use a tiny stand-in feature network (a fixed random conv net,
16-d output) so the arithmetic and the plumbing (batching, sources, caching)
are checked in seconds; the real FID Inception is covered where it is cheap
and in a ``slow`` test.
"""

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist
from torch import nn

from vtp_gen.interop.adm_npz import save_adm_npz
from vtp_gen.metrics.features import extract_features
from vtp_gen.metrics.generation import (
    FeatureStatistics,
    FIDNumericalError,
    FrechetToReference,
    evaluate_generation,
    fid_from_features,
    fid_to_reference,
    frechet_distance,
    frechet_distance_details,
    inception_score,
    kernel_inception_distance,
    load_reference,
    precision_recall,
    prepare_reference,
    trace_sqrt_from_features,
)
from vtp_gen.pretrained.cache import weights_dir
from vtp_gen.pretrained.inception import CONVERTED_FILE, MissingClassifierError

STANDIN = "standin-conv16"


class StandInFeatures(nn.Module):
    """uint8 images -> 16-d features: fixed random conv, ReLU, global average pool."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 5, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.2)
            self.conv.bias.copy_(torch.randn(16, generator=generator) * 0.1)
        self.calls = 0

    def forward(self, images):
        self.calls += 1
        return torch.relu(self.conv(images.float() / 127.5 - 1)).mean(dim=(2, 3))


def _image_set(seed, n=48, brightness=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(128 + brightness, 40, size=(n, 1, 1, 3))
    texture = rng.normal(0, 30, size=(n, 24, 24, 3))
    return np.clip(base + texture, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def network():
    return StandInFeatures().eval()


@pytest.fixture(scope="module")
def features(network):
    real = extract_features(_image_set(1), network, batch_size=10, progress=False)
    fake = extract_features(_image_set(2, n=40, brightness=25), network, batch_size=10, progress=False)
    return real, fake


def _fid_direct(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def test_fid_matches_direct_scipy_and_self_is_zero(features):
    real, fake = features
    assert real.shape == (48, 16) and fake.shape == (40, 16)
    fid = fid_from_features(real, fake)
    assert fid == pytest.approx(_fid_direct(real.astype(np.float64), fake.astype(np.float64)), rel=1e-9)
    assert fid > 0.01
    assert abs(fid_from_features(real, real)) < 1e-9
    details = frechet_distance_details(
        FeatureStatistics.from_features(real), FeatureStatistics.from_features(fake)
    )
    assert details["max_imaginary"] < 1e-6 and details["sqrtm_residual"] < 1e-9
    assert details["trace_sqrt"] == pytest.approx(details["trace_sqrt_check"], rel=1e-9)


def test_fid_below_the_feature_dimension_is_exact_from_the_features():
    """Fewer vectors than dimensions (FID-400 on 2048-d pool3): the trace term is the nuclear norm of
    A1 A2^T, equal to scipy's sqrtm where that is well defined, without the D x D square root."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 64)) @ rng.standard_normal((64, 64)) * 0.3
    b = rng.standard_normal((50, 64)) + 0.5
    assert fid_from_features(a, b) == pytest.approx(_fid_direct(a, b), rel=1e-7)
    assert trace_sqrt_from_features(a, b) == pytest.approx(
        np.trace(scipy.linalg.sqrtm(np.cov(a, rowvar=False) @ np.cov(b, rowvar=False)).real), rel=1e-7
    )
    reference = FeatureStatistics.from_features(b)
    # Against a reference given by its statistics: through its matrix root; with its features: directly.
    assert fid_to_reference(a, reference) == pytest.approx(_fid_direct(a, b), rel=1e-7)
    assert fid_to_reference(a, reference, b) == pytest.approx(_fid_direct(a, b), rel=1e-7)
    # The bootstrap's distance: the N x D route (N < D) and the D x D one agree.
    big = rng.standard_normal((200, 64))
    to_reference = FrechetToReference(reference)
    assert to_reference(a) == pytest.approx(_fid_direct(a, b), rel=1e-7)
    assert to_reference(big) == pytest.approx(_fid_direct(big, b), rel=1e-7)
    with_features = FrechetToReference(reference, b)  # no D x D root at all
    assert with_features(a) == pytest.approx(_fid_direct(a, b), rel=1e-7)
    assert with_features._root_matrix is None
    assert fid_to_reference(big, reference) == pytest.approx(_fid_direct(big, b), rel=1e-7)


def test_fid_refuses_large_imaginary_parts():
    # A "covariance" with a negative eigenvalue has no real square root: FID must refuse, not print nonsense.
    bad = FeatureStatistics(np.zeros(2), np.diag([1.0, -1.0]))
    good = FeatureStatistics(np.zeros(2), np.eye(2))
    with pytest.raises(FIDNumericalError, match="imaginary"):
        frechet_distance(bad, good)


def _kid_direct(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = lambda mat: mat[~np.eye(len(mat), dtype=bool)].mean()  # noqa: E731
    assert m == n
    return off(kxx) + off(kyy) - 2 * kxy.mean()


def test_kid_matches_direct_numpy_and_torch_fidelity(features):
    real, fake = features
    real, fake = real[:40].astype(np.float64), fake.astype(np.float64)
    # One subset holding every vector: no sampling, so the value is exactly the unbiased MMD^2.
    kid, std = kernel_inception_distance(real, fake, num_subsets=1, subset_size=40)
    assert kid == pytest.approx(_kid_direct(real, fake), rel=1e-9) and std == 0.0
    from torch_fidelity.metric_kid import kid_features_to_metric

    reference = kid_features_to_metric(
        torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=1, kid_subset_size=40, verbose=False
    )
    assert kid == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-6)
    mean, spread = kernel_inception_distance(real, fake, num_subsets=20, subset_size=20)
    assert spread > 0 and abs(mean - kid) < 5 * spread
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(real, fake, subset_size=41)


def _pr_direct(real, fake, k=3):
    radius_real = np.sort(cdist(real, real), axis=1)[:, k]
    radius_fake = np.sort(cdist(fake, fake), axis=1)[:, k]
    precision = (cdist(fake, real) <= radius_real[None, :]).any(axis=1).mean()
    recall = (cdist(real, fake) <= radius_fake[None, :]).any(axis=1).mean()
    return precision, recall


def test_precision_recall_match_direct_scipy_and_torch_fidelity(features):
    real, fake = features
    precision, recall = precision_recall(real, fake, k=3, block=7)  # small blocks exercise the chunking
    expected = _pr_direct(real.astype(np.float64), fake.astype(np.float64))
    assert (precision, recall) == pytest.approx(expected, abs=1e-12)
    assert 0 < precision < 1 or 0 < recall < 1  # the two sets differ, so not both trivially 1
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    # torch-fidelity: features_1 = generated, features_2 = real.
    tf_precision, tf_recall = calculate_precision_recall_full(
        torch.from_numpy(fake).double(), torch.from_numpy(real).double(), neighborhood=3
    )
    assert (precision, recall) == pytest.approx((tf_precision, tf_recall), abs=1e-6)  # it averages in float32
    assert precision_recall(real, real) == (1.0, 1.0)


def test_inception_score_matches_direct_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(30, 1008))
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    marginal = probs.mean(0, keepdims=True)
    expected = np.exp((probs * (np.log(probs) - np.log(marginal))).sum(1).mean())
    score, std = inception_score(logits)
    assert score == pytest.approx(expected, rel=1e-9) and std == 0.0
    split_scores = [inception_score(logits[i : i + 10])[0] for i in (0, 10, 20)]
    assert inception_score(logits, split_size=10) == pytest.approx(
        (np.mean(split_scores), np.std(split_scores))
    )
    assert inception_score(np.zeros((5, 10)))[0] == pytest.approx(1.0)  # uniform predictions: IS = 1


def test_reference_cache_is_reused_and_checked(tmp_path, network):
    cache = tmp_path / "ref_cache.npz"
    images = _image_set(1)
    first = prepare_reference(images, network, STANDIN, cache_path=cache, need_features=True, progress=False)
    calls = network.calls
    second = prepare_reference(images, network, STANDIN, cache_path=cache, need_features=True, progress=False)
    assert network.calls == calls  # read back, not recomputed
    np.testing.assert_allclose(second.statistics.sigma, first.statistics.sigma)
    np.testing.assert_array_equal(second.features, first.features)
    with pytest.raises(ValueError, match="standin-conv16"):
        load_reference(cache, extractor="inception-v3-compat/pool3")


def test_adm_reference_batch_statistics_are_used_for_fid(tmp_path, network, features):
    real, fake = features
    # An ADM-style reference batch: images plus precomputed mu/sigma. FID must use the stored
    # statistics (as the ADM evaluator does); here they are those of the samples, so FID ~ 0,
    # while precision/recall come from the stored images. A real ADM batch holds Inception
    # statistics; this one names the stand-in network so that the extractor check accepts it.
    stats = FeatureStatistics.from_features(fake)
    path = save_adm_npz(
        tmp_path / "ref.npz", _image_set(1), mu=stats.mu, sigma=stats.sigma, extractor=np.array(STANDIN)
    )
    with pytest.raises(ValueError, match="inception"):
        load_reference(save_adm_npz(tmp_path / "plain.npz", _image_set(1), stats.mu, stats.sigma), STANDIN)
    samples = _image_set(2, n=40, brightness=25)
    result = evaluate_generation(
        samples,
        path,
        metrics=("fid", "precision_recall", "kid"),
        network=network,
        extractor=STANDIN,
        batch_size=16,
        progress=False,
        kid_subsets=5,
    )
    assert abs(result["fid"]) < 1e-9
    assert (result["precision"], result["recall"]) == pytest.approx(_pr_direct(real, fake), abs=1e-12)
    assert result["num_samples"] == 40 and result["kid_subset_size"] == 40
    assert "inception_score" not in result


def test_evaluate_generation_from_folders_and_is_refusal(tmp_path, network):
    from PIL import Image

    folder = tmp_path / "samples"
    folder.mkdir()
    for i, image in enumerate(_image_set(3, n=12)):
        Image.fromarray(image).save(folder / f"{i}.png")
    with pytest.raises(MissingClassifierError):
        evaluate_generation(folder, _image_set(1), network=network, extractor=STANDIN, progress=False)
    result = evaluate_generation(
        folder, _image_set(1), network=network, extractor=STANDIN, progress=False, skip_unavailable=True
    )
    assert "inception_score" not in result and "inception_score" in result["unavailable"]
    assert result["fid"] > 0 and 0 <= result["precision"] <= 1
    with pytest.raises(ValueError, match="extractor"):
        evaluate_generation(folder, folder, metrics=("fid",), network=network, progress=False)
    with pytest.raises(ValueError, match="unknown"):
        evaluate_generation(folder, folder, metrics=("fdi",), network=network, extractor=STANDIN)


needs_inception = pytest.mark.skipif(
    not (weights_dir() / CONVERTED_FILE).is_file(),
    reason="converted Inception weights absent: run `python -m vtp_gen.pretrained.fetch`",
)


@needs_inception
def test_real_inception_without_classifier_refuses_inception_score():
    images = _image_set(4, n=3)
    with pytest.raises(MissingClassifierError, match="fid-helper"):
        evaluate_generation(images, images, metrics=("fid", "inception_score"), progress=False)


@needs_inception
@pytest.mark.slow
def test_real_inception_fid_of_a_set_against_itself_is_zero():
    skdata = pytest.importorskip("skimage.data")
    photos = [getattr(skdata, n)()[:256, :256] for n in ("astronaut", "coffee", "chelsea", "rocket")]
    images = np.stack([p if p.ndim == 3 else np.repeat(p[..., None], 3, -1) for p in photos])
    flipped = images[:, :, ::-1].copy()
    both = np.concatenate([images, flipped])
    result = evaluate_generation(both, both, metrics=("fid", "precision_recall"), progress=False)
    assert abs(result["fid"]) < 1e-3
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    other = evaluate_generation(images, flipped, metrics=("fid",), progress=False)
    assert other["fid"] > 1.0
