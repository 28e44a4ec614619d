"""Caption features from the tokenizer's own text tower: per-token states + pooled embedding, null = ""."""

import pytest
import torch

from vtp_gen import create_model
from vtp_gen.data.text_tokenizer import CLIPTextTokenizer, valid_token_mask
from vtp_gen.t2i.text_features import CaptionEncoder


@pytest.fixture(scope="module")
def tokenizer():
    torch.manual_seed(0)
    return create_model("vtp-tiny").eval()


def test_pooled_features_equal_the_towers_pooled_output(tokenizer):
    encoder = CaptionEncoder.from_tokenizer(tokenizer)
    captions = ["a photo of a bag.", "a close-up of the ankle boot.", ""]
    features = encoder(captions)
    # Same BPE and context length as stage 1 (the tokenizer's text_context_length).
    tokens = CLIPTextTokenizer.from_config(tokenizer.config)(captions)
    with torch.no_grad():
        expected = tokenizer.encode_text(tokens)
    assert torch.equal(features.pooled, expected)
    assert features.tokens.shape == (3, tokenizer.config.text_context_length, tokenizer.config.text_embed_dim)
    # The per-token states are the tower's final-norm output: pooling them at EOT and projecting
    # gives the pooled feature back.
    eot = tokens.argmax(dim=1)
    reprojected = features.tokens[torch.arange(3), eot] @ tokenizer.text.text_projection
    torch.testing.assert_close(reprojected, expected, rtol=1e-5, atol=1e-5)


def test_mask_covers_start_to_end_of_text_and_the_null_caption(tokenizer):
    encoder = CaptionEncoder.from_tokenizer(tokenizer)
    features = encoder(["a dress", ""])
    # "a dress" = <sot> a dress <eot>: 4 tokens; "" = <sot> <eot>: 2 tokens.
    assert features.mask.sum(dim=1).tolist() == [4, 2]
    null = encoder.null()
    # Equal up to the rounding of a batch of 1 against a batch of 2.
    torch.testing.assert_close(null.tokens, features.tokens[1:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(null.pooled, features.pooled[1:], rtol=1e-5, atol=1e-6)


def test_the_tower_stays_frozen_and_is_not_changed_by_encoding(tokenizer):
    encoder = CaptionEncoder.from_tokenizer(tokenizer)
    encoder.train()
    assert not encoder.tower.training
    assert not any(p.requires_grad for p in encoder.tower.parameters())
    encoder(["a coat"])
    # Encoding leaves no hook behind: the tokenizer's own text path is untouched.
    tokens = CLIPTextTokenizer.from_config(tokenizer.config)(["a coat"])
    with torch.no_grad():
        assert tokenizer.encode_text(tokens).shape == (1, tokenizer.config.text_embed_dim)
    assert not encoder.tower.ln_final._forward_hooks


def test_a_tokenizer_without_text_tower_is_a_clear_error():
    tokenizer = create_model("vtp-tiny", train_clip=False)
    with pytest.raises(ValueError, match="no text tower"):
        CaptionEncoder.from_tokenizer(tokenizer)


def test_valid_token_mask_needs_an_end_token():
    with pytest.raises(ValueError, match="end-of-text"):
        valid_token_mask(torch.tensor([[49406, 320, 0]]), 49407)


def test_an_official_vtp_checkpoint_gives_its_recorded_text_features(reference_dir):
    from safetensors.torch import load_file

    from vtp_gen import load_tokenizer

    folder = reference_dir / "vtp_tiny_default"  # written by the official VTP code
    golden = load_file(folder / "golden_outputs.safetensors")
    texts = __import__("json").loads((folder / "golden_texts.json").read_text())
    encoder = CaptionEncoder.from_tokenizer(load_tokenizer(folder))
    assert torch.equal(encoder.tokenize(texts), golden["input.text_tokens"])
    pooled = torch.nn.functional.normalize(encoder(texts).pooled, dim=-1)
    torch.testing.assert_close(pooled, golden["out.clip_text_features"], rtol=1e-4, atol=1e-5)
