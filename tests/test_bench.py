"""The benchmark harness (bench/): its measuring pieces on known inputs, and the quick suite end to end.

The harness is not a library module: it lives in bench/vtp_bench and is put on
the import path by pytest's ``monkeypatch.syspath_prepend`` for these tests only.
"""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vtp_gen.utils.flops import count_flops

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import vtp_bench.memory
    import vtp_bench.results
    import vtp_bench.suite
    import vtp_bench.timing

    return vtp_bench


def test_flops_of_a_linear_layer_forward_and_backward():
    layer = torch.nn.Linear(32, 48, bias=False)
    x = torch.randn(10, 32, requires_grad=True)
    # forward, grad of the input, grad of the weight: three (10 x 32 x 48) products of 2 FLOPs per MAC
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 10 * 32 * 48


def test_cpu_attention_kernels_are_counted():
    b, h, n, d = 2, 3, 17, 8
    q = torch.randn(b, h, n, d, requires_grad=True)
    k, v = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    forward = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward == 2 * (2 * b * h * n * n * d)  # scores and weighted sum
    both = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both == forward + 5 * (2 * b * h * n * n * d)  # torch's backward formula (recomputes scores)


def test_matmul_peak_probe_counts_its_flops(bench):
    probe = bench.suite.MatmulPeak("cpu", size=64, repeats=3)
    assert probe.flops_per_call == 3 * 2 * 64**3
    assert count_flops(probe) == probe.flops_per_call


def test_live_tensor_bytes_tracks_allocations_and_frees(bench):
    layer = torch.nn.Linear(100, 100)
    tracked_state = sum(p.numel() * 4 for p in layer.parameters())
    x = torch.randn(50, 100)

    def call():
        a = torch.empty(1000)  # 4000 B, freed before b exists
        del a
        b = torch.empty(2000)  # 8000 B
        c = b.view(40, 50)  # a view: no new storage
        layer(x)  # 50 x 100 floats of output, dropped at once
        return c

    peak = bench.memory.peak_memory_bytes(call, "cpu", tracked=(layer,))
    assert peak == tracked_state + 8000 + 50 * 100 * 4


def test_interleaved_rounds_rotate_and_ratios_pair_by_round(bench):
    order = []
    runners = {name: (lambda name=name: order.append(name)) for name in "abc"}
    samples = bench.timing.interleaved_times(runners, rounds=3, device="cpu", warmup=1, min_sample_s=0.0)
    assert order[:3] == ["a", "b", "c"]  # warm-up
    assert order[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(v) == 3 for v in samples.values())
    # a load spike in round 2 slows both sides; the paired ratio ignores it, the ratio of medians would not
    assert bench.timing.paired_ratio([1.0, 10.0, 1.0], [2.0, 20.0, 2.0]) == 0.5
    assert bench.timing.spread([1.0, 2.0, 3.0]) == 1.0


def test_self_timed_runners_report_their_own_seconds(bench):
    class Job:
        self_timed = True

        def __call__(self):
            return 0.25

    samples = bench.timing.interleaved_times({"job": Job()}, rounds=2, device="cpu", min_sample_s=1.0)
    assert samples["job"] == [0.25, 0.25]


def _group_record() -> dict:
    """What suite.run_group returns for a measured group: ours by FLOP rate, a variant by throughput."""

    def workload(name, baseline=None, compare="throughput", ratio=None, flops=2e9, memory=2**20):
        return {"name": name, "unit": "img", "items": 8, "seconds": 0.5, "spread": 0.1, "flops": flops,
                "flop_rate": flops / 0.5 if flops else None, "mfu": 0.25 if flops else None,
                "memory_bytes": memory, "baseline": baseline, "compare": compare, "ratio": ratio}  # fmt: skip

    return {
        "kind": "stage1",
        "config": "tiny",
        "load": 1.25,
        "status": "ok",
        "peak_flop_rate": 16e9,
        "workloads": [
            workload("step", "timm_vit", "flop_rate", 0.8),
            workload("collate", "step", "throughput", 4.0, flops=None, memory=None),
            workload("timm_vit"),
        ],
    }


