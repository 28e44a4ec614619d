"""Official VTP checkpoints load and reproduce the reference implementation's outputs (<= 1e-4, fp32, CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import vtp_gen
from vtp_gen.data.text_tokenizer import CLIPTextTokenizer

pytestmark = pytest.mark.conformance

FIXTURES = ["vtp_tiny_default", "vtp_tiny_ls_qknorm"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=FIXTURES)
def fixture(request, reference_dir):
    folder = reference_dir / request.param
    golden = load_file(folder / "golden_outputs.safetensors")
    return folder, vtp_gen.load_tokenizer(folder), golden


def computed_outputs(model, golden):
    images, tokens = golden["input.images"], golden["input.text_tokens"]
    out = {}
    with torch.no_grad():
        out["reconstruction_latents"] = model.get_reconstruction_latents(images)
        out["decoded_images"] = model.get_latents_decoded_images(out["reconstruction_latents"])
        out["clip_image_features"] = model.get_clip_image_feature(images, normalize=True)
        out["clip_text_features"] = model.get_clip_text_feature(tokens, normalize=True)
        last = model.get_last_layer_feature(images)
        out["last_layer.cls_token"] = last["cls_token"]
        out["last_layer.patch_tokens"] = last["patch_tokens"]
        for i, (patches, cls) in enumerate(
            model.get_intermediate_layers_feature(images, n=2, return_class_token=True)
        ):
            out[f"intermediate.{i}.patch_tokens"] = patches
            out[f"intermediate.{i}.cls_token"] = cls
    return out


def test_every_golden_output_matches(fixture):
    _, model, golden = fixture
    expected = {k.removeprefix("out."): v for k, v in golden.items() if k.startswith("out.")}
    computed = computed_outputs(model, golden)
    assert set(computed) == set(expected), "the test must cover every golden output"
    for name, reference in expected.items():
        assert computed[name].dtype == torch.float32
        assert computed[name].shape == reference.shape, name
        error = (computed[name] - reference).abs().max().item()
        assert error <= TOLERANCE, f"{name}: max abs error {error:.3e}"


def test_decoder_alone_matches_from_golden_latents(fixture):
    _, model, golden = fixture
    with torch.no_grad():
        decoded = model.get_latents_decoded_images(golden["out.reconstruction_latents"])
    assert (decoded - golden["out.decoded_images"]).abs().max().item() <= TOLERANCE


def test_official_forward_modes(fixture):
    _, model, golden = fixture
    images, tokens = golden["input.images"], golden["input.text_tokens"]
    with torch.no_grad():
        clip = model(images, tokens, forward_type="clip")
        rec = model(images, forward_type="rec")
        logits_per_image, logits_per_text = model.get_clip_logits(images, tokens)
    assert torch.allclose(clip["image_features"], golden["out.clip_image_features"], atol=TOLERANCE)
    assert torch.allclose(clip["text_features"], golden["out.clip_text_features"], atol=TOLERANCE)
    assert torch.allclose(rec["reconstructed_image"], golden["out.decoded_images"], atol=TOLERANCE)
    scale = model.logit_scale.exp()
    expected_logits = scale * golden["out.clip_image_features"] @ golden["out.clip_text_features"].T
    assert torch.allclose(logits_per_image, expected_logits, atol=1e-3)
    assert torch.equal(logits_per_text, logits_per_image.T)


def test_text_tokenizer_reproduces_golden_ids(fixture):
    folder, model, golden = fixture
    texts = json.loads((folder / "golden_texts.json").read_text())
    tokenizer = CLIPTextTokenizer.from_config(model.config)
    assert torch.equal(tokenizer(texts), golden["input.text_tokens"])


def test_fixture_architecture_is_what_the_config_says(fixture):
    # Guards against a silently different model passing by luck: e.g. layer-scale and QK-norm present only if set.
    _, model, _ = fixture
    config = model.config
    names = model.official_state_dict().keys()
    assert any(".ls1.gamma" in n for n in names) == bool(config.vision_init_values)
    assert any(".q_norm.weight" in n for n in names) == config.vision_use_qk_norm
    assert model.trunk.rope_embed.periods.dtype == torch.bfloat16
