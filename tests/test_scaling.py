"""The scaling study's pieces: FLOP accounting, point planning and resume rules, CSV rows, figures.

The end-to-end study (2 presets x 1 budget, micro sizes) is the slow test at the bottom.
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
from vtp_gen.metrics.report import MetricRecord, Protocol, write_metrics_json
from vtp_gen.pipeline.cli import build_config
from vtp_gen.pipeline.scaling.flops import batches_per_step, count_flops, pretraining_step_flops
from vtp_gen.pipeline.scaling.plots import pearson, plot_all
from vtp_gen.pipeline.scaling.results import (
    COLUMNS,
    build_row,
    eval_values,
    objectives_label,
    read_csv,
    write_csv,
)
from vtp_gen.pipeline.scaling.run import finished_record, plan_points, record_point, step_calls

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
def _study(*overrides: str):
    return build_config("scaling", [str(REPO / "configs/scaling/tiny.yaml")], None, list(overrides))


def test_points_cover_the_grid_and_each_step_is_configured_as_its_command(tmp_path):
    cfg = _study(f"run.out_dir={tmp_path}", "steps=[200,100]")
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


def test_figures_are_written_from_real_rows(tmp_path):
    rows = _rows(tmp_path)
    paths = plot_all(rows, tmp_path / "images")
    assert [p.name for p in paths] == ["gfid_vs_compute.png", "probe_vs_gfid.png", "rfid_vs_gfid.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.size[0] > 400 and image.size[1] > 300
    # A figure without a usable point is left out rather than drawn empty.
    no_rfid = [{k: v for k, v in r.items() if k != "rfid"} for r in rows]
    assert [p.name for p in plot_all(no_rfid, tmp_path / "partial")] == [
        "gfid_vs_compute.png",
        "probe_vs_gfid.png",
    ]


def test_pearson():
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert pearson([1, 2], [1, 2]) is None and pearson([1, 1, 1], [1, 2, 3]) is None
    assert math.isclose(pearson([1, 2, 3, 4], [1, 3, 2, 4]), 0.8)


@pytest.mark.usefixtures("fashion_mnist")
def test_a_finished_point_is_reused_only_with_the_same_configs(tmp_path):
    cfg = _study(f"run.out_dir={tmp_path}", "steps=[100]", "stage1.overrides=[data.batch_size=16]")
    point = plan_points(cfg)[0]
    configs = {c.step: c.build() for c in step_calls(cfg, point)}
    point_dir = tmp_path / "scaling" / point.name
    _write_eval(point_dir, gfid=90.0, probe=0.5, with_zero_shot=False)
    flops = pretraining_step_flops(configs["stage1"])
    record = record_point(point, point_dir, configs, flops, {"total": 1.0})
    plain = json.loads(json.dumps(record["configs"]))
    assert finished_record(point_dir, plain)["row"]["gfid"] == 90.0
    plain["stage2"]["trainer"]["max_steps"] += 1
    with pytest.raises(ConfigError, match=r"other settings \(stage2.trainer.max_steps"):
        finished_record(point_dir, plain)


# ----------------------------------------------------------------------------- end to end
MICRO = """
presets: [configs/stage1/ae_only.yaml, configs/stage1/vtp.yaml]
steps: [12]
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
