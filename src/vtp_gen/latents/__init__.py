"""vtp_gen.latents"""
