"""The benchmark harness (bench/): its measuring pieces on known inputs, and the quick suite end to end.

The harness is not a library module: it lives in bench/vtp_bench and is put on
the import path by pytest's ``monkeypatch.syspath_prepend`` for these tests only.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    import vtp_bench.flops
    import vtp_bench.memory
    import vtp_bench.report
    import vtp_bench.timing

    return vtp_bench


def test_flops_of_a_linear_layer_forward_and_backward(bench):
    layer = torch.nn.Linear(32, 48, bias=False)
    x = torch.randn(10, 32, requires_grad=True)
    # forward, grad of the input, grad of the weight: three (10 x 32 x 48) products of 2 FLOPs per MAC
    assert bench.flops.count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 10 * 32 * 48


def test_cpu_attention_kernels_are_counted(bench):
    b, h, n, d = 2, 3, 17, 8
    q = torch.randn(b, h, n, d, requires_grad=True)
    k, v = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    forward = bench.flops.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward == 2 * (2 * b * h * n * n * d)  # scores and weighted sum
    both = bench.flops.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert both == forward + 5 * (2 * b * h * n * n * d)  # torch's backward formula (recomputes scores)


def test_matmul_peak_probe_counts_its_flops(bench):
    probe = bench.flops.MatmulPeak("cpu", size=64, repeats=3)
    assert probe.flops_per_call == 3 * 2 * 64**3
    assert bench.flops.count_flops(probe) == probe.flops_per_call


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


def test_targets_are_checked_against_measured_workloads(bench):
    report = bench.report
    groups = [{"workloads": [{"name": "w", "mfu": 0.5, "ratio_vs_baseline": None}]}]
    targets = [
        report.Target("mfu", "w", "mfu", 0.4),
        report.Target("ratio", "w", "ratio_vs_baseline", 1.0),
        report.Target("absent", "x", "mfu", 0.4),
    ]
    met = [t["met"] for t in report.check_targets(groups, targets)]
    assert met == [True, None, None]


def _workload(name: str, baseline: str | None = None, **numbers) -> dict:
    return {"name": name, "baseline": baseline, "compare": "flop_rate", "mfu": None,
            "ratio_vs_baseline": None, **numbers}  # fmt: skip


def _chart_record() -> dict:
    ours = _workload("s/tiny/step", "s/tiny/timm", mfu=0.30, ratio_vs_baseline=0.8)
    variant = _workload("s/tiny/step_variant", "s/tiny/step", ratio_vs_baseline=1.1, compare="throughput")
    timm = _workload("s/tiny/timm", mfu=0.40)
    return {
        "suite": "cpu",
        "machine": {"device": "cpu", "cpu": "test cpu", "torch_threads": 2},
        "groups": [
            {"name": "s/tiny", "status": "ok", "workloads": [ours, variant, timm]},
            {"name": "s/big", "status": "skipped", "reason": "no GPU", "workloads": []},
        ],
        "targets": [
            {"name": "tiny parity", "workload": "s/tiny/step", "metric": "ratio_vs_baseline",
             "threshold": 1.0, "value": 0.8, "met": False},
        ],
    }  # fmt: skip


def test_chart_rows_mark_baselines_and_targets(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH_DIR))
    from vtp_bench.plots import mfu_rows, ratio_rows

    record = _chart_record()
    ratios = ratio_rows(record)
    assert [(r.label, r.value) for r in ratios] == [
        ("s/tiny step (flop rate)", 0.8),
        ("s/tiny step_variant (throughput)", 1.1),
    ]
    assert (ratios[0].target, ratios[0].target_met) == (1.0, False)
    assert ratios[1].target is None
    mfus = mfu_rows(record)
    # The step is the variant's baseline but has its own: it is ours, only timm is a baseline.
    assert [(r.label, r.is_baseline) for r in mfus] == [("s/tiny step", False), ("s/tiny timm", True)]
    assert mfus[0].target is None  # the target reads the ratio, not the MFU
    # gpu_mfu.py's groups end in the mode, its workloads do not.
    gpu = {"groups": [{"name": "gpu/stage2/XL/compiled", "status": "ok",
                       "workloads": [_workload("gpu/stage2/XL/step_compiled", mfu=0.5)]}]}  # fmt: skip
    assert [r.label for r in mfu_rows(gpu)] == ["gpu/stage2/XL/compiled step_compiled"]


def test_bench_chart_draws_a_saved_result(monkeypatch, tmp_path):
    from PIL import Image

    monkeypatch.syspath_prepend(str(BENCH_DIR))
    from vtp_bench.plots import chart_beside, plot_record

    small = plot_record(_chart_record(), tmp_path / "small.png")
    saved = json.loads((BENCH_DIR / "results" / "same-calls-2threads.json").read_text())
    full = plot_record(saved, tmp_path / "nested" / "full.png")
    with Image.open(small) as a, Image.open(full) as b:
        assert a.format == b.format == "PNG"
        assert b.height > a.height  # one row scale: more workloads, a taller picture
    skipped = {**_chart_record(), "groups": [_chart_record()["groups"][1]]}
    with pytest.raises(ValueError, match="no measured ratio or MFU"):
        plot_record(skipped, tmp_path / "none.png")
    assert chart_beside(skipped, tmp_path / "none.json") is None  # what run.py does after such a run
    assert chart_beside(_chart_record(), tmp_path / "run.json") == tmp_path / "run.png"


WORKLOAD_KEYS = {
    "name", "unit", "items_per_call", "seconds_per_call", "seconds_samples", "spread", "throughput",
    "calls_per_s", "flops_per_call", "flops_source", "achieved_flops_per_s", "mfu", "peak_memory_bytes",
    "params", "baseline", "compare", "ratio_vs_baseline", "notes", "info",
}  # fmt: skip


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


def test_block_calls_group_into_tower_forwards(bench):
    from vtp_bench.replay import BlockCall, TowerForward, group_forwards

    def call(tower, index, batch, tokens=65, grad=True):
        return BlockCall(tower, index, 64, 4, batch, tokens, grad)

    calls = [call("t", 0, 8), call("t", 1, 8), call("t", 0, 4, 17), call("t", 1, 4, 17), call("d", 0, 2)]
    assert group_forwards(calls) == [
        TowerForward("t", 64, 4, 8, 65, 2, True),
        TowerForward("t", 64, 4, 4, 17, 2, True),
        TowerForward("d", 64, 4, 2, 65, 1, True),
    ]
    # The same tower again from block 0 with other autograd state is another forward.
    assert len(group_forwards([call("t", 0, 8), call("t", 0, 8, grad=False)])) == 2
    with pytest.raises(ValueError, match="does not continue"):
        group_forwards([call("t", 1, 8)])


def test_same_calls_replay_covers_every_tower_of_the_stage1_step(bench):
    from vtp_bench.replay import SameCallsReplay, record_forwards
    from vtp_bench.stage1 import PretrainingStep, load_stage1_config, perceptual_network
    from vtp_bench.suite import Settings

    settings = Settings(device=torch.device("cpu"))
    cfg = load_stage1_config("tiny", batch_size=8)
    step = PretrainingStep(cfg, settings, perceptual_network(settings.device)[0])
    forwards = record_forwards(step)
    model = step.system.model
    depths = {
        "model.trunk.blocks": len(model.trunk.blocks),
        "teacher.trunk.blocks": len(model.trunk.blocks),
        "model.pixel_decoder.blocks": len(model.pixel_decoder.blocks),
        "model.text.transformer.resblocks": len(model.text.transformer.resblocks),
    }
    assert {f.tower for f in forwards} == set(depths)
    for f in forwards:
        assert f.depth == depths[f.tower], f
        # Only the EMA teacher runs without autograd.
        assert f.grad == (not f.tower.startswith("teacher")), f
    grid_tokens = (cfg.data.image_size // model.trunk.patch_size) ** 2
    assert any(f.tower == "model.trunk.blocks" and f.tokens == grid_tokens + 1 for f in forwards)
    replay = SameCallsReplay(forwards, settings.device, settings)
    replay()
    for name, blocks in replay.towers.items():
        has_grads = all(p.grad is not None for p in blocks.parameters())
        assert has_grads == (not name.startswith("teacher")), name
    assert "teacher.trunk" in replay.describe() and "*" in replay.describe()


def test_quick_suite_runs_every_group_and_writes_the_json_schema(tmp_path):
    out = tmp_path / "bench.json"
    done = run_bench_script("run.py", "--quick", "--threads", "1", "--out", str(out))
    record = json.loads(out.read_text())
    assert record["schema"] == "vtp_gen.bench/1"
    assert record["settings"]["quick"] is True
    assert record["machine"]["torch_threads"] == 1
    names = {g["name"] for g in record["groups"]}
    assert {"stage1/tiny", "towers/tiny", "decoder_finetune/tiny", "caching/tiny", "stage2/tiny"} <= names
    assert {"sampling/tiny", "fid_features/tiny", "attention/quick"} <= names
    for group in record["groups"]:
        assert group["status"] in ("ok", "skipped"), group.get("reason")
        if group["status"] == "skipped":
            assert group["reason"]
            continue
        assert group["peak"]["flops_per_s"] > 0
        names_in_group = {w["name"] for w in group["workloads"]}
        for w in group["workloads"]:
            assert set(w) == WORKLOAD_KEYS, w["name"]
            assert len(w["seconds_samples"]) == record["settings"]["rounds"]
            assert w["throughput"] > 0 and math.isfinite(w["throughput"])
            if w["flops_per_call"]:
                assert (
                    0 < w["mfu"] < 2
                )  # noise or shapes faster than the probe allow a little over 1, not more
            if w["baseline"] is not None:
                assert w["baseline"] in names_in_group
                assert w["ratio_vs_baseline"] > 0
            if w["peak_memory_bytes"] is not None:
                assert w["peak_memory_bytes"] > 0
    by_name = {w["name"]: w for g in record["groups"] for w in g["workloads"]}
    # Training steps do real work the counter sees, forward and backward.
    assert (
        by_name["stage1/tiny/step_all"]["flops_per_call"]
        > by_name["stage1/tiny/timm_vit_fwd_bwd"]["flops_per_call"]
    )
    assert by_name["stage2/tiny/step"]["flops_per_call"] > 0
    # The short-sequence attention path is on in step_all and off in its variant: SDPA's CPU kernel
    # recomputes the scores in the backward, so the variant counts more FLOPs for the same step.
    flops = {name: w["flops_per_call"] for name, w in by_name.items()}
    assert flops["stage1/tiny/step_all_sdpa_only"] > flops["stage1/tiny/step_all"]
    assert flops["attention/quick/tiny_trunk_sdpa"] > flops["attention/quick/tiny_trunk"]
    assert flops["attention/quick/long_257_sdpa"] == flops["attention/quick/long_257"]  # same kernel
    # timm's blocks on the step's own block calls: the transformer part of the step's work.
    assert 0.5 < flops["stage1/tiny/timm_same_calls"] / flops["stage1/tiny/step_all"] < 1.1
    assert by_name["stage1/tiny/step_all_vs_same_calls"]["baseline"] == "stage1/tiny/timm_same_calls"
    assert {t["workload"] for t in record["targets"]} >= {"stage1/tiny/step_all", "caching/tiny/cache_loop"}
    assert "stage1/tiny" in done.stdout and "targets" in done.stdout
    assert out.with_suffix(".png").stat().st_size > 10_000  # the chart beside the JSON


@pytest.mark.slow
def test_gpu_script_dry_run_compiles_the_stage1_step(tmp_path):
    """The GPU MFU script end to end on CPU stand-ins, stage-1 eager and regionally compiled.

    Guards the compiled path that only a lent GPU would otherwise exercise: an inductor stride
    assertion once broke it (q and k rotated as one split of qkv) while every eager test passed.
    """
    out = tmp_path / "gpu.json"
    done = run_bench_script("gpu_mfu.py", "--dry-run", "--only", "stage1/B", "--out", str(out))
    record = json.loads(out.read_text())
    groups = {g["name"]: g for g in record["groups"]}
    assert set(groups) == {"gpu/stage1/B/eager", "gpu/stage1/B/compiled"}
    for group in groups.values():
        assert group["status"] == "ok", group.get("reason")
    assert "step_all_compiled" in done.stdout
    # The GPU recipes' real steps ran first, with the recipes' precision, clipping and optimiser.
    recipes = {r["name"]: r for r in record["recipes"]}
    assert set(recipes) == {"recipe/stage1/vtp_b", "recipe/stage1/vtp_l", "recipe/stage2/lightningdit_xl1"}
    for result in recipes.values():
        assert result["passed"], result.get("traceback") or result.get("error")
        assert result["precision"] == "bf16-mixed" and result["steps"] == 2 and result["step_s"] > 0
    assert (
        recipes["recipe/stage1/vtp_b"]["fused_adamw"]
        and recipes["recipe/stage1/vtp_b"]["gradient_clip_val"] == 3.0
    )
    assert not recipes["recipe/stage1/vtp_l"]["fused_adamw"]  # FSDP: the foreach AdamW, as its recipe says
    assert "recipe/stage1/vtp_b: PASS" in done.stdout


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
        stage2_vs_reference.main(["--reference", str(tmp_path), "--out", str(tmp_path / "out.json")])


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
