"""nn.Modules only: tokenizer, generators, discriminator. No Lightning, data or files here."""

from vtp_gen.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
