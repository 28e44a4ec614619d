"""vtp_gen benchmarks: each pipeline step beside a baseline of the same size, as CSV rows.

    make bench                                      # CPU: tiny + small-B sizes (~10 min on 2 idle cores)
    make bench ARGS="--quick"                       # smallest sizes, 2 rounds: does everything run?
    make bench ARGS="--only stage1 caching"         # groups whose name starts with these
    make bench ARGS="--csv bench/results/cpu.csv"   # append to the committed results
    make bench ARGS="--markdown bench/results/cpu.csv"  # the newest rows of a CSV as a markdown table
    python bench/run.py --device cuda               # the GPU sizes (bench/gpu_mfu.py is the GPU check)

Groups: ``stage1`` (pre-training step vs timm ViT fwd+bwd, by FLOP rate),
``decoder_finetune``, ``caching`` (the cache loop vs the bare encoder),
``stage2`` (training step vs diffusers' DiT), ``sampling`` (Euler runs vs one
NFE, decoding). Every group times a matmul peak probe in the same interleaved
rounds; MFU divides by it. Rows are appended to ``--csv`` (columns in
``vtp_bench/results.py``) after each group, so an interrupted run keeps what
it measured.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from vtp_bench.caching import caching_group  # noqa: E402
from vtp_bench.results import (  # noqa: E402
    CPU_TARGETS,
    GPU_TARGETS,
    append_csv,
    check_targets,
    format_table,
    format_targets,
    group_rows,
    read_csv,
    run_context,
)
from vtp_bench.stage1 import decoder_finetune_group, stage1_step_group  # noqa: E402
from vtp_bench.stage2 import sampling_group, stage2_step_group  # noqa: E402
from vtp_bench.suite import Group, Settings, run_group  # noqa: E402

from vtp_gen.utils.host_memory import keep_freed_host_memory  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def suite_groups(suite: str) -> list[Group]:
    if suite in ("cpu", "quick"):
        sizes = ("tiny",) if suite == "quick" else ("tiny", "small-B")
        return [
            *(stage1_step_group(size) for size in sizes),
            *(decoder_finetune_group(size) for size in sizes),
            *(caching_group(size) for size in sizes),
            *(stage2_step_group(size) for size in sizes),
            sampling_group("tiny", steps=10),
            *([sampling_group("small-B", steps=5)] if suite == "cpu" else []),
        ]
    if suite == "gpu":
        return [
            stage1_step_group("B"),
            stage1_step_group("L"),
            decoder_finetune_group("B"),
            caching_group("L"),
            stage2_step_group("B"),
            stage2_step_group("XL"),
            sampling_group("XL", steps=250),
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
    """Set torch's CPU threads; returns why.

    On a CPU that other jobs keep busy, OpenMP threads wait for each other at
    every operator (a descheduled thread stalls the rest): at load 10 on 2
    cores, small-operator workloads ran 10-35x slower with 2 threads than with
    1 and their ratios swung 5x between runs. ``auto`` therefore uses 1 thread
    when the 1-minute load average already reaches the core count.
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
    parser.add_argument("--quick", action="store_true", help="smallest sizes, 2 rounds, no warm-up")
    parser.add_argument("--only", nargs="+", default=[], metavar="PREFIX", help="groups starting with PREFIX")
    parser.add_argument("--list", action="store_true", help="list the groups and exit")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuda: the GPU sizes)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    parser.add_argument("--min-sample-s", type=float, default=None, help="repeat fast calls up to this (0.3)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory call")
    parser.add_argument(
        "--threads", default="auto", help="torch CPU threads; auto: 1 when the cores are busy"
    )
    parser.add_argument(
        "--csv", type=Path, default=REPO_ROOT / "runs" / "bench" / "results.csv", help="append rows here"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, metavar="CSV", help="print a CSV's newest rows"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.markdown is not None:
        print(format_table(read_csv(args.markdown), markdown=True))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    suite = "quick" if args.quick else ("gpu" if device.type == "cuda" else "cpu")
    groups = select(suite_groups(suite), args.only)
    if args.list:
        for group in groups:
            print(f"{group.name:24s} {group.description}")
        return 0
    threads_note = choose_threads(args.threads, device)
    keep_freed_host_memory()  # what `vtp-gen` does for every step, so the numbers are the CLI's
    quick = suite == "quick"
    settings = Settings(
        device=device,
        rounds=args.rounds or (2 if quick else 5),
        warmup=0 if quick else 1,
        min_sample_s=args.min_sample_s if args.min_sample_s is not None else (0.0 if quick else 0.3),
        memory=not args.no_memory,
        quick=quick,
    )
    context = run_context(device)
    print(f"bench: {len(groups)} groups on {device}, {torch.get_num_threads()} threads ({threads_note})")
    rows, failed = [], []
    for group in groups:
        record = run_group(group, settings)
        if record["status"] != "ok":
            print(f"{group.name}: {record['status'].upper()}: {record['reason']}", flush=True)
            print(record.get("traceback", ""), file=sys.stderr)
            failed += [group.name] if record["status"] == "error" else []
            continue
        new = group_rows(record, context)
        append_csv(args.csv, new)
        rows += new
        print(f"{group.name} ({record['elapsed_s']:.0f} s, load {record['load'] or 0:.1f})", flush=True)
    print(format_table(rows))
    print(format_targets(check_targets(rows, GPU_TARGETS if device.type == "cuda" else CPU_TARGETS)))
    print(f"appended {len(rows)} rows to {args.csv}")
    if failed:
        print(f"groups that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
