"""The VTP vision encoder ("trunk"): a DINOv3-style ViT with a bias-free latent bottleneck.

Patch embedding, a CLS token, optional register tokens, no absolute position
embedding (2-D RoPE on the patch tokens only), pre-norm blocks, a final norm,
and ``feature_bottleneck`` (Linear D -> C, no bias) whose output on the normed
patch tokens is the latent the generator models. Attribute names are those of
the official ``trunk.*`` tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from timm.layers import PatchEmbed
from torch import Tensor, nn

from vtp_gen.models.tokenizer.blocks import (
    DropPathRate,
    SelfAttentionBlock,
    build_norm,
    drops_any_path,
    run_blocks,
)
from vtp_gen.models.tokenizer.rope import AxialRopeEmbedding, rope_tables


class EncoderFeatures(NamedTuple):
    """Final-normed encoder outputs: ``cls_token`` (B, D) and ``patch_tokens`` (B, N, D), row-major grid."""

    cls_token: Tensor
    patch_tokens: Tensor


class TrunkInput(NamedTuple):
    """One ``encode_features`` call: images, optional iBOT masks, its stochastic-depth rate."""

    images: Tensor
    masks: Tensor | None = None
    drop_path_rate: float = 0.0


def check_image_grid(images: Tensor, patch_size: int) -> tuple[int, int]:
    """The (rows, cols) patch grid of ``images``; a clear error when the size does not tile."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size}; "
            f"resize or crop to e.g. {height // patch_size * patch_size or patch_size}x"
            f"{width // patch_size * patch_size or patch_size}"
        )
    return height // patch_size, width // patch_size


