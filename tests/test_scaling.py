"""The scaling study's pieces: FLOP accounting, point planning (widths, stage-2 seeds, the stage-2
curve) and resume rules, CSV rows with intervals combined over seeds, the computed verdict, figures.

The end-to-end studies (a micro one, and configs/scaling/quick.yaml) are the slow tests at the bottom.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vtp_gen.config import ConfigError
from vtp_gen.metrics.intervals import Interval, combine_seeds
from vtp_gen.metrics.report import MetricRecord, Protocol, write_metrics_json
from vtp_gen.pipeline.cli import build_config
from vtp_gen.pipeline.scaling import verdict
from vtp_gen.pipeline.scaling.flops import batches_per_step, count_flops, pretraining_step_flops
from vtp_gen.pipeline.scaling.plots import pearson, plot_all
from vtp_gen.pipeline.scaling.results import (
    COLUMNS,
    build_row,
    eval_values,
    fid_samples,
    objectives_label,
    pool_seed_spread,
    read_csv,
    write_csv,
)
from vtp_gen.pipeline.scaling.run import (
    curve_calls,
    finished_record,
    plan_points,
    record_point,
    step_calls,
)
from vtp_gen.pipeline.scaling.summary import summary_markdown

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("ae_only", "clip_ae", "ssl_ae", "vtp")


# ----------------------------------------------------------------------------- FLOPs
def test_count_flops_of_a_linear_layer_forward_and_backward():
    layer = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32, requires_grad=True)
    # Forward 2*8*32*16; backward computes the input and the weight gradient: twice that again.
    assert count_flops(lambda: layer(x).sum().backward()) == 3 * 2 * 8 * 32 * 16


def test_count_flops_counts_cpu_attention():
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    forward = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
    # Two batched products of (16 x 8) by (8 x 16) and (16 x 16) by (16 x 8) per head: 4 * 2 * 16 * 16 * 8.
    assert forward == 2 * 4 * (2 * 16 * 16 * 8) * 2
    both = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward())
    # torch's fused-kernel backward formula: the scores are recomputed (1 product) and 4 gradient
    # products follow, 5 products against the forward's 2.
    assert both == forward + forward * 5 // 2


def _stage1_config(preset: str, *extra: str):
    return build_config(
        "stage1",
        [str(REPO / "configs/stage1/tiny.yaml"), str(REPO / f"configs/stage1/{preset}.yaml")],
        None,
        ["data.batch_size=16", "data.max_samples=64", *extra],
    )


@pytest.mark.usefixtures("fashion_mnist")
def test_stage1_step_flops_of_the_four_presets_add_up():
    """The objectives run separate forwards on the shared trunk, so their costs add:
    CLIP+SSL+AE = CLIP+AE + SSL+AE - AE, exactly; and each objective costs something."""
    flops = {p: pretraining_step_flops(_stage1_config(p)) for p in PRESETS}
    per_step = {p: f.per_step for p, f in flops.items()}
    assert per_step["ae_only"] < min(per_step["clip_ae"], per_step["ssl_ae"]) < per_step["vtp"]
    assert per_step["vtp"] == per_step["clip_ae"] + per_step["ssl_ae"] - per_step["ae_only"]
    assert flops["ae_only"].batch_size == 16
    # An AE-only tokenizer has no text tower: far fewer trainable parameters than CLIP presets.
    assert flops["ae_only"].trainable_parameters < flops["clip_ae"].trainable_parameters / 5
    # Counting runs a real step; it costs the same whatever the run's length.
    assert (
        pretraining_step_flops(_stage1_config("ae_only", "trainer.max_steps=7")).per_step
        == per_step["ae_only"]
    )
    assert flops["vtp"].total(100, 2) == 200 * per_step["vtp"]


def test_batches_per_step_counts_devices_nodes_and_accumulation():
    cfg = _stage1_config(
        "vtp", "trainer.devices=4", "trainer.num_nodes=2", "trainer.accumulate_grad_batches=3"
    )
    assert batches_per_step(cfg) == 24
    assert batches_per_step(_stage1_config("vtp", "trainer.devices=[0,1]")) == 2
    assert batches_per_step(_stage1_config("vtp", "trainer.devices=auto")) == 1


# ----------------------------------------------------------------------------- planning
def _study(*overrides: str, recipe: str = "tiny"):
    return build_config("scaling", [str(REPO / f"configs/scaling/{recipe}.yaml")], None, list(overrides))


# The study's original layout: no widths, one stage-2 run per point.
PLAIN = ("widths=[]", "width_presets={}", "stage2_seeds=[]", "stage2_curve.point=''")


def test_points_cover_the_grid_and_each_step_is_configured_as_its_command(tmp_path):
    cfg = _study(
        f"run.out_dir={tmp_path}",
        "steps=[200,100]",
        *PLAIN,
        "presets=" + "[" + ",".join(f"configs/stage1/{p}.yaml" for p in PRESETS) + "]",
    )
    points = plan_points(cfg)
    assert [p.name for p in points] == [f"{p}-{s}" for p in PRESETS for s in (100, 200)]
    calls = step_calls(cfg, points[1])
    assert [c.step for c in calls] == ["stage1", "cache", "stage2", "eval"]
    stage1 = calls[0].build()
    # The point's budget and folder win over the shared overrides; the preset's objectives are layered in.
    assert stage1.trainer.max_steps == 200 and stage1.objectives.lambda_clip == 0
    assert stage1.decoder_finetune.enabled is False
    for call in calls:
        built = call.build()
        assert (built.run.out_dir, built.run.name) == (str(tmp_path / "scaling"), "ae_only-200")
        assert f"vtp-gen {call.step} --config" in call.command() and "run.name=ae_only-200" in call.command()
    assert calls[1].build().data.max_samples == 10_000
    # The same stage-2 and eval settings at every point.
    other = step_calls(cfg, points[-1])
    assert other[2].build().trainer == calls[2].build().trainer
    generation = [
        {k: v for k, v in c.build().generation.items() if k != "generator"} for c in (other[3], calls[3])
    ]
    assert generation[0] == generation[1]
    # Each step reads the previous step's output inside the point's own folder.
    assert (
        calls[2].build().latents.cache_dir
        == calls[1].build().out_dir
        == str(tmp_path / "scaling/ae_only-200/cache")
    )
    assert calls[3].build().generation.generator == str(tmp_path / "scaling/ae_only-200/stage2/generator")


def test_unknown_point_and_duplicate_presets_are_errors():
    with pytest.raises(ConfigError, match="unknown points"):
        plan_points(_study("only=[vtp-300]"))
    with pytest.raises(ConfigError, match="distinct file names"):
        plan_points(_study("presets=[configs/stage1/vtp.yaml,configs/stage1/vtp.yaml]"))
    with pytest.raises(ConfigError, match="width_presets names width 32"):
        plan_points(_study("widths=[16,64]", "width_presets={32: [vtp]}"))
    with pytest.raises(ConfigError, match=r"unknown presets \['clip_ae'\]"):
        plan_points(
            _study("widths=[16,64]", "presets=[configs/stage1/vtp.yaml]", "width_presets={64: [clip_ae]}")
        )
    with pytest.raises(ConfigError, match="widths must be distinct positive"):
        plan_points(_study("widths=[16,16]"))
    with pytest.raises(ConfigError, match="stage2_curve.point 'vtp-w16-3'"):
        plan_points(_study("widths=[16]", "stage2_curve.point=vtp-w16-3"))


def test_widths_seeds_and_the_curve_plan_their_own_folders(tmp_path):
    cfg = _study(
        f"run.out_dir={tmp_path}",
        "run.name=s",
        "presets=[configs/stage1/ae_only.yaml,configs/stage1/clip_ae.yaml,configs/stage1/vtp.yaml]",
        "widths=[16,64]",
        "width_presets={64: [ae_only, vtp]}",
        "steps=[200,100]",
        "stage2_seeds=[3,5]",
        "stage2_curve.point=vtp-w64-200",
        "stage2_curve.steps=[40,20]",
    )
    points = plan_points(cfg)
    assert [p.name for p in points] == [
        *(f"{p}-w16-{s}" for p in ("ae_only", "clip_ae", "vtp") for s in (100, 200)),
        *(f"{p}-w64-{s}" for p in ("ae_only", "vtp") for s in (100, 200)),
    ]
    point = points[-1]
    calls = step_calls(cfg, point)
    assert [c.name for c in calls] == [
        "stage1",
        "cache",
        "eval",
        "stage2/seed3",
        "eval/seed3",
        "stage2/seed5",
        "eval/seed5",
    ]
    built = {c.name: c.build() for c in calls}
    assert built["stage1"].model.overrides.vision_feature_bottleneck == 64
    assert built["stage1"].trainer.max_steps == 200 and built["stage1"].run.seed == 0
    folder = tmp_path / "s" / "vtp-w64-200"
    # The tokenizer is evaluated once, without generation; each seed's generator without the tokenizer parts.
    assert built["eval"].generation.enabled is False and built["eval"].reconstruction.enabled is True
    for seed in (3, 5):
        stage2, evaluation = built[f"stage2/seed{seed}"], built[f"eval/seed{seed}"]
        assert (stage2.run.out_dir, stage2.run.name, stage2.run.seed) == (str(folder), f"seed{seed}", seed)
        assert stage2.latents.cache_dir == str(folder / "cache")
        assert stage2.latents.tokenizer == str(folder / "stage1" / "tokenizer")
        assert evaluation.generation.enabled and evaluation.run.seed == seed
        assert evaluation.generation.generator == str(folder / f"seed{seed}" / "stage2" / "generator")
        assert not (
            evaluation.reconstruction.enabled
            or evaluation.linear_probe.enabled
            or evaluation.zero_shot.enabled
        )
    # The same stage-2 recipe and eval protocol at every seed but the seed itself.
    assert built["stage2/seed3"].trainer == built["stage2/seed5"].trainer
    # The curve: one stage-2 run resumed step count to step count, each count's copy evaluated.
    curve = curve_calls(cfg, point)
    assert list(curve) == [20, 40]
    stage2, evaluation = (c.build() for c in curve[40])
    assert (stage2.run.out_dir, stage2.run.name, stage2.run.seed) == (str(folder), "curve", 3)
    assert stage2.trainer.max_steps == 40
    assert evaluation.generation.generator == str(folder / "curve" / "step40" / "stage2" / "generator")
    assert evaluation.run.out_dir == str(folder / "curve") and evaluation.run.name == "step40"


# ----------------------------------------------------------------------------- rows and CSV
def _write_eval(folder: Path, gfid: float, probe: float, with_zero_shot: bool) -> None:
    gen = Protocol("Fashion-MNIST", 32, 400, reference="Fashion-MNIST test", num_reference=400)
    rec = Protocol("Fashion-MNIST test", 32, 200)
    probe_protocol = Protocol(
        "Fashion-MNIST test", 32, 5000, reference="Fashion-MNIST train", num_reference=5000
    )
    records = [
        MetricRecord("gfid", gfid, gen),
        MetricRecord("inception_score", None, gen, unavailable="no classifier"),
        MetricRecord("rfid", gfid / 3, rec),
        MetricRecord("psnr", 20.5, rec),
        MetricRecord("linear_probe_bottleneck", probe, probe_protocol),
    ]
    if with_zero_shot:
        records.append(MetricRecord("zero_shot_top1", 0.7, Protocol("Fashion-MNIST test", 32, 2000)))
    judged = Protocol("Fashion-MNIST", 32, 400, "Fashion-MNIST test", 10000, features="fashion-mnist-judge")
    floor = {"value": 2.0, "low": 1.0, "high": 3.3}
    records.append(MetricRecord("domain_fd", 5.0, judged, interval=(4.0, 6.5), floor=floor))
    agreement_floor = {"value": 0.85, "low": 0.82, "high": 0.89}
    records.append(MetricRecord("label_agreement", 0.7, judged, interval=(0.65, 0.75), floor=agreement_floor))
    write_metrics_json(folder / "eval" / "metrics.json", records, {"run": folder.name})


def _rows(tmp_path: Path) -> list[dict]:
    rows = []
    for i, (preset, objectives) in enumerate(
        [
            ("ae_only", {"lambda_clip": 0.0, "lambda_ssl": 0.0, "lambda_rec": 0.1}),
            ("vtp", {"lambda_clip": 1.0, "lambda_ssl": 1.0, "lambda_rec": 0.1}),
        ]
    ):
        for steps in (100, 200):
            folder = tmp_path / f"{preset}-{steps}"
            _write_eval(
                folder,
                gfid=100.0 - i * 20 - steps / 10,
                probe=0.5 + i * 0.2 + steps / 1000,
                with_zero_shot=i == 1,
            )
            rows.append(
                build_row(folder, preset, steps, objectives, 1.5 * (1 + 5 * i), 1, 10**6, {"total": 60.0})
            )
    return rows


def test_rows_hold_flops_metrics_and_labels_and_round_trip_through_the_csv(tmp_path):
    rows = _rows(tmp_path)
    ae, vtp = rows[0], rows[3]
    assert ae["objectives"] == "AE" and vtp["objectives"] == "CLIP+SSL+AE"
    assert ae["tokenizer_gflops"] == pytest.approx(150.0) and vtp["tokenizer_gflops"] == pytest.approx(1800.0)
    assert ae["linear_probe"] == pytest.approx(60.0)  # fractions in metrics.json -> percent
    assert ae["gfid_label"] == "FID-400" and ae["rfid_label"] == "rFID-200"
    assert "zero_shot_top1" not in ae and vtp["zero_shot_top1"] == pytest.approx(70.0)
    assert "inception_score" not in eval_values(tmp_path / "vtp-200" / "eval" / "metrics.json")
    # The domain metric travels with its interval and real-vs-real floor (percent for agreement).
    assert ae["domain_fd"] == pytest.approx(5.0) and ae["domain_fd_label"] == "FD-judge-400"
    assert (ae["domain_fd_low"], ae["domain_fd_high"]) == pytest.approx((4.0, 6.5))
    assert (ae["domain_fd_floor"], ae["domain_fd_floor_high"]) == pytest.approx((2.0, 3.3))
    assert ae["label_agreement"] == pytest.approx(70.0) and ae["label_agreement_floor"] == pytest.approx(85.0)
    path = write_csv(rows, tmp_path / "scaling.csv")
    assert path.read_text().splitlines()[0].split(",") == COLUMNS
    back = read_csv(path)
    assert [r["point"] for r in back] == ["ae_only-100", "ae_only-200", "vtp-100", "vtp-200"]
    assert back[0]["zero_shot_top1"] is None and back[3]["zero_shot_top1"] == pytest.approx(70.0)
    assert back[3]["steps"] == 200 and back[3]["gfid"] == pytest.approx(vtp["gfid"])
    assert objectives_label({"lambda_clip": 1.0, "lambda_rec": 0.1}) == "CLIP+AE"


def _write_seed_eval(folder: Path, gfid: float, gfid_std: float, fd: float) -> None:
    """A generation-only eval of one seed: gFID with a bootstrap interval, FD-judge, KID with a std."""
    gen = Protocol("Fashion-MNIST", 32, 400, reference="Fashion-MNIST test", num_reference=400)
    judged = Protocol("Fashion-MNIST", 32, 2000, "Fashion-MNIST test", 10000, features="fashion-mnist-judge")
    interval = Interval(gfid, gfid - 2 * gfid_std, gfid + 2 * gfid_std, std=gfid_std, resamples=20)
    records = [
        MetricRecord(
            "gfid", gfid, gen, interval=(interval.low, interval.high), extra={"interval": interval.to_dict()}
        ),
        MetricRecord("kid", 0.05, gen, std=0.01),
        MetricRecord("precision", 0.5, gen),
        MetricRecord(
            "domain_fd",
            fd,
            judged,
            interval=(fd - 0.2, fd + 0.2),
            floor={"value": 0.4, "low": 0.2, "high": 0.7},
            extra={"interval": {"std": 0.1}},
        ),
    ]
    write_metrics_json(folder / "eval" / "metrics.json", records, {"run": folder.name})


def test_seeds_combine_into_the_mean_with_an_interval_and_the_csv_keeps_them(tmp_path):
    point = tmp_path / "vtp-w64-200"
    _write_eval(point, gfid=0.0, probe=0.6, with_zero_shot=True)  # the tokenizer's eval (gFID ignored below)
    _write_seed_eval(point / "seed0", 100.0, 1.0, 5.0)
    _write_seed_eval(point / "seed1", 110.0, 1.0, 5.4)
    row = build_row(
        point,
        "vtp",
        200,
        {"lambda_clip": 1, "lambda_ssl": 1, "lambda_rec": 0.1},
        2.0,
        1,
        10**6,
        width=64,
        seed_dirs=[point / "seed0", point / "seed1"],
        gfid_floors={400: 45.7, 1000: 24.2},
    )
    assert row["width"] == 64 and row["seeds"] == 2
    # Seed spread (std of 2 values: 7.07) dominates the bootstrap's 1.0: Student's t with 1 degree of freedom.
    expected = combine_seeds([Interval(100.0, 98, 102, std=1.0), Interval(110.0, 108, 112, std=1.0)])
    assert row["gfid"] == pytest.approx(105.0)
    assert (row["gfid_low"], row["gfid_high"]) == pytest.approx((expected.low, expected.high))
    assert row["gfid_high"] - row["gfid"] == pytest.approx(12.706 * 5.0, rel=1e-3)
    assert row["gfid_per_seed"] == "100;110" and row["gfid_floor"] == 45.7
    assert row["gfid_boot_std"] == pytest.approx(1.0)
    # Over a study, the seed spread is pooled across points: a second point whose seeds agree closely
    # narrows this point's interval (2 degrees of freedom instead of 1), and the mean stays.
    other = dict(row, point="ae_only-w64-200", gfid_per_seed="120;121", gfid=120.5)
    pooled_row, _ = pool_seed_spread([row, other])
    variance = (50.0 + 0.5) / 2
    assert pooled_row["gfid"] == row["gfid"] and row["gfid_high"] - row["gfid"] == pytest.approx(
        12.706 * 5.0, rel=1e-3
    )
    assert pooled_row["gfid_high"] - pooled_row["gfid"] == pytest.approx(
        4.303 * math.sqrt(variance / 2), rel=1e-3
    )
    assert pooled_row["seed_spread"] == "pooled over 2 points (2 degrees of freedom)"
    assert pool_seed_spread([row]) == [row]  # one multi-seed point: nothing to pool
    assert row["gfid_label"] == "FID-400" and row["domain_fd_label"] == "FD-judge-2k"
    assert row["domain_fd"] == pytest.approx(5.2) and row["domain_fd_floor"] == pytest.approx(0.4)
    # KID's std over subsets is its interval; precision has none per seed, so the seed spread alone.
    assert row["kid_low"] < row["kid"] < row["kid_high"]
    assert row["precision"] == row["precision_low"] == row["precision_high"] == pytest.approx(0.5)
    # Two seeds far apart: the t interval is clipped where the metric ends (a distance at 0).
    _write_seed_eval(point / "seed2", 2.0, 0.1, 0.1)
    _write_seed_eval(point / "seed3", 30.0, 0.1, 9.0)
    apart = build_row(point, "vtp", 200, {}, 2.0, 1, 10**6, seed_dirs=[point / "seed2", point / "seed3"])
    assert apart["gfid_low"] == 0.0 and apart["domain_fd_low"] == 0.0 and apart["gfid_high"] > 100
    # The tokenizer's metrics from the point's own eval.
    assert row["linear_probe"] == pytest.approx(60.0) and row["rfid"] == pytest.approx(0.0)
    back = read_csv(write_csv([row], tmp_path / "scaling.csv"))[0]
    for column in (
        "width",
        "seeds",
        "gfid",
        "gfid_low",
        "gfid_high",
        "gfid_floor",
        "domain_fd_low",
        "kid_high",
    ):
        assert back[column] == pytest.approx(row[column], rel=1e-5), column
    assert fid_samples("FID-10k") == 10_000 and fid_samples("FID-400") == 400 and fid_samples(None) is None
    # One seed: its bootstrap interval as recorded.
    single = build_row(point, "vtp", 200, {}, 2.0, 1, 10**6, seed_dirs=[point / "seed0"])
    assert (single["seeds"], single["gfid_low"], single["gfid_high"]) == (1, 98.0, 102.0)


def _synthetic(width, objectives, steps, gfid, half, rfid, gflops_per_step=1.0, **extra) -> dict:
    preset = {"AE": "ae_only", "CLIP+SSL+AE": "vtp"}[objectives]
    return {
        "point": f"{preset}-w{width}-{steps}",
        "preset": preset,
        "objectives": objectives,
        "width": width,
        "steps": steps,
        "tokenizer_gflops": gflops_per_step * steps,
        "gfid": gfid,
        "gfid_low": gfid - half,
        "gfid_high": gfid + half,
        "rfid": rfid,
        "gfid_label": "FID-400",
        **extra,
    }


def test_the_verdict_rule_gives_each_outcome_and_the_plateau_and_correlations():
    rows = [
        # width 16: VTP clearly better at the largest common budget -> holds
        _synthetic(16, "AE", 100, 80.0, 2.0, 50.0),
        _synthetic(16, "AE", 400, 79.0, 2.0, 30.0),
        _synthetic(16, "CLIP+SSL+AE", 100, 78.0, 2.0, 52.0, 6.0),
        _synthetic(16, "CLIP+SSL+AE", 400, 60.0, 2.0, 33.0, 6.0),
        # width 64: AE clearly better -> fails
        _synthetic(64, "AE", 400, 50.0, 1.0, 20.0),
        _synthetic(64, "CLIP+SSL+AE", 400, 58.0, 1.0, 25.0, 6.0),
        # width 32: overlapping -> cannot tell
        _synthetic(32, "AE", 400, 50.0, 5.0, 20.0),
        _synthetic(32, "CLIP+SSL+AE", 400, 47.0, 5.0, 25.0, 6.0),
    ]
    assert verdict.width_verdict(rows, 16).verdict == verdict.HOLDS
    assert verdict.width_verdict(rows, 64).verdict == verdict.FAILS
    assert verdict.width_verdict(rows, 32).verdict == verdict.CANNOT_TELL
    gap = verdict.width_verdict(rows, 16).gap
    assert gap.steps == 400 and gap.gap.value == pytest.approx(-19.0)
    assert gap.gap.high == pytest.approx(-19.0 + math.hypot(2.0, 2.0)) and gap.compute_ratio == pytest.approx(
        6.0
    )
    # Without intervals the rule cannot decide, whatever the values.
    bare = [{k: v for k, v in r.items() if not k.endswith(("_low", "_high"))} for r in rows]
    assert verdict.width_verdict(bare, 16).verdict == verdict.CANNOT_TELL
    # AE-only at width 16: gFID -0.5 [-1.9, +0.9] per doubling (2 doublings), rFID -10 -> the plateau
    # the paper describes (the interval excludes an improvement of 5 % of 80 = 4 per doubling).
    g = verdict.last_change(rows, 16, "AE", "gfid")
    r = verdict.last_change(rows, 16, "AE", "rfid")
    assert g.steps == (100, 400) and g.per_doubling.value == pytest.approx(-0.5) and g.start == 80.0
    assert verdict.plateau(g, r).startswith("yes")
    still = verdict.last_change(rows, 16, "CLIP+SSL+AE", "gfid")
    assert verdict.plateau(still, r).startswith("no")
    # An interval too wide to exclude a real improvement is no plateau: cannot tell.
    wide = verdict.Change("gfid", (100, 400), verdict.Estimate(-0.5, -9.0, 8.0), 80.0)
    assert verdict.plateau(wide, r).startswith("cannot tell")
    # Correlation with a bootstrap over points: a perfect line stays at +1.
    line = [{"x": float(i), "gfid": 2.0 * i + 1} for i in range(8)]
    c = verdict.correlation(line, "x", resamples=200)
    assert c.r == pytest.approx(1.0) and c.low == pytest.approx(1.0) and c.points == 8
    noisy = [{"x": float(i), "gfid": float((i * 7) % 5)} for i in range(12)]
    c = verdict.correlation(noisy, "x", resamples=500)
    assert c.low < c.r < c.high
    assert verdict.correlation(line[:3], "x").low is None  # too few points for an interval
    # Matched compute: VTP-100 (600 GFLOPs) against AE-400 (400), 1.5x; VTP-400 (2400) has no AE
    # budget within 2x, nor has width 64's VTP-400.
    matched = verdict.matched_compute_gaps(rows, 16, "gfid")
    assert [(g.steps, g.baseline_steps) for g in matched] == [(100, 400)]
    assert matched[0].compute_ratio == pytest.approx(1.5) and matched[0].gap.value == pytest.approx(-1.0)
    assert verdict.width_verdict(rows, 16, matched_compute=True).verdict == verdict.CANNOT_TELL
    assert verdict.width_verdict(rows, 64, matched_compute=True).gap is None
    text = summary_markdown(rows, [], Path("."), resamples=200)
    assert "**width 16, same steps**: by FID-400: **paper's direction holds here** (-19.00 [" in text
    assert (
        "**width 64, same steps**: by FID-400: **fails here**" in text
        and "**width 32, same steps**: by FID-400: **cannot tell**" in text
    )
    assert (
        "**width 16, matched compute**: by FID-400: **cannot tell** (-1.00 [-3.83, +1.83] at 100 vs 400 steps)"
        in text
    )
    assert "**width 64, matched compute**: by FID-400: cannot tell (no pair of budgets)" in text
    assert "width 16, 100 vs 400 steps, FID-400: 78.00 [76.00, 80.00] - 79.00 [77.00, 81.00]" in text
    assert "plateau: yes" in text and "Rule: at the largest stage-1 budget" in text
    assert "excludes an improvement of more than 5%" in text


def test_figures_are_written_from_real_rows(tmp_path):
    rows = _rows(tmp_path)
    paths = plot_all(rows, tmp_path / "images")
    assert [p.name for p in paths] == [
        "gfid_vs_compute.png",
        "domain_fd_vs_compute.png",
        "rfid_vs_compute.png",
        "probe_vs_gfid.png",
        "zero_shot_vs_gfid.png",
        "rfid_vs_gfid.png",
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 400 and image.size[1] > 300
    # A figure without a usable point is left out rather than drawn empty.
    no_rfid = [{k: v for k, v in r.items() if k != "rfid"} for r in rows]
    assert "rfid_vs_gfid.png" not in [p.name for p in plot_all(no_rfid, tmp_path / "partial")]
    # Two widths: a panel each, error bars, the floor; and the stage-2 curve.
    wide = [
        _synthetic(w, o, s, 60.0 - s / 20 + w / 8, 3.0, 40.0 - s / 20, gfid_floor=45.7)
        for w in (16, 64)
        for o in ("AE", "CLIP+SSL+AE")
        for s in (100, 400)
    ]
    curve = [
        {"stage2_steps": n, "gfid": 80.0 - n / 100, "gfid_low": 75.0 - n / 100, "gfid_high": 85 - n / 100}
        for n in (200, 400, 800)
    ]
    made = {p.name: p for p in plot_all(wide, tmp_path / "wide", curve=curve, curve_point="vtp-w16-400")}
    assert "gfid_vs_stage2_steps.png" in made
    with Image.open(made["gfid_vs_compute.png"]) as two, Image.open(paths[0]) as one:
        assert two.size[0] > one.size[0] * 1.5  # two panels side by side


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2], [1, 2]) is None and pearson([1, 1, 1], [1, 2, 3]) is None
    assert math.isclose(pearson([1, 2, 3, 4], [1, 3, 2, 4]), 0.8)


@pytest.mark.usefixtures("fashion_mnist")
def test_a_finished_point_is_reused_only_with_the_same_configs(tmp_path):
    cfg = _study(
        f"run.out_dir={tmp_path}",
        "steps=[100]",
        "stage1.overrides=[data.batch_size=16]",
        "stage2_curve.point=''",
    )
    point = plan_points(cfg)[0]
    configs = {c.name: c.build() for c in step_calls(cfg, point)}
    point_dir = tmp_path / "scaling" / point.name
    _write_eval(point_dir, gfid=90.0, probe=0.5, with_zero_shot=False)
    for seed in (0, 1):
        _write_seed_eval(point_dir / f"seed{seed}", 90.0 + seed, 1.0, 5.0)
    flops = pretraining_step_flops(configs["stage1"])
    record = record_point(point, point_dir, configs, flops, {"total": 1.0}, cfg)
    plain = json.loads(json.dumps(record["configs"]))
    assert finished_record(point_dir, plain)["row"]["gfid"] == 90.5
    changed = json.loads(json.dumps(plain))
    changed["stage2/seed1"]["trainer"]["max_steps"] += 1
    with pytest.raises(ConfigError, match=r"other settings \(stage2/seed1.trainer.max_steps"):
        finished_record(point_dir, changed)
    # Another seed list is another study too.
    fewer = {k: v for k, v in plain.items() if not k.endswith("seed1")}
    with pytest.raises(ConfigError, match="other settings"):
        finished_record(point_dir, fewer)


# ----------------------------------------------------------------------------- end to end
MICRO = """
presets: [configs/stage1/ae_only.yaml, configs/stage1/vtp.yaml]
steps: [12]
widths: []
width_presets: {}
stage2_seeds: []
stage2_curve: {point: "", steps: []}
stage1:
  overrides: [decoder_finetune.enabled=false, evaluation.reconstruction_images=20, evaluation.zero_shot_images=100,
    trainer.progress_bar=false, data.batch_size=16]
