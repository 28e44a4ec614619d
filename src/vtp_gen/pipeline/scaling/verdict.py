"""The study's answer, computed from its rows: differences, slopes and correlations with 95 % intervals.

The paper's claim (docs/vtp-method.md, section 1) in checkable form, per bottleneck width:

* **the gap**: gFID of CLIP+SSL+AE minus gFID of AE-only at the same stage-1 steps, with an
  interval from the two rows' intervals (each side's half-widths added in quadrature, lower and
  upper separately, so a bootstrap's asymmetry is kept). The same for the domain metric
  (FD-judge, the low-variance one);
* **the gap at matched compute**: the same difference between budgets of (nearly) equal tokenizer
  FLOPs, each CLIP+SSL+AE budget against the AE-only budget nearest in log FLOPs (within
  :data:`MATCHED_COMPUTE_MAX_RATIO`), the FLOP ratio stated: the paper's axis is compute, and a
  CLIP+SSL+AE step costs several AE-only steps;
* **the plateau**: AE-only's change in gFID and in rFID per doubling of tokenizer compute over
  its last two budgets, with intervals where the rows have them;
* **the correlations**: Pearson r of probe, zero-shot and rFID with gFID over the points, with a
  percentile bootstrap over the points (resamples that draw a constant series are dropped).

The verdict rule (:data:`RULE`) is applied to the gap at the largest budget both presets have, and
to the matched-compute gap at the largest CLIP+SSL+AE budget that has a match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PAPER = "CLIP+SSL+AE"  # the objectives label of the preset the claim is about ...
BASELINE = "AE"  # ... and of the reconstruction-only baseline
HOLDS, FAILS, CANNOT_TELL = "paper's direction holds here", "fails here", "cannot tell"
RULE = (
    f"at the largest stage-1 budget both presets reached at this width (same steps), or at the largest "
    f"{PAPER} budget with an {BASELINE} budget of matched compute, the 95 % interval of "
    f"{PAPER} minus {BASELINE} (lower is better) lies entirely below 0: {HOLDS!r}; entirely above 0: "
    f"{FAILS!r} (the baseline generates measurably better); it contains 0, or a row lacks an "
    f"interval: {CANNOT_TELL!r}"
)


@dataclass(frozen=True)
class Estimate:
    """A derived number with its 95 % interval (``low``/``high`` None when it has none)."""

    value: float
    low: float | None = None
    high: float | None = None

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def text(self, digits: int = 2, signed: bool = True) -> str:
        sign = "+" if signed else ""
        if not self.has_interval:
            return f"{self.value:{sign}.{digits}f} (no interval)"
        return f"{self.value:{sign}.{digits}f} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def estimate(row: dict, column: str) -> Estimate | None:
    """A row's metric with its interval columns (``<column>_low/_high``), None when it has no value."""
    value = row.get(column)
    if not _number(value):
        return None
    low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
    if _number(low) and _number(high):
        return Estimate(float(value), float(low), float(high))
    return Estimate(float(value))


def difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b with independent errors: each side's interval arms added in quadrature."""
    value = a.value - b.value
    if not (a.has_interval and b.has_interval):
        return Estimate(value)
    below = math.hypot(a.value - a.low, b.high - b.value)
    above = math.hypot(a.high - a.value, b.value - b.low)
    return Estimate(value, value - below, value + above)


def scaled(e: Estimate, factor: float) -> Estimate:
    if not e.has_interval:
        return Estimate(e.value * factor)
    ends = sorted((e.low * factor, e.high * factor))
    return Estimate(e.value * factor, ends[0], ends[1])


def direction(gap: Estimate | None) -> str:
    """:data:`RULE` applied to one gap (paper preset minus baseline; lower is better)."""
    if gap is None or not gap.has_interval:
        return CANNOT_TELL
    if gap.high < 0:
        return HOLDS
    if gap.low > 0:
        return FAILS
    return CANNOT_TELL


def width_of(row: dict):
    return row.get("width")


