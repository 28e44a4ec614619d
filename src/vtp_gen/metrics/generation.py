"""Generation metrics on Inception pool3 features: FID, KID, Inception Score, precision / recall.

Conventions follow the ADM evaluator (guided-diffusion ``evaluations/evaluator.py``),
which produced the DiT / SiT / LightningDiT / VTP numbers:

* FID: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` with ``np.cov`` (ddof 1)
  and ``scipy.linalg.sqrtm``; a diagonal imaginary part above 1e-3 is an error.
  Where a feature set has fewer vectors than dimensions (FID-400 on 2048-d pool3),
  the trace term comes exactly from the features instead (the nuclear norm of
  ``A1 A2^T``, :func:`trace_sqrt_from_features`): the same number, in
  milliseconds rather than scipy's minute-long 2048 x 2048 sqrtm on one CPU core.
* Inception Score: softmax of the classifier logits *without* bias, split into
  consecutive chunks of 5000, mean of ``exp(E[KL(p(y|x) || p(y))])`` over chunks.
* Precision / recall: k-NN manifolds with k = 3 on pool3 features (Kynkaanniemi
  et al. 2019). Precision = share of samples inside the reference manifold,
  recall = share of reference images inside the sample manifold.
  (torch-fidelity's own precision/recall uses VGG16 features: not these numbers.)
* KID: unbiased MMD^2 with the cubic polynomial kernel
  ``(x.y / d + 1)^3``, 100 subsets of 1000 (torch-fidelity's defaults).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from vtp_gen.interop.adm_npz import adm_npz_keys
from vtp_gen.metrics.features import FeatureNetwork, extract_features, network_device
from vtp_gen.metrics.images import ImageSource
from vtp_gen.pretrained.inception import FIDInceptionV3, MissingClassifierError, build_fid_inception
from vtp_gen.utils.atomic import atomic_output

INCEPTION_EXTRACTOR = "inception-v3-compat/pool3"
GENERATION_METRICS = ("fid", "kid", "inception_score", "precision_recall")
MAX_IMAGINARY = 1e-3  # ADM evaluator's tolerance on the diagonal of sqrtm(S1 S2)


class FIDNumericalError(ArithmeticError):
    """The matrix square root in FID is numerically unreliable; no number is better than a wrong one."""


# --- statistics -------------------------------------------------------------------------


@dataclass
class FeatureStatistics:
    """Mean and covariance (ddof 1) of a feature set, in float64."""

    mu: np.ndarray
    sigma: np.ndarray
    num_samples: int | None = None

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStatistics:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors (N, D), got {features.shape}")
        return cls(features.mean(axis=0), np.cov(features, rowvar=False), features.shape[0])

    def __post_init__(self):
        self.mu = np.atleast_1d(np.asarray(self.mu, dtype=np.float64))
        self.sigma = np.atleast_2d(np.asarray(self.sigma, dtype=np.float64))
        if self.sigma.shape != (self.mu.shape[0],) * 2:
            raise ValueError(f"sigma {self.sigma.shape} does not match mu {self.mu.shape}")


def symmetric_root(sigma: np.ndarray) -> np.ndarray:
    """The symmetric positive semi-definite square root of a covariance (eigenvalues clipped at 0)."""
    eigvals, eigvecs = np.linalg.eigh(sigma)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0, None))) @ eigvecs.T


def _trace_sqrt_with_root(root1: np.ndarray, sigma2: np.ndarray) -> float:
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(np.sqrt(np.clip(inner, 0, None)).sum())


def _centred_factor(features: np.ndarray) -> np.ndarray:
    """A with A^T A = the covariance (ddof 1): the centred features over sqrt(N - 1)."""
    features = np.asarray(features, dtype=np.float64)
    return (features - features.mean(axis=0)) / np.sqrt(features.shape[0] - 1)


def _nuclear_norm(matrix: np.ndarray) -> float:
    return float(np.linalg.svd(matrix, compute_uv=False).sum())


def trace_sqrt_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """tr sqrt(S1 S2) of two feature sets' covariances, from the features themselves.

    With S_i = A_i^T A_i (A_i: centred features over sqrt(N_i - 1)), the non-zero eigenvalues
    of S1 S2 are those of A1^T A1 A2^T A2, i.e. the squared singular values of A1 A2^T, so the
    trace of the square root is the nuclear norm of the N1 x N2 matrix A1 A2^T: exact, with no
    D x D square root. Where either N is below the feature dimension D (FID on a few hundred
    images: D = 2048) this costs milliseconds instead of the minute scipy's sqrtm takes on one
    CPU core, and needs no repair of a singular product.
    """
    return _nuclear_norm(_centred_factor(features1) @ _centred_factor(features2).T)


def _trace_sqrt_product_symmetric(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrt(S1 S2) via the symmetric form sqrt(S1) S2 sqrt(S1), whose eigenvalues are real.

    An independent route to the same number, used to check scipy's sqrtm.
    """
    return _trace_sqrt_with_root(symmetric_root(sigma1), sigma2)


