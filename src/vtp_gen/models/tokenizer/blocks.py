"""Pre-norm ViT building blocks shared by the encoder (trunk) and the pixel decoder.

Module and parameter names follow the official checkpoints
(``blocks.N.{norm1,attn.qkv,attn.q_norm,attn.k_norm,attn.proj,ls1.gamma,norm2,mlp.w1..w3,ls2.gamma}``)
so state dicts load without renaming. timm's ``Mlp`` and ``LayerScale`` have
those names already; the SwiGLU FFN and the RoPE attention are ours because
timm names the SwiGLU weights differently and has no bf16 RoPE.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from timm.layers import LayerScale, Mlp
from torch import Tensor, nn

from vtp_gen.models.attention import dot_product_attention, split_heads
from vtp_gen.models.tokenizer.rope import RopeTables, rotate


def build_norm(kind: str, dim: int) -> nn.Module:
    """The reference's norm choices, with its epsilons (LayerNorm 1e-6, its 'bf16' variant 1e-5, RMSNorm 1e-5)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-6)
    if kind == "layernormbf16":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-5)
    raise ValueError(f"unknown norm layer {kind!r}")


class SwiGLUFFN(nn.Module):
    """SwiGLU FFN: w3(silu(w1 x) * w2 x); hidden = 2/3 of the MLP width, rounded up to ``align_to``."""

    def __init__(self, dim: int, hidden_features: int, bias: bool = True, align_to: int = 8) -> None:
        super().__init__()
        # Same rounding as DINOv3/VTP: VTP-B 768 -> 2048, VTP-L 1024 -> 2736.
        reduced = int(hidden_features * 2 / 3)
        hidden = reduced + (-reduced % align_to)
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


def build_ffn(kind: str, dim: int, ratio: float, bias: bool = True) -> nn.Module:
    hidden = int(dim * ratio)
    if kind == "mlp":
        return Mlp(dim, hidden_features=hidden, act_layer=nn.GELU, bias=bias)
    if kind.startswith("swiglu"):
        align = int(kind.removeprefix("swiglu") or 8)
        return SwiGLUFFN(dim, hidden, bias=bias, align_to=align)
    raise ValueError(f"unknown ffn layer {kind!r}")


