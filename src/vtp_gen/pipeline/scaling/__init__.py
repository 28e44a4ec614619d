"""The tokenizer scaling study: objective presets x stage-1 budgets, one stage 2 and eval each (``make scaling``)."""
