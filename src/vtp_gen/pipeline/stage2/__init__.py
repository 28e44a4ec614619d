"""Stage 2: train a DiT / SiT / LightningDiT on cached latents (``make stage2``)."""
