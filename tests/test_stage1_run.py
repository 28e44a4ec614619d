"""The whole stage-1 command in-process: both phases, export, evaluation, plots, no-op rerun; and the plots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_stage1_resume import SMALL

import vtp_gen
from vtp_gen.config import load_config
from vtp_gen.data.images import load_png
from vtp_gen.pipeline.stage1.config import Stage1Config
from vtp_gen.pipeline.stage1.run import run
from vtp_gen.utils.plots import plot_loss_curves, read_metrics

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.usefixtures("fashion_mnist")
def test_stage1_run_writes_every_output_and_a_rerun_is_a_no_op(tmp_path, capsys):
    overrides = [
        *SMALL,
        f"run.out_dir={tmp_path}",
        "run.name=t",
        "trainer.max_steps=6",
        "decoder_finetune.max_steps=4",
        "decoder_finetune.disc_start_step=2",
    ]
    cfg = load_config(Stage1Config, REPO / "configs/stage1/tiny.yaml", overrides)
    metrics = run(cfg)
    stage = tmp_path / "t" / "stage1"

    tokenizer = vtp_gen.load_tokenizer(stage / "tokenizer")
    with torch.no_grad():
        latents = tokenizer.encode_latents(torch.randn(2, 3, 32, 32))
    assert latents.shape == (2, 16, 8, 8)
    # The fine-tune changed the decoder only.
    before = load_file(str(stage / "pretrained_tokenizer" / "model.safetensors"))
    after = load_file(str(stage / "tokenizer" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        if name.endswith("rope_embed.periods"):
            continue  # a constant buffer
        same = torch.equal(before[name], after[name])
        assert same != name.startswith("pixel_decoder."), name

    grid = load_png(stage / "images" / "reconstructions.png")
    assert grid.shape[0] > grid.shape[1] / 4  # two rows: originals over reconstructions
    assert load_png(stage / "images" / "loss_curves.png").shape[1] > 400

    saved = json.loads((stage / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    evaluation = saved["evaluation"]
    assert evaluation["zero_shot"]["num_images"] == 64 and 0 <= evaluation["zero_shot"]["top1"] <= 100
    assert evaluation["reconstruction"]["num_images"] == 32 and evaluation["reconstruction"]["psnr"] > 0
    assert saved["pretrain_steps"] == 6 and saved["finetune_steps"] == 4
    for key in ("train/loss", "train/clip_loss", "train/ssl_loss", "train/rec_loss"):
        assert key in saved["pretrain"], key
    assert "finetune/rec_loss" in saved["finetune"]

    capsys.readouterr()
    assert run(cfg)["evaluation"] == evaluation
    assert "already complete" in capsys.readouterr().out

    # More pre-training steps later: pre-training resumes and the fine-tune is redone on the new encoder.
    longer = load_config(Stage1Config, REPO / "configs/stage1/tiny.yaml", [*overrides, "trainer.max_steps=8"])
    metrics = run(longer)
    assert metrics["pretrain_steps"] == 8 and metrics["finetune_steps"] == 4
    assert (stage / "decoder_finetune.before_pretrain_step6").is_dir()
    retrained = load_file(str(stage / "tokenizer" / "model.safetensors"))
    assert not torch.equal(retrained["trunk.cls_token"], after["trunk.cls_token"])
    assert torch.equal(
        retrained["trunk.cls_token"],
        load_file(str(stage / "pretrained_tokenizer" / "model.safetensors"))["trunk.cls_token"],
    )


def test_read_metrics_merges_resumed_logs_and_plots(tmp_path):
    first, second = tmp_path / "metrics.part000.csv", tmp_path / "metrics.csv"
    first.write_text("epoch,step,train/loss\n0,9,5.0\n0,19,4.0\n0,29,3.5\n")
    # Resumed from step 19: step 29 is logged again (and wins), a new key appears.
    second.write_text("epoch,step,train/loss,train/lr\n0,29,3.0,0.1\n0,39,2.0,\n")
    metrics = read_metrics([first, second, tmp_path / "missing.csv"])
    assert metrics["train/loss"] == [(9, 5.0), (19, 4.0), (29, 3.0), (39, 2.0)]
    assert metrics["train/lr"] == [(29, 0.1)]
    path = plot_loss_curves(metrics, ["train/loss", "train/lr", "not/logged"], tmp_path / "curves.png")
    assert load_png(path).ndim == 3
    with pytest.raises(ValueError, match="none of"):
        plot_loss_curves(metrics, ["not/logged"], tmp_path / "x.png")


@pytest.mark.slow
@pytest.mark.usefixtures("fashion_mnist")
def test_make_stage1_tiny_default_meets_its_targets(tmp_path):
    """The embedded default end to end: time, falling reconstruction loss, zero-shot well above chance."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    started = time.time()
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "stage1/train.py"),
            f"run.out_dir={tmp_path}",
            "trainer.progress_bar=false",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    elapsed = time.time() - started
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "default" / "stage1" / "metrics.json").read_text())
    print(f"make stage1 (tiny): {elapsed:.0f} s; {json.dumps(metrics['evaluation'])}")
    rec = metrics["pretrain"]["train/rec_loss"]
    assert rec["last_mean"] < 0.5 * rec["first"]
    assert metrics["evaluation"]["zero_shot"]["top1"] > 40.0
    assert metrics["evaluation"]["reconstruction"]["psnr"] > 18.0
