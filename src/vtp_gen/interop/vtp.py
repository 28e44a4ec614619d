"""Official VTP checkpoints, both ways: the Hugging Face folder layout of MiniMax-AI/VTP.

A folder holds ``config.json`` (``model_type: "vtp"`` and the VTPConfig keys)
and ``model.safetensors`` (official tensor names; possibly sharded with
``model.safetensors.index.json``). ``load_tokenizer`` reads such a folder into a
``VTPModel``; ``save_pretrained`` writes one that the official
``VTPModel.from_pretrained`` loads.

Pickled checkpoints (``pytorch_model.bin``, ``*.pt``, ``*.pth``) are refused,
never unpickled: unpickling runs arbitrary code from the file.

Checked by hand against the official code (MiniMax-AI/VTP @ 5ce1eb6 with
transformers 5.24.0): folders written here load there and every output is
bit-identical, and vice versa. One upstream caveat: the official
``VTPModel.from_pretrained`` leaves the text tower's causal mask (a
non-persistent buffer) uninitialised under that transformers version, so its
text features are garbage until the mask is rebuilt; ``load_tokenizer`` rebuilds it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from vtp_gen.models.tokenizer.config import VTPConfig
from vtp_gen.models.tokenizer.model import VTPModel
from vtp_gen.utils.atomic import atomic_output, write_text_atomic

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PICKLED_WEIGHT_NAMES = (
    "pytorch_model.bin",
    "model.bin",
    "model.pt",
    "model.pth",
    "pytorch_model.bin.index.json",
)
# First bytes of a zip archive (torch.save) and of a raw pickle (protocol 2+).
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80")


class UnsafeCheckpointError(ValueError):
    """The checkpoint is a pickle; we do not unpickle files."""


def _refuse_pickle(path: Path) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"{path} is a pickled PyTorch checkpoint; vtp_gen never unpickles files (that can run arbitrary code). "
        "Convert it to model.safetensors with code you trust, e.g. "
        "safetensors.torch.save_file(torch.load(path, weights_only=True), 'model.safetensors')."
    )


def read_config(folder: str | Path) -> VTPConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {folder} (expected the official VTP folder layout)")
    try:
        values = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object of VTP config keys, got {type(values).__name__}")
    try:
        return VTPConfig.from_dict(values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


def _weight_files(folder: Path) -> list[Path]:
    single, index = folder / WEIGHTS_NAME, folder / WEIGHTS_INDEX_NAME
    if single.is_file():
        return [single]
    if index.is_file():
        with open(index) as f:
            shard_names = sorted(set(json.load(f)["weight_map"].values()))
        return [folder / name for name in shard_names]
    for name in PICKLED_WEIGHT_NAMES:
        if (folder / name).is_file():
            raise _refuse_pickle(folder / name)
    raise FileNotFoundError(f"no {WEIGHTS_NAME} (or {WEIGHTS_INDEX_NAME}) in {folder}")


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by a JSON object."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(9)
    if len(prefix) < 9:
        return False
    header_length = int.from_bytes(prefix[:8], "little")
    return prefix[8:9] == b"{" and 8 + header_length <= size


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of one safetensors file; a pickle in disguise is refused before any parsing."""
    path = Path(path)
    if not _looks_like_safetensors(path):
        with open(path, "rb") as f:
            head = f.read(4)
        if any(head.startswith(magic) for magic in _PICKLE_MAGICS):
            raise _refuse_pickle(path)
        raise ValueError(f"{path} is not a safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}
    except SafetensorError as error:
        raise ValueError(f"{path} is not a valid safetensors file: {error}") from error


def read_official_state_dict(folder: str | Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for file in _weight_files(Path(folder)):
        state.update(read_safetensors(file))
    return state


def load_tokenizer(path: str | Path, device: str | torch.device = "cpu", eval_mode: bool = True) -> VTPModel:
    """Load an official-layout VTP folder (or one written by ``save_pretrained``) as a ``VTPModel``.

    The model is returned in float32 on ``device``, in eval mode unless
    ``eval_mode=False``. Tensors whose names or shapes do not match the model
    its config describes raise ``CheckpointMismatchError`` listing them.
    """
    folder = Path(path)
    if folder.is_file():
        if folder.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"):
            raise _refuse_pickle(folder)
        folder = folder.parent  # a path to model.safetensors or config.json inside the folder
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    config = read_config(folder)
    state = read_official_state_dict(folder)
    # Build directly on the meta device: loading overwrites every tensor, so no time is spent on init.
    with torch.device("meta"):
        model = VTPModel(config)
    model.to_empty(device="cpu")
    # to_empty leaves buffers that are not saved (the text causal mask) uninitialised: rebuild them.
    _restore_non_persistent_buffers(model)
    model.load_official_state_dict(state)
    model = model.to(device)
    return model.eval() if eval_mode else model.train()


def _restore_non_persistent_buffers(model: VTPModel) -> None:
    if model.text is not None and model.text.attn_mask is not None:
        model.text.attn_mask = model.text.build_causal_mask()


def save_pretrained(model: VTPModel, directory: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` in the official layout; returns the folder.

    Tensors keep their dtype (float32 for a model trained here; the RoPE periods
    are bfloat16, as in the official checkpoints); ``dtype`` in config.json
    records the parameters' dtype.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    if config.uses_vtpgen_extensions or config.vision_patch_size != 16:
        warnings.warn(
            "this tokenizer uses options the official code cannot build (register tokens, float32 RoPE, or a patch size "
            "other than 16 while the official pixel decoder hard-codes PixelShuffle(16)); "
            "the folder loads in vtp_gen only",
            stacklevel=2,
        )
    tensors = {
        name: tensor.detach().to("cpu").contiguous() for name, tensor in model.official_state_dict().items()
    }
    # Each file is written under a temporary name and renamed into place, weights first: a crash or
    # a full disk leaves the previous export (or nothing), never a truncated file under the real name.
    with atomic_output(directory / WEIGHTS_NAME, fsync=True) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    write_text_atomic(
        directory / CONFIG_NAME, json.dumps(config.to_dict(dtype=dtype), indent=2, sort_keys=True) + "\n"
    )
    return directory
