"""The text-conditioned LightningDiT: shapes, caption dependence, masking, presets; class models untouched."""

from pathlib import Path

import pytest
import torch

from vtp_gen import create_model, list_models
from vtp_gen.models.generators import LightningDiT, TextLightningDiT

REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny(**overrides):
    torch.manual_seed(0)
    return create_model("TextDiT-T/2", **overrides)


def inputs(batch=3, length=6, text_dim=64):
    torch.manual_seed(1)
    x = torch.randn(batch, 16, 8, 8)
    t = torch.rand(batch)
    text = torch.randn(batch, length, text_dim)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, 4:] = False
    pooled = torch.randn(batch, text_dim)
    return x, t, text, mask, pooled


def _wake_up(model):
    # Zero-initialised outputs make a fresh model ignore its inputs; perturb them to test the wiring.
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(std=0.05)
    return model


@pytest.mark.parametrize("adaln", ["single", "block"])
def test_output_shape_and_caption_dependence(adaln):
    model = _wake_up(tiny(adaln=adaln))
    x, t, text, mask, pooled = inputs()
    out = model(x, t, text, mask, pooled)
    assert out.shape == x.shape
    other = model(x, t, text + 1.0, mask, pooled)
    assert not torch.allclose(out, other)
    # Masked (padding) caption positions have no influence at all.
    text2 = text.clone()
    text2[:, 4:] = 100.0
    torch.testing.assert_close(model(x, t, text2, mask, pooled), out)
    # The pooled embedding feeds the adaLN path.
    assert not torch.allclose(model(x, t, text, mask, pooled + 1.0), out)


def test_a_fresh_model_predicts_zero_and_ignores_the_caption():
    # adaLN-Zero final layer and zeroed cross-attention outputs (PixArt-alpha's initialisation).
    model = tiny()
    x, t, text, mask, pooled = inputs()
    assert not model(x, t, text, mask, pooled).any()
    assert all(not b.cross_attn.proj.weight.any() for b in model.blocks)


def test_gradients_reach_every_trainable_parameter():
    model = _wake_up(tiny())
    x, t, text, mask, pooled = inputs()
    model(x, t, text, mask, pooled).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_presets_are_registered_beside_the_class_conditional_ones():
    names = set(list_models("TextDiT-"))
    assert {f"TextDiT-{s}/{p}" for s in ("T", "B", "L", "XL") for p in (1, 2)} <= names
    assert "LightningDiT-XL/1" in list_models("LightningDiT")
    assert not isinstance(create_model("LightningDiT-T/2"), TextLightningDiT)


def test_adaln_single_saves_the_per_block_projections_at_xl():
    with torch.device("meta"):
        single = create_model("TextDiT-XL/1")
        block = create_model("TextDiT-XL/1", adaln="block")
        classes = create_model("LightningDiT-XL/1")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert isinstance(classes, LightningDiT)
    # 28 blocks x (1152 -> 6 x 1152) projections replaced by one shared projection + 28 small tables.
    saved = 27 * (1152 * 6 * 1152 + 6 * 1152) - 28 * 6 * 1152
    assert count(block) - count(single) == saved
    assert single.config["input_size"] == 16 and single.config["in_channels"] == 64
    assert single.config["text_dim"] == 768


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="adaln"):
        tiny(adaln="joint")
    model = tiny()
    x, t, text, mask, _ = inputs()
    with pytest.raises(ValueError, match="pooled_text"):
        model(x, t, text, mask)
    with pytest.raises(ValueError, match="captions"):
        model(x, t, text[:2], mask[:2], None)


def test_the_paper_scale_recipe_builds_a_dit_xl_sized_model_on_the_meta_device():
    from vtp_gen.config import load_config
    from vtp_gen.pipeline.cli import schema_for_recipe
    from vtp_gen.pipeline.t2i.config import T2IConfig

    recipe = REPO_ROOT / "configs" / "stage2" / "t2i_xl_laion.yaml"
    assert schema_for_recipe(recipe) is T2IConfig
    cfg = load_config(T2IConfig, recipe)
    assert cfg.trainer.strategy == "ddp" and cfg.train.global_batch_size == 1024
    assert cfg.data.source == "webdataset" and cfg.data.image_size == 256
    with torch.device("meta"):
        # VTP-L-f16d64 at 256 px: 16x16x64 latents, 768-wide text tower, 77 caption tokens.
        model = create_model(cfg.model.name, input_size=16, in_channels=64, text_dim=768, pooled_dim=768)
        out = model(
            torch.empty(2, 64, 16, 16),
            torch.empty(2),
            torch.empty(2, 77, 768),
            torch.empty(2, 77, dtype=torch.bool),
            torch.empty(2, 768),
        )
    assert out.shape == (2, 64, 16, 16)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert 600e6 < params < 625e6, params  # 612M: LightningDiT-XL/1 is 675M; adaLN-single saves 215M
