"""The shipped stage-1 recipes: paper settings, and the paper-scale systems build (on the meta device)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vtp_gen.config import load_config
from vtp_gen.models.tokenizer import count_parameters
from vtp_gen.pipeline.stage1.config import Stage1Config
from vtp_gen.pipeline.stage1.run import build_tokenizer
from vtp_gen.systems.tokenizer_pretraining import TokenizerPretraining

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "stage1"
# (lambda_clip, lambda_ssl, lambda_rec): the paper's four settings.
SETTINGS = {
    "ae_only": (0.0, 0.0, 0.1),
    "clip_ae": (1.0, 0.0, 0.1),
    "ssl_ae": (0.0, 1.0, 0.1),
    "vtp": (1.0, 1.0, 0.1),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_presets_set_only_the_objective_weights(name):
    values = OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml"))
    assert list(values) == ["objectives"] and set(values["objectives"]) == {
        "lambda_clip",
        "lambda_ssl",
        "lambda_rec",
    }
    cfg = load_config(Stage1Config, [CONFIGS / "vtp_b.yaml", CONFIGS / f"{name}.yaml"])
    objectives = cfg.objectives
    assert (objectives.lambda_clip, objectives.lambda_ssl, objectives.lambda_rec) == SETTINGS[name]
    # Layering keeps everything else of the base recipe.
    assert cfg.model.preset == "vtp-b" and cfg.data.image_size == 256


@pytest.mark.parametrize(
    "recipe, published_millions",
    [("vtp_s", None), ("vtp_b", 295.6), ("vtp_l", 731.6)],
)
def test_paper_scale_recipes_build(recipe, published_millions):
    cfg = load_config(Stage1Config, CONFIGS / f"{recipe}.yaml")
    assert cfg.data.image_size == 256 and cfg.trainer.precision == "bf16-mixed"
    assert (cfg.objectives.ssl_fraction, cfg.objectives.rec_fraction) == (0.25, 0.125)
    with torch.device("meta"):  # shapes only: VTP-L costs no memory
        model = build_tokenizer(cfg)
        system = TokenizerPretraining(model, cfg.objectives, cfg.ssl, cfg.optim, cfg.trainer.max_steps)
    patch = model.config.vision_patch_size
    assert patch == 16 and model.config.latent_channels == 64
    for size in (cfg.data.image_size, cfg.ssl.global_crop_size, cfg.ssl.local_crop_size):
        assert size % patch == 0
    if published_millions is not None:
        assert count_parameters(model)["total"] / 1e6 == pytest.approx(published_millions, abs=0.1)
    assert system.dino_head.last_layer.weight.shape == (cfg.ssl.prototypes, cfg.ssl.head_bottleneck_dim)
    # The teacher copies trunk + head and is never optimised.
    teacher = sum(p.numel() for p in system.teacher.parameters())
    assert teacher == sum(p.numel() for p in model.trunk.parameters()) + sum(
        p.numel() for p in system.dino_head.parameters()
    )
    assert not any(p.requires_grad for p in system.teacher.parameters())