def widths(rows: Sequence[dict]) -> list:
    """The study's widths in order of first appearance (None: the recipe's own width)."""
    seen: list = []
    for row in rows:
        if width_of(row) not in seen:
            seen.append(width_of(row))
    return seen


def _preset_rows(rows: Sequence[dict], width, objectives: str) -> dict[int, dict]:
    return {r["steps"]: r for r in rows if width_of(r) == width and r.get("objectives") == objectives}


@dataclass(frozen=True)
class Gap:
    steps: int  # the paper preset's stage-1 steps
    metric: str
    paper: Estimate
    baseline: Estimate
    gap: Estimate
    compute_ratio: float | None  # paper preset's tokenizer GFLOPs / the baseline's
    baseline_steps: int | None = None  # None: the same steps as the paper preset


def gaps(rows: Sequence[dict], width, metric: str) -> list[Gap]:
    """Paper preset minus baseline at every stage-1 budget both have at ``width``, budgets ascending."""
    paper, base = _preset_rows(rows, width, PAPER), _preset_rows(rows, width, BASELINE)
    out = []
    for steps in sorted(set(paper) & set(base)):
        a, b = estimate(paper[steps], metric), estimate(base[steps], metric)
        if a is None or b is None:
            continue
        fa, fb = paper[steps].get("tokenizer_gflops"), base[steps].get("tokenizer_gflops")
        ratio = fa / fb if _number(fa) and _number(fb) and fb > 0 else None
        out.append(Gap(steps, metric, a, b, difference(a, b), ratio))
    return out


# Two budgets count as matched compute when their tokenizer FLOPs differ by at most this factor.
MATCHED_COMPUTE_MAX_RATIO = 2.0


def _flops(row: dict) -> float | None:
    """The row's tokenizer GFLOPs when usable on a log axis (a positive number), else None."""
    value = row.get("tokenizer_gflops")
    return float(value) if _number(value) and value > 0 else None


def matched_compute_gaps(rows: Sequence[dict], width, metric: str) -> list[Gap]:
    """Paper preset minus baseline at (nearly) equal tokenizer FLOPs, paper budgets ascending: each
    paper budget against the baseline budget nearest in log FLOPs, if within the max ratio."""
    paper, base = _preset_rows(rows, width, PAPER), _preset_rows(rows, width, BASELINE)
    candidates = {s: r for s, r in base.items() if estimate(r, metric) and _flops(r)}
    out = []
    for steps in sorted(paper):
        row, a = paper[steps], estimate(paper[steps], metric)
        if a is None or not candidates or not _flops(row):
            continue
        nearest = min(candidates, key=lambda s: abs(math.log(_flops(row) / _flops(candidates[s]))))
        ratio = _flops(row) / _flops(candidates[nearest])
        if max(ratio, 1 / ratio) > MATCHED_COMPUTE_MAX_RATIO:
            continue
        b = estimate(candidates[nearest], metric)
        out.append(Gap(steps, metric, a, b, difference(a, b), ratio, baseline_steps=nearest))
    return out


# "Stopped improving" must be shown, not just not refuted: the interval of the change per doubling
# has to contain 0 and exclude an improvement larger than this share of the metric's earlier value.
PLATEAU_MARGIN = 0.05
PLATEAU_RULE = (
    "plateau = the gFID change per doubling has a 95 % interval that contains 0 and excludes an "
    f"improvement of more than {PLATEAU_MARGIN:.0%} of the earlier gFID, while rFID still falls"
)


@dataclass(frozen=True)
class Change:
    """A preset's change in a metric over its last two budgets, per doubling of tokenizer compute."""

    metric: str
    steps: tuple[int, int]
    per_doubling: Estimate
    start: float = 0.0  # the metric at the earlier budget


