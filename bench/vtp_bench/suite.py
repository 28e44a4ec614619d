"""Groups of workloads measured together: throughput, FLOP rate, MFU, peak memory, ratios.

A *workload* is one callable doing one unit of real work (a training step, a
sampler run, a caching run) and how many items it processes per call. A
*group* is the workloads that are compared with each other (ours and its
baseline) plus a matmul peak probe; a group is built, timed in interleaved
rounds and freed before the next one is built.

Derived numbers, all from samples of the same round (see ``timing``):

- throughput = items per call / median seconds per call;
- FLOP rate = counted FLOPs per call / seconds, median over rounds;
- MFU = FLOP rate / the peak probe's FLOP rate *of the same round*, median;
- ratio = (ours / baseline) per round, median: by throughput (same work on
  both sides) or by FLOP rate (different work, same hardware).
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vtp_bench.memory import peak_memory_bytes
from vtp_bench.timing import interleaved_times, median, paired_ratio, spread
from vtp_gen.utils.flops import count_flops

PEAK_RUNNER = "matmul_peak"


class SkipGroup(Exception):
    """Raised by a group builder when the group cannot run here (missing weights, no GPU, ...)."""


@dataclass
class Settings:
    device: torch.device
    rounds: int = 3
    warmup: int = 1
    min_sample_s: float = 0.3
    memory: bool = True
    compile: bool = False
    quick: bool = False

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def sized(self, full, quick):
        """``full``, or ``quick`` in ``--quick`` mode (a smoke test of the code paths, not a measurement)."""
        return quick if self.quick else full

    def autocast(self):
        """bf16 autocast on GPUs (the training recipes); plain fp32 on CPUs (bf16 is ~5x slower there)."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.on_gpu)


@dataclass
class Workload:
    name: str  # e.g. "step"; the benchmark is "<group kind>/<name>"
    step: Callable[[], object]
    items: int  # processed per call, in ``unit``
    unit: str = "img"
    baseline: str | None = None  # another workload of the same group
    compare: str = "throughput"  # "throughput" or "flop_rate"
    tracked: tuple = ()  # modules / optimisers whose memory counts (CPU tracker)
    flops: int | None = None  # known count; None = count one call
    measure_memory: bool = True  # False for whole jobs (a caching run) where one more call is too long


@dataclass
class Group:
    kind: str  # "stage1", "stage2", "caching", ...
    config: str  # the size setting: "tiny", "small-B", "XL", ...
    description: str
    build: Callable[[Settings], list[Workload]]

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.config}"


class MatmulPeak:
    """``repeats`` square matmuls in the precision training computes in: the peak MFU divides by.

    fp32 2048^3 on the CPU (bf16 has no fast path there), bf16 8192^3 on the GPU; timed as one
    more runner of every group, so each round's MFU divides by that round's peak.
    """

    def __init__(self, device: torch.device | str, size: int | None = None, repeats: int = 4) -> None:
        self.device = torch.device(device)
        on_gpu = self.device.type == "cuda"
        self.size = size or (8192 if on_gpu else 2048)
        self.dtype = torch.bfloat16 if on_gpu else torch.float32
        self.repeats = repeats
        generator = torch.Generator().manual_seed(0)
        shape = (self.size, self.size)
        self.a = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.b = torch.randn(shape, generator=generator).to(self.device, self.dtype)
        self.out = torch.empty(shape, device=self.device, dtype=self.dtype)
        self.flops_per_call = 2 * self.size**3 * repeats

    def __call__(self) -> None:
        for _ in range(self.repeats):
            torch.mm(self.a, self.b, out=self.out)


def prepare(step, settings: Settings) -> int | None:
    """With ``settings.compile``: count the eager step's FLOPs (the counter does not see into compiled
    graphs), then ``step.compile()``. Returns the count for ``Workload.flops`` (None: count later)."""
    if not settings.compile:
        return None
    flops = count_flops(step)
    step.compile()
    return flops


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def run_group(group: Group, settings: Settings) -> dict:
    """Build, measure and free one group. Never raises: a failure is the record's ``status``."""
    started = time.perf_counter()
    config = group.config + (" compiled" if settings.compile else "")
    record: dict = {"kind": group.kind, "config": config, "load": load_average(), "workloads": []}
    workloads: list[Workload] = []
    try:
        workloads = group.build(settings)
        record.update(measure(workloads, settings), status="ok")
    except SkipGroup as skip:
        record.update(status="skipped", reason=str(skip))
    except Exception as error:
        record.update(status="error", reason=f"{type(error).__name__}: {error}")
        record["traceback"] = traceback.format_exc(limit=8)
    finally:
        del workloads
        gc.collect()
        if settings.on_gpu:
            torch.cuda.empty_cache()
    record["elapsed_s"] = round(time.perf_counter() - started, 1)
    return record


def _count(step) -> int | None:
    try:
        return count_flops(step)
    except Exception:  # a kernel the counter cannot trace: no FLOP rate for this row, the rest stands
        step()  # the call the count would have been (a warm-up)
        return None


def measure(workloads: list[Workload], settings: Settings) -> dict:
    names = [w.name for w in workloads]
    if len(set(names)) != len(names) or PEAK_RUNNER in names:
        raise ValueError(f"workload names must be unique and not {PEAK_RUNNER!r}: {names}")
    by_name = {w.name: w for w in workloads}
    for w in workloads:
        if w.baseline is not None and w.baseline not in by_name:
            raise ValueError(f"{w.name}: baseline {w.baseline!r} is not in the group")
    peak = MatmulPeak(settings.device)
    # One counted call per workload (it doubles as a warm-up call), then one memory-tracked call.
    flops = {w.name: w.flops if w.flops is not None else _count(w.step) for w in workloads}
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
        seconds, count = times[w.name], flops[w.name]
        rates = [count / t for t in seconds] if count else []
        ratio = None
        if w.baseline is not None:
            base = by_name[w.baseline]
            if w.compare == "throughput":  # (items_w / t_w) / (items_b / t_b), per round
                ratio = w.items / base.items * paired_ratio(times[base.name], seconds)
            elif w.compare == "flop_rate":
                if count and flops[base.name]:
                    ratio = count / flops[base.name] * paired_ratio(times[base.name], seconds)
            else:
                raise ValueError(f"{w.name}: unknown comparison {w.compare!r}")
        results.append(
            {
                "name": w.name,
                "unit": w.unit,
                "items": w.items,
                "seconds": median(seconds),
                "spread": spread(seconds),
                "flops": count or None,
                "flop_rate": median(rates) if rates else None,
                "mfu": median([r / p for r, p in zip(rates, peak_rates)]) if rates else None,
                "memory_bytes": memory[w.name],
                "baseline": w.baseline,
                "compare": w.compare,
                "ratio": ratio,
            }
        )
    return {
        "peak_flop_rate": median(peak_rates),
        "workloads": results,
    }