class RopeSelfAttention(nn.Module):
    """Multi-head self-attention; optional per-head RMSNorm on q and k (before RoPE, as the reference)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        use_qk_norm: bool = False,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-5) if use_qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-5) if use_qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor, rope: RopeTables | None = None) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            # (Rotating q and k in one call, as a split of qkv, saved a few elementwise calls but
            # trips an inductor stride assertion under torch.compile; the tables are shared anyway.)
            q, k = rotate(q, rope), rotate(k, rope)
        out = dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


# Stochastic depth of one forward: one rate for the whole batch, or ``((rows, rate), ...)`` in batch
# order for a batch concatenated from several forwards that each have their own rate.
DropPathRate = float | tuple[tuple[int, float], ...]


def drop_path_segments(rate: DropPathRate, batch: int) -> tuple[tuple[int, float], ...]:
    """``rate`` as ``((rows, rate), ...)`` covering the batch; a plain rate is one segment."""
    if isinstance(rate, (int, float)):
        return ((batch, float(rate)),)
    segments = tuple((int(rows), float(segment_rate)) for rows, segment_rate in rate)
    if sum(rows for rows, _ in segments) != batch:
        raise ValueError(f"drop-path segments {segments} do not cover a batch of {batch}")
    return segments


def drops_any_path(rate: DropPathRate) -> bool:
    if isinstance(rate, (int, float)):
        return rate > 0.0
    return any(segment_rate > 0.0 and rows for rows, segment_rate in rate)


def residual_on_batch_subset(
    x: Tensor, branch: Callable[[Tensor], Tensor], drop_rate: DropPathRate
) -> Tensor:
    """Stochastic depth the DINOv2/VTP way: run the branch on a random subset of the batch only.

    ``keep = max(int(B * (1 - rate)), 1)`` samples get ``x + B/keep * branch(x)``,
    the others pass unchanged; unlike per-sample DropPath this saves the compute
    of the dropped samples. (The reference additionally balances ``keep`` across
    DDP ranks; per rank the expectation is the same.)

    With per-segment rates each segment draws its own subset with its own
    ``keep`` and scale, exactly as if it were a forward of its own; segments
    with rate 0 keep every row.
    """
    segments = drop_path_segments(drop_rate, x.shape[0])
    if len(segments) == 1:
        batch, rate = segments[0]
        keep = max(int(batch * (1 - rate)), 1)
        indices = torch.randperm(batch, device=x.device)[:keep]
        return torch.index_add(x, 0, indices, branch(x[indices]).to(x.dtype), alpha=batch / keep)
    kept, scales, start = [], [], 0
    for rows, rate in segments:
        if rows and rate > 0.0:
            keep = max(int(rows * (1 - rate)), 1)
            kept.append(torch.randperm(rows, device=x.device)[:keep] + start)
            scales.append(torch.full((keep,), rows / keep, device=x.device, dtype=x.dtype))
        elif rows:
            kept.append(torch.arange(start, start + rows, device=x.device))
            scales.append(torch.ones(rows, device=x.device, dtype=x.dtype))
        start += rows
    indices, scale = torch.cat(kept), torch.cat(scales)
    update = branch(x[indices]).to(x.dtype) * scale.view(-1, *([1] * (x.dim() - 1)))
    return torch.index_add(x, 0, indices, update)


class SelfAttentionBlock(nn.Module):
    """Pre-norm block: x + ls1(attn(norm1(x))), then x + ls2(ffn(norm2(x))).

    ``drop_path_rate`` is chosen per call (e.g. separate rates for the CLIP, SSL
    and reconstruction forwards, or per segment of a batch that concatenates
    them) and only acts in training mode.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        ffn_layer: str = "swiglu",
        ffn_ratio: float = 4.0,
        norm_layer: str = "rmsnorm",
        layerscale_init: float | None = None,
        use_qk_norm: bool = False,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
    ) -> None:
        super().__init__()
        self.norm1 = build_norm(norm_layer, dim)
        self.attn = RopeSelfAttention(
            dim, num_heads, qkv_bias=qkv_bias, proj_bias=proj_bias, use_qk_norm=use_qk_norm
        )
        # The reference treats a layer-scale init of 0 / None as "no layer-scale".
        self.ls1 = LayerScale(dim, init_values=layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = build_norm(norm_layer, dim)
        self.mlp = build_ffn(ffn_layer, dim, ffn_ratio, bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values=layerscale_init) if layerscale_init else nn.Identity()

    def forward(
        self, x: Tensor, rope: RopeTables | None = None, drop_path_rate: DropPathRate = 0.0
    ) -> Tensor:
        def attention_branch(t: Tensor) -> Tensor:
            return self.ls1(self.attn(self.norm1(t), rope=rope))

        def ffn_branch(t: Tensor) -> Tensor:
            return self.ls2(self.mlp(self.norm2(t)))

        if self.training and drops_any_path(drop_path_rate):
            x = residual_on_batch_subset(x, attention_branch, drop_path_rate)
            return residual_on_batch_subset(x, ffn_branch, drop_path_rate)
        x = x + attention_branch(x)
        return x + ffn_branch(x)


def run_blocks(
    blocks: nn.ModuleList,
    tokens: Tensor,
    rope,
    drop_path_rate: DropPathRate,
    checkpointing: bool,
    keep: tuple[int, ...] = (),
) -> tuple[Tensor, list[Tensor]]:
    """Apply ``blocks`` in order; with ``checkpointing`` (training with grad only) each block's
    activations are recomputed in the backward instead of stored. torch.utils.checkpoint restores
    the RNG state for the recompute, so drop-path draws the same rows twice."""
    recompute = checkpointing and torch.is_grad_enabled() and blocks.training
    kept = []
    for index, block in enumerate(blocks):
        if recompute:
            tokens = torch.utils.checkpoint.checkpoint(
                block, tokens, rope=rope, drop_path_rate=drop_path_rate, use_reentrant=False
            )
        else:
            tokens = block(tokens, rope=rope, drop_path_rate=drop_path_rate)
        if index in keep:
            kept.append(tokens)
    return tokens, kept