class FrechetToReference:
    """Frechet distances of many feature sets to one fixed reference (bootstrap resamples, floors).

    The reference's matrix root is computed once and the trace term comes from the
    symmetric form ``sqrt(S_ref) S sqrt(S_ref)``, whose eigenvalues are real: no sqrtm per
    call, no imaginary parts to reject when a resample has fewer vectors than dimensions.
    A set with fewer vectors than dimensions takes the nuclear norm of its N x D factor
    times that root instead, or, when the reference's own ``features`` are given and fewer
    than dimensions too, of ``A A_ref^T`` (no D x D work at all).
    Equal to :func:`frechet_distance` where both are defined (tests check it).
    """

    def __init__(self, reference: FeatureStatistics, features: np.ndarray | None = None):
        self.reference = reference
        self._trace = float(np.trace(reference.sigma))
        dims = reference.mu.shape[0]
        self._factor = _centred_factor(features) if features is not None and len(features) < dims else None
        self._root_matrix: np.ndarray | None = None

    @property
    def _root(self) -> np.ndarray:
        if self._root_matrix is None:
            self._root_matrix = symmetric_root(self.reference.sigma)
        return self._root_matrix

    def __call__(self, features: np.ndarray) -> float:
        stats = FeatureStatistics.from_features(features)
        if stats.mu.shape != self.reference.mu.shape:
            raise ValueError(f"feature dimensions differ: {stats.mu.shape} vs {self.reference.mu.shape}")
        diff = stats.mu - self.reference.mu
        if self._factor is not None:
            trace_sqrt = _nuclear_norm(_centred_factor(features) @ self._factor.T)
        elif len(features) < len(stats.mu):
            # sqrt(S_ref) S sqrt(S_ref) = (A sqrt(S_ref))^T (A sqrt(S_ref)) with S = A^T A: the trace of
            # its root is the nuclear norm of the N x D matrix A sqrt(S_ref) (no D x D eigenproblem).
            trace_sqrt = _nuclear_norm(_centred_factor(features) @ self._root)
        else:
            trace_sqrt = _trace_sqrt_with_root(self._root, stats.sigma)
        return float(diff @ diff + np.trace(stats.sigma) + self._trace - 2.0 * trace_sqrt)


