"""The shipped stage-2 recipes: they load against the schemas and hold the published values."""

import pytest
import torch
from test_stage2_helpers import REPO_ROOT

from vtp_gen import create_model
from vtp_gen.config import load_config
from vtp_gen.pipeline.stage2.config import SampleConfig, Stage2Config

RECIPES = REPO_ROOT / "configs" / "stage2"


def recipe(name: str):
    return load_config(Stage2Config, RECIPES / f"{name}.yaml")


@pytest.mark.parametrize("name", ["lightningdit_xl1", "lightningdit_b1"])
def test_vtp_generation_recipes_are_the_papers(name):
    cfg = recipe(name)
    assert (
        cfg.model.name
        == {"lightningdit_xl1": "LightningDiT-XL/1", "lightningdit_b1": "LightningDiT-B/1"}[name]
    )
    assert cfg.model.num_classes == 1000
    assert cfg.train.global_batch_size == 1024
    assert cfg.trainer.max_steps == 100_000  # 100k x 1024 / 1,281,167 = 80 epochs
    assert round(cfg.trainer.max_steps * cfg.train.global_batch_size / 1_281_167) == 80
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.gradient_clip_val == 0
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (2e-4, 0.9, 0.95, 0.0)
    assert cfg.ema.decay == 0.9999
    t = cfg.transport
    assert (t.time_distribution, t.logit_mean, t.logit_std, t.cosine_weight) == (
        "logit_normal",
        -0.75,
        1.0,
        1.0,
    )
    assert (cfg.latents.flip_prob, cfg.latents.multiplier) == (0.5, 1.0)
    s = cfg.sampling
    assert (s.method, s.steps, s.shift, s.cfg_scale) == ("euler", 250, 0.075, 1.0)


def test_b1_differs_from_xl1_only_in_the_model_and_the_run():
    xl, b = recipe("lightningdit_xl1"), recipe("lightningdit_b1")
    for section in ("train", "trainer", "transport", "optim", "ema", "sampling"):
        assert xl[section] == b[section], section
    assert {k: v for k, v in xl.latents.items() if k != "cache_dir"} == {
        k: v for k, v in b.latents.items() if k != "cache_dir"
    }


@pytest.mark.parametrize("name", ["sit_xl2", "dit_xl2"])
def test_sit_and_dit_recipes_are_as_published(name):
    cfg = recipe(name)
    assert cfg.train.global_batch_size == 256 and cfg.trainer.max_steps == 400_000
    assert (cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2, cfg.optim.weight_decay) == (1e-4, 0.9, 0.999, 0.0)
    assert cfg.ema.decay == 0.9999 and cfg.trainer.precision == "32-true"
    assert (cfg.transport.time_distribution, cfg.transport.cosine_weight) == ("uniform", 0.0)
    assert cfg.sampling.steps == 250 and cfg.sampling.cfg_scale == 1.0
    assert cfg.sampling.method == {"sit_xl2": "sde", "dit_xl2": "euler"}[name]


@pytest.mark.parametrize(
    "name, millions",
    [("lightningdit_xl1", 675.3), ("lightningdit_b1", 130.6), ("sit_xl2", 675.7), ("dit_xl2", 675.4)],
)
def test_recipe_models_on_vtp_latents(name, millions):
    cfg = recipe(name)
    with torch.device("meta"):  # shapes only, no memory
        model = create_model(
            cfg.model.name,
            input_size=16,
            in_channels=64,
            num_classes=cfg.model.num_classes,
            **cfg.model.overrides,
        )
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)
    assert model.out_channels == 64  # a velocity for every latent channel


def test_tiny_recipe_runs_on_cpu_in_fp32():
    cfg = recipe("tiny")
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.precision == "32-true"
    assert cfg.latents.make_cache and cfg.model.name.startswith("LightningDiT-T")
    assert cfg.preview.cfg_scale is not None and cfg.sampling.cfg_scale == 1.0  # guidance for the grid only


def test_cache_settings_of_the_tiny_recipe_match_make_cache():
    # `make stage2` may make the cache `make cache` would make: the same folder must mean the same cache.
    from vtp_gen.pipeline.cache.config import CacheConfig

    cache = load_config(CacheConfig, RECIPES / "cache_tiny.yaml")
    tiny = recipe("tiny")
    for key in ("shard_size", "stats_max_images", "flips", "storage_dtype"):
        assert tiny.latents[key] == cache[key], key
    for key in ("source", "split", "image_size", "max_samples"):
        assert tiny.data[key] == cache.data[key], key


def test_sample_recipes():
    paper = load_config(SampleConfig, RECIPES / "sample_paper.yaml")
    assert (paper.num_samples, paper.labels) == (50_000, "uniform")
    s = paper.sampling
    assert (s.method, s.steps, s.shift, s.cfg_scale) == ("euler", 250, 0.075, 1.0)
    tiny = load_config(SampleConfig, RECIPES / "sample_tiny.yaml")
    assert tiny.labels == "balanced" and tiny.accelerator == "cpu"
