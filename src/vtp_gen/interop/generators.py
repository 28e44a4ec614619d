"""Load and save DiT / SiT / LightningDiT generators in the reference formats, without unpickling code.

Accepted by ``load_generator(path)``:

- a folder with ``config.json`` (the reference constructor arguments) and
  ``model.safetensors`` (the reference state dict): what ``save_generator`` writes;
- a ``.safetensors`` file alone (architecture inferred from the tensor shapes);
- a ``.pt`` / ``.pth`` checkpoint of hustvl/LightningDiT, facebookresearch/DiT
  or willisma/SiT: a bare state dict (released weights) or a training
  checkpoint (``model`` / ``ema`` / ``opt`` / ``config`` or ``args``), read with
  ``torch.load(weights_only=True)``; the EMA weights are used when present.

Text-conditioned generators (``TextLightningDiT``, no reference format) are read
by ``load_text_generator`` from the same ``config.json`` + ``model.safetensors``
folder layout; their config records ``architecture: "TextLightningDiT"``.

Families differ in one behaviour the weights cannot tell: DiT's ``forward``
returns its learned variances, SiT's and LightningDiT's drop them. The family is
read from the checkpoint where it is recorded (``architecture`` in config.json,
``args.model`` / ``config.model.model_type`` in training checkpoints); otherwise
modern blocks mean LightningDiT and plain blocks mean DiT. Pass
``architecture="SiT"`` to load a bare SiT state dict.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vtp_gen.models.generators import LightningDiT
from vtp_gen.models.generators.text_dit import TextLightningDiT
from vtp_gen.pretrained.safe_unpickle import load_tensors_only

ARCHITECTURES = ("LightningDiT", "DiT", "SiT")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# Constructor arguments only hustvl/LightningDiT (or vtp_gen) has; facebookresearch/DiT's DiT lacks them.
_NOT_IN_DIT = {
    "use_qknorm",
    "use_swiglu",
    "use_rope",
    "use_rmsnorm",
    "wo_shift",
    "use_checkpoint",
    "return_sigma",
}
_CONSTRUCTOR_ARGS = set(inspect.signature(LightningDiT.__init__).parameters) - {"self"}
# Head counts of the published sizes, keyed by width: the weights only reveal them with RoPE or QK-norm.
_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16, 1536: 24, 1792: 28}


def _family_defaults(architecture: str) -> dict:
    """Constructor defaults of each reference class that differ from LightningDiT's."""
    if architecture == "DiT":
        return {"in_channels": 4, "learn_sigma": True, "return_sigma": True}
    if architecture == "SiT":
        return {"in_channels": 4, "learn_sigma": True, "return_sigma": False}
    if architecture == "LightningDiT":
        return {}
    raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")


def _architecture_from_name(model_name: str | None) -> str | None:
    """'DiT-XL/2' -> 'DiT', 'SiT-B/2' -> 'SiT', 'LightningDiT-XL/1' -> 'LightningDiT'."""
    if not model_name:
        return None
    family = str(model_name).split("-")[0]
    return family if family in ARCHITECTURES else None


def infer_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """Constructor arguments implied by the tensor shapes of a reference state dict.

    Everything but ``class_dropout_prob`` (assumed > 0 since the table has a null
    row) and, for models without RoPE or QK-norm, ``num_heads`` (taken from the
    published size with that width) is determined by the shapes.
    """
    proj = state_dict["x_embedder.proj.weight"]
    hidden_size, in_channels, patch_size = proj.shape[0], proj.shape[1], proj.shape[2]
    grid = round(state_dict["pos_embed"].shape[1] ** 0.5)
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    out_channels = state_dict["final_layer.linear.weight"].shape[0] // patch_size**2
    use_swiglu = "blocks.0.mlp.w12.weight" in state_dict
    if use_swiglu:
        # SwiGLU hidden = int(2/3 * mlp_ratio * width); only the reference's 4.0 is checked for.
        mlp_ratio = 4.0
    else:
        mlp_ratio = state_dict["blocks.0.mlp.fc1.weight"].shape[0] / hidden_size
    config = {
        "input_size": grid * patch_size,
        "patch_size": patch_size,
        "in_channels": in_channels,
        "hidden_size": hidden_size,
        "depth": depth,
        "mlp_ratio": mlp_ratio,
        "num_classes": state_dict["y_embedder.embedding_table.weight"].shape[0] - 1,
        "class_dropout_prob": 0.1,
        "learn_sigma": out_channels == 2 * in_channels,
        "use_qknorm": "blocks.0.attn.q_norm.weight" in state_dict,
        "use_swiglu": use_swiglu,
        "use_rope": "feat_rope.freqs_cos" in state_dict,
        "use_rmsnorm": "blocks.0.norm1.weight" in state_dict,
        "wo_shift": state_dict["blocks.0.adaLN_modulation.1.weight"].shape[0] == 4 * hidden_size,
    }
    if config["use_rope"]:
        head_dim = state_dict["feat_rope.freqs_cos"].shape[-1]
    elif config["use_qknorm"]:
        head_dim = state_dict["blocks.0.attn.q_norm.weight"].shape[0]
    else:
        head_dim = None
    if head_dim is not None:
        config["num_heads"] = hidden_size // head_dim
    elif hidden_size in _HEADS_BY_WIDTH:
        config["num_heads"] = _HEADS_BY_WIDTH[hidden_size]
    return config