def test_group_rows_carry_the_run_and_the_ratio_on_the_compared_metric(bench):
    results = bench.results
    context = {"date": "2026-01-01T00:00:00+00:00", "machine": "cpu, 2 cores", "torch": "2.x", "threads": 2,
               "commit": "abc1234"}  # fmt: skip
    rows = results.group_rows(_group_record(), context)
    assert all(tuple(r) == results.COLUMNS for r in rows)
    assert {r["commit"] for r in rows} == {"abc1234"} and {r["load"] for r in rows} == {"1.25"}
    by = {(r["benchmark"], r["metric"]): r for r in rows}
    assert by[("stage1/matmul_peak", "flop_rate")]["value"] == "16"
    assert by[("stage1/step", "throughput")]["value"] == "16"  # 8 images in 0.5 s
    assert by[("stage1/step", "time")]["value"] == "500"
    assert by[("stage1/step", "mfu")]["value"] == "25"
    assert by[("stage1/step", "peak_memory")]["value"] == "1"
    # The step is compared by FLOP rate: the ratio is on that row, not on its throughput.
    assert by[("stage1/step", "flop_rate")]["ratio"] == "0.8"
    assert by[("stage1/step", "flop_rate")]["baseline"] == "stage1/timm_vit"
    assert by[("stage1/step", "throughput")]["ratio"] == ""
    assert by[("stage1/collate", "throughput")]["ratio"] == "4"
    assert ("stage1/collate", "mfu") not in by and ("stage1/collate", "peak_memory") not in by
    assert results.group_rows({**_group_record(), "status": "error"}, context) == []

    checked = results.check_targets(rows, [
        results.Target("ratio", "stage1/step", "tiny", "ratio", 1.0),
        results.Target("mfu", "stage1/step", "tiny", "mfu", 20.0),
        results.Target("absent", "stage1/step", "small-B", "mfu", 20.0),
    ])  # fmt: skip
    assert [value for _, value in checked] == [0.8, 25.0, None]
    printed = results.format_targets(checked)
    assert "not met" in printed and "MET" in printed and "not measured" in printed
    table = results.format_table(rows, markdown=True)
    assert "| stage1/step | tiny |" in table and "0.80x timm_vit (flop rate)" in table
    assert "matmul_peak" not in table


def test_csv_appends_under_one_header_and_refuses_other_columns(bench, tmp_path):
    results = bench.results
    context = {"date": "d1", "machine": "m", "torch": "t", "threads": 1, "commit": "c"}
    path = tmp_path / "sub" / "results.csv"
    first = results.group_rows(_group_record(), context)
    results.append_csv(path, first)
    results.append_csv(path, results.group_rows(_group_record(), {**context, "date": "d2"}))
    read = results.read_csv(path)
    assert len(read) == 2 * len(first) and path.read_text().count("date,machine") == 1
    # The table shows the newest run of each benchmark and config.
    assert {e["date"] for e in results.wide(read)} == {"d2"}
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(SystemExit, match="other columns"):
        results.append_csv(other, first)


