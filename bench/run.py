"""vtp_gen benchmarks: throughput, FLOP rate, MFU, peak memory and baseline ratios, in one run.

    make bench                                   # the CPU suite (a few minutes on an idle 2-core box)
    make bench ARGS="--quick"                    # smallest sizes, 2 rounds: checks that everything runs
    make bench ARGS="--only stage1/tiny stage2"  # groups whose name starts with one of these
    make bench ARGS="--list"                     # the groups of the chosen suite
    make bench ARGS="--plot RESULT.json"         # draw a result file (RESULT.png beside it)
    python bench/run.py --suite gpu --device cuda  # the GPU sizes (see also bench/gpu_mfu.py)

Prints one table per group and writes everything to JSON (``--out``; default
``runs/bench/bench-<time>.json``) and a chart of every ratio and MFU beside it
(``.png``). How the numbers are made (FLOP counting,
MFU, interleaved rounds) is in docs/performance.md and bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from vtp_bench.attention import attention_group  # noqa: E402
from vtp_bench.caching import caching_group  # noqa: E402
from vtp_bench.features import fid_features_group  # noqa: E402
from vtp_bench.plots import chart_beside, plot_record  # noqa: E402
from vtp_bench.report import (  # noqa: E402
    CPU_TARGETS,
    GPU_TARGETS,
    SCHEMA,
    check_targets,
    format_group,
    format_targets,
    machine_description,
    markdown_tables,
    utc_now,
    write_json,
)
from vtp_bench.stage1 import decoder_finetune_group, stage1_step_group, towers_group  # noqa: E402
from vtp_bench.stage2 import sampling_group, stage2_step_group  # noqa: E402
from vtp_bench.suite import Group, Settings, run_group  # noqa: E402

from vtp_gen.utils.host_memory import keep_freed_host_memory  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def suite_groups(suite: str) -> list[Group]:
    if suite == "quick":
        return [
            stage1_step_group("tiny", objectives=("all",)),
            towers_group("tiny"),
            decoder_finetune_group("tiny"),
            caching_group("tiny"),
            stage2_step_group("tiny"),
            sampling_group("tiny"),
            fid_features_group("tiny"),
            attention_group("quick"),
        ]
    if suite == "cpu":
        return [
            stage1_step_group("tiny"),
            stage1_step_group("small-B", objectives=("all",)),
            towers_group("tiny"),
            towers_group("small-B"),
            decoder_finetune_group("tiny"),
            decoder_finetune_group("small-B"),
            caching_group("tiny"),
            caching_group("small-B"),
            stage2_step_group("tiny"),
            stage2_step_group("small-B"),
            sampling_group("tiny", nfe_settings=(10,)),
            sampling_group("small-B", nfe_settings=(5,)),
            fid_features_group("cpu"),
            attention_group("cpu"),
        ]
    if suite == "gpu":
        return [
            stage1_step_group("B"),
            stage1_step_group("L", objectives=("all",)),
            towers_group("B"),
            towers_group("L"),
            decoder_finetune_group("B"),
            caching_group("L"),
            stage2_step_group("B"),
            stage2_step_group("XL"),
            sampling_group("B", nfe_settings=(250,)),
            sampling_group("XL", nfe_settings=(250,)),
            fid_features_group("gpu"),
        ]
    raise ValueError(f"unknown suite {suite!r}")


def select(groups: list[Group], prefixes: list[str]) -> list[Group]:
    if not prefixes:
        return groups
    chosen = [g for g in groups if any(g.name.startswith(p) for p in prefixes)]
    if not chosen:
        names = ", ".join(g.name for g in groups)
        raise SystemExit(f"no group starts with {' or '.join(prefixes)}; this suite has: {names}")
    return chosen


def choose_threads(requested: str, device: torch.device) -> str:
    """Set torch's CPU threads; returns why, for the record.

    On a CPU that other jobs keep busy, OpenMP's threads wait for each other at
    every operator (a descheduled thread stalls the rest): measured at load 10
    on 2 cores, small-operator workloads ran 10-35x slower with 2 threads than
    with 1 and their ratios swung by 5x between runs, while 1 thread gave
    spreads of a few percent. So ``auto`` uses 1 thread when the 1-minute load
    average already reaches the core count.
    """
    if requested != "auto":
        torch.set_num_threads(int(requested))
        return "--threads"
    if device.type == "cuda":
        return "torch default (GPU run)"
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if cores > 1 and load >= cores:
        torch.set_num_threads(1)
        return f"auto: load average {load:.1f} >= {cores} cores, so 1 thread"
    return f"auto: load average {load:.1f} < {cores} cores, torch default"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="the quick suite: smallest sizes, 2 rounds, no warm-up"
    )
    parser.add_argument(
        "--suite", choices=("cpu", "gpu", "quick"), default=None, help="default: cpu, or gpu on cuda"
    )
    parser.add_argument(
        "--only", nargs="+", default=[], metavar="PREFIX", help="groups whose name starts with PREFIX"
    )
    parser.add_argument("--list", action="store_true", help="list the suite's groups and exit")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3; quick 2)")
    parser.add_argument(
        "--min-sample-s", type=float, default=None, help="repeat fast calls up to this (default 0.3)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the (slower) peak-memory call on CPU")
    parser.add_argument(
        "--threads",
        default="auto",
        help="torch CPU threads; auto: 1 when other jobs already load every core, else torch's choice",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON path (default runs/bench/bench-<time>.json)"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, metavar="JSON", help="print a result file as markdown"
    )
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="JSON", help="draw a result file to JSON's name .png"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown is not None:
        record = json.loads(args.markdown.read_text())
        print(markdown_tables(record))
        print()
        print(format_targets(record["targets"]) if record.get("targets") else "(no targets)")
        return 0
    if args.plot is not None:
        print(f"wrote {plot_record(json.loads(args.plot.read_text()), args.plot.with_suffix('.png'))}")
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    suite = "quick" if args.quick else args.suite or ("gpu" if device.type == "cuda" else "cpu")
    groups = select(suite_groups(suite), args.only)
    if args.list:
        for group in groups:
            print(f"{group.name:28s} {group.description}")
        return 0
    threads_note = choose_threads(args.threads, device)
    # What `vtp-gen` does for every step (vtp_gen/utils/host_memory.py), so the numbers are the CLI's.
    kept_freed_memory = keep_freed_host_memory()
    quick = suite == "quick"
    settings = Settings(
        device=device,
        rounds=args.rounds or (2 if quick else 3),
        warmup=0 if quick else 1,
        min_sample_s=args.min_sample_s if args.min_sample_s is not None else (0.0 if quick else 0.3),
        memory=not args.no_memory,
        quick=quick,
    )
    out = args.out or REPO_ROOT / "runs" / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    record = {
        "schema": SCHEMA,
        "created": utc_now(),
        "suite": suite,
        "machine": machine_description(device),
        "settings": {
            "rounds": settings.rounds,
            "warmup": settings.warmup,
            "min_sample_s": settings.min_sample_s,
            "memory": settings.memory,
            "quick": settings.quick,
            "precision": "bf16 autocast" if settings.on_gpu else "fp32",
            "keep_freed_host_memory": kept_freed_memory,
        },
        "groups": [],
        "targets": [],
    }
    started = time.perf_counter()
    record["settings"]["threads"] = {"torch_threads": torch.get_num_threads(), "why": threads_note}
    print(
        f"vtp_gen bench: suite {suite}, {len(groups)} groups on {device}, "
        f"{torch.get_num_threads()} threads ({threads_note})"
    )
    for group in groups:
        result = run_group(group, settings)
        record["groups"].append(result)
        print(format_group(result), flush=True)
        record["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_json(record, out)  # after every group: a long run that is interrupted keeps what it measured
    record["targets"] = check_targets(record["groups"], GPU_TARGETS if device.type == "cuda" else CPU_TARGETS)
    record["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(record, out)
    print(format_targets(record["targets"]))
    print(f"wrote {out} ({record['elapsed_s']:.0f}s)")
    if chart := chart_beside(record, out):
        print(f"wrote {chart}")
    failed = [g["name"] for g in record["groups"] if g["status"] == "error"]
    if failed:
        print(f"groups that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
