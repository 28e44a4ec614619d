"""Text-to-image on VTP latents, conditioned by the tokenizer's own CLIP text tower (docs/text-to-image.md)."""
