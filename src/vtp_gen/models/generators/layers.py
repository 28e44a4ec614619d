"""Building blocks of the DiT / SiT / LightningDiT family.

Module and parameter names follow facebookresearch/DiT and hustvl/LightningDiT
exactly (``qkv``, ``q_norm``, ``w12``, ``embedding_table``, ``mlp.0`` ...)
because checkpoints of those repositories must load with ``strict=True``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vtp_gen.models.attention import dot_product_attention, split_heads


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation of a token sequence (B, N, D) by per-sample (B, D) vectors.

    ``shift=None`` is LightningDiT's ``wo_shift`` variant (scale only).
    """
    x = x * (1 + scale.unsqueeze(1))
    if shift is not None:
        x = x + shift.unsqueeze(1)
    return x


def norm_modulate(
    norm: nn.Module, x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor
) -> torch.Tensor:
    """``modulate(norm(x), shift, scale)`` with one pass over the tokens after the normalisation.

    The reference multiplies by the RMSNorm weight, then by ``1 + scale``, then
    adds ``shift``: three passes over (B, N, D). Folding the weight into the
    per-sample factor (a (B, D) product) and adding the shift in the same
    ``addcmul`` leaves one. The result differs from the reference's by rounding
    only (a few ulp). Eager CPU training is bound by such passes at DiT widths
    (docs/performance.md, "Stage 2 against the reference").
    """
    factor = 1 + scale
    if isinstance(norm, RMSNorm):
        normed = norm.normalize(x)
        factor = factor * norm.weight
    else:
        normed = norm(x)
    if shift is None:
        return normed * factor.unsqueeze(1)
    return torch.addcmul(shift.unsqueeze(1), normed, factor.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``x + gate * update`` for a per-sample (B, D) gate, in one pass (adaLN-Zero's gated residual)."""
    return torch.addcmul(x, gate.unsqueeze(1), update)


class RMSNorm(nn.Module):
    """RMSNorm as in LightningDiT (Llama style): normalised in fp32, then scaled in the input dtype.

    The fp32 statistics matter under bf16 autocast; the weight is applied after
    casting back, as the reference does, so outputs match it bit for bit in fp32.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """The normalisation alone (fp32 statistics), before the weight."""
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalize(x) * self.weight


class PackedSwiGLUFFN(nn.Module):
    """SwiGLU feed-forward with the fused ``w12`` input projection of LightningDiT (DINOv2 naming).

    The first half of ``w12``'s output is the SiLU gate, the second half the value.
    """

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.w3 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class AxialRotaryEmbedding(nn.Module):
    """2-D RoPE over a square token grid, the EVA-02 "fast" variant LightningDiT uses.

    Each head's channels are split in two halves: the first half rotates with the
    token's row index, the second with its column index. Within a half, channel
    pairs (2i, 2i+1) rotate together at frequency ``theta ** (-2i / half)``.
    ``freqs_cos`` / ``freqs_sin`` are persistent buffers of shape
    (grid_size**2, head_dim) because the reference checkpoints store them.
    """

    def __init__(self, head_dim: int, grid_size: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 4:
            raise ValueError(f"2-D RoPE needs head_dim divisible by 4, got {head_dim}")
        half = head_dim // 2
        inv_freq = 1.0 / (theta ** (torch.arange(0, half, 2).float() / half))  # (half/2,)
        positions = torch.arange(grid_size, dtype=torch.float32)
        angles = torch.repeat_interleave(torch.outer(positions, inv_freq), 2, dim=-1)  # (G, half)
        rows = angles[:, None, :].expand(grid_size, grid_size, half)
        cols = angles[None, :, :].expand(grid_size, grid_size, half)
        grid_angles = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, head_dim)
        self.register_buffer("freqs_cos", grid_angles.cos())
        self.register_buffer("freqs_sin", grid_angles.sin())

    @staticmethod
    def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
        """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of each channel pair."""
        pairs = x.unflatten(-1, (-1, 2))
        return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)

    def complex_factors(self) -> torch.Tensor:
        """(N, head_dim / 2) unit complex numbers cos + i sin, one per channel pair.

        Both channels of a pair rotate by the same angle, so the rotation of a
        pair (x0, x1) is the complex product (x0 + i x1)(cos + i sin): one
        elementwise kernel instead of the four of ``x * cos + rotate_pairs(x) * sin``.
        """
        return torch.complex(self.freqs_cos[:, ::2], self.freqs_sin[:, ::2])

    @staticmethod
    def takes_complex_path(x: torch.Tensor) -> bool:
        # Complex kernels exist for fp32 / fp64; bf16 / fp16 (autocast) keep the real formulation, and so
        # does torch.compile, which fuses the real one into a single kernel by itself.
        return x.dtype in (torch.float32, torch.float64) and not torch.compiler.is_compiling()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, heads, N, head_dim) with N = grid_size**2 in row-major patch order."""
        if self.takes_complex_path(x):
            rotated = torch.view_as_complex(x.unflatten(-1, (-1, 2))) * self.complex_factors()
            return torch.view_as_real(rotated).flatten(-2)
        return x * self.freqs_cos + self.rotate_pairs(x) * self.freqs_sin

    def rotate_qk(
        self, qkv: torch.Tensor, num_heads: int, q_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RoPE of q and k straight from the fused (B, N, 3 * C) projection, q also scaled by ``q_scale``.

        One complex multiply covers the whole projection, with attention's
        1/sqrt(head_dim) folded into q's factors and a factor of 1 for v, so
        the attention needs no scaling pass and the backward gets the
        projection's gradient in one tensor (``unbind``'s backward stacks it;
        slicing q/k apart from v would zero-fill and add two full-size
        buffers instead). Returns q, k, v as (B, heads, N, head_dim) views.
        Only for inputs where :meth:`takes_complex_path` holds.
        """
        batch, tokens, width = qkv.shape
        heads = qkv.view(batch, tokens, 3, num_heads, width // (3 * num_heads))
        rotation = self.complex_factors()
        factors = torch.stack((rotation * q_scale, rotation, torch.ones_like(rotation)), dim=1)  # (N, 3, D/2)
        rotated = torch.view_as_complex(heads.unflatten(-1, (-1, 2))) * factors.unsqueeze(2)
        q, k, v = torch.view_as_real(rotated).flatten(-2).unbind(2)  # each (B, N, heads, D)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with optional QK-norm and RoPE (applied after the QK-norm, as the reference)."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, use_rmsnorm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.qk_norm = qk_norm
        if qk_norm:
            # LightningDiT picks RMSNorm for QK-norm when the blocks use RMSNorm, else an affine LayerNorm.
            norm = (lambda: RMSNorm(self.head_dim)) if use_rmsnorm else (lambda: nn.LayerNorm(self.head_dim))
            self.q_norm, self.k_norm = norm(), norm()
        else:
            self.q_norm, self.k_norm = nn.Identity(), nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: AxialRotaryEmbedding | None = None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x)
        if rope is not None and not self.qk_norm and rope.takes_complex_path(qkv):
            q, k, v = rope.rotate_qk(qkv, self.num_heads, q_scale=self.head_dim**-0.5)
            # q carries the scale. SDPA reads these strided views in place, where the two-matmul CPU path
            # would copy q and k first: 1.04x (LightningDiT-T/2) to 1.09x (width 384) of the whole
            # stage-2 step on the 2-core development CPU.
            x = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        else:
            q, k, v = split_heads(qkv, self.num_heads)
            q, k = self.q_norm(q), self.k_norm(k)
            if rope is not None:
                q, k = rope(q), rope(k)
            x = dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) times, cos half first (GLIDE / DiT order).

    ``t`` is used as given: DiT checkpoints expect DDPM steps in [0, 1000),
    SiT / LightningDiT (and everything trained here) expect flow times in [0, 1].
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t followed by a 2-layer SiLU MLP (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class embedding table with an extra "null class" row (id ``num_classes``) for classifier-free guidance.

    During training each label is replaced by the null class with probability
    ``dropout_prob``; the null row only exists when ``dropout_prob > 0``, as in DiT.
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def drop_labels(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        if force_drop_ids is None:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop = force_drop_ids == 1
        return torch.where(drop, torch.full_like(labels, self.num_classes), labels)

    def forward(
        self, labels: torch.Tensor, train: bool, force_drop_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.drop_labels(labels, force_drop_ids)
        return self.embedding_table(labels)


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim): sin half then cos half (MAE convention), computed in float64."""
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2))
    angles = positions.reshape(-1).double()[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_pos_embed(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position table (grid_size**2, embed_dim) in DiT / MAE layout.

    Tokens are row-major; the first half of the channels encodes the column
    index and the second half the row index (MAE's meshgrid puts w first).
    """
    if embed_dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    return torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1).float()
