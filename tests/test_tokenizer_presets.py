"""Presets: published parameter totals (counted on the meta device), registry, and the CPU preset."""

import pytest
import torch

from vtp_gen.models.registry import create_model
from vtp_gen.models.tokenizer import VTPConfig, VTPModel, count_parameters, preset_config

# Published totals: trunk + decoder + text tower + projections.
PUBLISHED_TOTAL_MILLIONS = {"vtp-b": 295.6, "vtp-l": 731.6}


def meta_model(name, **overrides):
    with torch.device("meta"):
        return VTPModel(preset_config(name, **overrides))


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL_MILLIONS))
def test_preset_totals_match_the_paper(name):
    model = meta_model(name)
    assert next(model.parameters()).is_meta  # nothing was allocated
    counts = count_parameters(model)
    assert round(counts["total"] / 1e6, 1) == PUBLISHED_TOTAL_MILLIONS[name]
    assert counts["total"] == sum(p.numel() for p in model.parameters())


def test_part_counts_follow_the_architecture():
    counts = count_parameters(meta_model("vtp-b"))
    # Exact counts derived by hand from vtp-method.md section 2 (SwiGLU hidden 2048 at D=768).
    block_rms = (
        768 * 2 + (768 * 2304 + 2304) + (768 * 768 + 768) + 2 * (768 * 2048 + 2048) + (2048 * 768 + 768)
    )
    trunk = (3 * 16 * 16 * 768 + 768) + 2 * 768 + 12 * block_rms + 768 + 768 * 64
    decoder = (64 * 768 + 768) + 12 * (block_rms + 2 * 768) + 2 * 768 + (768 * 768 + 768)
    assert counts["trunk"] == trunk
    assert counts["pixel_decoder"] == decoder
    assert counts["projections"] == 768 * 768 + 1
    large = count_parameters(meta_model("vtp-l"))
    # SwiGLU hidden for D=1024: int(4096 * 2/3) = 2730, rounded up to a multiple of 8.
    assert meta_model("vtp-l").trunk.blocks[0].mlp.w1.out_features == 2736
    assert round((large["trunk"] + large["pixel_decoder"]) / 1e6, 1) == 607.1


def test_registry_builds_presets_with_overrides():
    model = create_model("vtp-tiny", decoder_depth=1)
    assert isinstance(model, VTPModel)
    assert len(model.pixel_decoder.blocks) == 1
    with pytest.raises(ValueError, match="did you mean 'decoder_depth'"):
        create_model("vtp-tiny", decoder_dept=1)
    with pytest.raises(KeyError, match="vtp-tiny"):
        create_model("vtp-tiy")


def test_vtp_tiny_shapes():
    config = preset_config("vtp-tiny")
    assert (config.image_size, config.vision_patch_size, config.latent_channels, config.latent_size) == (
        32,
        4,
        16,
        8,
    )
    torch.manual_seed(0)
    model = VTPModel(config)
    images = torch.randn(4, 3, 32, 32)
    latents = model.encode_latents(images)
    assert latents.shape == (4, 16, 8, 8)
    assert model.decode(latents).shape == images.shape
    assert model.encode_text(torch.randint(0, 49407, (4, 32))).shape == (4, 64)
    assert model.encode_image(images, normalize=True).norm(dim=-1).allclose(torch.ones(4))


def test_config_validation_errors():
    with pytest.raises(ValueError, match="head_dim % 4"):
        VTPConfig(vision_embed_dim=60, vision_num_heads=6)  # head_dim 10
    with pytest.raises(ValueError, match="vision_ffn_layer"):
        VTPConfig(vision_ffn_layer="geglu")
    with pytest.raises(ValueError, match="multiple of vision_patch_size"):
        VTPConfig(image_size=250)


def test_config_to_dict_has_exactly_the_official_keys():
    keys = set(VTPConfig().to_dict())
    assert "vision_num_register_tokens" not in keys  # vtp_gen-only keys appear only when used
    assert {"architectures", "model_type", "dtype", "transformers_version"} <= keys
    assert VTPConfig.from_dict(VTPConfig().to_dict()) == VTPConfig()


def test_presets_are_listed_by_the_registry():
    from vtp_gen.models.registry import list_models

    assert {"vtp-tiny", "vtp-s", "vtp-b", "vtp-l"} <= set(list_models("vtp-"))


@pytest.mark.slow
def test_real_vtp_b_builds_and_encodes_256px():
    torch.manual_seed(0)
    model = create_model("vtp-b").eval()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 295.6
    with torch.no_grad():
        latents = model.get_reconstruction_latents(torch.randn(1, 3, 256, 256))
        assert latents.shape == (1, 64, 16, 16)
        assert model.get_latents_decoded_images(latents).shape == (1, 3, 256, 256)
