"""Metric records, protocols, metrics.json and report.md (vtp_gen.metrics.report)."""

import dataclasses
import json

import numpy as np
import pytest

from vtp_gen.metrics.report import (
    INCEPTION_FEATURES,
    MetricRecord,
    Protocol,
    ReportImage,
    count_text,
    format_value,
    generator_label,
    guidance_label,
    read_metrics_json,
    sampler_label,
    write_metrics_json,
    write_report,
)

FMNIST = Protocol("Fashion-MNIST", 32, 500, reference="Fashion-MNIST test", num_reference=500, features="x")


def test_labels_carry_the_sample_count():
    assert MetricRecord("gfid", 1.0, FMNIST).label == "FID-500"
    assert MetricRecord("gfid", 1.0, dataclasses.replace(FMNIST, num_samples=50_000)).label == "FID-50k"
    assert MetricRecord("rfid", 1.0, dataclasses.replace(FMNIST, num_samples=250)).label == "rFID-250"
    assert MetricRecord("kid", 0.1, FMNIST).label == "KID-500"
    assert MetricRecord("psnr", 30.0, FMNIST).label == "PSNR (N=500)"
    assert MetricRecord("zero_shot_top1", 0.5, FMNIST).label == "zero-shot top-1 (N=500)"
    assert count_text(10_000) == "10k" and count_text(1234) == "1234" and count_text(None) == "?"


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        MetricRecord("fid50k", 1.0, FMNIST)


def test_every_protocol_field_separates_comparisons():
    base = MetricRecord("gfid", 3.0, FMNIST)
    for f in dataclasses.fields(Protocol):
        value = getattr(FMNIST, f.name)
        changed = value + 1 if isinstance(value, int) else f"{value}!"
        other = MetricRecord("gfid", 3.0, dataclasses.replace(FMNIST, **{f.name: changed}))
        assert other.comparison_key() != base.comparison_key(), f.name
    assert (
        MetricRecord("gfid", 9.0, FMNIST).comparison_key() == base.comparison_key()
    )  # value is not protocol
    assert MetricRecord("rfid", 3.0, FMNIST).comparison_key() != base.comparison_key()


def test_vocabulary_strings():
    assert sampler_label("euler", 250, 0.075) == "euler, 250 steps, shift 0.075, uniform labels"
    assert sampler_label("heun", 50, 0.0, "balanced") == "heun, 50 steps, no shift, balanced labels"
    assert guidance_label(1.0) == "none"
    assert guidance_label(1.5, 0.1, "reference") == "CFG 1.5 for t >= 0.1 (first 3 channels)"
    assert (
        generator_label("LightningDiT-XL/1", epochs=100_000 * 1024 / 1_281_167) == "LightningDiT-XL/1, 80 ep"
    )
    assert generator_label("LightningDiT-T/1", steps=1500) == "LightningDiT-T/1, 1500 steps"


def test_inception_features_name_matches_the_metrics_library():
    from vtp_gen.metrics.generation import INCEPTION_EXTRACTOR

    assert INCEPTION_FEATURES == INCEPTION_EXTRACTOR


def test_formatting():
    assert format_value("zero_shot_top1", 0.7823) == "78.2"
    assert format_value("gfid", 2.8149) == "2.81"
    assert format_value("kid", 0.01234, 0.001) == "0.0123 ± 0.0010"
    assert format_value("inception_score", None) == "n/a"


def test_metrics_json_round_trip_and_refuses_other_files(tmp_path):
    records = [
        MetricRecord("gfid", 41.5, FMNIST),
        MetricRecord("inception_score", None, FMNIST, unavailable="no classifier"),
        MetricRecord("kid", 0.02, FMNIST, std=0.003, extra={"subset_size": 500}),
    ]
    path = write_metrics_json(tmp_path / "metrics.json", records, {"run": "r"})
    info, loaded = read_metrics_json(path)
    assert info == {"run": "r"}
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in records]
    payload = json.loads(path.read_text())
    assert (
        payload["metrics"][0]["label"] == "FID-500"
        and payload["metrics"][0]["protocol"]["num_samples"] == 500
    )
    (tmp_path / "stage1.json").write_text(json.dumps({"evaluation": {}}))
    with pytest.raises(ValueError, match="not an eval metrics.json"):
        read_metrics_json(tmp_path / "stage1.json")


def test_report_copies_images_and_lists_every_metric(tmp_path):
    from vtp_gen.data.images import save_png

    source = save_png(np.zeros((8, 8, 3), np.uint8), tmp_path / "src" / "loss_curves.png")
    records = [MetricRecord("gfid", 41.5, FMNIST), MetricRecord("psnr", 20.0, FMNIST)]
    images = [
        ReportImage("Stage 1 loss curves", source, name="stage1_loss_curves.png"),
        ReportImage("Missing", tmp_path / "nope.png"),
    ]
    report = write_report(tmp_path / "out", records, {"run": "r", "seconds": {"total": 12.0}}, images)
    text = report.read_text()
    assert "| FID-500 | 41.50 |" in text and "| PSNR (N=500) | 20.00 |" in text
    assert "![Stage 1 loss curves](images/stage1_loss_curves.png)" in text and "Missing" not in text
    assert (tmp_path / "out" / "images" / "stage1_loss_curves.png").is_file()
    assert read_metrics_json(tmp_path / "out" / "metrics.json")[1][0].value == 41.5