def frechet_distance_details(
    stats1: FeatureStatistics,
    stats2: FeatureStatistics,
    eps: float = 1e-6,
    max_imaginary: float = MAX_IMAGINARY,
) -> dict[str, float]:
    """FID with its numerical diagnostics.

    Returns ``fid``, ``max_imaginary`` (largest |imag| on the diagonal of the
    square root before it was dropped), ``sqrtm_residual``
    (``|X X - S1 S2|_F / |S1 S2|_F``), ``trace_sqrt_check`` (the trace term by an
    independent symmetric eigen-decomposition) and ``offset`` (eps added to the
    diagonals when the product was singular, else 0).
    Raises :class:`FIDNumericalError` when the imaginary part is too large.
    """
    if stats1.mu.shape != stats2.mu.shape:
        raise ValueError(f"feature dimensions differ: {stats1.mu.shape} vs {stats2.mu.shape}")
    sigma1, sigma2 = stats1.sigma, stats2.sigma
    diff = stats1.mu - stats2.mu
    product = sigma1 @ sigma2
    covmean = scipy.linalg.sqrtm(product)
    offset = 0.0
    if not np.isfinite(covmean).all():
        # Singular product (e.g. fewer samples than dimensions): the standard repair.
        offset = eps
        warnings.warn(
            f"FID: singular covariance product, adding {eps} to the diagonals", RuntimeWarning, stacklevel=2
        )
        identity = np.eye(sigma1.shape[0]) * eps
        product = (sigma1 + identity) @ (sigma2 + identity)
        covmean = scipy.linalg.sqrtm(product)
    imaginary = 0.0
    if np.iscomplexobj(covmean):
        imaginary = float(np.abs(np.diagonal(covmean).imag).max())
        if imaginary > max_imaginary:
            raise FIDNumericalError(
                f"FID: sqrtm(S1 S2) has an imaginary component of {imaginary:.3g} on its diagonal "
                f"(tolerance {max_imaginary}); the covariances are too ill-conditioned for a "
                "trustworthy FID. Use more images."
            )
        covmean = covmean.real
    residual = float(np.linalg.norm(covmean @ covmean - product) / max(np.linalg.norm(product), 1e-300))
    trace_covmean = float(np.trace(covmean))
    fid = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)
    check = _trace_sqrt_product_symmetric(
        sigma1 + offset * np.eye(len(sigma1)), sigma2 + offset * np.eye(len(sigma2))
    )
    return {
        "fid": fid,
        "max_imaginary": imaginary,
        "sqrtm_residual": residual,
        "trace_sqrt": trace_covmean,
        "trace_sqrt_check": check,
        "offset": offset,
    }


