"""Stage-2 generators: the DiT / SiT / LightningDiT family (one class, registry presets)."""

from vtp_gen.guidance import GUIDANCE_MODES, combine_guidance
from vtp_gen.models.generators import presets, text_dit  # noqa: F401  (registers the model names)
from vtp_gen.models.generators.lightningdit import FinalLayer, LightningDiT, LightningDiTBlock
from vtp_gen.models.generators.text_dit import TextLightningDiT

__all__ = [
    "GUIDANCE_MODES",
    "FinalLayer",
    "LightningDiT",
    "LightningDiTBlock",
    "TextLightningDiT",
    "combine_guidance",
]
