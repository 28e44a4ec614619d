"""dot_product_attention: the explicit short-sequence CPU path computes what SDPA computes."""

import pytest
import torch
import torch.nn.functional as F

from vtp_gen.models import attention
from vtp_gen.models.attention import dot_product_attention, prefers_explicit_attention, split_heads
from vtp_gen.models.generators.layers import Attention
from vtp_gen.models.tokenizer.blocks import RopeSelfAttention
from vtp_gen.models.tokenizer.rope import AxialRopeEmbedding, rope_tables


def qkv(batch, heads, tokens, head_dim, dtype=torch.float32, key_tokens=None):
    torch.manual_seed(0)
    key_tokens = key_tokens or tokens
    q = torch.randn(batch, heads, tokens, head_dim, dtype=dtype, requires_grad=True)
    k = torch.randn(batch, heads, key_tokens, head_dim, dtype=dtype, requires_grad=True)
    v = torch.randn(batch, heads, key_tokens, head_dim, dtype=dtype, requires_grad=True)
    return q, k, v


def values_and_grads(fn, q, k, v, upstream):
    out = fn(q, k, v)
    grads = torch.autograd.grad(out, (q, k, v), upstream)
    return out.detach(), grads


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(3, 4, 17, 16), (2, 2, 65, 64), (2, 3, 128, 8)])
def test_explicit_path_matches_sdpa_values_and_gradients(shape, is_causal):
    q, k, v = qkv(*shape)
    assert prefers_explicit_attention(q, k)
    upstream = torch.randn(shape)
    ours, our_grads = values_and_grads(
        lambda *t: dot_product_attention(*t, is_causal=is_causal), q, k, v, upstream
    )
    ref, ref_grads = values_and_grads(
        lambda *t: F.scaled_dot_product_attention(*t, is_causal=is_causal), q, k, v, upstream
    )
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for mine, theirs in zip(our_grads, ref_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_causal_mask_with_fewer_queries_than_keys_is_top_left_aligned_like_sdpa():
    q, k, v = qkv(2, 2, 5, 8, key_tokens=9)
    ours = dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_long_sequences_and_bf16_take_the_fused_kernel():
    q, k, v = qkv(1, 2, attention.EXPLICIT_MAX_TOKENS + 1, 16)
    assert not prefers_explicit_attention(q, k)
    short_q, short_k, _ = qkv(1, 2, 16, 16, key_tokens=attention.EXPLICIT_MAX_TOKENS + 1)
    assert not prefers_explicit_attention(short_q, short_k)
    bq, bk, bv = qkv(2, 2, 17, 16, dtype=torch.bfloat16)
    assert not prefers_explicit_attention(bq, bk)
    # The official bf16 path is SDPA itself, bit for bit.
    assert torch.equal(dot_product_attention(bq, bk, bv), F.scaled_dot_product_attention(bq, bk, bv))
    meta = torch.empty(1, 2, 17, 16, device="meta")
    assert not prefers_explicit_attention(meta, meta)


def test_model_attention_layers_agree_on_both_paths(monkeypatch):
    torch.manual_seed(0)
    tokenizer_attention = RopeSelfAttention(64, 4, use_qk_norm=True)
    sin, cos = AxialRopeEmbedding(16, dtype=torch.float32)(4, 4)
    tables = rope_tables(sin, cos, 17)
    generator_attention = Attention(64, 4, qk_norm=True)
    x = torch.randn(3, 17, 64)
    layers = {
        "tokenizer": lambda: tokenizer_attention(x, rope=tables),
        "generator": lambda: generator_attention(x[:, 1:]),
    }
    for name, layer in layers.items():
        explicit = layer()
        monkeypatch.setattr(attention, "EXPLICIT_MAX_TOKENS", 0)
        fused = layer()
        monkeypatch.setattr(attention, "EXPLICIT_MAX_TOKENS", 128)
        torch.testing.assert_close(explicit, fused, rtol=1e-5, atol=1e-5, msg=name)


def test_split_heads_is_the_usual_permute_in_values_and_gradients():
    torch.manual_seed(0)
    batch, tokens, heads, head_dim = 3, 7, 4, 8
    qkv = torch.randn(batch, tokens, 3 * heads * head_dim, requires_grad=True)
    upstream = [torch.randn(batch, heads, tokens, head_dim) for _ in range(3)]
    ours = split_heads(qkv, heads)
    ours_grad = torch.autograd.grad(ours, qkv, upstream)[0]
    usual = qkv.reshape(batch, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    usual_grad = torch.autograd.grad(usual, qkv, upstream)[0]
    for mine, theirs in zip(ours, usual):
        assert torch.equal(mine, theirs)
    assert torch.equal(ours_grad, usual_grad)
