"""95 % intervals for evaluation numbers: a bootstrap over samples, combined with the spread over seeds.

Two sources of noise sit in every generation metric measured on N samples:

* **sampling noise**: another N samples from the same generator give another number.
  :func:`bootstrap_interval` estimates it by recomputing the statistic on samples drawn
  with replacement from the N (for a Frechet distance, the mean and covariance are
  recomputed per resample; the large reference stays fixed);
* **seed spread**: training (or sampling) with another seed gives another generator.
  Only several seeds show it; :func:`combine_seeds` folds it in.

Frechet distances are biased upwards at finite N, and a resample with repeated rows
(about 63 % distinct ones) is biased further still: on N real images against the
reference, the whole bootstrap distribution can lie above the point estimate (tests show
it). The number we report is the distance *at N* (like FID-N), so the ``centred``
interval keeps the bootstrap's spread and shape but shifts its mean onto the point
estimate; ``percentile`` uses the quantiles as they are and suits means and proportions
(label agreement), whose bootstrap is unbiased.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

LEVEL = 0.95
BOOTSTRAP_METHODS = ("percentile", "centred")


@dataclass(frozen=True)
class Interval:
    """A number with its interval: ``value`` in [``low``, ``high``] at ``level``.

    ``method`` says how it was made ("bootstrap percentile", "seeds (3) + bootstrap", ...);
    ``std`` is the standard error behind it; ``resamples`` and ``seeds`` the counts used.
    """

    value: float
    low: float
    high: float
    level: float = LEVEL
    method: str = ""
    std: float | None = None
    resamples: int = 0
    seeds: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Interval:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def standard_error(self) -> float:
        """``std`` when recorded, else read back from the interval's width as a normal one."""
        if self.std is not None:
            return float(self.std)
        return (self.high - self.low) / (2 * scipy.stats.norm.ppf(0.5 + self.level / 2))

    def text(self, digits: int = 2, scale: float = 1.0) -> str:
        """'41.20 [39.85, 42.71]'."""
        return (
            f"{self.value * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"
        )


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    num_items: int,
    resamples: int = 1000,
    seed: int = 0,
    level: float = LEVEL,
    method: str = "percentile",
    minimum: float | None = None,
) -> Interval:
    """Bootstrap interval of ``statistic(indices)`` over ``num_items`` items.

    ``statistic`` receives an index array (all items for the point estimate, then
    ``resamples`` draws of ``num_items`` indices with replacement) and returns a number,
    so any per-item data (features, hits) can stand behind it. Deterministic in ``seed``.
    ``minimum``: the smallest value the statistic can take (0 for a distance); the interval's
    bounds are clipped there (a centred interval may otherwise reach below it).
    """
    if method not in BOOTSTRAP_METHODS:
        raise ValueError(f"bootstrap method {method!r}: choose {', '.join(BOOTSTRAP_METHODS)}")
    if num_items < 2 or resamples < 2:
        raise ValueError(f"a bootstrap needs >= 2 items and resamples, got {num_items} and {resamples}")
    value = float(statistic(np.arange(num_items)))
    rng = np.random.default_rng(seed)
    draws = np.array(
        [statistic(rng.integers(0, num_items, num_items)) for _ in range(resamples)], dtype=float
    )
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(draws, [tail, 1.0 - tail])
    if method == "centred":
        shift = float(draws.mean()) - value  # the resampling bias, removed
        lower, upper = lower - shift, upper - shift
    if minimum is not None:
        lower, upper = max(lower, minimum), max(upper, minimum)
    return Interval(
        value,
        float(lower),
        float(upper),
        level,
        f"bootstrap {method}, {resamples} resamples",
        std=float(draws.std(ddof=1)),
        resamples=resamples,
    )


def spread_interval(values: Sequence[float], level: float = LEVEL, method: str = "") -> Interval:
    """Mean of independent repeats with the central ``level`` range of the repeats themselves.

    For a real-vs-real floor: each repeat is a fresh draw of N real images, so the range is
    where one measurement at N falls (not the uncertainty of the mean).
    """
    values = np.asarray(values, dtype=float)
    tail = (1.0 - level) / 2.0
    lower, upper = np.quantile(values, [tail, 1.0 - tail])
    return Interval(
        float(values.mean()),
        float(lower),
        float(upper),
        level,
        method or f"spread of {len(values)} repeats",
        std=float(values.std(ddof=1)) if len(values) > 1 else None,
        resamples=len(values),
    )


def pooled_seed_variance(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The seed-to-seed variance pooled over groups that share one recipe, and its degrees of freedom.

    Each group holds one configuration's values over seeds; the squared deviations from each
    group's own mean are summed and divided by sum(n_i - 1), the usual pooled within-group
    estimate. Groups with fewer than two values add nothing.
    """
    squares, dof = 0.0, 0
    for group in groups:
        values = np.asarray(group, dtype=float)
        if len(values) > 1:
            squares += float(((values - values.mean()) ** 2).sum())
            dof += len(values) - 1
    if dof == 0:
        raise ValueError("no group with two or more seeds to pool")
    return squares / dof, dof


def combine_seeds(
    per_seed: Sequence[Interval], level: float = LEVEL, pooled: tuple[float, int] | None = None
) -> Interval:
    """One interval for the mean over seeds, from each seed's bootstrap interval.

    With one seed the bootstrap interval is all there is (it says nothing about seed
    spread; ``seeds=1`` records that). With k seeds the value is their mean and its
    variance ``max(mean bootstrap variance, between-seed variance) / k``: the spread of
    the seed values already contains each seed's sampling noise, so the two are not added;
    the bootstrap term is a floor for when k is too small for the spread to show it (two
    seeds that happen to agree). The critical value is Student's t with k - 1 degrees of
    freedom when the between-seed variance dominates (it is estimated from k values), else
    the normal one.

    ``pooled``: ``(variance, degrees of freedom)`` of the seed spread estimated over many
    configurations (:func:`pooled_seed_variance`), used instead of these k values' own spread:
    two seeds alone give one degree of freedom (t = 12.7), a study's points together many more.
    """
    if not per_seed:
        raise ValueError("no intervals to combine")
    if len(per_seed) == 1:
        return per_seed[0]
    k = len(per_seed)
    values = np.array([i.value for i in per_seed])
    normal = scipy.stats.norm.ppf(0.5 + level / 2)
    boot_var = float(np.mean([i.standard_error**2 for i in per_seed]))
    between_var, dof = pooled if pooled is not None else (float(values.var(ddof=1)), k - 1)
    if between_var > boot_var:
        variance, critical, dominant = (
            between_var / k,
            scipy.stats.t.ppf(0.5 + level / 2, dof),
            "seed spread" if pooled is None else f"seed spread pooled ({dof} degrees of freedom)",
        )
    else:
        variance, critical, dominant = boot_var / k, normal, "bootstrap"
    centre, half = float(values.mean()), float(critical * math.sqrt(variance))
    return Interval(
        centre,
        centre - half,
        centre + half,
        level,
        f"mean of {k} seeds, {dominant} dominates",
        std=math.sqrt(variance),
        resamples=per_seed[0].resamples,
        seeds=k,
    )
