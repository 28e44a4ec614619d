"""The domain metric of a set of generated samples, each number with its 95 % interval and its floor.

* **domain Frechet distance** (``domain_fd``): samples vs the whole test split in the
  garment judge's penultimate features (:mod:`vtp_gen.metrics.domain`); interval: a
  centred bootstrap over the samples (the reference is fixed: 10k images, its own noise
  is small beside N samples');
* **label agreement**: share of samples the judge puts in their conditioning class;
  interval: a percentile bootstrap over the samples.

Beside each sits what real images get at the same N (the **floor**): N real train
images drawn afresh ``repeats`` times, their distance to the same reference; and the
judge's accuracy on N real test images. A model whose interval overlaps the floor's is
as close to the data as this N can tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vtp_gen.metrics.domain import GarmentJudge, agreement_hits, judge_outputs
from vtp_gen.metrics.generation import FeatureStatistics, FrechetToReference
from vtp_gen.metrics.intervals import Interval, bootstrap_interval, spread_interval


def frechet_interval(
    sample_features: np.ndarray, distance: FrechetToReference, resamples: int = 500, seed: int = 0
) -> Interval:
    """The samples' Frechet distance to the reference with a centred bootstrap interval."""
    sample_features = np.asarray(sample_features, dtype=np.float64)
    return bootstrap_interval(
        lambda rows: distance(sample_features[rows]),
        len(sample_features),
        resamples,
        seed,
        method="centred",
        minimum=0.0,
    )


def agreement_interval(hits: np.ndarray, resamples: int = 1000, seed: int = 0) -> Interval:
    """Mean of per-sample hits (0/1) with a percentile bootstrap interval."""
    hits = np.asarray(hits, dtype=np.float64)
    return bootstrap_interval(lambda rows: hits[rows].mean(), len(hits), resamples, seed, method="percentile")


def _draws(pool: int, n: int, repeats: int, seed: int) -> list[np.ndarray]:
    if n > pool:
        raise ValueError(f"a floor at N={n} needs at least {n} real images, the pool holds {pool}")
    rng = np.random.default_rng(seed)
    return [rng.choice(pool, n, replace=False) for _ in range(repeats)]


def frechet_floor(
    real_features: np.ndarray, distance: FrechetToReference, n: int, repeats: int = 50, seed: int = 0
) -> Interval:
    """Real-vs-real: the distance of ``repeats`` fresh draws of ``n`` real images to the reference.

    The interval is the central 95 % of the draws: where one measurement on N real images falls.
    """
    values = [distance(real_features[rows]) for rows in _draws(len(real_features), n, repeats, seed)]
    return spread_interval(values, method=f"{repeats} draws of {n} real images")


def agreement_floor(real_hits: np.ndarray, n: int, repeats: int = 50, seed: int = 0) -> Interval:
    """The judge's accuracy on ``repeats`` draws of ``n`` real held-out images (the ceiling of agreement)."""
    real_hits = np.asarray(real_hits, dtype=np.float64)
    values = [real_hits[rows].mean() for rows in _draws(len(real_hits), n, repeats, seed)]
    return spread_interval(values, method=f"{repeats} draws of {n} real test images")


@dataclass
class DomainReference:
    """What the domain metric compares samples with, computed once (see reference_cache)."""

    judge: GarmentJudge
    judge_accuracy: float  # on the whole test split
    reference: FeatureStatistics  # judge features of the test images
    reference_hits: np.ndarray  # 1.0 where the judge classifies a reference image correctly
    floor_features: np.ndarray  # judge features of real train images, the pool the floor draws from

    def __post_init__(self):
        self.distance = FrechetToReference(self.reference)


def reference_hits(judge: GarmentJudge, features: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Per reference image, whether the judge's class (read from its stored features) is its label."""
    with torch.no_grad():
        predicted = judge.head[-1](torch.as_tensor(np.asarray(features), dtype=torch.float32)).argmax(1)
    return agreement_hits(predicted.numpy(), labels)


@dataclass
class DomainResult:
    frechet: Interval
    frechet_floor: Interval
    agreement: Interval | None  # None without conditioning labels
    agreement_floor: Interval | None
    num_samples: int
    num_reference: int
    judge_accuracy: float

    def to_dict(self) -> dict:
        out = {
            "num_samples": self.num_samples,
            "num_reference": self.num_reference,
            "judge_test_accuracy": self.judge_accuracy,
            "domain_fd": self.frechet.to_dict(),
            "domain_fd_floor": self.frechet_floor.to_dict(),
        }
        if self.agreement is not None:
            out["label_agreement"] = self.agreement.to_dict()
            out["label_agreement_floor"] = self.agreement_floor.to_dict()
        return out


def evaluate_domain(
    pixels: np.ndarray,
    labels: Sequence[int] | None,
    reference: DomainReference,
    resamples: int = 500,
    floor_repeats: int = 50,
    seed: int = 0,
) -> DomainResult:
    """Domain Frechet distance and (with ``labels``) label agreement of uint8 samples (N, H, W[, 3])."""
    features, predicted = judge_outputs(reference.judge, pixels)
    n = len(features)
    frechet = frechet_interval(features, reference.distance, resamples, seed)
    floor = frechet_floor(reference.floor_features, reference.distance, n, floor_repeats, seed)
    agree = agree_floor = None
    if labels is not None:
        labels = list(labels)
        if len(labels) != n:
            raise ValueError(f"{n} samples but {len(labels)} labels")
        agree = agreement_interval(agreement_hits(predicted, labels), resamples, seed)
        agree_floor = agreement_floor(reference.reference_hits, n, floor_repeats, seed)
    return DomainResult(
        frechet,
        floor,
        agree,
        agree_floor,
        n,
        int(reference.reference.num_samples or 0),
        reference.judge_accuracy,
    )
