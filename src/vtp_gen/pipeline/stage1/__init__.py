"""Stage 1: pre-train the VTP tokenizer, fine-tune its decoder, export it (``make stage1``)."""
