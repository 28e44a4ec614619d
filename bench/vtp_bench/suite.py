"""Groups of workloads measured together: throughput, FLOP rate, MFU, peak memory, ratios.

A *workload* is one callable doing one unit of real work (a training step, a
batch of sampling, a batch of feature extraction) plus what it processes per
call. A *group* is the workloads that must be compared with each other (our
step and its baseline) together with the matmul peak probe; a group is built,
measured in interleaved rounds and freed before the next one is built, so only
one group's models are in memory at a time.

Derived numbers, all from samples of the same round (see ``timing``):

- throughput = items per call / median seconds per call;
- achieved FLOP/s = counted FLOPs per call / seconds, median over rounds;
- MFU = achieved FLOP/s / the peak probe's FLOP/s *of the same round*, median;
- ratio vs baseline = (ours / baseline) per round, median; by throughput
  (same work on both sides) or by FLOP rate (different work, same hardware).
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vtp_bench.flops import MatmulPeak, count_flops
from vtp_bench.memory import peak_memory_bytes
from vtp_bench.timing import interleaved_times, median, paired_ratio, spread

PEAK_RUNNER = "matmul_peak"


class SkipGroup(Exception):
    """Raised by a group builder when the group cannot run here (missing weights, no GPU, ...)."""


@dataclass
class Settings:
    device: torch.device
    rounds: int = 5
    warmup: int = 1
    min_sample_s: float = 0.3
    memory: bool = True
    compile: bool = False
    quick: bool = False
    peak_size: int | None = None

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def sized(self, full: int, quick: int) -> int:
        """``full``, or ``quick`` in ``--quick`` mode (a smoke test of the code paths, not a measurement)."""
        return quick if self.quick else full

    def autocast(self):
        """bf16 autocast on GPUs (the training recipe); plain fp32 on CPUs (bf16 is ~5x slower there)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.on_gpu)


@dataclass
class Workload:
    name: str
    step: Callable[[], object]
    items: int  # processed per call, in ``unit``
    unit: str = "img"
    baseline: str | None = None  # another workload of the same group
    compare: str = "throughput"  # "throughput" or "flop_rate"
    tracked: tuple = ()  # modules / optimisers whose memory counts (CPU tracker)
    flops: int | None = None  # analytic count; None = count one call
    params: int | None = None
    notes: str = ""
    info: dict = field(default_factory=dict)
    measure_memory: bool = True  # False for whole jobs (e.g. a caching run) where one call is too long


@dataclass
class Group:
    name: str
    description: str
    build: Callable[[Settings], list[Workload]]
    tags: tuple[str, ...] = ()


def prepare(step, settings: Settings) -> int | None:
    """With ``settings.compile``: count the eager step's FLOPs (the counter does not see into compiled
    graphs), then ``step.compile()``. Returns the count for ``Workload.flops`` (None: count later)."""
    if not settings.compile:
        return None
    flops = count_flops(step)
    step.compile()
    return flops


def count_parameters(*modules: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for module in modules:
        for parameter in module.parameters():
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel()
    return total


def _safe_flops(workload: Workload) -> tuple[int | None, str]:
    if workload.flops is not None:
        return workload.flops, "analytic"
    try:
        return count_flops(workload.step), "flop_counter"
    except Exception as error:  # a kernel the counter cannot trace: report, do not abort the run
        return None, f"not counted ({type(error).__name__}: {error})"


def run_group(group: Group, settings: Settings) -> dict:
    """Build, measure and free one group; returns its JSON-ready record."""
    started = time.perf_counter()
    record: dict = {"name": group.name, "description": group.description, "tags": list(group.tags)}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    try:
        workloads = group.build(settings)
    except SkipGroup as skip:
        return {**record, "status": "skipped", "reason": str(skip), "workloads": []}
    except Exception as error:
        return {
            **record,
            "status": "error",
            "reason": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
            "workloads": [],
        }
    try:
        record.update(_measure(workloads, settings))
        record["status"] = "ok"
    except Exception as error:
        record.update(
            status="error",
            reason=f"{type(error).__name__}: {error}",
            traceback=traceback.format_exc(limit=8),
            workloads=[],
        )
    finally:
        del workloads
        gc.collect()
        if settings.on_gpu:
            torch.cuda.empty_cache()
    record["elapsed_s"] = round(time.perf_counter() - started, 2)
    if load_before is not None:
        # 1-minute load average of the machine around the group: how shared it was.
        record["load_average"] = [load_before, os.getloadavg()[0]]
    return record


def _measure(workloads: list[Workload], settings: Settings) -> dict:
    names = [w.name for w in workloads]
    if len(set(names)) != len(names) or PEAK_RUNNER in names:
        raise ValueError(f"workload names must be unique and not {PEAK_RUNNER!r}: {names}")
    by_name = {w.name: w for w in workloads}
    for w in workloads:
        if w.baseline is not None and w.baseline not in by_name:
            raise ValueError(f"{w.name}: baseline {w.baseline!r} is not in the group")
    peak = MatmulPeak(settings.device, size=settings.peak_size)

    # One counted call per workload (it doubles as the first warm-up call), then one tracked call.
    flops = {w.name: _safe_flops(w) for w in workloads}
    memory = {
        w.name: peak_memory_bytes(w.step, settings.device, w.tracked)
        if settings.memory and w.measure_memory
        else None
        for w in workloads
    }
    runners = {PEAK_RUNNER: peak, **{w.name: w.step for w in workloads}}
    times = interleaved_times(
        runners, settings.rounds, settings.device, warmup=settings.warmup, min_sample_s=settings.min_sample_s
    )
    peak_rates = [peak.flops_per_call / t for t in times[PEAK_RUNNER]]

    results = []
    for w in workloads:
        seconds = times[w.name]
        count, source = flops[w.name]
        rates = [count / t for t in seconds] if count else []
        result = {
            "name": w.name,
            "unit": w.unit,
            "items_per_call": w.items,
            "seconds_per_call": median(seconds),
            "seconds_samples": seconds,
            "spread": spread(seconds),
            "throughput": w.items / median(seconds),
            "calls_per_s": 1.0 / median(seconds),
            "flops_per_call": count,
            "flops_source": source,
            "achieved_flops_per_s": median(rates) if rates else None,
            "mfu": median([r / p for r, p in zip(rates, peak_rates)]) if rates else None,
            "peak_memory_bytes": memory[w.name],
            "params": w.params,
            "baseline": w.baseline,
            "compare": w.compare if w.baseline else None,
            "ratio_vs_baseline": None,
            "notes": w.notes,
            "info": w.info,
        }
        if w.baseline is not None:
            base = by_name[w.baseline]
            base_seconds = times[base.name]
            if w.compare == "throughput":
                # (items_w / t_w) / (items_b / t_b), per round
                scale = w.items / base.items
                result["ratio_vs_baseline"] = scale * paired_ratio(base_seconds, seconds)
            elif w.compare == "flop_rate":
                base_count = flops[base.name][0]
                if count and base_count:
                    result["ratio_vs_baseline"] = (count / base_count) * paired_ratio(base_seconds, seconds)
            else:
                raise ValueError(f"{w.name}: unknown comparison {w.compare!r}")
        results.append(result)
    return {
        "peak": {
            "probe": peak.describe(),
            "flops_per_s": median(peak_rates),
            "samples": peak_rates,
        },
        "workloads": results,
    }
