"""`vtp-gen stage2` in process: it learns, writes preview grids, exports a generator that samples, caches
first when the cache is missing, and refuses latents of another tokenizer."""

import csv
import json

import pytest
import torch
from test_stage2_helpers import TINY_RECIPE, make_latent_cache, tiny_overrides

from vtp_gen.config import ConfigError, load_config
from vtp_gen.interop.generators import load_generator
from vtp_gen.latents.manifest import CacheMismatchError
from vtp_gen.pipeline.sample.run import run as sample_run
from vtp_gen.pipeline.stage2.config import SampleConfig, Stage2Config
from vtp_gen.pipeline.stage2.run import run


def logged_losses(folder):
    with open(folder / "logs" / "metrics.csv") as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def test_training_learns_previews_and_exports_a_sampleable_generator(tmp_path, reference_dir):
    tokenizer = reference_dir / "vtp_tiny_default"  # decodes the synthetic 16x4x4 latents to 64 px
    cache = make_latent_cache(tmp_path / "cache")
    cfg = load_config(
        Stage2Config,
        TINY_RECIPE,
        tiny_overrides(
            tmp_path,
            "learn",
            cache,
            f"latents.tokenizer={tokenizer}",
            "trainer.max_steps=40",
            "trainer.checkpoint_every_n_steps=20",
            "optim.lr=3e-3",
            "preview.enabled=true",
            "preview.every_n_steps=15",
            "preview.rows=4",
            "preview.per_class=3",
            "preview.steps=4",
            "preview.cpu_rows=null",  # 4 rows on this CPU too
        ),
    )
    result = run(cfg)
    folder = result.folder
    losses = logged_losses(folder)
    assert len(losses) == 20
    assert sum(losses[-5:]) < 0.95 * sum(losses[:5]), losses  # ~0.9 here: the loss has a high floor
    # Grids at steps 15, 30 and at the end (40): 4 class rows x 3 samples of 64 px.
    assert [p.split("_")[-1] for p in result.summary["previews"]] == [
        "step00000015.png",
        "step00000030.png",
        "step00000040.png",
    ]
    from vtp_gen.data.images import load_png

    assert load_png(folder / "images" / "samples_step00000040.png").shape == (4 * 66 + 2, 3 * 66 + 2, 3)
    assert list((folder / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    # The export is the EMA (what samples), in the reference layout, with the latent stats beside it.
    generator = load_generator(folder / "generator")
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    for name, value in generator.state_dict().items():
        assert torch.equal(value, checkpoint["state_dict"][f"ema.module.{name}"])
    assert (generator.in_channels, generator.input_size, generator.num_classes) == (16, 4, 4)
    info = json.loads((folder / "generator" / "stage2.json").read_text())
    assert info["step"] == 40 and info["weights"] == "ema" and info["sampling"]["steps"] == 50
    assert (folder / "generator" / "latents_stats.pt").read_bytes() == (
        cache / "latents_stats.pt"
    ).read_bytes()
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["steps_per_sec"] > 0 and summary["peak_host_memory_gib"] > 0
    # `vtp-gen sample` reads both the exported folder and a training checkpoint (its EMA weights).
    for source, name in (
        (folder / "generator", "from_export"),
        (folder / "checkpoints" / "last.ckpt", "from_ckpt"),
    ):
        sample_cfg = load_config(
            SampleConfig,
            TINY_RECIPE.with_name("sample_tiny.yaml"),
            [
                f"generator={source}",
                f"tokenizer={tokenizer}",
                f"latent_stats={cache}",
                f"out_dir={tmp_path / name}",
                "num_samples=4",
                "sampling.steps=3",
                "progress_bar=false",
            ],
        )
        assert sample_run(sample_cfg).written == 4
    assert sorted(p.name for p in (tmp_path / "from_export" / "images").iterdir()) == sorted(
        p.name for p in (tmp_path / "from_ckpt" / "images").iterdir()
    )


def test_caches_first_when_missing_then_refuses_another_tokenizer(tmp_path, reference_dir):
    tokenizer = reference_dir / "vtp_tiny_default"
    overrides = [
        f"run.out_dir={tmp_path}",
        "run.name=fresh",
        f"latents.tokenizer={tokenizer}",
        "latents.shard_size=32",
        "data.image_size=64",  # the fixture tokenizer's size
        "data.max_samples=64",
        "data.batch_size=32",
        "model.overrides.depth=1",
        "model.overrides.hidden_size=32",
        "model.overrides.num_heads=2",
        "train.global_batch_size=16",
        "trainer.max_steps=2",
        "trainer.progress_bar=false",
        "preview.enabled=false",
    ]
    from vtp_gen.data.fashion_mnist import find_root

    try:
        find_root()  # the embedded images
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed: run `make setup`")
    result = run(load_config(Stage2Config, TINY_RECIPE, overrides))
    manifest = json.loads((tmp_path / "fresh" / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["counts"]["images"] == 64
    assert result.summary["step"] == 2 and result.summary["latent_shape"] == [16, 4, 4]
    other = reference_dir / "vtp_tiny_ls_qknorm"
    with pytest.raises(CacheMismatchError, match="made with tokenizer"):
        run(load_config(Stage2Config, TINY_RECIPE, [*overrides, f"latents.tokenizer={other}"]))


def test_the_cache_decides_the_latent_shape(tmp_path):
    cfg = load_config(
        Stage2Config,
        TINY_RECIPE,
        tiny_overrides(
            tmp_path, "shape", make_latent_cache(tmp_path / "c"), "model.overrides.in_channels=64"
        ),
    )
    with pytest.raises(ConfigError, match="in_channels: set by the cache"):
        run(cfg)


def test_a_missing_cache_is_an_error_when_caching_is_off(tmp_path):
    cfg = load_config(Stage2Config, TINY_RECIPE, tiny_overrides(tmp_path, "none", tmp_path / "no_cache"))
    with pytest.raises(FileNotFoundError, match="make cache"):
        run(cfg)