def frechet_distance(stats1: FeatureStatistics, stats2: FeatureStatistics, eps: float = 1e-6) -> float:
    """FID between two Gaussians (see :func:`frechet_distance_details` for the checks).

    Warns when the square root and the independent trace disagree by more than
    1e-3 relative, which flags results not to be trusted to many digits.
    """
    details = frechet_distance_details(stats1, stats2, eps=eps)
    scale = max(abs(details["trace_sqrt"]), 1.0)
    if abs(details["trace_sqrt"] - details["trace_sqrt_check"]) > 1e-3 * scale:
        warnings.warn(
            f"FID: trace of sqrtm(S1 S2) is {details['trace_sqrt']:.6g} by scipy.linalg.sqrtm but "
            f"{details['trace_sqrt_check']:.6g} by a symmetric eigen-decomposition "
            f"(residual {details['sqrtm_residual']:.2e}); the FID is imprecise, use more images.",
            RuntimeWarning,
            stacklevel=2,
        )
    return details["fid"]


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID of two feature sets. Where either set has fewer vectors than dimensions, the trace term
    is exact from the features (:func:`trace_sqrt_from_features`); otherwise scipy's sqrtm with its
    checks (:func:`frechet_distance`), as the ADM evaluator computes FID-10k/50k."""
    stats1, stats2 = FeatureStatistics.from_features(features1), FeatureStatistics.from_features(features2)
    if stats1.mu.shape != stats2.mu.shape:
        raise ValueError(f"feature dimensions differ: {stats1.mu.shape} vs {stats2.mu.shape}")
    if min(len(features1), len(features2)) >= len(stats1.mu):
        return frechet_distance(stats1, stats2)
    diff = stats1.mu - stats2.mu
    trace_sqrt = trace_sqrt_from_features(features1, features2)
    return float(diff @ diff + np.trace(stats1.sigma) + np.trace(stats2.sigma) - 2.0 * trace_sqrt)


def fid_to_reference(
    sample_features: np.ndarray, reference: FeatureStatistics, reference_features=None
) -> float:
    """FID of samples against a reference given by its statistics (and, when kept, its features).

    Fewer samples than dimensions: exact from the features (the reference's too when at hand, else
    through the reference's matrix root); otherwise scipy's sqrtm (:func:`frechet_distance`).
    """
    n, dims = len(sample_features), reference.mu.shape[0]
    if reference_features is not None and min(n, len(reference_features)) < dims:
        return fid_from_features(sample_features, reference_features)
    if n < dims:
        return FrechetToReference(reference)(sample_features)
    return frechet_distance(FeatureStatistics.from_features(sample_features), reference)


# --- KID, IS, precision / recall ----------------------------------------------------------


def _unbiased_mmd2_polynomial(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    m = x.shape[0]
    k_xx = (gamma * (x @ x.T) + coef0) ** degree
    k_yy = (gamma * (y @ y.T) + coef0) ** degree
    k_xy = (gamma * (x @ y.T) + coef0) ** degree
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kernel_inception_distance(
    features1: np.ndarray,
    features2: np.ndarray,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2, polynomial kernel ``(gamma x.y + coef0)^degree``.

    ``gamma`` defaults to 1 / feature dimension. Each subset draws
    ``subset_size`` vectors without replacement from each set.
    """
    x, y = np.asarray(features1, dtype=np.float64), np.asarray(features2, dtype=np.float64)
    if subset_size > min(len(x), len(y)) or subset_size < 2:
        raise ValueError(
            f"KID subset_size {subset_size} needs 2 <= size <= min(N1, N2) = {min(len(x), len(y))}"
        )
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    rng = np.random.default_rng(seed)
    values = [
        _unbiased_mmd2_polynomial(
            x[rng.choice(len(x), subset_size, replace=False)],
            y[rng.choice(len(y), subset_size, replace=False)],
            degree,
            gamma,
            coef0,
        )
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def inception_score(logits: np.ndarray, split_size: int = 5000) -> tuple[float, float]:
    """Inception Score (mean, std over splits) from classifier logits (N, classes).

    Splits are consecutive chunks of ``split_size`` as in the ADM evaluator
    (for N <= split_size there is one split and std is 0).
    """
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    probs = torch.softmax(logits, dim=1)
    log_probs = torch.log_softmax(logits, dim=1)
    scores = []
    for start in range(0, probs.shape[0], split_size):
        part, log_part = probs[start : start + split_size], log_probs[start : start + split_size]
        log_marginal = torch.log(part.mean(dim=0, keepdim=True))
        kl = (part * (log_part - log_marginal)).sum(dim=1).mean()
        scores.append(math.exp(kl.item()))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(features: torch.Tensor, k: int, block: int) -> torch.Tensor:
    radii = []
    for start in range(0, features.shape[0], block):
        distances = torch.cdist(features[start : start + block], features)
        # k + 1: the point itself is its own nearest neighbour at distance 0.
        radii.append(distances.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _share_inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int) -> float:
    inside = []
    for start in range(0, points.shape[0], block):
        distances = torch.cdist(points[start : start + block], centres)
        inside.append((distances <= radii[None, :]).any(dim=1))
    return torch.cat(inside).double().mean().item()


def precision_recall(
    reference_features: np.ndarray,
    sample_features: np.ndarray,
    k: int = 3,
    block: int = 1024,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds), computed in blocks of ``block`` rows.

    Distances are exact in float64 by default (the ADM evaluator uses float16
    with a float32 fall-back, so its last digits may differ on ties).
    """
    real = torch.as_tensor(np.asarray(reference_features), dtype=dtype, device=device)
    fake = torch.as_tensor(np.asarray(sample_features), dtype=dtype, device=device)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} vectors in each set")
    real_radii = _kth_neighbour_radii(real, k, block)
    fake_radii = _kth_neighbour_radii(fake, k, block)
    precision = _share_inside(fake, real, real_radii, block)
    recall = _share_inside(real, fake, fake_radii, block)
    return precision, recall


# --- reference sets and their cache ------------------------------------------------------------


@dataclass
class ReferenceSet:
    """What the metrics need from the reference side: statistics, and features when P/R or KID are wanted."""

    statistics: FeatureStatistics
    features: np.ndarray | None
    extractor: str
    source: str = ""


def save_reference(path: str | os.PathLike, reference: ReferenceSet) -> Path:
    """Cache a reference set as ``.npz`` (``mu``, ``sigma`` as in ADM reference batches, plus our keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "mu": reference.statistics.mu,
        "sigma": reference.statistics.sigma,
        "extractor": np.array(reference.extractor),
        "source": np.array(reference.source),
        "num_samples": np.array(reference.statistics.num_samples or -1),
    }
    if reference.features is not None:
        arrays["features"] = reference.features.astype(np.float32)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez adds no suffix
        np.savez(f, **arrays)
    return path


def load_reference(path: str | os.PathLike, extractor: str | None = None) -> ReferenceSet:
    """Read a cache written by :func:`save_reference`, or an ADM reference batch's ``mu``/``sigma``.

    An ADM batch carries no extractor name; its statistics are the TF Inception
    pool3 statistics, i.e. :data:`INCEPTION_EXTRACTOR`. A cache made with a
    different feature network than ``extractor`` is refused.
    """
    with np.load(path, allow_pickle=False) as data:
        keys = set(data.files)
        if "mu" not in keys or "sigma" not in keys:
            raise ValueError(f"{path} holds no reference statistics (mu, sigma)")
        stored = str(data["extractor"]) if "extractor" in keys else INCEPTION_EXTRACTOR
        count = int(data["num_samples"]) if "num_samples" in keys else None
        stats = FeatureStatistics(data["mu"], data["sigma"], count if count and count > 0 else None)
        features = data["features"] if "features" in keys else None
        source = str(data["source"]) if "source" in keys else str(path)
    if extractor is not None and stored != extractor:
        raise ValueError(f"{path} was computed with feature extractor {stored!r}, not {extractor!r}")
    return ReferenceSet(stats, features, stored, source)


def prepare_reference(
    source: ImageSource | ReferenceSet | FeatureStatistics,
    network: FeatureNetwork | None,
    extractor: str,
    cache_path: str | os.PathLike | None = None,
    need_features: bool = False,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_images: int | None = None,
) -> ReferenceSet:
    """The reference side, computed once and reused.

    ``source`` may be images (see :mod:`vtp_gen.metrics.images`), an ADM
    reference ``.npz`` (its ``mu``/``sigma`` are used for FID as the ADM
    evaluator does; its images only when features are needed), a reference
    cache ``.npz``, or ready statistics. With ``cache_path``, the result is
    stored there and read back next time.
    """
    if isinstance(source, ReferenceSet):
        return source
    if isinstance(source, FeatureStatistics):
        if need_features:
            raise ValueError("precision/recall and KID need reference features, not only statistics")
        return ReferenceSet(source, None, extractor, "statistics")
    if cache_path is not None and Path(cache_path).is_file():
        cached = load_reference(cache_path, extractor)
        if cached.features is not None or not need_features:
            return cached
    reference = None
    if isinstance(source, str | os.PathLike) and Path(source).suffix == ".npz":
        keys = set(adm_npz_keys(source))
        if {"mu", "sigma"} <= keys:
            reference = load_reference(source, extractor)
            if need_features and reference.features is None:
                if "arr_0" not in keys:
                    raise ValueError(
                        f"{source} has statistics only; precision/recall and KID need its images"
                    )
                reference.features = _features(source, network, batch_size, device, progress, max_images)
    if reference is None:
        features = _features(source, network, batch_size, device, progress, max_images)
        reference = ReferenceSet(FeatureStatistics.from_features(features), features, extractor, str(source))
    if cache_path is not None:
        save_reference(cache_path, reference)
    return reference


def _features(source, network, batch_size, device, progress, max_images) -> np.ndarray:
    if network is None:
        raise ValueError("a feature network is needed to compute reference features from images")
    return extract_features(source, network, batch_size, device, progress, "reference", max_images)


# --- one call for the eval entry point -----------------------------------------------------------


def evaluate_generation(
    samples: ImageSource,
    reference: ImageSource | ReferenceSet | FeatureStatistics,
    metrics: Sequence[str] = ("fid", "inception_score", "precision_recall"),
    network: FeatureNetwork | None = None,
    extractor: str | None = None,
    reference_cache: str | os.PathLike | None = None,
    batch_size: int = 50,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_samples: int | None = None,
    skip_unavailable: bool = False,
    prc_k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    is_split_size: int = 5000,
    keep_features: bool = False,
) -> dict:
    """Compute the requested generation metrics for ``samples`` against ``reference``.

    ``network`` defaults to the FID Inception (:func:`~vtp_gen.pretrained.inception.build_fid_inception`).
    Inception Score needs the network's classifier; without one it raises
    :class:`~vtp_gen.pretrained.inception.MissingClassifierError`, or with
    ``skip_unavailable=True`` records the reason under ``"unavailable"`` and
    reports no number. ``kid_subset_size`` is capped at the set sizes.
    ``keep_features``: also return the samples' features (``sample_features``), the
    reference's statistics (``reference_statistics``) and, when loaded, its features
    (``reference_features``, else None), e.g. for a bootstrap interval.
    """

    unknown = sorted(set(metrics) - set(GENERATION_METRICS))
    if unknown:
        raise ValueError(f"unknown generation metrics {unknown}; choose from {GENERATION_METRICS}")
    if network is None:
        network = build_fid_inception(device=device or "cpu")
    if extractor is None:
        if not isinstance(network, FIDInceptionV3):
            raise ValueError("name the feature extractor (extractor=...) when using a custom network")
        extractor = INCEPTION_EXTRACTOR
    result: dict = {"feature_extractor": extractor}
    unavailable: dict[str, str] = {}
    if "inception_score" in metrics and not getattr(network, "has_classifier", False):
        message = "the feature network has no classifier layer"
        if isinstance(network, FIDInceptionV3):
            try:
                network.classifier_logits(torch.zeros(1, network.feature_dim))
            except MissingClassifierError as err:
                message = str(err)
        if not skip_unavailable:
            raise MissingClassifierError(message)
        unavailable["inception_score"] = message

    sample_features = extract_features(samples, network, batch_size, device, progress, "samples", max_samples)
    result["num_samples"] = int(sample_features.shape[0])
    need_ref_features = "precision_recall" in metrics or "kid" in metrics
    ref = prepare_reference(
        reference, network, extractor, reference_cache, need_ref_features, batch_size, device, progress
    )
    result["num_reference"] = ref.statistics.num_samples
    if keep_features:
        result["sample_features"], result["reference_statistics"] = sample_features, ref.statistics
        result["reference_features"] = ref.features

    if "fid" in metrics:
        result["fid"] = fid_to_reference(sample_features, ref.statistics, ref.features)
    if "kid" in metrics:
        size = min(kid_subset_size, len(sample_features), len(ref.features))
        result["kid"], result["kid_std"] = kernel_inception_distance(
            ref.features, sample_features, num_subsets=kid_subsets, subset_size=size
        )
        result["kid_subset_size"] = size
    if "precision_recall" in metrics:
        result["precision"], result["recall"] = precision_recall(ref.features, sample_features, k=prc_k)
    if "inception_score" in metrics and "inception_score" not in unavailable:
        logits = network.classifier_logits(torch.as_tensor(sample_features, device=network_device(network)))
        result["inception_score"], result["inception_score_std"] = inception_score(
            logits.cpu().numpy(), split_size=is_split_size
        )
    if unavailable:
        result["unavailable"] = unavailable
    return result
