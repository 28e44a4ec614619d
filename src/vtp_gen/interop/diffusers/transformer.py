"""``LightningDiTTransformer2DModel`` and ``TextDiTTransformer2DModel``: our generators as diffusers models.

The config keys are the reference constructor arguments (those of
``vtp_gen.models.generators.LightningDiT``, i.e. of hustvl/LightningDiT), so
``transformer.config`` reads like the generator's own ``config.json``. The
network is held as ``self.model``; its weights are stored under
``model.<reference key>``.

Time convention: ``forward(hidden_states, timestep, class_labels)`` is the
generator's own call. For SiT / LightningDiT ``timestep`` is the flow time in
[0, 1] with 0 = noise and 1 = data, and the output is the velocity
``x_data - noise`` (for a DiT checkpoint: the DDPM step and eps). The pipeline
converts from the scheduler's convention (sigma = 1 - t, velocity
``noise - x_data``) in one place.
"""

from __future__ import annotations

import inspect

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor

from vtp_gen.models.generators import LightningDiT
from vtp_gen.models.generators.text_dit import TextLightningDiT

GENERATOR_ARGUMENTS = tuple(inspect.signature(LightningDiT.__init__).parameters)[1:]  # without self


class LightningDiTTransformer2DModel(ModelMixin, ConfigMixin):
    """Class-conditional latent transformer; arguments and defaults are ``LightningDiT``'s."""

    _supports_gradient_checkpointing = False

    @register_to_config
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
        # register_to_config has stored every argument in self.config before this body runs; the
        # signature above repeats LightningDiT's because ConfigMixin reads its config keys from it
        # (tests/test_diffusers_export.py checks the two stay identical).
        self.model = LightningDiT(**{name: self.config[name] for name in GENERATOR_ARGUMENTS})

    @classmethod
    def from_generator(cls, generator: LightningDiT) -> LightningDiTTransformer2DModel:
        """Wrap a trained generator (weights copied; e.g. the EMA weights a stage-2 run exports)."""
        transformer = cls(**generator.config)
        transformer.model.load_state_dict(generator.state_dict(), strict=True)
        transformer.to(next(generator.parameters()).device)
        return transformer.eval()

    def to_generator(self) -> LightningDiT:
        """The wrapped generator (shared weights): ``transport.sample`` and ``save_generator`` take it."""
        return self.model

    def forward(
        self, hidden_states: Tensor, timestep: Tensor, class_labels: Tensor, return_dict: bool = True
    ) -> Transformer2DModelOutput | tuple[Tensor]:
        """Latents (B, C, H, W), flow times (B,) in [0, 1] (0 = noise), labels (B,) -> velocity (B, C, H, W)."""
        if timestep.dim() == 0:
            timestep = timestep.expand(hidden_states.shape[0])
        output = self.model(hidden_states, timestep, class_labels)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)


TEXT_GENERATOR_ARGUMENTS = tuple(inspect.signature(TextLightningDiT.__init__).parameters)[1:]  # without self


class TextDiTTransformer2DModel(ModelMixin, ConfigMixin):
    """Text-conditioned latent transformer (``TextLightningDiT``); arguments and defaults are its own.

    ``forward(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections)``
    takes the diffusers names for the generator's ``(x, t, text, text_mask, pooled_text)``; the
    caption inputs are ``VTPTextEncoder``'s outputs. Time and velocity conventions are those of
    ``LightningDiTTransformer2DModel`` (t in [0, 1], 0 = noise; output ``x_data - noise``).
    """

    _supports_gradient_checkpointing = False

    @register_to_config
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
        # As in LightningDiTTransformer2DModel: the signature repeats TextLightningDiT's because
        # ConfigMixin reads the config keys from it (a test checks the two stay identical).
        self.model = TextLightningDiT(**{name: self.config[name] for name in TEXT_GENERATOR_ARGUMENTS})

    @classmethod
    def from_generator(cls, generator: TextLightningDiT) -> TextDiTTransformer2DModel:
        """Wrap a trained text generator (weights copied; e.g. the EMA weights a t2i run exports)."""
        arguments = {k: v for k, v in generator.config.items() if k != "architecture"}
        transformer = cls(**arguments)
        transformer.model.load_state_dict(generator.state_dict(), strict=True)
        transformer.to(next(generator.parameters()).device)
        return transformer.eval()

    def to_generator(self) -> TextLightningDiT:
        """The wrapped generator (shared weights): ``vtp_gen.t2i.guidance.sample_text`` takes it."""
        return self.model

    def forward(
        self,
        hidden_states: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        encoder_attention_mask: Tensor | None = None,
        pooled_projections: Tensor | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[Tensor]:
        """Latents (B, C, H, W), flow times (B,), caption states / mask / pooled -> velocity (B, C, H, W)."""
        if timestep.dim() == 0:
            timestep = timestep.expand(hidden_states.shape[0])
        output = self.model(
            hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, pooled_projections
        )
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)
