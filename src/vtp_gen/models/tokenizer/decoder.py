"""The VTP pixel decoder: latents (B, C, h, w) -> images (B, 3, h*p, w*p).

1x1 conv C -> D, RoPE ViT blocks over the h*w tokens (no CLS), final norm,
1x1 conv D -> 3*p*p and PixelShuffle(p). The output lives in the same
ImageNet mean/std space as the encoder's input. Names follow the official
``pixel_decoder.*`` tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vtp_gen.models.tokenizer.blocks import SelfAttentionBlock, build_norm, run_blocks
from vtp_gen.models.tokenizer.rope import AxialRopeEmbedding, rope_tables


class PixelDecoder(nn.Module):
    def __init__(
        self,
        *,
        latent_channels: int = 64,
        out_channels: int = 3,
        upscale_factor: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_ratio: float = 4.0,
        ffn_layer: str = "swiglu",
        norm_layer: str = "layernorm",
        layerscale_init: float | None = None,
        use_qk_norm: bool = False,
        rope_base: float = 100.0,
        rope_dtype: torch.dtype = torch.bfloat16,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.latent_channels = latent_channels
        self.embed_dim = embed_dim
        self.upscale_factor = upscale_factor
        self.drop_path_rate = drop_path_rate
        self.grad_checkpointing = False  # see VTPModel.set_grad_checkpointing
        self.proj_in = nn.Conv2d(latent_channels, embed_dim, kernel_size=1)
        self.rope_embed = AxialRopeEmbedding(embed_dim // num_heads, base=rope_base, dtype=rope_dtype)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                embed_dim,
                num_heads,
                ffn_layer=ffn_layer,
                ffn_ratio=ffn_ratio,
                norm_layer=norm_layer,
                layerscale_init=layerscale_init,
                use_qk_norm=use_qk_norm,
            )
            for _ in range(depth)
        )
        self.norm = build_norm(norm_layer, embed_dim)
        self.proj_out = nn.Conv2d(embed_dim, out_channels * upscale_factor**2, kernel_size=1)
        self.pixel_shuffle = nn.PixelShuffle(upscale_factor)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As the reference: trunc-normal(0.02) for the 1x1 convs and every linear, zero biases."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        for block in self.blocks:
            for layer_scale in (block.ls1, block.ls2):
                if hasattr(layer_scale, "gamma"):
                    layer_scale.reset_parameters()

    def forward(self, latents: Tensor, drop_path_rate: float | None = None) -> Tensor:
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"expected latents of shape (B, {self.latent_channels}, h, w), got {tuple(latents.shape)}"
            )
        batch, _, rows, cols = latents.shape
        tokens = self.proj_in(latents).flatten(2).transpose(1, 2)
        rope = rope_tables(*self.rope_embed(rows, cols), tokens.shape[1])
        rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
        tokens, _ = run_blocks(self.blocks, tokens, rope, rate, self.grad_checkpointing)
        tokens = self.norm(tokens)
        feature_map = tokens.transpose(1, 2).reshape(batch, self.embed_dim, rows, cols)
        return self.pixel_shuffle(self.proj_out(feature_map))
