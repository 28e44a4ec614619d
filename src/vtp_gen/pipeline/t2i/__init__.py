"""Text-to-image: train, sample and evaluate a caption-conditioned generator on VTP latents."""
