"""nn.Modules only: tokenizer, generators, discriminator. No Lightning, data or files here."""

# Importing the model packages registers their presets (``vtp-tiny``, ``LightningDiT-XL/1``, ...).
from vtp_gen.models import generators, tokenizer  # noqa: F401
from vtp_gen.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
