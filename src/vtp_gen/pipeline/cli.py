"""The ``vtp-gen`` command line: one sub-command per pipeline step.

    vtp-gen stage1 [--config configs/stage1/tiny.yaml] [--data configs/data/x.yaml] [key=value ...]

Every step reads a recipe (YAML checked against the step's dataclass schema),
applies ``key=value`` overrides, writes the resolved config into its run folder
and runs. The Makefile targets and the thin scripts in ``stage1/``, ``stage2/``
and ``eval/`` all come through here.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from vtp_gen.config import ConfigError, DataConfig, load_config
from vtp_gen.pipeline.recipes import resolve_recipe
from vtp_gen.pretrained.safe_unpickle import unpickling_reason
from vtp_gen.systems.nonfinite import NonFiniteTrainingError
from vtp_gen.utils.host_memory import keep_freed_host_memory
from vtp_gen.utils.run_lock import FolderInUseError, launching_process
from vtp_gen.utils.stop_signals import StopRequested

WRITE_FAULTS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES)
WRITE_FAULT_REMEDY = {
    errno.ENOSPC: "free some space (or lift the limit) or choose another output folder",
    errno.EFBIG: "free some space (or lift the limit) or choose another output folder",
    errno.EDQUOT: "free some space (or lift the quota) or choose another output folder",
    errno.EROFS: "the file system is read-only: remount it writable or choose another output folder",
    errno.EACCES: "no permission to write there: fix the folder's permissions or choose another output folder",
}


@dataclass(frozen=True)
class Step:
    """A pipeline step: its config schema and its ``run(cfg)`` (``module:attr``, imported when run)."""

    schema: str
    runner: str
    default_recipe: str
    help: str


STEPS: dict[str, Step] = {
    "stage1": Step(
        "vtp_gen.pipeline.stage1.config:Stage1Config",
        "vtp_gen.pipeline.stage1.run:run",
        "configs/stage1/tiny.yaml",
        "pre-train the VTP tokenizer, then fine-tune its decoder with a GAN loss",
    ),
    "cache": Step(
        "vtp_gen.pipeline.cache.config:CacheConfig",
        "vtp_gen.pipeline.cache.run:run",
        "configs/stage2/cache_tiny.yaml",
        "encode a labelled dataset into latent shards with the frozen tokenizer",
    ),
    "stage2": Step(
        "vtp_gen.pipeline.stage2.config:Stage2Config",
        "vtp_gen.pipeline.stage2.run:run",
        "configs/stage2/tiny.yaml",
        "train a DiT / SiT / LightningDiT on cached latents (caches first if needed)",
    ),
    "sample": Step(
        "vtp_gen.pipeline.stage2.config:SampleConfig",
        "vtp_gen.pipeline.sample.run:run",
        "configs/stage2/sample_tiny.yaml",
        "sample images from a trained generator into a PNG folder and an ADM .npz",
    ),
    # Text-to-image (docs/text-to-image.md): `make stage2` / `make sample` pick these for t2i* /
    # sample_t2i* recipes (see recipe_step), or call them by name.
    "t2i": Step(
        "vtp_gen.pipeline.t2i.config:T2IConfig",
        "vtp_gen.pipeline.t2i.run:run",
        "configs/stage2/t2i_tiny.yaml",
        "train a text-to-image generator on captioned latents, conditioned by the tokenizer's text tower",
    ),
    "t2i-sample": Step(
        "vtp_gen.pipeline.t2i.config:T2ISampleConfig",
        "vtp_gen.pipeline.t2i.sample:run",
        "configs/stage2/sample_t2i_tiny.yaml",
        "sample images from prompts with a text-to-image generator: captioned grid, PNGs, ADM .npz",
    ),
    "t2i-eval": Step(
        "vtp_gen.pipeline.t2i.config:T2IEvalConfig",
        "vtp_gen.pipeline.t2i.evaluate:run",
        "configs/eval/t2i_tiny.yaml",
        "prompt agreement, CLIP score and FID of a text-to-image generator on held-out prompts",
    ),
    "eval": Step(
        "vtp_gen.pipeline.evaluate.config:EvalConfig",
        "vtp_gen.pipeline.evaluate.run:run",
        "configs/eval/tiny.yaml",
        "evaluate tokenizer and generator: FID/KID/IS/P/R, rFID/PSNR/SSIM/LPIPS, probes, zero-shot",
    ),
    "scaling": Step(
        "vtp_gen.pipeline.scaling.config:ScalingConfig",
        "vtp_gen.pipeline.scaling.run:run",
        "configs/scaling/tiny.yaml",
        "the tokenizer scaling study: objective presets x stage-1 budgets, same stage 2 and eval for each",
    ),
}


def write_fault_message(error: OSError) -> str:
    """What went wrong and the remedy that fits it (a read-only disk is not fixed by freeing space)."""
    remedy = WRITE_FAULT_REMEDY.get(error.errno, WRITE_FAULT_REMEDY[errno.ENOSPC])
    return f"could not write {error.filename or 'an output file'}: {error.strerror}; {remedy}, then rerun to resume"


def _import(path: str):
    module_name, attr = path.split(":")
    return getattr(importlib.import_module(module_name), attr)


def schema_for_recipe(path: str | Path) -> type:
    """The schema a shipped recipe is written against.

    ``configs/<step>/`` holds a step's recipes; in ``configs/stage2/`` the
    ``cache_*`` and ``sample_*`` files belong to the cache and sample steps.
    """
    path = Path(path)
    folder, stem = path.parent.name, path.stem
    if folder == "data":
        return DataConfig
    step_name = {"stage1": "stage1", "eval": "eval", "scaling": "scaling"}.get(folder)
    if folder == "eval":
        step_name = recipe_step("eval", [path])
    if folder == "stage2":
        step_name = (
            "cache" if stem.startswith("cache") else "sample" if stem.startswith("sample") else "stage2"
        )
        step_name = recipe_step(step_name, [path])
    if step_name is None:
        raise ConfigError(f"{path}: not a recipe folder of a pipeline step (configs/<step>/<name>.yaml)")
    return _import(STEPS[step_name].schema)


def recipe_step(step_name: str, recipes: list | None) -> str:
    """``stage2`` / ``sample`` / ``eval`` given a text-to-image recipe (``t2i*`` / ``sample_t2i*``) run the t2i steps."""
    stems = [Path(r).stem for r in recipes or []]
    if step_name == "stage2" and stems and stems[0].startswith("t2i"):
        return "t2i"
    if step_name == "sample" and stems and stems[0].startswith("sample_t2i"):
        return "t2i-sample"
    if step_name == "eval" and stems and stems[0].startswith("t2i"):
        return "t2i-eval"
    return step_name


def build_config(step_name: str, recipes: list[str] | None, data_recipe: str | None, overrides: list[str]):
    step = STEPS[step_name]
    schema = _import(step.schema)
    recipe_paths = [str(resolve_recipe(path)) for path in recipes or [step.default_recipe]]
    if data_recipe:
        data_values = OmegaConf.to_container(load_config(DataConfig, resolve_recipe(data_recipe)))
        # JSON-quoted: an empty string (e.g. the default data.root="") must stay a string, not become null.
        data_overrides = [f"data.{k}={json.dumps(v)}" for k, v in data_values.items() if v is not None]
        overrides = data_overrides + list(overrides)
    return load_config(schema, recipe_paths, overrides)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        prog="vtp-gen", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="step", required=True)
    for name, step in STEPS.items():
        p = sub.add_parser(name, help=step.help, description=step.help)
        p.add_argument(
            "--config",
            action="append",
            default=None,
            help=f"recipe YAML, repeatable: later files override earlier ones (default: {step.default_recipe})",
        )
        p.add_argument(
            "--data", default=None, help="a configs/data/*.yaml recipe merged into the data section"
        )
        p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
        p.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_args(argv)
    args.step = recipe_step(args.step, args.config)
    step = STEPS[args.step]
    try:
        cfg = build_config(args.step, args.config, args.data, args.overrides)
    except ConfigError as e:
        print(f"vtp-gen {args.step}: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
        return 0
    # Training and evaluation free and reallocate the same large tensors every step: keep that memory.
    keep_freed_host_memory()
    try:
        _import(step.runner)(cfg)
    except StopRequested as e:
        # SIGTERM / SIGINT: the message says what was saved; the status is a signal death's (128 + signal).
        if launching_process():  # every rank stops; one says so
            print(f"vtp-gen {args.step}: stopped: {e}", file=sys.stderr)
        return e.exit_status
    except (FileNotFoundError, ConfigError, ValueError, NonFiniteTrainingError, FolderInUseError) as e:
        # Environment, input and divergence faults: one clear line, non-zero exit, no traceback wall.
        print(f"vtp-gen {args.step}: error: {e}", file=sys.stderr)
        return 1
    except pickle.UnpicklingError as e:
        # A loader that names its file raises RefusedPickleError (a ValueError) instead; this is the
        # backstop, and like it never passes on PyTorch's advice to load with weights_only=False.
        print(
            f"vtp-gen {args.step}: error: refused to unpickle a file: {unpickling_reason(e)}", file=sys.stderr
        )
        return 1
    except OSError as e:
        if e.errno not in WRITE_FAULTS:
            raise
        # Full disk, file-size or quota limit, read-only or forbidden folder: nothing half-written was
        # left under a real name (vtp_gen/utils/atomic.py), so a rerun after fixing it resumes.
        print(f"vtp-gen {args.step}: error: {write_fault_message(e)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