def run_bench_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """``bench/<script> args`` offline in a subprocess, as a user runs it; fails the test on a non-zero exit."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH_DIR / script), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


COLUMNS = ("date", "machine", "torch", "threads", "commit", "load", "benchmark", "config", "metric",
           "value", "unit", "baseline", "ratio", "spread")  # fmt: skip


def test_quick_suite_runs_every_group_and_appends_csv_rows(tmp_path):
    out = tmp_path / "results.csv"
    done = run_bench_script("run.py", "--quick", "--threads", "1", "--csv", str(out))
    rows = read_rows(out)
    assert {r["threads"] for r in rows} == {"1"}
    assert len({(r["date"], r["commit"], r["machine"], r["torch"]) for r in rows}) == 1
    assert rows[0]["commit"] not in ("", "unknown") and "cores" in rows[0]["machine"]
    values = {(r["benchmark"], r["config"], r["metric"]): r for r in rows}
    for benchmark in ("stage1/step", "stage1/timm_vit", "decoder_finetune/step", "caching/cache_loop",
                      "caching/bare_encoder", "stage2/step", "stage2/diffusers_dit", "sampling/nfe1",
                      "sampling/euler4", "sampling/euler4_cfg", "sampling/decode"):  # fmt: skip
        row = values[(benchmark, "tiny", "throughput")]
        assert float(row["value"]) > 0 and math.isfinite(float(row["value"])), benchmark
        assert float(values[(benchmark, "tiny", "time")]["value"]) > 0
    for benchmark in ("stage1/step", "stage2/step", "caching/cache_loop", "sampling/euler4"):
        assert 0 < float(values[(benchmark, "tiny", "mfu")]["value"]) < 200  # noise allows a little over 100
    # Each comparison sits on the metric it is made by, against a benchmark of the same run.
    assert values[("stage1/step", "tiny", "flop_rate")]["baseline"] == "stage1/timm_vit"
    assert float(values[("stage1/step", "tiny", "flop_rate")]["ratio"]) > 0
    assert values[("stage2/step", "tiny", "throughput")]["baseline"] == "stage2/diffusers_dit"
    assert float(values[("caching/cache_loop", "tiny", "throughput")]["ratio"]) > 0
    # Training steps do real work the counter sees, forward and backward.
    step_flops = float(values[("stage1/step", "tiny", "flops")]["value"])
    assert step_flops > float(values[("stage1/timm_vit", "tiny", "flops")]["value"]) > 0
    assert float(values[("stage1/step", "tiny", "peak_memory")]["value"]) > 0
    assert "stage1/step" in done.stdout and "targets:" in done.stdout
    # --markdown prints a CSV's newest rows as the tables in docs/performance.md.
    markdown = run_bench_script("run.py", "--markdown", str(out)).stdout
    assert "| stage1/step | tiny |" in markdown


@pytest.mark.slow
def test_gpu_script_dry_run_compiles_the_stage1_step(tmp_path):
    """The GPU MFU script end to end on CPU stand-ins, stage-1 eager and regionally compiled.

    Guards the compiled path that only a lent GPU would otherwise exercise: an inductor stride
    assertion once broke it (q and k rotated as one split of qkv) while every eager test passed.
    """
    out = tmp_path / "gpu.csv"
    done = run_bench_script("gpu_mfu.py", "--dry-run", "--only", "stage1/B", "--csv", str(out))
    rows = read_rows(out)
    values = {(r["benchmark"], r["config"], r["metric"]): r["value"] for r in rows}
    for config in ("tiny", "tiny compiled"):  # the dry run's stand-in for B, eager and compiled
        assert float(values[("stage1/step", config, "mfu")]) > 0
        assert float(values[("stage1/step", config, "flop_rate")]) > 0
    assert "stage1/B compiled" in done.stdout and "FAIL" not in done.stdout
    # The GPU recipes' real steps ran first, with the recipes' precision, clipping and optimiser.
    recipes = {r["benchmark"] for r in rows if r["benchmark"].startswith("recipe/")}
    assert recipes == {"recipe/stage1/vtp_b", "recipe/stage1/vtp_l", "recipe/stage2/lightningdit_xl1"}
    for recipe in recipes:
        assert values[(recipe, "B=8 tiny", "passed")] == "1", done.stdout[-3000:]
        assert float(values[(recipe, "B=8 tiny", "time")]) > 0
    assert "recipe/stage1/vtp_b: PASS (bf16-mixed, clip 3.0, fused AdamW" in done.stdout
    assert "recipe/stage1/vtp_l: PASS (bf16-mixed, clip 3.0, foreach AdamW" in done.stdout  # FSDP's AdamW
    # The bf16 check of both targets' steps, on their tiny stand-ins.
    assert (
        values[("bf16_check/stage1", "tiny", "passed")]
        == values[("bf16_check/stage2", "tiny", "passed")]
        == "1"
    )
    assert float(values[("bf16_check/stage2", "tiny", "gradient_cosine")]) > 0.99


def test_gpu_kit_pins_what_is_installed_and_flags_what_nothing_provides(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import importlib.metadata

    from gpu_kit import pinned_requirements, uncovered

    assert pinned_requirements(("timm", "omegaconf")) == [
        f"timm=={importlib.metadata.version('timm')}",
        f"omegaconf=={importlib.metadata.version('omegaconf')}",
    ]
    with pytest.raises(SystemExit, match="not installed"):
        pinned_requirements(("no-such-distribution-here",))
    imported = {"torch", "open_clip_torch", "vtp_gen", "Not_In_Any-List"}
    assert uncovered(imported, kit=(), image=frozenset()) == ["Not_In_Any-List", "open_clip_torch", "torch"]
    # The image's torch brings what torch needs here (e.g. filelock); the kit's names match normalised.
    assert uncovered(imported | {"filelock"}, kit=("open-clip-torch",), image=frozenset({"torch"})) == [
        "Not_In_Any-List"
    ]


def test_gpu_kit_covers_every_import_of_the_gpu_script(monkeypatch):
    """The GPU machine has no registry: whatever gpu_mfu.py imports must be in its image or in the kit.

    Without the recipes' real steps (2-3 minutes of bf16 on this CPU); the slow test below covers them.
    """
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    from gpu_kit import CHECK_ARGS, KIT_PACKAGES, imported_distributions, uncovered

    imported = imported_distributions([*CHECK_ARGS, "--no-recipes"])
    assert {"diffusers", "open_clip_torch", "torch"} <= imported  # the dry run ran the real code paths
    assert uncovered(imported) == []
    without_open_clip = tuple(p for p in KIT_PACKAGES if p != "open_clip_torch")
    assert uncovered(imported, kit=without_open_clip) == ["open_clip_torch"]


@pytest.mark.slow
def test_gpu_kit_covers_the_imports_of_the_gpu_recipe_steps(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    from gpu_kit import CHECK_ARGS, imported_distributions, uncovered

    imported = imported_distributions(CHECK_ARGS)
    assert "lightning" in imported and uncovered(imported) == []


def test_bf16_check_passes_the_tiny_training_steps_and_sees_the_cast(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    from vtp_bench.precision import compare, stage1_under_test, stage2_under_test

    cpu = torch.device("cpu")
    results = [compare(under_test("tiny", cpu), cpu) for under_test in (stage1_under_test, stage2_under_test)]
    for result in results:
        assert result["passed"], result
        assert "loss" in result["losses"]
        # bf16 autocast really ran: the gradients moved by far more than fp32 reordering would.
        assert 1e-4 < result["gradient_relative_error"] < 0.1
        assert 0.99 < result["gradient_cosine"] <= 1.0 + 1e-9
    assert {"clip_loss", "dino_loss", "ibot_loss", "rec_loss"} <= set(results[0]["losses"])


def test_bf16_check_flags_a_loss_bf16_cannot_hold(monkeypatch):
    """A loss read off a large activation: bf16's 8 bits lose it, and the check must say so."""
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    from vtp_bench.precision import LOSS_TOLERANCE, StepUnderTest, compare

    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 8, generator=generator))
    inputs = torch.randn(32, 64, generator=generator)
    target = (inputs @ weight).detach() + 0.01  # the product is close to its target: a small residual

    def losses():
        return {"loss": ((inputs @ weight).float() - target).pow(2).mean()}

    result = compare(StepUnderTest("toy", losses, [("weight", weight)]), torch.device("cpu"))
    assert not result["passed"]
    assert result["worst_loss_difference"] > LOSS_TOLERANCE


