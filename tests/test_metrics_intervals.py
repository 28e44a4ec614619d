"""Bootstrap intervals and their combination with the spread over seeds (vtp_gen.metrics.intervals)."""

import numpy as np
import pytest

from vtp_gen.metrics.generation import FeatureStatistics, frechet_distance
from vtp_gen.metrics.intervals import (
    Interval,
    bootstrap_interval,
    combine_seeds,
    pooled_seed_variance,
    spread_interval,
)


def mean_interval(sample: np.ndarray, seed: int, **kwargs) -> Interval:
    return bootstrap_interval(lambda rows: sample[rows].mean(), len(sample), seed=seed, **kwargs)


def test_bootstrap_interval_of_a_mean_covers_the_true_value_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    repeats = 200
    covered = sum(
        mean_interval(rng.normal(3.0, 2.0, 100), seed=i, resamples=200).contains(3.0) for i in range(repeats)
    )
    # Binomial(200, 0.95) has a std of ~3 repeats; the percentile bootstrap runs slightly narrow at N=100.
    assert 0.88 * repeats <= covered <= 0.99 * repeats


def test_bootstrap_is_deterministic_in_its_seed_and_reports_its_settings():
    sample = np.random.default_rng(0).exponential(size=50)
    first, again = mean_interval(sample, seed=7, resamples=300), mean_interval(sample, seed=7, resamples=300)
    assert first == again and first.resamples == 300 and first.level == 0.95
    assert mean_interval(sample, seed=8, resamples=300) != first
    assert first.value == pytest.approx(sample.mean()) and first.low < first.value < first.high
    assert first.std == pytest.approx(sample.std(ddof=1) / np.sqrt(50), rel=0.2)
    with pytest.raises(ValueError, match="method"):
        mean_interval(sample, seed=0, method="bca")


def test_centred_interval_of_a_frechet_distance_holds_the_point_estimate():
    # Resampling with replacement pushes a Frechet distance up: here the percentile interval misses
    # the point estimate altogether; the centred one shifts the bootstrap back onto it.
    rng = np.random.default_rng(0)
    reference = FeatureStatistics.from_features(rng.normal(size=(5000, 8)))
    sample = rng.normal(size=(200, 8))

    def distance(rows):
        return frechet_distance(FeatureStatistics.from_features(sample[rows]), reference)

    percentile = bootstrap_interval(distance, 200, resamples=200, method="percentile")
    centred = bootstrap_interval(distance, 200, resamples=200, method="centred")
    assert percentile.value == centred.value and percentile.low > percentile.value
    assert centred.low < centred.value < centred.high
    assert centred.high - centred.low == pytest.approx(percentile.high - percentile.low)


def test_combining_seeds():
    one = Interval(10.0, 9.0, 11.0, std=0.5, resamples=100)
    assert combine_seeds([one]) is one  # one seed: the bootstrap is all there is
    # Seeds that agree: the bootstrap variance is the floor, shrunk by sqrt(k).
    agreeing = combine_seeds([one, Interval(10.0, 9.0, 11.0, std=0.5, resamples=100)])
    assert agreeing.seeds == 2 and agreeing.value == 10.0
    assert agreeing.high - agreeing.value == pytest.approx(1.96 * 0.5 / np.sqrt(2), rel=1e-3)
    assert "bootstrap dominates" in agreeing.method
    # Seeds far apart: their spread dominates, with Student's t for the few degrees of freedom.
    spread = [Interval(v, v - 1, v + 1, std=0.5) for v in (10.0, 14.0, 18.0)]
    combined = combine_seeds(spread)
    assert combined.value == pytest.approx(14.0) and "seed spread" in combined.method
    assert combined.high - combined.value == pytest.approx(4.303 * 4.0 / np.sqrt(3), rel=1e-3)
    # Without a recorded std, a seed's bootstrap variance is read back from its interval's width.
    widths = combine_seeds([Interval(5.0, 4.0, 6.0), Interval(5.0, 4.0, 6.0)])
    assert widths.std == pytest.approx(1 / 1.96 / np.sqrt(2), rel=1e-3)
    with pytest.raises(ValueError):
        combine_seeds([])


def test_spread_interval_of_repeats():
    values = np.arange(1, 101, dtype=float)
    interval = spread_interval(values)
    assert interval.value == pytest.approx(50.5) and interval.resamples == 100
    assert interval.low == pytest.approx(np.quantile(values, 0.025)) and interval.high == pytest.approx(
        np.quantile(values, 0.975)
    )
    assert Interval.from_dict(interval.to_dict()) == interval
    assert interval.text(1) == "50.5 [3.5, 97.5]"


def test_pooled_seed_spread():
    groups = [[100.0, 110.0], [50.0, 54.0, 46.0], [7.0]]
    variance, dof = pooled_seed_variance(groups)
    # Squared deviations from each group's own mean, over sum(n - 1): (50 + 32) / (1 + 2).
    assert dof == 3 and variance == pytest.approx((50.0 + 32.0) / 3)
    assert variance == pytest.approx(
        sum(np.var(g, ddof=1) * (len(g) - 1) for g in groups if len(g) > 1) / sum(len(g) - 1 for g in groups)
    )
    with pytest.raises(ValueError, match="two or more seeds"):
        pooled_seed_variance([[1.0], [2.0]])
    # The pooled spread replaces a point's own: t with the pooled degrees of freedom, not k - 1.
    seeds = [Interval(v, v - 0.1, v + 0.1, std=0.05) for v in (100.0, 110.0)]
    own, pooled = combine_seeds(seeds), combine_seeds(seeds, pooled=(16.0, 12))
    assert own.high - own.value == pytest.approx(12.706 * 5.0, rel=1e-3)
    assert pooled.value == own.value and pooled.high - pooled.value == pytest.approx(
        2.179 * 4.0 / np.sqrt(2), rel=1e-3
    )
    assert "pooled (12 degrees of freedom)" in pooled.method
    # The bootstrap stays the floor when the pooled spread is smaller than the sampling noise.
    assert combine_seeds(seeds, pooled=(1e-6, 12)).method.endswith("bootstrap dominates")
