"""Structured configs: dataclass schemas, YAML recipes, dotlist overrides, validation.

Every recipe is checked against a dataclass schema, so a misspelt key fails
loudly with the nearest valid key instead of being silently ignored, and a
value of the wrong type names the key and the expected type.

    cfg = load_config(Stage1Config, "configs/stage1/tiny.yaml", ["trainer.max_steps=10"])

Schemas for each stage live next to the system that consumes them; the
sections shared by all stages (run, data, trainer) are defined here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from vtp_gen.utils.atomic import write_text_atomic


class ConfigError(ValueError):
    """A recipe or override that does not fit its schema; the message says how to fix it."""


@dataclass
class RunConfig:
    # Every output of a run (config, checkpoints, logs, images, metrics) goes under out_dir/name.
    out_dir: str = "runs"
    name: str = "default"
    seed: int = 0


@dataclass
class DataConfig:
    # fashion_mnist (embedded default) | image_folder (ImageNet layout) | webdataset (img2dataset shards)
    source: str = "fashion_mnist"
    # Dataset root: the idx folder for fashion_mnist ("" = the Debian package's folder or
    # $VTP_GEN_FASHION_MNIST), the class-folder root for image_folder.
    root: str = ""
    # Brace-expanded shard pattern for webdataset, e.g. "/data/datacomp/{00000..01023}.tar".
    shards: str = ""
    split: str = "train"
    image_size: int = 32
    batch_size: int = 64
    num_workers: int = 0
    # Endless stream over randomly resampled shards (DataComp-scale runs); epoch-based otherwise.
    resampled: bool = False
    # Use only the first N images (0 = all); handy for smoke runs.
    max_samples: int = 0
    # Captions made from labels (fashion_mnist, image_folder): this share of the images names its
    # class by another name, the plural or a synonym (vtp_gen.data.captions.NAME_VARIANTS), so the
    # text tower learns the words people type ("trousers", "a sweater"); 0 = the label's name only.
    caption_variants: float = 0.0
    # Pixels above this count are refused (decompression-bomb guard).
    max_image_pixels: int = 178_956_970


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    # "32-true" on CPU; "bf16-mixed" on GPU. "auto" picks by accelerator.
    precision: str = "auto"
    max_steps: int = 1000
    accumulate_grad_batches: int = 1
    gradient_clip_val: float = 0.0
    log_every_n_steps: int = 10
    checkpoint_every_n_steps: int = 200
    progress_bar: bool = True
    # torch.compile: stage 2 the whole generator, stage 1 each transformer block (regional).
    compile: bool = False
    # Optimiser steps with NaN/Inf gradients are skipped; this many in a row stop the run.
    max_nonfinite_steps: int = 5


def _schema_keys(node: Any) -> list[str]:
    if isinstance(node, DictConfig):
        return [str(k) for k in node.keys()]
    return []


def _nearest_key_message(cfg: DictConfig, dotted_key: str) -> str:
    parts = dotted_key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        keys = _schema_keys(node)
        if part not in keys:
            prefix = ".".join(parts[:i])
            close = difflib.get_close_matches(part, keys, n=1, cutoff=0.0)
            where = f" in section '{prefix}'" if prefix else ""
            hint = f"; did you mean '{'.'.join([*parts[:i], close[0]])}'?" if close else ""
            valid = ", ".join(sorted(keys))
            return f"unknown config key '{dotted_key}'{where}{hint} (valid keys here: {valid})"
        node = node[part]
    return f"unknown config key '{dotted_key}'"


def _flatten_keys(container: Any, prefix: str = "") -> list[str]:
    if isinstance(container, dict):
        out = []
        for k, v in container.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.extend(_flatten_keys(v, key) if isinstance(v, dict) else [key])
        return out
    return [prefix]


def _check_keys(schema: DictConfig, values: dict, source: str) -> None:
    for key in _flatten_keys(values):
        node: Any = schema
        for part in key.split("."):
            if _is_free_form(node):
                break  # keys inside a free-form dict field are the user's business
            if not isinstance(node, DictConfig) or part not in node:
                raise ConfigError(f"{source}: {_nearest_key_message(schema, key)}")
            node = node._get_node(part)


def _merge(schema: DictConfig, values: DictConfig | ListConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(schema, values)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise ConfigError(f"{source}: {_nearest_key_message(schema, str(e.full_key))}") from None
    except ValidationError as e:
        expected = _expected_type(schema, str(e.full_key))
        raise ConfigError(
            f"{source}: wrong type for '{e.full_key}': expected {expected}, got {e.value!r}"
        ) from None


def _expected_type(schema: DictConfig, dotted_key: str) -> str:
    parent_key, _, leaf = dotted_key.rpartition(".")
    parent = OmegaConf.select(schema, parent_key) if parent_key else schema
    try:
        node = parent._get_node(leaf)
        ref = node._metadata.ref_type
        return getattr(ref, "__name__", str(ref))
    except Exception:
        return "a value of the schema's type"


def load_config(
    schema: type, recipe: str | Path | list[str | Path] | None = None, overrides: list[str] | None = None
) -> DictConfig:
    """Schema defaults <- recipe YAML(s) <- ``key=value`` overrides, each layer validated.

    Several recipes merge left to right, so a preset can sit on top of a base
    recipe (``[configs/stage1/tiny.yaml, configs/stage1/ae_only.yaml]``).
    """
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    cfg = OmegaConf.structured(schema)
    recipes = recipe if isinstance(recipe, (list, tuple)) else ([recipe] if recipe is not None else [])
    for item in recipes:
        path = Path(item)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = OmegaConf.load(path)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        if values is None:
            values = OmegaConf.create({})
        _check_keys(cfg, OmegaConf.to_container(values), str(path))
        cfg = _merge(cfg, values, str(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].lstrip("+")
        if not _exists(cfg, key):
            raise ConfigError(f"override '{item}': {_nearest_key_message(cfg, key)}")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    check_ranges(cfg)
    return cfg


# Ranges by key name, whatever the section: the same name means the same quantity in every
# schema; a dotted key (data.batch_size) overrides its name's rule (decoder_finetune.batch_size = 0
# means "as data.batch_size"). (low, low_inclusive, high).
_RANGES: dict[str, tuple[float, bool, float]] = {
    **{k: (0, False, math.inf) for k in ("data.batch_size", "global_batch_size", "lr", "disc_lr")},
    # A run of 0 steps would export untrained weights as if trained.
    "trainer.max_steps": (1, True, math.inf),
    **{
        k: (0, True, math.inf)
        for k in (
            "max_steps",
            "num_workers",
            "warmup_steps",
            "min_lr",
            "gradient_clip_val",
            "max_samples",
            "lambda_clip",
            "lambda_ssl",
            "lambda_rec",
            "weight_decay",
            "weight_decay_start",
            "weight_decay_end",
        )
    },
    **{
        k: (1, True, math.inf)
        for k in ("accumulate_grad_batches", "log_every_n_steps", "max_nonfinite_steps")
    },
    **{k: (0, False, 1) for k in ("ssl_fraction", "rec_fraction")},
    **{k: (0, True, 1) for k in ("flip_prob", "mask_probability", "class_dropout_prob")},
}


def check_ranges(cfg: DictConfig, prefix: str = "") -> None:
    """Out-of-range numbers (a negative learning rate, batch size 0, a fraction above 1) are config errors."""
    for key in cfg.keys():
        value = cfg[key]
        dotted = f"{prefix}{key}"
        if isinstance(value, DictConfig):
            check_ranges(value, f"{dotted}.")
            continue
        rule = _RANGES.get(dotted, _RANGES.get(str(key)))
        if rule is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, low_inclusive, high = rule
        if value < low or (value == low and not low_inclusive) or value > high:
            bound = f"{'>=' if low_inclusive else '>'} {low}" + (
                f" and <= {high}" if high != math.inf else ""
            )
            raise ConfigError(f"out-of-range value for '{dotted}': {value} (must be {bound})")


def _is_free_form(node: Any) -> bool:
    return isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict


def _exists(cfg: DictConfig, dotted_key: str) -> bool:
    node: Any = cfg
    for part in dotted_key.split("."):
        if _is_free_form(node):
            return True
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
    return True


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (the record of what a run really used)."""
    return write_text_atomic(path, OmegaConf.to_yaml(cfg, resolve=True))


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


__all__ = [
    "ConfigError",
    "DataConfig",
    "RunConfig",
    "TrainerConfig",
    "field",
    "load_config",
    "save_config",
    "to_dict",
]
