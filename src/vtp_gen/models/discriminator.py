"""PatchGAN discriminator for the decoder fine-tuning stage (the pix2pix / taming-transformers / LDM design).

A stack of 4x4 convolutions: the first ``n_layers`` halve the resolution, two
more keep it (stride 1), the last maps to one logit per patch. Each logit sees
a receptive field of 70 px for ``n_layers=3``, so the discriminator judges
local texture and the L1/LPIPS terms keep the global structure.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Norm = Literal["batch", "group"]


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # GroupNorm does not depend on the batch (safe with tiny or uneven per-rank batches).
        return nn.GroupNorm(min(32, channels), channels)
    raise ValueError(f"norm must be 'batch' or 'group', got {kind!r}")


class PatchDiscriminator(nn.Module):
    """(B, in_channels, H, W) images -> (B, 1, H', W') real/fake logits, one per patch.

    Width grows as ``channels * min(2**i, 8)``. Convolutions followed by a
    normalisation have no bias (the norm's shift replaces it).
    For H = 256 and ``n_layers=3`` the logit map is 30 x 30.
    """

    def __init__(
        self, in_channels: int = 3, channels: int = 64, n_layers: int = 3, norm: Norm = "batch"
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError("n_layers must be >= 1")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for i in range(1, n_layers + 1):
            next_width = channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [
                nn.Conv2d(width, next_width, kernel_size=4, stride=stride, padding=1, bias=False),
                _norm(norm, next_width),
                nn.LeakyReLU(0.2),
            ]
            width = next_width
        layers.append(nn.Conv2d(width, 1, kernel_size=4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCGAN initialisation (as pix2pix/taming): conv N(0, 0.02), norm scale N(1, 0.02), shift 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)
