"""LightningDiT: DiT / SiT with optional modern blocks, one class for the whole generator family.

With every flag off this is exactly facebookresearch/DiT's (and willisma/SiT's)
architecture; the flags add LightningDiT's SwiGLU FFN, RMSNorm, 2-D RoPE (on top
of the fixed sin-cos table), QK-norm and shift-free adaLN. Constructor argument
names and defaults are those of hustvl/LightningDiT's ``LightningDiT`` class, and
``state_dict()`` keys are the reference keys, so reference checkpoints load with
``strict=True``.

Output convention: ``forward`` returns ``in_channels`` channels (the velocity /
noise prediction). With ``learn_sigma=True`` the network also predicts DDPM
variances; SiT and LightningDiT drop them in ``forward`` while DiT returns them
(``return_sigma=True``, ``2 * in_channels`` channels).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import Mlp, PatchEmbed
from torch.utils.checkpoint import checkpoint

from vtp_gen.guidance import combine_guidance, guided_channel_count
from vtp_gen.models.generators.layers import (
    Attention,
    AxialRotaryEmbedding,
    LabelEmbedder,
    PackedSwiGLUFFN,
    RMSNorm,
    TimestepEmbedder,
    gated_residual,
    norm_modulate,
    sincos_2d_pos_embed,
)


def _norm(hidden_size: int, use_rmsnorm: bool) -> nn.Module:
    # DiT's LayerNorm has no affine parameters (adaLN supplies scale and shift); RMSNorm keeps its weight.
    return (
        RMSNorm(hidden_size) if use_rmsnorm else nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
    )


class LightningDiTBlock(nn.Module):
    """Pre-norm transformer block conditioned by adaLN-Zero (gated residuals)."""

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        use_qknorm: bool = False,
        use_swiglu: bool = False,
        use_rmsnorm: bool = False,
        wo_shift: bool = False,
    ):
        super().__init__()
        self.norm1 = _norm(hidden_size, use_rmsnorm)
        self.attn = Attention(hidden_size, num_heads, qk_norm=use_qknorm, use_rmsnorm=use_rmsnorm)
        self.norm2 = _norm(hidden_size, use_rmsnorm)
        mlp_hidden = int(hidden_size * mlp_ratio)
        if use_swiglu:
            # 2/3 keeps the parameter count of the 4x GELU MLP it replaces (3 matrices instead of 2).
            self.mlp = PackedSwiGLUFFN(hidden_size, int(2 / 3 * mlp_hidden))
        else:
            self.mlp = Mlp(hidden_size, mlp_hidden, act_layer=lambda: nn.GELU(approximate="tanh"), drop=0)
        self.wo_shift = wo_shift
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, (4 if wo_shift else 6) * hidden_size)
        )

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, rope: AxialRotaryEmbedding | None = None
    ) -> torch.Tensor:
        if self.wo_shift:
            scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(4, dim=1)
            shift_msa = shift_mlp = None
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(
                6, dim=1
            )
        x = gated_residual(
            x, gate_msa, self.attn(norm_modulate(self.norm1, x, shift_msa, scale_msa), rope=rope)
        )
        return gated_residual(x, gate_mlp, self.mlp(norm_modulate(self.norm2, x, shift_mlp, scale_mlp)))


class FinalLayer(nn.Module):
    """adaLN-modulated norm + linear projection of each token to a patch of output channels."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, use_rmsnorm: bool = False):
        super().__init__()
        self.norm_final = _norm(hidden_size, use_rmsnorm)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(norm_modulate(self.norm_final, x, shift, scale))


