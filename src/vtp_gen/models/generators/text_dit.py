"""A text-conditioned LightningDiT: PixArt-alpha-style cross-attention to caption tokens.

``TextLightningDiT(x, t, text, text_mask, pooled_text) -> velocity``. The
image stream is LightningDiT's (patch embedding, sin-cos positions, optional
2-D RoPE, SwiGLU, RMSNorm, adaLN-modulated self-attention and MLP); each
block adds a cross-attention from the image tokens to the caption tokens
between the two, as PixArt-alpha does. The caption tokens are the hidden
states of the VTP tokenizer's own text tower, passed through a 2-layer
caption projection; the tower's pooled embedding, projected the same way, is
added to the timestep embedding, so the adaLN path also sees the caption.

Conditioning of the adaLN modulation, ``adaln``:

- ``"single"`` (PixArt-alpha's adaLN-single, the default): one MLP maps the
  (time + pooled caption) embedding to the 6 modulation vectors once, each
  block adds its own learned ``scale_shift_table``. At XL size it saves the
  28 per-block (1152 -> 6912) projections, 223M of 900M parameters, for no
  measured loss in PixArt-alpha's ablation.
- ``"block"``: LightningDiT's per-block adaLN-Zero projection, for ablations
  and small models where those parameters are cheap.

Why cross-attention rather than MMDiT joint attention: the text tower is
frozen, so the caption tokens need no stream of their own through the
network; cross-attention keeps the image stream (and its RoPE over the latent
grid) exactly LightningDiT's, and its cost grows with image tokens x caption
tokens instead of (image + caption tokens) squared.

Class-conditional models are untouched: this is a separate class.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from torch.utils.checkpoint import checkpoint

from vtp_gen.models.generators.layers import (
    Attention,
    AxialRotaryEmbedding,
    PackedSwiGLUFFN,
    RMSNorm,
    TimestepEmbedder,
    modulate,
    sincos_2d_pos_embed,
)
from vtp_gen.models.generators.lightningdit import FinalLayer
from vtp_gen.models.registry import register_model

ADALN_MODES = ("single", "block")


def _norm(hidden_size: int, use_rmsnorm: bool) -> nn.Module:
    return (
        RMSNorm(hidden_size) if use_rmsnorm else nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
    )


def _gelu_mlp(in_features: int, hidden_size: int) -> Mlp:
    return Mlp(in_features, hidden_size, hidden_size, act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)


class CrossAttention(nn.Module):
    """Image tokens (queries) attend to caption tokens (keys, values); padding keys are masked out."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q(x).reshape(batch, tokens, heads, head_dim).transpose(1, 2)
        k, v = self.kv(context).unflatten(-1, (2, heads, head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class TextDiTBlock(nn.Module):
    """adaLN-modulated self-attention, un-modulated cross-attention to the caption, adaLN-modulated MLP."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        use_qknorm: bool = False,
        use_swiglu: bool = False,
        use_rmsnorm: bool = False,
        adaln: str = "single",
    ):
        super().__init__()
        self.norm1 = _norm(hidden_size, use_rmsnorm)
        self.attn = Attention(hidden_size, num_heads, qk_norm=use_qknorm, use_rmsnorm=use_rmsnorm)
        self.norm_cross = nn.LayerNorm(hidden_size, eps=1e-6)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = _norm(hidden_size, use_rmsnorm)
        mlp_hidden = int(hidden_size * mlp_ratio)
        if use_swiglu:
            self.mlp = PackedSwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden))
        else:
            self.mlp = Mlp(hidden_size, mlp_hidden, act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.adaln = adaln
        if adaln == "single":
            # Added to the shared modulation: the block's own offset (PixArt-alpha's initialisation).
            self.scale_shift_table = nn.Parameter(torch.randn(6, hidden_size) / hidden_size**0.5)
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.adaln == "single":  # c is the shared (B, 6, D) modulation
            return (self.scale_shift_table[None] + c).unbind(dim=1)
        return self.adaLN_modulation(c).chunk(6, dim=1)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        rope: AxialRotaryEmbedding | None = None,
    ) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(c)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), rope=rope)
        x = x + self.cross_attn(self.norm_cross(x), text, text_mask)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class TextLightningDiT(nn.Module):
    """Text-conditioned latent flow transformer: ``forward(x, t, text, text_mask, pooled_text)``.

    x: (B, in_channels, input_size, input_size) latents; t: (B,) flow times in
    [0, 1]; text: (B, L, text_dim) caption token states; text_mask: (B, L)
    bool, True for real tokens (None = all); pooled_text: (B, pooled_dim) the
    pooled caption embedding (ignored when ``use_pooled_text`` is off).
    Classifier-free guidance needs no special input: the null condition is
    the features of the empty caption (see ``vtp_gen.t2i``).
    """

    architecture = "TextLightningDiT"

    def __init__(
        self,
        input_size: int = 16,
        patch_size: int = 1,
        in_channels: int = 64,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        text_dim: int = 768,
        pooled_dim: int = 768,
        use_pooled_text: bool = True,
        adaln: str = "single",
        caption_dropout_prob: float = 0.1,
        use_qknorm: bool = False,
        use_swiglu: bool = True,
        use_rope: bool = True,
        use_rmsnorm: bool = True,
        use_checkpoint: bool = False,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if adaln not in ADALN_MODES:
            raise ValueError(f"adaln must be one of {ADALN_MODES}, got {adaln!r}")
        # Constructor arguments: saved as config.json beside model.safetensors to rebuild the model.
        self.config = {
            "architecture": self.architecture,
            "input_size": input_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "text_dim": text_dim,
            "pooled_dim": pooled_dim,
            "use_pooled_text": use_pooled_text,
            "adaln": adaln,
            # Read by the training system (the model itself never drops captions: the null caption's
            # features come from the text tower, not from a learned table).
            "caption_dropout_prob": caption_dropout_prob,
            "use_qknorm": use_qknorm,
            "use_swiglu": use_swiglu,
            "use_rope": use_rope,
            "use_rmsnorm": use_rmsnorm,
            "use_checkpoint": use_checkpoint,
        }
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.num_heads = num_heads
        self.adaln = adaln
        self.use_pooled_text = use_pooled_text
        self.caption_dropout_prob = caption_dropout_prob
        self.use_checkpoint = use_checkpoint

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.caption_projection = _gelu_mlp(text_dim, hidden_size)
        self.pooled_projection = _gelu_mlp(pooled_dim, hidden_size) if use_pooled_text else None
        if adaln == "single":
            self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        self.grid_size = input_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.feat_rope = AxialRotaryEmbedding(hidden_size // num_heads, self.grid_size) if use_rope else None
        self.blocks = nn.ModuleList(
            TextDiTBlock(hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, adaln)
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, in_channels, use_rmsnorm)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT's initialisation, plus zeroed cross-attention outputs (PixArt-alpha) so training starts
        from an image-only model that learns to read the caption."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.pos_embed.copy_(sincos_2d_pos_embed(self.pos_embed.shape[-1], self.grid_size).unsqueeze(0))
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for mlp in (self.caption_projection, self.pooled_projection):
            if mlp is not None:
                nn.init.normal_(mlp.fc1.weight, std=0.02)
                nn.init.normal_(mlp.fc2.weight, std=0.02)
        zeroed = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        zeroed += [block.cross_attn.proj for block in self.blocks]
        if self.adaln == "single":
            nn.init.normal_(self.t_block[1].weight, std=0.02)
        else:
            zeroed += [block.adaLN_modulation[-1] for block in self.blocks]
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, g, c = self.patch_size, self.grid_size, self.out_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        pooled_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if text.shape[0] != x.shape[0]:
            raise ValueError(f"{x.shape[0]} latents but {text.shape[0]} captions")
        x = self.x_embedder(x) + self.pos_embed
        context = self.caption_projection(text.to(x.dtype))
        c = self.t_embedder(t)
        if self.use_pooled_text:
            if pooled_text is None:
                raise ValueError("this model adds the pooled caption embedding to t: pass pooled_text")
            c = c + self.pooled_projection(pooled_text.to(c.dtype))
        block_c = self.t_block(c).unflatten(1, (6, -1)) if self.adaln == "single" else c
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, block_c, context, text_mask, self.feat_rope, use_reentrant=False)
            else:
                x = block(x, block_c, context, text_mask, self.feat_rope)
        return self.unpatchify(self.final_layer(x, c))


# name -> (depth, hidden_size, num_heads), the LightningDiT sizes.
TEXT_DIT_SIZES = {"T": (4, 128, 4), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
# The tiny preset: vtp-tiny's 16x8x8 latents and 64-wide text tower; the others: VTP f16d64 latents at
# 256 px (16x16x64) and the 768-wide text tower of VTP-S/B/L.
TINY_TEXT_DIT = dict(input_size=8, in_channels=16, text_dim=64, pooled_dim=64, adaln="block")


def _register(
    name: str, depth: int, hidden_size: int, num_heads: int, patch_size: int, defaults: dict
) -> None:
    arch = dict(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size)

    def factory(**overrides) -> TextLightningDiT:
        return TextLightningDiT(**{**arch, **defaults, **overrides})

    factory.__name__ = name.replace("-", "_").replace("/", "_")
    factory.__doc__ = f"{name}: text-conditioned, depth {depth}, width {hidden_size}, {num_heads} heads."
    register_model(name)(factory)


for _size, (_depth, _hidden, _heads) in TEXT_DIT_SIZES.items():
    for _patch in (1, 2):
        _register(
            f"TextDiT-{_size}/{_patch}",
            _depth,
            _hidden,
            _heads,
            _patch,
            TINY_TEXT_DIT if _size == "T" else {},
        )
