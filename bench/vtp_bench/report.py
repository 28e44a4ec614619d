"""The printed table, the JSON record, the machine description and the target checks.

JSON layout (``SCHEMA``)::

    {"schema": "vtp_gen.bench/1", "created": ISO time, "elapsed_s": float,
     "machine": {...}, "settings": {...},
     "groups": [{"name", "description", "tags", "status": "ok" | "skipped" | "error",
                 "reason"?, "elapsed_s", "load_average": [before, after],
                 "peak": {"probe", "flops_per_s", "samples"},
                 "workloads": [{"name", "unit", "items_per_call", "seconds_per_call",
                                "seconds_samples", "spread", "throughput", "calls_per_s",
                                "flops_per_call", "flops_source", "achieved_flops_per_s", "mfu",
                                "peak_memory_bytes", "params", "baseline", "compare",
                                "ratio_vs_baseline", "notes", "info"}]}],
     "targets": [{"name", "workload", "metric", "threshold", "value", "met"}],
     "precision": [...]}   # gpu_mfu.py only: vtp_bench/precision.py's comparisons

Numbers a run could not produce are ``null``; ``met`` is ``null`` when the
workload a target reads was not measured.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

SCHEMA = "vtp_gen.bench/1"


@dataclass(frozen=True)
class Target:
    name: str
    workload: str
    metric: str  # "ratio_vs_baseline" or "mfu"
    threshold: float


CPU_TARGETS = (
    Target(
        "stage-1 tiny step >= 1.0x timm ViT fwd+bwd (FLOP rate)",
        "stage1/tiny/step_all",
        "ratio_vs_baseline",
        1.0,
    ),
    Target(
        "stage-1 small-B step >= 1.0x timm ViT fwd+bwd (FLOP rate)",
        "stage1/small-B/step_all",
        "ratio_vs_baseline",
        1.0,
    ),
    Target("stage-1 small-B step >= 40% of the fp32 matmul peak", "stage1/small-B/step_all", "mfu", 0.40),
    Target("latent caching >= 0.9x bare encoder", "caching/tiny/cache_loop", "ratio_vs_baseline", 0.9),
)
GPU_TARGETS = (
    Target("stage-2 LightningDiT-XL/1 >= 50% bf16 MFU", "gpu/stage2/XL/step", "mfu", 0.50),
    Target("stage-1 VTP-L >= 40% bf16 MFU", "gpu/stage1/L/step_all", "mfu", 0.40),
)


def machine_description(device: torch.device) -> dict:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu_model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "device": str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            cuda=torch.version.cuda,
            mig=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        )
    return info


def all_workloads(groups: Iterable[dict]) -> dict[str, dict]:
    return {w["name"]: w for g in groups for w in g.get("workloads", [])}


def check_targets(groups: list[dict], targets: Iterable[Target]) -> list[dict]:
    by_name = all_workloads(groups)
    out = []
    for target in targets:
        workload = by_name.get(target.workload)
        value = workload.get(target.metric) if workload else None
        out.append(
            {
                "name": target.name,
                "workload": target.workload,
                "metric": target.metric,
                "threshold": target.threshold,
                "value": value,
                "met": None if value is None else bool(value >= target.threshold),
            }
        )
    return out


def write_json(record: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(value):
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------- table
def _si(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def _bytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}MiB"


def format_group(group: dict) -> str:
    header = f"== {group['name']}: {group['description']}"
    if group["status"] != "ok":
        return f"{header}\n   {group['status'].upper()}: {group.get('reason', '')}"
    peak = group["peak"]
    load = group.get("load_average")
    lines = [
        header,
        f"   peak {_si(peak['flops_per_s'])}FLOP/s ({peak['probe']}), {group['elapsed_s']:.0f}s"
        + (f", load {load[0]:.1f}->{load[1]:.1f}" if load else ""),
    ]
    columns = (
        "workload",
        "rate",
        "ms/call",
        "FLOP/call",
        "FLOP/s",
        "MFU",
        "peak mem",
        "vs baseline",
        "spread",
    )
    rows = []
    for w in group["workloads"]:
        ratio = w["ratio_vs_baseline"]
        versus = (
            "-"
            if w["baseline"] is None
            else (f"{ratio:.2f}x {w['compare'].replace('_', ' ')}" if ratio is not None else "n/a")
        )
        rows.append(
            (
                w["name"].split("/", 2)[-1],
                f"{w['throughput']:.4g} {w['unit']}/s",
                f"{w['seconds_per_call'] * 1e3:.4g}",
                _si(w["flops_per_call"]),
                _si(w["achieved_flops_per_s"]),
                "-" if w["mfu"] is None else f"{100 * w['mfu']:.1f}%",
                _bytes(w["peak_memory_bytes"]),
                versus,
                f"{100 * w['spread']:.0f}%",
            )
        )
    widths = [max(len(str(r[i])) for r in (columns, *rows)) for i in range(len(columns))]
    for row in (columns, *rows):
        lines.append("   " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    return "\n".join(lines)


def format_targets(targets: list[dict]) -> str:
    lines = ["== targets"]
    for t in targets:
        if t["value"] is None:
            state, value = "not measured", "-"
        else:
            state = "MET" if t["met"] else "not met"
            value = f"{t['value']:.3f}"
        lines.append(f"   {state:12s} {value:>7s} (>= {t['threshold']:g})  {t['name']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- markdown (docs/performance.md)
def markdown_tables(record: dict) -> str:
    """The record's groups as one markdown table, for pasting measured results into the docs."""
    lines = [
        "| workload | rate | ms/call | GFLOP/call | GFLOP/s | MFU | peak mem | vs baseline |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for group in record["groups"]:
        if group["status"] != "ok":
            lines.append(f"| {group['name']} | {group['status']}: {group.get('reason', '')} | | | | | | |")
            continue
        peak = group["peak"]["flops_per_s"] / 1e9
        load = group.get("load_average") or [float("nan")] * 2
        lines.append(f"| **{group['name']}** (peak {peak:.0f} GFLOP/s, load {load[0]:.1f}) | | | | | | | |")
        for w in group["workloads"]:
            ratio = w["ratio_vs_baseline"]
            versus = "" if ratio is None else f"{ratio:.2f}x ({w['compare'].replace('_', ' ')})"
            flops = w["flops_per_call"]
            lines.append(
                "| {name} | {rate:.4g} {unit}/s | {ms:.4g} | {gf} | {rate_gf} | {mfu} | {mem} | {versus} |".format(
                    name=w["name"].split("/", 2)[-1],
                    rate=w["throughput"],
                    unit=w["unit"],
                    ms=w["seconds_per_call"] * 1e3,
                    gf="-" if not flops else f"{flops / 1e9:.3g}",
                    rate_gf="-"
                    if not w["achieved_flops_per_s"]
                    else f"{w['achieved_flops_per_s'] / 1e9:.3g}",
                    mfu="-" if w["mfu"] is None else f"{100 * w['mfu']:.0f}%",
                    mem=_bytes(w["peak_memory_bytes"]),
                    versus=versus,
                )
            )
    return "\n".join(lines)
