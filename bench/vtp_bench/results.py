"""Results as CSV rows: one measured number per row, with where, when and on what code it was measured.

Columns (``COLUMNS``):

- ``date`` (UTC, ISO), ``machine`` (CPU model and cores, or the GPU), ``torch``,
  ``threads`` (torch's CPU threads), ``commit`` (``git rev-parse --short HEAD``,
  ``-dirty`` when the tree had changes), ``load`` (1-minute load average when
  the group started: how shared the machine was);
- ``benchmark`` (``<kind>/<workload>``, e.g. ``stage1/step``), ``config`` (the
  size setting: ``tiny``, ``small-B``, ``XL``; ``compiled`` appended under
  ``torch.compile``), ``metric``, ``value``, ``unit``;
- ``baseline`` and ``ratio``: on the row of the metric the comparison is made
  by (``throughput`` or ``flop_rate``), the baseline's benchmark in the same
  run and our value / its value, median of per-round ratios (> 1: ours is
  faster); ``spread``: (max - min) / median of the timed samples (above ~0.5,
  read the row as noise).

Metrics per workload: ``throughput`` (items/s), ``time`` (ms per call),
``flops`` (GFLOP per call, counted), ``flop_rate`` (GFLOP/s), ``mfu`` (% of
the same round's matmul peak), ``peak_memory`` (MiB); and per group the
``<kind>/matmul_peak`` ``flop_rate``.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

COLUMNS = (
    "date",
    "machine",
    "torch",
    "threads",
    "commit",
    "load",
    "benchmark",
    "config",
    "metric",
    "value",
    "unit",
    "baseline",
    "ratio",
    "spread",
)
REPO_ROOT = Path(__file__).resolve().parents[2]


def machine_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD")
    if commit and git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    return commit or "unknown"


def run_context(device: torch.device | str = "cpu") -> dict:
    """The columns every row of this run shares (``load`` is set per group)."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_name(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
    }


