"""CLIP BPE tokenizer and the text tower's input handling."""

import copy

import pytest
import torch

from vtp_gen.data.text_tokenizer import CLIPTextTokenizer
from vtp_gen.models.tokenizer import TextTower, preset_config


def test_tokenizer_ids_padding_and_truncation():
    tokenizer = CLIPTextTokenizer(context_length=8)
    assert (tokenizer.vocab_size, tokenizer.sot_token_id, tokenizer.eot_token_id) == (49408, 49406, 49407)
    ids = tokenizer(["a photo of a dog", "A  Photo of a DOG"])
    assert ids.dtype == torch.int64 and ids.shape == (2, 8)
    # Known OpenAI CLIP ids (also in the reference fixtures); lower-casing and whitespace cleaning.
    assert ids[0].tolist() == [49406, 320, 1125, 539, 320, 1929, 49407, 0]
    assert torch.equal(ids[0], ids[1])
    long = tokenizer("one two three four five six seven eight nine")
    assert long.shape == (1, 8) and long[0, -1].item() == 49407 and (long != 0).all()
    assert tokenizer.decode(ids[0]) == "a photo of a dog"


def test_context_length_comes_from_the_config():
    tokenizer = CLIPTextTokenizer.from_config(preset_config("vtp-tiny"))
    assert tokenizer("a cat").shape == (1, 32)
    with pytest.raises(ValueError, match="context_length"):
        CLIPTextTokenizer(context_length=1)


def text_tower(**overrides):
    torch.manual_seed(0)
    config = preset_config("vtp-tiny", text_vocab_size=1000, text_context_length=12, **overrides)
    return TextTower.from_config(config).eval()


def test_text_features_pool_at_the_end_of_text_token():
    tower = text_tower()
    tokens = torch.tensor([[998, 5, 6, 999, 0, 0, 0, 0, 0, 0, 0, 0]])
    features = tower.encode(tokens)
    assert features.shape == (1, 64)
    # Causal attention: whatever follows the EOT token cannot change the pooled feature.
    altered = tokens.clone()
    altered[0, 5:] = 7
    torch.testing.assert_close(tower.encode(altered), features)
    # Shorter sequences are right-padded, which is exact for a causal argmax-pooled tower.
    assert torch.equal(tower.encode(tokens[:, :6]), features)


def test_text_input_errors():
    tower = text_tower()
    with pytest.raises(ValueError, match="exceed the text context length 12"):
        tower.encode(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        tower.encode(torch.zeros(1, 12))
    bidirectional = text_tower(text_no_causal_mask=True)
    with pytest.raises(ValueError, match="padding would change"):
        bidirectional.encode(torch.zeros(1, 6, dtype=torch.long))


def test_causal_blocks_compute_what_openclips_attention_computes():
    from open_clip.transformer import ResidualAttentionBlock

    from vtp_gen.models.tokenizer.text import CausalSelfAttentionBlock

    config = preset_config("vtp-tiny")
    torch.manual_seed(0)
    fast = TextTower.from_config(config)
    assert all(type(block) is CausalSelfAttentionBlock for block in fast.transformer.resblocks)
    plain = copy.deepcopy(fast)
    for block in plain.transformer.resblocks:
        block.__class__ = ResidualAttentionBlock
    tokens = torch.randint(1, 49000, (6, config.text_context_length))
    tokens[:, 9] = 49407  # end of text: argmax pooling reads this position

    def features_and_grads(tower):
        features = tower.encode(tokens)
        features.square().sum().backward()
        return features.detach(), {n: p.grad for n, p in tower.named_parameters() if p.grad is not None}

    fast_features, fast_grads = features_and_grads(fast)
    plain_features, plain_grads = features_and_grads(plain)
    torch.testing.assert_close(fast_features, plain_features, rtol=1e-5, atol=1e-6)
    assert fast_grads.keys() == plain_grads.keys() and len(fast_grads) > 10
    for name, grad in plain_grads.items():
        scale = grad.abs().max().item()
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-5 * scale + 1e-12)
    # Causality itself: changing a later token leaves earlier positions' features alone.
    later = tokens.clone()
    later[:, 20] = 7
    with torch.no_grad():
        assert torch.equal(fast.encode(later), fast.encode(tokens))


def test_bidirectional_towers_keep_openclips_blocks():
    from open_clip.transformer import ResidualAttentionBlock

    config = preset_config("vtp-tiny", text_no_causal_mask=True)
    tower = TextTower.from_config(config)
    assert all(type(block) is ResidualAttentionBlock for block in tower.transformer.resblocks)
