"""Scaled dot-product attention with the faster kernel for short sequences on the CPU.

Every transformer here (vision trunk, pixel decoder, text tower, generators)
attends through :func:`dot_product_attention`. It is
``F.scaled_dot_product_attention`` except in one case: fp32 on the CPU with at
most :data:`EXPLICIT_MAX_TOKENS` tokens, where it computes
``softmax(q k^T / sqrt(D)) v`` with two batched matmuls instead.

Why: torch's CPU flash kernel works in query/key blocks sized for long
sequences and recomputes the scores in the backward; at the token counts of
the CPU recipes (17-65 image tokens, 32 text tokens) it barely gains from a
second thread (1.35x from 1 to 2 threads), while two large batched matmuls
do (2.1x). Forward + backward on the 2-core development machine, 2 threads
(best of 5 with ``torch.utils.benchmark``):

=====================  =========  ========  ======
B x heads x tokens x D  flash, ms  ours, ms  gain
=====================  =========  ========  ======
72 x 4 x 65 x 16          7.76      4.99    1.55x
24 x 4 x 17 x 16          0.73      0.31    2.36x
48 x 4 x 32 x 16 causal   2.68      1.48    1.81x
16 x 12 x 65 x 64        12.36      8.55    1.45x
16 x 12 x 129 x 64       36.06     31.32    1.15x
72 x 4 x 145 x 16        25.66     26.87    0.95x
72 x 4 x 257 x 16        69.26    151.41    0.46x
=====================  =========  ========  ======

With one thread the two are about even (0.91-1.18x at the same shapes).
The price is memory: the backward keeps the (B, heads, N, N) probabilities
(bench peak: 21 instead of 5 MiB for the first row), bounded by the cut.
Past ~145 tokens the score matrix outgrows the caches and flash wins, hence
the cut at 128. GPUs, bf16 (the official-checkpoint conformance path) and long
sequences always take the fused kernel. Both paths compute the same attention:
values and gradients agree within fp32 rounding (tests/test_attention.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Longest sequence (queries and keys) that takes the explicit path on the CPU; see the table above.
EXPLICIT_MAX_TOKENS = 128


def prefers_explicit_attention(q: Tensor, k: Tensor) -> bool:
    """Whether two matmuls beat the fused kernel for these inputs (fp32 CPU, short sequences)."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and max(q.shape[-2], k.shape[-2]) <= EXPLICIT_MAX_TOKENS
    )


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, 3 * C) fused projections -> q, k, v as (B, heads, N, C / heads) views.

    Unbinding the (B, N, 3, heads, D) view along its q/k/v axis and then
    transposing, rather than permuting q/k/v to the front first (timm's and
    DiT's order), lets the backward's stack write the gradient straight into
    the projection's (B, N, 3C) layout instead of stacking it in (3, B, heads,
    N, D) order and copying it across. Same values; attention forward +
    backward 1.07x at vtp-tiny width, 1.03x at VTP-B width on the CPU.
    """
    batch, tokens, width = qkv.shape
    q, k, v = qkv.view(batch, tokens, 3, num_heads, width // (3 * num_heads)).unbind(2)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


def dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, is_causal: bool = False, scale: float | None = None
) -> Tensor:
    """Attention over (..., tokens, head_dim) inputs, as ``F.scaled_dot_product_attention`` (no mask, no dropout).

    ``scale`` multiplies the scores, 1/sqrt(head_dim) by default; ``scale=1.0``
    for a q that is already scaled.
    """
    if not prefers_explicit_attention(q, k):
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    # Scaling q (tokens x D) is cheaper than scaling the scores (tokens x tokens) once tokens > D.
    scores = (q if scale == 1.0 else q * scale) @ k.transpose(-2, -1)
    if is_causal:
        # Same convention as SDPA: query i sees keys 0..i (top-left aligned).
        future = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1) @ v