def _num(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"


def row(context: dict, benchmark: str, config: str, metric: str, value, unit: str, **extra) -> dict:
    out = dict.fromkeys(COLUMNS, "")
    out.update(context, benchmark=benchmark, config=config, metric=metric, unit=unit)
    out["value"] = value if isinstance(value, str) else _num(value)
    for key, item in extra.items():
        out[key] = item if isinstance(item, str) else _num(item, 3)
    return out


def group_rows(record: dict, context: dict) -> list[dict]:
    """The rows of one measured group (``suite.run_group``'s record); none unless it ran."""
    if record["status"] != "ok":
        return []
    kind, config = record["kind"], record["config"]
    context = {**context, "load": _num(record.get("load"), 3)}
    rows = [
        row(context, f"{kind}/matmul_peak", config, "flop_rate", record["peak_flop_rate"] / 1e9, "GFLOP/s")
    ]
    for w in record["workloads"]:
        name = f"{kind}/{w['name']}"
        compared = {}
        if w["baseline"] is not None:
            compared = {"baseline": f"{kind}/{w['baseline']}", "ratio": w["ratio"]}
        by = w["compare"]
        rows.append(
            row(context, name, config, "throughput", w["items"] / w["seconds"], f"{w['unit']}/s",
                spread=w["spread"], **(compared if by == "throughput" else {}))
        )  # fmt: skip
        rows.append(row(context, name, config, "time", 1e3 * w["seconds"], "ms", spread=w["spread"]))
        if w["flops"]:
            rows.append(row(context, name, config, "flops", w["flops"] / 1e9, "GFLOP"))
            rows.append(
                row(context, name, config, "flop_rate", w["flop_rate"] / 1e9, "GFLOP/s",
                    **(compared if by == "flop_rate" else {}))
            )  # fmt: skip
            rows.append(row(context, name, config, "mfu", 100 * w["mfu"], "%"))
        if w["memory_bytes"] is not None:
            rows.append(row(context, name, config, "peak_memory", w["memory_bytes"] / 2**20, "MiB"))
    return rows


def append_csv(path: Path, rows: Iterable[dict]) -> Path:
    """Append ``rows`` to ``path``, writing the header when the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        with path.open(newline="") as handle:
            header = next(csv.reader(handle), [])
        if tuple(header) != COLUMNS:
            raise SystemExit(f"{path} has other columns ({','.join(header)}); write to a new file")
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------- what a run prints
WIDE = ("throughput", "time", "flop_rate", "mfu", "peak_memory")


def wide(rows: Iterable[dict]) -> list[dict]:
    """One entry per (benchmark, config) of the newest date: its metrics side by side."""
    rows = list(rows)
    latest: dict[tuple[str, str], str] = {}
    for r in rows:
        key = (r["benchmark"], r["config"])
        latest[key] = max(latest.get(key, ""), r["date"])
    table: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["benchmark"], r["config"])
        if r["date"] != latest[key]:
            continue
        entry = table.setdefault(key, {"benchmark": key[0], "config": key[1], "date": r["date"],
                                       "machine": r["machine"], "threads": r["threads"], "load": r["load"]})  # fmt: skip
        entry[r["metric"]] = f"{r['value']} {r['unit']}".replace(" %", "%")
        if r["ratio"]:
            by = {"time": "speed", "flop_rate": "flop rate"}.get(r["metric"], r["metric"])
            entry["vs baseline"] = f"{float(r['ratio']):.2f}x {r['baseline'].split('/', 1)[1]} ({by})"
        if r["metric"] in ("throughput", "time") and r["spread"]:
            entry["spread"] = f"{100 * float(r['spread']):.0f}%"
    return list(table.values())


def format_table(rows: Iterable[dict], markdown: bool = False) -> str:
    columns = ("benchmark", "config", *WIDE, "vs baseline", "spread")
    entries = [
        e for e in wide(rows) if any(c in e for c in WIDE) and not e["benchmark"].endswith("/matmul_peak")
    ]
    cells = [[str(e.get(c, "")) for c in columns] for e in entries]
    if markdown:
        lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
        return "\n".join([*lines, *("| " + " | ".join(c) + " |" for c in cells)])
    widths = [max(len(x) for x in col) for col in zip(columns, *cells)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in (columns, *cells))


# ---------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    name: str
    benchmark: str
    config: str
    metric: str  # "ratio" (of the row that has one) or a metric name
    threshold: float


CPU_TARGETS = (
    Target("stage-1 tiny step >= 1.0x timm ViT fwd+bwd (FLOP rate)", "stage1/step", "tiny", "ratio", 1.0),
    Target("stage-1 small-B step >= 1.0x timm ViT fwd+bwd (FLOP rate)", "stage1/step", "small-B", "ratio", 1.0),
    Target("stage-1 small-B step >= 40% of the fp32 matmul peak", "stage1/step", "small-B", "mfu", 40.0),
    Target("latent caching >= 0.9x the bare encoder", "caching/cache_loop", "tiny", "ratio", 0.9),
)  # fmt: skip
GPU_TARGETS = (
    Target("stage-2 LightningDiT-XL/1 >= 50% bf16 MFU", "stage2/step", "XL", "mfu", 50.0),
    Target("stage-1 VTP-L >= 40% bf16 MFU", "stage1/step", "L", "mfu", 40.0),
)


def check_targets(rows: Iterable[dict], targets: Iterable[Target]) -> list[tuple[Target, float | None]]:
    """Each target with the value this run measured for it (None: not measured)."""
    rows = list(rows)
    out = []
    for target in targets:
        value = None
        for r in rows:
            if (r["benchmark"], r["config"]) != (target.benchmark, target.config):
                continue
            if target.metric == "ratio" and r["ratio"]:
                value = float(r["ratio"])
            elif r["metric"] == target.metric and r["value"]:
                value = float(r["value"])
        out.append((target, value))
    return out


def format_targets(checked: list[tuple[Target, float | None]]) -> str:
    lines = ["targets:"]
    for target, value in checked:
        state = "not measured" if value is None else ("MET" if value >= target.threshold else "not met")
        shown = "-" if value is None else f"{value:.3g}"
        lines.append(f"  {state:12s} {shown:>6s} (>= {target.threshold:g})  {target.name}")
    return "\n".join(lines)
