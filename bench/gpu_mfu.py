"""GPU readiness in one command: the GPU recipes' real steps, then MFU of the training steps, bf16, eager
and compiled; < 8 minutes on an H200.

    python bench/gpu_mfu.py                  # on the GPU machine
    python bench/gpu_mfu.py --dry-run        # tiny sizes on the CPU: checks the script end to end
    python bench/gpu_mfu.py --no-compile     # eager only (about half the time)
    python bench/gpu_mfu.py --no-recipes     # the MFU cases only

First, two real optimiser steps of each GPU recipe (``vtp_bench/recipes.py``):
configs/stage1/vtp_b.yaml and vtp_l.yaml (bf16-mixed, gradient clipping 3.0, the
recipe's AdamW: fused for VTP-B, FSDP for VTP-L) and
configs/stage2/lightningdit_xl1.yaml, each loaded as `make` loads it and trained
by the stage's own system and Trainer on synthetic data of the recipe's shapes;
pass / fail, step time and peak memory per recipe. The dry run takes the same
path with one-block models at 64 px on the CPU (bf16-mixed there too).

Then measures, each beside a peak bf16 matmul timed in the same rounds:

- stage 1: the VTP-B (B=128) and VTP-L (B=64) pre-training step with all three
  objectives at 256 px (CLIP on all B, SSL on B/4 with 2 global 256 px + 8
  local 112 px crops and 65536 prototypes, reconstruction on B/8 with
  LPIPS-VGG), next to timm's ViT of the trunk's size (fwd+bwd);
- stage 2: the LightningDiT-B/1 (B=256) and -XL/1 (B=128) flow-matching step on
  16x16x64 latents, next to diffusers' DiT of the same size;

first a bf16-vs-fp32 check of the two targets' steps (losses and gradients of
one forward + backward each way, ``vtp_bench/precision.py``), then the MFU
cases: first eager, then with ``torch.compile`` (stage 1: each transformer block;
stage 2: the whole generator, as ``trainer.compile=true`` does). Compilation
happens in the first, untimed call; cases that would start after the time
budget (``--budget-s``, default 390 s) are skipped and say so, so the whole
run stays under 8 minutes; the targets' models (XL/1, VTP-L) go first.
Prints a table and the MFU targets, and appends every number as CSV rows in
``bench/run.py``'s columns (``--csv``, default ``runs/bench/gpu.csv``): the MFU
cases as ``stage1/step`` / ``stage2/step`` with config ``XL`` or ``XL compiled``,
the recipes as ``recipe/<stage>/<recipe>`` and the bf16 check as
``bf16_check/<stage>`` (metric ``passed`` 1 or 0, and what it measured).

FLOPs are counted by torch's FlopCounterMode on one eager step (matmuls,
convolutions, attention; forward and backward); MFU = achieved FLOP/s / the
measured bf16 matmul FLOP/s of the same round. The H200's data-sheet dense
bf16 peak (989 TFLOP/s) is printed beside it for reference.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from vtp_bench.precision import (  # noqa: E402
    compare,
    format_comparison,
    stage1_under_test,
    stage2_under_test,
)
from vtp_bench.recipes import RECIPE_CASES, format_recipe_result, run_recipe_case  # noqa: E402
from vtp_bench.results import (  # noqa: E402
    GPU_TARGETS,
    Target,
    append_csv,
    check_targets,
    format_table,
    format_targets,
    group_rows,
    row,
    run_context,
)
from vtp_bench.stage1 import stage1_step_group  # noqa: E402
from vtp_bench.stage2 import stage2_step_group  # noqa: E402
from vtp_bench.suite import Group, Settings, load_average, run_group  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
H200_DENSE_BF16 = 989.4e12  # data-sheet dense bf16 FLOP/s (SXM), for reference only

# The two targets' models first, so a tight budget cuts the least important cases.
CASES = ("stage2/XL", "stage1/L", "stage2/B", "stage1/B")
# bf16 against fp32 on the targets' models (tiny stand-ins in a dry run).
PRECISION_CASES = (("stage2", "XL", stage2_under_test), ("stage1", "L", stage1_under_test))


def precision_checks(device: torch.device, dry_run: bool) -> list[dict]:
    """bf16 vs fp32 of each precision case; a failure is recorded and the run goes on to the MFU cases."""
    results = []
    for stage, size, under_test in PRECISION_CASES:
        size = "tiny" if dry_run else size
        try:
            result = compare(under_test(size, device), device)
            print(format_comparison(result), flush=True)
        except Exception as error:  # reported; the MFU minutes are kept
            result = {"error": f"{type(error).__name__}: {error}", "passed": False}
            print(f"== bf16 vs fp32: {stage}/{size}: ERROR {result['error']}", flush=True)
        results.append({**result, "benchmark": f"bf16_check/{stage}", "config": size})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def with_load(context: dict) -> dict:
    load = load_average()
    return {**context, "load": "" if load is None else f"{load:.3g}"}


def precision_rows(result: dict, context: dict) -> list[dict]:
    name, config = result["benchmark"], result["config"]
    context = with_load(context)
    rows = [row(context, name, config, "passed", int(result["passed"]), "bool")]
    if "gradient_cosine" in result:
        rows += [
            row(context, name, config, "worst_loss_difference", result["worst_loss_difference"], "relative"),
            row(context, name, config, "gradient_cosine", f"{result['gradient_cosine']:.6f}", "cosine"),
            row(
                context,
                name,
                config,
                "gradient_relative_error",
                result["gradient_relative_error"],
                "relative",
            ),
        ]
    return rows


def recipe_rows(result: dict, context: dict, dry_run: bool) -> list[dict]:
    name = result["name"]  # recipe/<stage>/<recipe>
    config = f"B={result.get('batch_size', '?')}" + (" tiny" if dry_run else "")
    context = with_load(context)
    rows = [row(context, name, config, "passed", int(result["passed"]), "bool")]
    if result.get("step_s") is not None:
        rows.append(row(context, name, config, "time", 1e3 * result["step_s"], "ms"))
    if result.get("peak_memory_gib") is not None:
        rows.append(row(context, name, config, "peak_memory", 1024 * result["peak_memory_gib"], "MiB"))
    return rows


def case_group(case: str, dry_run: bool) -> Group:
    """The case's group; a dry run measures the tiny CPU setting of the same stage instead."""
    stage, size = case.split("/")
    size = "tiny" if dry_run else size
    return stage1_step_group(size) if stage == "stage1" else stage2_step_group(size)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, fp32")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--no-precision", action="store_true", help="skip the bf16-vs-fp32 check")
    parser.add_argument("--no-recipes", action="store_true", help="skip the GPU recipes' real steps")
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="skip cases that would start after this many seconds (default 390 on a GPU, none in a dry run)",
    )
    parser.add_argument(
        "--csv", type=Path, default=REPO_ROOT / "runs" / "bench" / "gpu.csv", help="append rows"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.dry_run:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        # fp32 leftovers (LPIPS, losses, optimiser maths) use TF32, as GPU training runs should.
        torch.set_float32_matmul_precision("high")
    else:
        raise SystemExit("no CUDA device: run with --dry-run to check the script on the CPU")
    modes = [False] if args.no_compile else [False, True]
    budget = args.budget_s if args.budget_s is not None else (float("inf") if args.dry_run else 390.0)
    context = run_context(device)
    print(f"gpu_mfu on {device}{' (dry run: tiny stand-ins)' if args.dry_run else ''}", flush=True)
    rows, failed = [], []
    if not args.no_recipes:
        for case in RECIPE_CASES:
            result = run_recipe_case(case, device, tiny=args.dry_run)
            print(format_recipe_result(result), flush=True)
            if result.get("traceback"):
                print(result["traceback"], flush=True)
            rows += append_rows(args.csv, recipe_rows(result, context, args.dry_run))
            failed += [] if result["passed"] else [result["name"]]
    if not args.no_precision:
        for result in precision_checks(device, args.dry_run):
            rows += append_rows(args.csv, precision_rows(result, context))
            failed += [] if result["passed"] else [result["benchmark"]]
    for compiled in modes:
        for case in args.only:
            elapsed = time.perf_counter() - started
            name = f"{case} {'compiled' if compiled else 'eager'}"
            if elapsed > budget:
                print(f"{name}: SKIPPED (time budget: {elapsed:.0f}s > {budget:.0f}s)", flush=True)
                continue
            settings = Settings(
                device=device,
                rounds=2 if args.dry_run else args.rounds,
                warmup=1,
                min_sample_s=0.0 if args.dry_run else 0.5,
                memory=True,
                compile=compiled,
                quick=args.dry_run,
            )
            record = run_group(case_group(case, args.dry_run), settings)
            if record["status"] != "ok":
                print(f"{name}: {record['status'].upper()}: {record['reason']}", flush=True)
                print(record.get("traceback", ""), flush=True)
                failed.append(name)
                continue
            print(f"{name} ({record['elapsed_s']:.0f} s)", flush=True)
            new = append_rows(args.csv, group_rows(record, context))
            rows += new
            if device.type == "cuda":
                for r in new:
                    if r["metric"] == "flop_rate" and not r["benchmark"].endswith("matmul_peak"):
                        share = float(r["value"]) * 1e9 / H200_DENSE_BF16
                        print(
                            f"   {r['benchmark']} {r['config']}: {100 * share:.1f}% of the H200 data-sheet bf16 peak"
                        )
    print(format_table(rows))
    targets = list(GPU_TARGETS)
    if not args.no_compile:
        targets += [
            Target(t.name + " (compiled)", t.benchmark, t.config + " compiled", t.metric, t.threshold)
            for t in GPU_TARGETS
        ]
    print(format_targets(check_targets(rows, targets)))
    if args.dry_run:
        print("   (dry run: these are the tiny CPU stand-ins, not the GPU sizes)")
    print(f"appended {len(rows)} rows to {args.csv} ({time.perf_counter() - started:.0f}s)")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def append_rows(path: Path, rows: list[dict]) -> list[dict]:
    append_csv(path, rows)  # as they come: a run cut short keeps what it measured
    return rows


if __name__ == "__main__":
    sys.exit(main())
