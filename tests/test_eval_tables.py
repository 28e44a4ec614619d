"""Paper numbers as data and `make tables` (vtp_gen.metrics.paper_numbers / tables, eval/tables.py)."""

import dataclasses
import subprocess
import sys

import pytest

from vtp_gen.metrics.paper_numbers import (
    ADM_REFERENCE,
    IMAGENET_VAL,
    TABLES,
    gfid_protocol,
    paper_numbers,
)
from vtp_gen.metrics.report import (
    INCEPTION_FEATURES,
    RECONSTRUCTION_REFERENCE,
    MetricRecord,
    Protocol,
    write_metrics_json,
)
from vtp_gen.metrics.tables import build_tables, find_runs, render_tables

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def _value(table, row, metric, column=""):
    hits = [
        n.record.value
        for n in paper_numbers(table)
        if n.row == row and n.record.metric == metric and (not column or n.column == column)
    ]
    assert len(hits) == 1, (table, row, metric, hits)
    return hits[0]


def test_headline_numbers_are_those_of_the_paper():
    # docs/vtp-method.md section 6
    expected = {
        "VTP-S-f16d64": (0.667, 0.775, 0.98, 5.46),
        "VTP-B-f16d64": (0.732, 0.810, 0.74, 3.88),
        "VTP-L-f16d64": (0.782, 0.857, 0.36, 2.81),
    }
    for row, (zs, lp, rfid, gfid) in expected.items():
        assert _value("tokenizers", row, "zero_shot_top1") == pytest.approx(zs)
        assert _value("tokenizers", row, "linear_probe") == pytest.approx(lp)
        assert _value("tokenizers", row, "rfid") == rfid
        assert _value("tokenizers", row, "gfid") == gfid
    assert _value("tokenizers", "VTP-L-f16d64 (paper v2)", "gfid") == 2.62
    assert _value("guided", "VTP-L-f16d64", "gfid", "gFID-50k, 80 ep") == 1.44
    assert _value("guided", "VTP-L-f16d64", "gfid", "gFID-50k, 600 ep") == 1.11
    assert _value("peer_systems", "REPA-E", "gfid") == 3.46
    assert _value("ae_architectures", "ViT-L AE", "psnr") == 31.28
    assert _value("data_scaling", "VTP (CLIP+SSL+AE)", "gfid", "100M images") == 27.45
    assert _value("data_scaling", "AE", "gfid", "100K images") == 58.37
    assert _value("compute_scaling", "CLIP+SSL+AE (VTP)", "gfid", "gFID-10k, most compute") == 27.8


def test_headline_protocols():
    gfid = [n.record for n in paper_numbers("tokenizers") if n.record.metric == "gfid"]
    for record in gfid:
        p = record.protocol
        assert (p.num_samples, p.reference, p.guidance, p.features) == (
            50_000,
            ADM_REFERENCE,
            "none",
            INCEPTION_FEATURES,
        )
        assert p.generator == "LightningDiT-XL/1, 80 ep" and p.method.startswith(
            "euler, 250 steps, shift 0.075"
        )
    scaling = [n.record.protocol for n in paper_numbers("data_scaling")]
    assert {p.num_samples for p in scaling} == {10_000}


def test_every_paper_column_holds_one_protocol():
    tables = build_tables([])  # building raises when two numbers of one column differ in protocol
    assert [t.title for t in tables] == [info.title for info in TABLES.values()]
    for table in tables:
        for column in table.columns:
            assert column.key == column.example.comparison_key()


def test_mixing_protocols_in_a_column_is_an_error():
    from vtp_gen.metrics.tables import _add

    columns = []
    _add(columns, "gFID", MetricRecord("gfid", 1.0, gfid_protocol()), "a", "1.00")
    with pytest.raises(ValueError, match="mix protocols"):
        _add(columns, "gFID", MetricRecord("gfid", 1.0, gfid_protocol(num_samples=10_000)), "b", "1.00")


def _write_run(runs, name, records):
    write_metrics_json(runs / name / "eval" / "metrics.json", records, {"run": name})


def test_runs_join_paper_columns_only_under_the_same_protocol(tmp_path):
    runs = tmp_path / "runs"
    same_rfid = Protocol(
        IMAGENET_VAL, 256, 50_000, reference=RECONSTRUCTION_REFERENCE, features=INCEPTION_FEATURES
    )
    _write_run(
        runs,
        "official_l",
        [
            MetricRecord("rfid", 0.37, same_rfid),
            MetricRecord("gfid", 2.9, gfid_protocol()),
            # FID-10k of the same generator: must not sit in the FID-50k column.
            MetricRecord("gfid", 3.5, gfid_protocol(num_samples=10_000)),
            # a stand-in feature network: never an Inception FID
            MetricRecord("rfid", 0.1, dataclasses.replace(same_rfid, features="pixels")),
        ],
    )
    fm = Protocol(
        "Fashion-MNIST",
        32,
        500,
        reference="Fashion-MNIST test",
        num_reference=500,
        features=INCEPTION_FEATURES,
        method="euler, 50 steps, shift 0.3, balanced labels",
        guidance="none",
        generator="LightningDiT-T/1, 3 ep",
    )
    _write_run(runs, "tiny", [MetricRecord("gfid", 41.0, fm)])
    _write_run(
        runs,
        "tiny_heun",
        [
            MetricRecord(
                "gfid", 39.0, dataclasses.replace(fm, method="heun, 50 steps, shift 0.3, balanced labels")
            )
        ],
    )
    (runs / "broken" / "eval").mkdir(parents=True)
    (runs / "broken" / "eval" / "metrics.json").write_text("{}")

    found, problems = find_runs(runs)
    assert [r.name for r in found] == ["official_l", "tiny", "tiny_heun"] and "broken" in problems[0]
    tables = {t.title: t for t in build_tables(found)}
    headline = tables[TABLES["tokenizers"].title]
    by_heading = {c.heading: c for c in headline.columns}
    assert by_heading["rFID-50k"].cells["run: official_l"] == "0.37"
    assert by_heading["gFID-50k"].cells["run: official_l"] == "2.90"
    assert "run: tiny" not in headline.rows

    imagenet_runs = tables["Your runs on ImageNet-1k at 256 px"]
    assert {c.heading for c in imagenet_runs.columns} == {"gFID-10k", "rFID-50k"}
    assert all("2.90" not in c.cells.values() for c in imagenet_runs.columns)

    fm_table = tables["Your runs on Fashion-MNIST at 32 px"]
    # Same label, different sampler: two columns, told apart by footnotes.
    assert [c.heading for c in fm_table.columns] == ["gFID-500", "gFID-500 #2"]
    text, _ = fm_table.render()
    assert "euler, 50 steps" in text and "heun, 50 steps" in text

    markdown = render_tables(runs)
    assert "run: official_l" in markdown and "Your runs on Fashion-MNIST at 32 px" in markdown


def test_make_tables_script_writes_markdown(tmp_path):
    out = tmp_path / "tables.md"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "eval" / "tables.py"),
            "--runs",
            str(tmp_path / "none"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "VTP-L-f16d64 | 78.2 | 85.7 | 0.36 | 2.81" in done.stdout
    assert out.read_text() + "\n" == done.stdout