def test_stage2_reference_comparison_refuses_a_folder_that_is_not_lightningdit(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import stage2_vs_reference

    with pytest.raises(SystemExit, match="models/lightningdit.py is missing"):
        stage2_vs_reference.main(["--reference", str(tmp_path), "--csv", str(tmp_path / "out.csv")])


def test_stage2_reference_comparison_times_our_real_step(monkeypatch):
    # Our side of the comparison is the stage-2 system's step: it trains the weights and moves the EMA.
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import stage2_vs_reference

    monkeypatch.setitem(stage2_vs_reference.ARCH, "depth", 1)
    step = stage2_vs_reference.OurStep()
    assert step.optimizer.defaults["fused"]  # the recipe default the comparison is about
    before = {k: v.clone() for k, v in step.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in step.system.ema.module.state_dict().items()}
    step()
    changed = [k for k, v in step.model.state_dict().items() if not torch.equal(v, before[k])]
    # adaLN-Zero: the first step moves only the zero-initialised output layer.
    assert "final_layer.linear.weight" in changed and "pos_embed" not in changed
    ema = step.system.ema.module.state_dict()
    assert not torch.equal(ema["final_layer.linear.weight"], ema_before["final_layer.linear.weight"])


def test_stage2_reference_comparison_rows(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import stage2_vs_reference

    result = {
        "date": "2026-01-01T00:00:00+00:00", "machine": "cpu, 2 cores", "torch": "2.x", "threads": 2,
        "commit": "abc1234", "load_average": {"before": [1.1, 1.0, 1.0], "after": [1.8, 1.2, 1.0]},
        "samples_s": {"reference": [2.0, 3.0, 2.5], "ours": [1.0, 2.0, 2.0]},
        "speed_vs_reference": {"ours": {"median": 1.25, "min": 1.0, "max": 2.0}},
        "profile": {"reference": {"gemm_share": 0.4}, "ours": {"gemm_share": 0.5}},
        "gemm_ceiling": 2.5,
    }  # fmt: skip
    rows = {(r["benchmark"], r["metric"]): r for r in stage2_vs_reference.result_rows(result)}
    ours = rows[("stage2_reference/ours", "time")]
    assert (ours["value"], ours["unit"], ours["ratio"], ours["baseline"]) == (
        "2000",
        "ms",
        "1.25",
        "stage2_reference/reference",
    )
    assert rows[("stage2_reference/reference", "time")]["ratio"] == ""
    assert rows[("stage2_reference/ours", "ratio_min")]["value"] == "1"
    assert rows[("stage2_reference/reference", "gemm_share")]["value"] == "40"
    assert rows[("stage2_reference/gemm_ceiling", "ratio")]["value"] == "2.5"
    assert {r["load"] for r in rows.values()} == {"1.1"}