def _guess_architecture(config: Mapping) -> str:
    """The family of weights that do not record it: modern blocks mean LightningDiT, plain ones DiT."""
    modern = ("use_qknorm", "use_swiglu", "use_rope", "use_rmsnorm", "wo_shift")
    return "LightningDiT" if any(config.get(flag) for flag in modern) else "DiT"


def _build(config: dict, architecture: str | None, overrides: dict) -> LightningDiT:
    config = {**config, **overrides}
    recorded = config.pop("architecture", None)
    architecture = architecture or recorded
    if architecture is None:  # a config.json: LightningDiT-only arguments also tell the family
        architecture = "LightningDiT" if _NOT_IN_DIT & config.keys() else _guess_architecture(config)
    unknown = sorted(k for k in config if k not in _CONSTRUCTOR_ARGS and not k.startswith("_"))
    if unknown:
        raise ValueError(f"unknown generator arguments {unknown}; known: {sorted(_CONSTRUCTOR_ARGS)}")
    args = {**_family_defaults(architecture), **{k: v for k, v in config.items() if not k.startswith("_")}}
    if architecture == "DiT" and "return_sigma" not in config:
        args["return_sigma"] = args["learn_sigma"]
    if "num_heads" not in args:
        raise ValueError("cannot tell num_heads from these weights: pass num_heads=... to load_generator")
    return LightningDiT(**args)


def _strip_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DistributedDataParallel's ``module.`` prefix (and torch.compile's ``_orig_mod.``)."""
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in state_dict.items()}


def _read_torch_checkpoint(path: Path, use_ema: bool) -> tuple[dict, str | None, dict]:
    """(state dict, architecture hint, config hints) from a reference .pt file, never executing pickled code."""
    # DiT / SiT training checkpoints store their argparse.Namespace: a plain attribute bag, safe to allow.
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = load_tensors_only(path)
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"{path}: expected a state dict or a training checkpoint dict, got {type(checkpoint)}"
        )
    architecture, hints = None, {}
    if "args" in checkpoint and isinstance(checkpoint["args"], argparse.Namespace):
        args = vars(checkpoint["args"])
        architecture = _architecture_from_name(args.get("model"))
        if "num_classes" in args:
            hints["num_classes"] = args["num_classes"]
    if isinstance(checkpoint.get("config"), Mapping):  # LightningDiT train.py
        model_config = checkpoint["config"].get("model", {})
        architecture = _architecture_from_name(model_config.get("model_type")) or architecture
    if "ema" in checkpoint and use_ema:
        state_dict = checkpoint["ema"]
    elif "model" in checkpoint:
        state_dict = checkpoint["model"]
    elif "ema" in checkpoint:
        state_dict = checkpoint["ema"]
    else:
        state_dict = checkpoint
    return _strip_prefix(state_dict), architecture, hints


def load_generator(
    path: str | Path, *, use_ema: bool = True, architecture: str | None = None, **overrides
) -> LightningDiT:
    """Build a generator from a reference checkpoint and load its weights (strictly); returned in eval mode.

    ``architecture`` ("LightningDiT", "DiT", "SiT") overrides the detected family;
    ``overrides`` override constructor arguments (e.g. ``num_heads``,
    ``class_dropout_prob``, ``use_checkpoint``).
    """
    path = Path(path)
    if path.is_dir():
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        for required in (config_path, weights_path):
            if not required.is_file():
                raise FileNotFoundError(f"{path} is not a generator folder: {required.name} is missing")
        config = json.loads(config_path.read_text())
        state_dict = _strip_prefix(load_file(weights_path))
    elif path.suffix == ".safetensors":
        state_dict = _strip_prefix(load_file(path))
        config = infer_config_from_state_dict(state_dict)
        architecture = architecture or _guess_architecture(config)
    elif path.suffix in (".pt", ".pth", ".ckpt"):
        state_dict, recorded, hints = _read_torch_checkpoint(path, use_ema)
        config = {**infer_config_from_state_dict(state_dict), **hints}
        architecture = architecture or recorded or _guess_architecture(config)
    else:
        raise ValueError(f"{path}: expected a folder, a .safetensors file or a .pt checkpoint")
    model = _build(config, architecture, overrides)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def save_generator(model: LightningDiT, path: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (reference key names) into the folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(model.config, indent=1) + "\n")
    state_dict = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state_dict, path / WEIGHTS_FILE)
    return path


def is_text_generator(folder: str | Path) -> bool:
    """Whether ``folder`` holds a text-conditioned generator (its config.json names TextLightningDiT)."""
    config_path = Path(folder) / CONFIG_FILE
    if not config_path.is_file():
        return False
    return json.loads(config_path.read_text()).get("architecture") == TextLightningDiT.architecture


def load_text_generator(folder: str | Path) -> TextLightningDiT:
    """A ``config.json`` + ``model.safetensors`` folder written by text-to-image training (eval mode)."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"{folder} is not a generator folder: {required.name} is missing")
    config = json.loads(config_path.read_text())
    if config.pop("architecture", None) != TextLightningDiT.architecture:
        raise ValueError(f"{folder} holds a class-conditional generator: sample it with a class recipe")
    model = TextLightningDiT(**config)
    model.load_state_dict(load_file(weights_path), strict=True)
    return model.eval()