cache:
  overrides: [data.max_samples=500, stats_max_images=0, progress_bar=false]
stage2:
  overrides: [trainer.max_steps=10, trainer.progress_bar=false, preview.enabled=false, trainer.log_every_n_steps=5]
eval:
  overrides: [progress_bar=false, generation.num_samples=40, generation.num_reference=40, generation.kid_subset_size=20,
    reconstruction.num_images=20, "linear_probe.protocols=[bottleneck]", linear_probe.train_images=200,
    linear_probe.test_images=200, zero_shot.num_images=100]
"""


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_make_scaling_micro_study_end_to_end_and_resume(tmp_path):
    micro = tmp_path / "micro.yaml"
    micro.write_text(MICRO)
    command = [
        sys.executable,
        str(REPO / "eval/scaling.py"),
        "--config",
        str(REPO / "configs/scaling/tiny.yaml"),
        "--config",
        str(micro),
        f"run.out_dir={tmp_path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / "scaling"
    rows = read_csv(root / "scaling.csv")
    assert [r["point"] for r in rows] == ["ae_only-12", "vtp-12"]
    ae, vtp = rows
    for row in rows:
        for column in ("gfid", "rfid", "psnr", "linear_probe", "tokenizer_gflops"):
            assert row[column] is not None and math.isfinite(row[column]), (row["point"], column)
        assert row["gfid_label"] == "FID-40" and row["stage2_steps"] == 10
    assert ae["zero_shot_top1"] is None and vtp["zero_shot_top1"] is not None  # no text tower in AE-only
    # The CSV keeps 6 significant digits, so the product of two rounded values agrees to ~1e-5.
    assert (
        vtp["tokenizer_gflops"]
        > ae["tokenizer_gflops"]
        == pytest.approx(12 * ae["gflops_per_step"], rel=1e-5)
    )
    for name in ("gfid_vs_compute", "probe_vs_gfid", "rfid_vs_gfid"):
        assert (root / "images" / f"{name}.png").is_file()
    assert "1/2 ae_only-12: done in" in done.stdout
    # A rerun trains nothing: both points are done.
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier") == 2 and "GFLOPs per stage-1 step" not in again.stdout
    assert read_csv(root / "scaling.csv") == rows


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_quick_study_end_to_end(tmp_path):
    """configs/scaling/quick.yaml as shipped (~20 min on 2 cores): widths, seeds, intervals, the verdict,
    the stage-2 curve and every figure; a rerun trains nothing."""
    command = [
        sys.executable,
        str(REPO / "eval/scaling.py"),
        "--config",
        str(REPO / "configs/scaling/quick.yaml"),
        f"run.out_dir={tmp_path}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    root = tmp_path / "scaling_quick"
    rows = read_csv(root / "scaling.csv")
    assert [r["point"] for r in rows] == [
        f"{p}-w{w}-{s}" for w in (16, 64) for p in ("ae_only", "vtp") for s in (20, 40)
    ]
    for row in rows:
        assert row["seeds"] == 2 and row["stage2_steps"] == 60 and row["width"] in (16, 64)
        for column in ("gfid", "gfid_low", "gfid_high", "domain_fd", "domain_fd_low", "rfid", "linear_probe"):
            assert row[column] is not None and math.isfinite(row[column]), (row["point"], column)
        assert row["gfid_low"] <= row["gfid"] <= row["gfid_high"]
        assert row["gfid_label"] == "FID-50" and row["domain_fd_label"] == "FD-judge-200"
        assert len(row["gfid_per_seed"].split(";")) == 2
    # Wider latents: more channels per token, the same stage-1 FLOPs up to the bottleneck's projections.
    assert rows[4]["tokenizer_gflops"] != rows[0]["tokenizer_gflops"]
    point = root / "vtp-w64-40"
    assert (point / "eval" / "metrics.json").is_file() and (
        point / "seed1" / "eval" / "metrics.json"
    ).is_file()
    summary = (root / "summary.md").read_text()
    assert "## Verdict" in summary and "**width 16**" in summary and "**width 64**" in summary
    assert "## Stage-2 curve of vtp-w16-40" in summary
    for name in (
        "gfid_vs_compute",
        "domain_fd_vs_compute",
        "rfid_vs_compute",
        "probe_vs_gfid",
        "zero_shot_vs_gfid",
        "rfid_vs_gfid",
        "gfid_vs_stage2_steps",
    ):
        assert (root / "images" / f"{name}.png").is_file(), name
    curve = json.loads((root / "vtp-w16-40" / "curve" / "curve.json").read_text())["rows"]
    assert [r["stage2_steps"] for r in curve] == [30, 60]
    again = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("done earlier") == 8 and "training to step" not in again.stdout
    assert read_csv(root / "scaling.csv") == rows
