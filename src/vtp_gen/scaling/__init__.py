"""The tokenizer scaling study (paper Figs. 1c, 2, 4, 5): four objective presets at several
stage-1 compute budgets, each followed by the same stage-2 recipe and the same evaluation.

``vtp-gen scaling`` / ``make scaling`` runs it (:func:`vtp_gen.scaling.study.run`); see docs/scaling.md.
"""
