"""``python -m vtp_gen.models.tokenizer``: parameter counts of every preset (meta device, no memory)."""

from vtp_gen.models.tokenizer.presets import main

main()
