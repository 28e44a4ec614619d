"""Latent caching: the frozen tokenizer encodes a dataset into latent shards (``make cache``)."""