class VisionEncoder(nn.Module):
    def __init__(
        self,
        *,
        image_size: int = 256,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        ffn_ratio: float = 4.0,
        ffn_layer: str = "swiglu",
        norm_layer: str = "rmsnorm",
        layerscale_init: float | None = None,
        use_qk_norm: bool = False,
        latent_channels: int | None = 64,
        num_register_tokens: int = 0,
        rope_base: float = 100.0,
        rope_dtype: torch.dtype = torch.bfloat16,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_register_tokens = num_register_tokens
        # Used when a call does not pass its own rate.
        self.drop_path_rate = drop_path_rate
        self.grad_checkpointing = False  # see VTPModel.set_grad_checkpointing

        self.patch_embed = PatchEmbed(
            img_size=image_size,
            patch_size=patch_size,
            in_chans=3,
            embed_dim=embed_dim,
            flatten=False,
            output_fmt="NHWC",
            strict_img_size=False,  # any size that tiles: global and local crops share the trunk
        )
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        if num_register_tokens:
            # DINOv3 name; absent (not just zero-sized) when unused, as in the official checkpoints.
            self.storage_tokens = nn.Parameter(torch.empty(1, num_register_tokens, embed_dim))
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
        # iBOT: masked patches are replaced by this learned token.
        self.mask_token = nn.Parameter(torch.empty(1, embed_dim))
        # The reference only creates the bottleneck when it changes the width.
        self.latent_channels = latent_channels or embed_dim
        self.feature_bottleneck = (
            nn.Linear(embed_dim, self.latent_channels, bias=False)
            if self.latent_channels != embed_dim
            else None
        )
        self.reset_parameters()

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    def reset_parameters(self) -> None:
        """DINOv3 initialisation: trunc-normal(0.02) linears, zero biases, unit norms, zero mask token."""
        nn.init.normal_(self.cls_token, std=0.02)
        if self.num_register_tokens:
            nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        self.patch_embed.proj.reset_parameters()  # uniform(+-1/sqrt(fan_in)), the DINOv3 patch-embed init
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        for block in self.blocks:
            for layer_scale in (block.ls1, block.ls2):
                if hasattr(layer_scale, "gamma"):
                    layer_scale.reset_parameters()

    # ------------------------------------------------------------------ tokens
    def prepare_tokens(self, images: Tensor, masks: Tensor | None = None) -> tuple[Tensor, tuple[int, int]]:
        """[CLS, registers, patches] tokens (B, 1+R+N, D) and the patch grid (rows, cols)."""
        grid = check_image_grid(images, self.patch_size)
        patches = self.patch_embed(images).flatten(1, 2)
        if masks is not None:
            if masks.shape != patches.shape[:2] or masks.dtype != torch.bool:
                raise ValueError(
                    f"masks must be a bool tensor of shape (B, N) = {tuple(patches.shape[:2])}, "
                    f"got {masks.dtype} {tuple(masks.shape)}"
                )
            patches = torch.where(
                masks.unsqueeze(-1), self.mask_token.to(patches.dtype).unsqueeze(0), patches
            )
            cls_token = self.cls_token
        else:
            # Keeps mask_token in the autograd graph when nothing is masked, so DDP
            # sees every parameter used (as the reference does); numerically a no-op.
            cls_token = self.cls_token + 0 * self.mask_token
        batch = images.shape[0]
        prefix = [cls_token.expand(batch, -1, -1)]
        if self.num_register_tokens:
            prefix.append(self.storage_tokens.expand(batch, -1, -1))
        return torch.cat([*prefix, patches], dim=1), grid

    def forward_tokens(
        self,
        images: Tensor,
        masks: Tensor | None = None,
        drop_path_rate: DropPathRate | None = None,
        keep_blocks: tuple[int, ...] = (),
    ) -> tuple[Tensor, tuple[int, int], list[Tensor]]:
        """Pre-norm tokens after the last block (B, 1+R+N, D), the patch grid, and the
        pre-norm outputs of the blocks listed in ``keep_blocks`` (in block order)."""
        tokens, grid = self.prepare_tokens(images, masks)
        # For the actual grid (global and local crops differ), laid out once for every block.
        rope = rope_tables(*self.rope_embed(*grid), tokens.shape[1])
        rate = self.drop_path_rate if drop_path_rate is None else drop_path_rate
        tokens, kept = run_blocks(self.blocks, tokens, rope, rate, self.grad_checkpointing, keep_blocks)
        return tokens, grid, kept

    # ---------------------------------------------------------------- features
    def encode_features(
        self, images: Tensor, masks: Tensor | None = None, drop_path_rate: DropPathRate | None = None
    ) -> EncoderFeatures:
        """Final-normed CLS (B, D) and patch tokens (B, N, D), without the bottleneck.

        ``masks`` (bool, B x N) marks patches replaced by the mask token (iBOT);
        ``drop_path_rate`` overrides the stochastic-depth rate for this call
        (only active in training mode): one rate, or ``((rows, rate), ...)``
        for a batch concatenated from forwards with different rates.
        """
        tokens, _, _ = self.forward_tokens(images, masks, drop_path_rate)
        normed = self.norm(tokens)
        return EncoderFeatures(normed[:, 0], normed[:, self.num_prefix_tokens :])

    forward = encode_features

    def encode_features_batched(self, inputs: Sequence[TrunkInput]) -> list[EncoderFeatures]:
        """``encode_features`` of every input, run as one forward per image size.

        Rows never interact inside the trunk (attention stays within an image,
        and each input's rows draw their own stochastic-depth subsets, see
        ``drop_path_segments``), so a concatenation of same-sized inputs computes
        what separate calls compute, as fewer and larger matrix products. The
        stage-1 step sends its CLIP images, SSL global crops and, when needed,
        reconstruction images through here together.
        """
        results: list[EncoderFeatures | None] = [None] * len(inputs)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(inputs):
            by_size.setdefault(tuple(item.images.shape[-2:]), []).append(index)
        for members in by_size.values():
            group = [inputs[index] for index in members]
            if len(group) == 1:
                item = group[0]
                results[members[0]] = self.encode_features(item.images, item.masks, item.drop_path_rate)
                continue
            images = torch.cat([item.images for item in group])
            masks = None
            if any(item.masks is not None for item in group):
                rows, cols = check_image_grid(images, self.patch_size)
                masks = torch.cat(
                    [
                        item.masks
                        if item.masks is not None
                        else torch.zeros(
                            item.images.shape[0], rows * cols, dtype=torch.bool, device=images.device
                        )
                        for item in group
                    ]
                )
            sizes = [item.images.shape[0] for item in group]
            segments = tuple(zip(sizes, (float(item.drop_path_rate) for item in group)))
            features = self.encode_features(images, masks, segments if drops_any_path(segments) else 0.0)
            cls_parts = features.cls_token.split(sizes)
            patch_parts = features.patch_tokens.split(sizes)
            for index, cls_token, patch_tokens in zip(members, cls_parts, patch_parts):
                results[index] = EncoderFeatures(cls_token, patch_tokens)
        return results

    def bottleneck(self, tokens: Tensor) -> Tensor:
        """Linear D -> C without bias on (..., D) tokens; identity when the model has no bottleneck."""
        return self.feature_bottleneck(tokens) if self.feature_bottleneck is not None else tokens

    def to_latents(self, patch_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Normed patch tokens (B, N, D) -> latents (B, C, rows, cols), channels first."""
        batch, count, _ = patch_tokens.shape
        rows, cols = grid
        if count != rows * cols:
            raise ValueError(f"{count} patch tokens do not fill a {rows}x{cols} grid")
        return self.bottleneck(patch_tokens).transpose(1, 2).reshape(batch, -1, rows, cols)

    def encode_latents(self, images: Tensor, drop_path_rate: float | None = None) -> Tensor:
        """Images -> latents (B, C, H/p, W/p): the tensor a DiT is trained on."""
        grid = check_image_grid(images, self.patch_size)
        return self.to_latents(self.encode_features(images, drop_path_rate=drop_path_rate).patch_tokens, grid)

    def get_intermediate_layers(
        self,
        images: Tensor,
        n: int | list[int] | tuple[int, ...] = 1,
        reshape: bool = False,
        return_class_token: bool = False,
        norm: bool = True,
    ) -> tuple:
        """Outputs of the last ``n`` blocks (or of the listed block indices), oldest first, DINOv2 style.

        Each item is the patch tokens (B, N, D) (or (B, D, rows, cols) with
        ``reshape``), paired with the CLS token when ``return_class_token``.
        ``norm`` applies the final norm to every taken block output.
        """
        depth = len(self.blocks)
        if isinstance(n, int):
            if not 0 < n <= depth:
                raise ValueError(f"n={n} must be in 1..{depth}")
            wanted = tuple(range(depth - n, depth))
        else:
            wanted = tuple(i % depth for i in n)
        _, (rows, cols), taken = self.forward_tokens(images, keep_blocks=wanted)
        if norm:
            taken = [self.norm(t) for t in taken]
        patches = [t[:, self.num_prefix_tokens :] for t in taken]
        if reshape:
            patches = [
                p.reshape(p.shape[0], rows, cols, -1).permute(0, 3, 1, 2).contiguous() for p in patches
            ]
        if return_class_token:
            return tuple(zip(patches, [t[:, 0] for t in taken]))
        return tuple(patches)
