"""Evaluation: tokenizer and generator metrics, report and grids (``make eval``)."""