def last_change(rows: Sequence[dict], width, objectives: str, metric: str) -> Change | None:
    group = sorted(_preset_rows(rows, width, objectives).values(), key=lambda r: r["steps"])
    group = [r for r in group if estimate(r, metric) is not None and _number(r.get("tokenizer_gflops"))]
    if len(group) < 2:
        return None
    before, last = group[-2], group[-1]
    doublings = math.log2(last["tokenizer_gflops"] / before["tokenizer_gflops"])
    if doublings <= 0:
        return None
    change = difference(estimate(last, metric), estimate(before, metric))
    return Change(
        metric, (before["steps"], last["steps"]), scaled(change, 1.0 / doublings), float(before[metric])
    )


def plateau(gfid: Change | None, rfid: Change | None) -> str:
    """Whether the baseline's gFID stops improving while its rFID still improves (lower is better);
    the rule is :data:`PLATEAU_RULE`."""
    if gfid is None or rfid is None:
        return "not measurable (fewer than two budgets)"
    r = rfid.per_doubling
    rfid_improves = (r.high < 0) if r.has_interval else r.value < 0
    g = gfid.per_doubling
    if not g.has_interval:
        return "cannot tell (the gFID change has no interval)"
    if g.high < 0:
        return "no: gFID still improves measurably"
    if g.low > 0:
        return "no: gFID gets measurably worse" + (" while rFID improves" if rfid_improves else "")
    if g.low < -PLATEAU_MARGIN * abs(gfid.start):
        return (
            "cannot tell: the gFID interval allows a flat line and an improvement of more than "
            f"{PLATEAU_MARGIN:.0%} per doubling alike"
        )
    if rfid_improves:
        return "yes: gFID has stopped improving (within the margin) while rFID still improves"
    return "both have stopped improving (rFID too)"


@dataclass(frozen=True)
class Correlation:
    x: str
    y: str
    r: float | None
    low: float | None
    high: float | None
    points: int

    def text(self) -> str:
        if self.r is None:
            return f"n/a ({self.points} point{'s' if self.points != 1 else ''})"
        interval = f" [{self.low:+.2f}, {self.high:+.2f}]" if self.low is not None else " (no interval)"
        return f"{self.r:+.2f}{interval} over {self.points} points"


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None for fewer than 3 points or a constant series."""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    if len(x) < 3:
        return None
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float((dx * dx).sum()), float((dy * dy).sum())
    if sxx <= 0 or syy <= 0:
        return None
    return float((dx * dy).sum() / math.sqrt(sxx * syy))


def correlation(
    rows: Sequence[dict], x: str, y: str = "gfid", resamples: int = 2000, seed: int = 0
) -> Correlation:
    """Pearson r of column ``x`` with ``y`` over the rows that have both, with a percentile
    bootstrap over the points (resamples with a constant series are skipped; fewer than half
    usable, or fewer than 4 points: no interval)."""
    usable = [r for r in rows if _number(r.get(x)) and _number(r.get(y))]
    xs = np.array([r[x] for r in usable], dtype=float)
    ys = np.array([r[y] for r in usable], dtype=float)
    r = pearson(xs, ys)
    if r is None or len(usable) < 4 or resamples < 2:
        return Correlation(x, y, r, None, None, len(usable))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        rows_drawn = rng.integers(0, len(usable), len(usable))
        value = pearson(xs[rows_drawn], ys[rows_drawn])
        if value is not None:
            draws.append(value)
    if len(draws) < resamples / 2:
        return Correlation(x, y, r, None, None, len(usable))
    low, high = np.quantile(draws, [0.025, 0.975])
    return Correlation(x, y, r, float(low), float(high), len(usable))


@dataclass(frozen=True)
class WidthVerdict:
    width: object
    metric: str
    verdict: str
    gap: Gap | None  # the gap the rule was applied to (largest common budget)


def width_verdict(
    rows: Sequence[dict], width, metric: str = "gfid", matched_compute: bool = False
) -> WidthVerdict:
    """:data:`RULE` on the largest budget's gap: same steps, or with ``matched_compute`` the
    matched-compute gap of the largest paper-preset budget that has one."""
    found = (matched_compute_gaps if matched_compute else gaps)(rows, width, metric)
    last = found[-1] if found else None
    return WidthVerdict(width, metric, direction(last.gap if last else None), last)
