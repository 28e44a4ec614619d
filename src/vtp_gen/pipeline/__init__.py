"""The pipeline: the steps a user runs, and the only layer that knows run folders and recipes.

One subpackage per step, each holding its config schema (``config.py``) and its
``run(cfg)`` (``run.py``): ``stage1``, ``cache``, ``stage2``, ``sample``,
``evaluate``, ``t2i`` (train / sample / evaluate a text-to-image generator) and
``scaling``. ``cli`` maps step names to them (``vtp-gen <step>``, ``make <step>``)
and ``run_dir`` lays out ``runs/<name>/<step>/``.

The library below (models, losses, transport, data, latents, metrics,
systems, interop, pretrained, utils) never imports this package; the
import-linter contracts in pyproject.toml check it.
"""
