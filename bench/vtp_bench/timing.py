"""Wall-clock timing on a shared, noisy machine.

Absolute times on the 2-core development box move by 2-5x with the load of
other jobs, so nothing here trusts a single measurement: every workload of a
group is timed in the same rounds, one sample each per round, in an order that
rotates from round to round (A B C, B C A, C A B, ...), and comparisons are
made between samples of the same round. A load spike then hits both sides of
a ratio instead of one.

A sample repeats a fast call until it lasts ``min_sample_s`` (calibrated once
after warm-up), so timer resolution and per-call jitter stay small next to it.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work; a no-op on the CPU, where calls are synchronous."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_self_timed(fn: Callable[[], object]) -> bool:
    """A runner that returns the seconds of its own measured part (e.g. a loop inside a larger job)."""
    return bool(getattr(fn, "self_timed", False))


def time_calls(fn: Callable[[], object], calls: int, device: torch.device | str) -> float:
    """Seconds per call of ``fn``, over ``calls`` back-to-back calls (or the seconds it reports itself)."""
    synchronize(device)
    if is_self_timed(fn):
        return sum(float(fn()) for _ in range(calls)) / calls
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / calls


def calls_per_sample(fn: Callable[[], object], min_sample_s: float, device: torch.device | str) -> int:
    """How many calls make a sample of at least ``min_sample_s`` (one call is timed to find out)."""
    if is_self_timed(fn):
        return 1
    once = time_calls(fn, 1, device)
    if once <= 0:
        return 1000
    return max(1, min(1000, math.ceil(min_sample_s / once)))


def rotated(names: list[str], round_index: int) -> list[str]:
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def interleaved_times(
    runners: Mapping[str, Callable[[], object]],
    rounds: int,
    device: torch.device | str,
    warmup: int = 1,
    min_sample_s: float = 0.0,
) -> dict[str, list[float]]:
    """Per-call seconds of each runner, one sample per round, rounds interleaved.

    Every runner is called ``warmup`` times first (allocator growth, kernel
    selection, lazy initialisation and compilation happen there), then its
    calls per sample are calibrated (one call each; none when ``min_sample_s``
    is 0), then ``rounds`` rounds run.
    """
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    synchronize(device)
    if min_sample_s > 0:
        calls = {name: calls_per_sample(runners[name], min_sample_s, device) for name in names}
    else:
        calls = dict.fromkeys(names, 1)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            samples[name].append(time_calls(runners[name], calls[name], device))
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator_i / denominator_i (samples of the same round are paired)."""
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    return median(ratios)


def spread(values: list[float]) -> float:
    """Relative spread of samples: (max - min) / median, to show how noisy a measurement was."""
    if len(values) < 2:
        return 0.0
    mid = median(values)
    return (max(values) - min(values)) / mid if mid > 0 else float("nan")
