"""Registry names of the generator family (``create_model("LightningDiT-XL/1", in_channels=64)``).

Sizes are those of the reference repositories. Defaults per family:

- ``LightningDiT-*``: the VTP / LightningDiT recipe (SwiGLU, RMSNorm, RoPE, no
  QK-norm, no learned sigma) on VTP f16d64 latents at 256 px (16x16x64).
- ``DiT-*``: facebookresearch/DiT as released: plain blocks, 32x32x4 SD-VAE
  latents, learned sigma returned by ``forward`` (8 output channels). Being a
  DDPM eps/variance model it does not fit the flow objective: train SiT-* or
  pass ``learn_sigma=False``.
- ``SiT-*``: willisma/SiT: DiT's blocks, learned sigma dropped in ``forward``.
- ``LightningDiT-T/*``: a tiny CPU preset (depth 4, width 128) for the embedded
  default run on 8x8x16 latents.

Every argument of ``LightningDiT`` can be overridden by keyword.
"""

from __future__ import annotations

from vtp_gen.models.generators.lightningdit import LightningDiT
from vtp_gen.models.registry import register_model

# name -> (depth, hidden_size, num_heads)
LIGHTNINGDIT_SIZES = {
    "T": (4, 128, 4),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
    "1p0B": (24, 1536, 24),
    "1p6B": (28, 1792, 28),
}
DIT_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

LIGHTNINGDIT_RECIPE = dict(
    input_size=16,
    in_channels=64,
    use_swiglu=True,
    use_rope=True,
    use_rmsnorm=True,
    use_qknorm=False,
    wo_shift=False,
    learn_sigma=False,
)
TINY_LATENTS = dict(input_size=8, in_channels=16)
DIT_RELEASE = dict(input_size=32, in_channels=4, learn_sigma=True, return_sigma=True)
SIT_RELEASE = dict(input_size=32, in_channels=4, learn_sigma=True, return_sigma=False)


def _register(
    name: str, depth: int, hidden_size: int, num_heads: int, patch_size: int, defaults: dict
) -> None:
    arch = dict(depth=depth, hidden_size=hidden_size, num_heads=num_heads, patch_size=patch_size)

    def factory(**overrides) -> LightningDiT:
        return LightningDiT(**{**arch, **defaults, **overrides})

    factory.__name__ = name.replace("-", "_").replace("/", "_")
    factory.__doc__ = f"{name}: depth {depth}, width {hidden_size}, {num_heads} heads, patch {patch_size}."
    register_model(name)(factory)


def _register_all() -> None:
    for size, (depth, hidden, heads) in LIGHTNINGDIT_SIZES.items():
        defaults = {**LIGHTNINGDIT_RECIPE, **(TINY_LATENTS if size == "T" else {})}
        for patch in (1, 2):
            _register(f"LightningDiT-{size}/{patch}", depth, hidden, heads, patch, defaults)
    for family, defaults in (("DiT", DIT_RELEASE), ("SiT", SIT_RELEASE)):
        for size, (depth, hidden, heads) in DIT_SIZES.items():
            _register(f"{family}-{size}/2", depth, hidden, heads, 2, defaults)


_register_all()