class LightningDiT(nn.Module):
    """Class-conditional latent diffusion / flow transformer: ``forward(x, t, y) -> prediction``.

    x: (B, in_channels, input_size, input_size) latents; t: (B,) times (flow time
    in [0, 1] for SiT/LightningDiT, DDPM step for DiT checkpoints); y: (B,) int
    labels, ``num_classes`` being the null class.
    """

    def __init__(
        self,
        input_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 32,
        hidden_size: int = 1152,
        depth: int = 28,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        class_dropout_prob: float = 0.1,
        num_classes: int = 1000,
        learn_sigma: bool = False,
        use_qknorm: bool = False,
        use_swiglu: bool = False,
        use_rope: bool = False,
        use_rmsnorm: bool = False,
        wo_shift: bool = False,
        use_checkpoint: bool = False,
        return_sigma: bool = False,
    ):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} is not a multiple of patch_size {patch_size}")
        if return_sigma and not learn_sigma:
            raise ValueError("return_sigma=True needs learn_sigma=True")
        # Constructor arguments, so the model can be saved as config.json + model.safetensors and rebuilt.
        self.config = {
            "input_size": input_size,
            "patch_size": patch_size,
            "in_channels": in_channels,
            "hidden_size": hidden_size,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "class_dropout_prob": class_dropout_prob,
            "num_classes": num_classes,
            "learn_sigma": learn_sigma,
            "use_qknorm": use_qknorm,
            "use_swiglu": use_swiglu,
            "use_rope": use_rope,
            "use_rmsnorm": use_rmsnorm,
            "wo_shift": wo_shift,
            "use_checkpoint": use_checkpoint,
            "return_sigma": return_sigma,
        }
        self.input_size = input_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.learn_sigma = learn_sigma
        self.return_sigma = return_sigma
        self.network_out_channels = 2 * in_channels if learn_sigma else in_channels
        self.out_channels = self.network_out_channels if return_sigma else in_channels
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.use_checkpoint = use_checkpoint

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        self.grid_size = input_size // patch_size
        # Fixed sin-cos table; a frozen Parameter (not a buffer) because that is how the checkpoints store it.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size**2, hidden_size), requires_grad=False)
        self.feat_rope = AxialRotaryEmbedding(hidden_size // num_heads, self.grid_size) if use_rope else None
        self.blocks = nn.ModuleList(
            LightningDiTBlock(
                hidden_size, num_heads, mlp_ratio, use_qknorm, use_swiglu, use_rmsnorm, wo_shift
            )
            for _ in range(depth)
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.network_out_channels, use_rmsnorm)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, N(0, 0.02) embeddings, adaLN-Zero (zeroed modulation and output)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.pos_embed.copy_(sincos_2d_pos_embed(self.pos_embed.shape[-1], self.grid_size).unsqueeze(0))
        # The patch projection is a linear map of each flattened patch: initialise it like one.
        proj = self.x_embedder.proj
        nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
        nn.init.zeros_(proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [
            *(block.adaLN_modulation[-1] for block in self.blocks),
            self.final_layer.adaLN_modulation[-1],
        ]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p*p*C) tokens -> (B, C, H, W); each token's channels are ordered (p, q, c)."""
        p, g, c = self.patch_size, self.grid_size, self.network_out_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, c, self.feat_rope, use_reentrant=False)
            else:
                x = block(x, c, self.feat_rope)
        x = self.unpatchify(self.final_layer(x, c))
        if self.learn_sigma and not self.return_sigma:
            x = x[:, : self.in_channels]
        return x

    def forward_with_cfg(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        cfg_scale: float,
        cfg_interval_start: float | None = None,
        guidance_mode: str = "all_channels",
    ) -> torch.Tensor:
        """Guided prediction on a doubled batch, with the calling convention of the reference code.

        The batch is [conditional half; null-class half]: ``y`` holds the labels
        then ``num_classes`` repeated, and only the first half of ``x`` is read
        (both halves are evaluated on it). Both output halves carry the guided
        channels; the channels guidance leaves alone come from each half's own
        prediction, as in the reference. With ``cfg_interval_start`` set,
        guidance is applied only where t >= cfg_interval_start.
        See ``guidance.combine_guidance`` for the two modes.
        """
        half = x[: len(x) // 2]
        out = self.forward(torch.cat([half, half], dim=0), t, y)
        cond, uncond = out.chunk(2, dim=0)
        active = None if cfg_interval_start is None else t[: len(half)] >= cfg_interval_start
        guided = combine_guidance(cond, uncond, cfg_scale, guidance_mode, self.in_channels, active)
        n_guided = guided_channel_count(guidance_mode, self.in_channels)
        uncond_half = torch.cat([guided[:, :n_guided], uncond[:, n_guided:]], dim=1)
        return torch.cat([guided, uncond_half], dim=0)
