"""Name -> factory registry for every model in the project (timm style).

    @register_model("vtp-tiny")
    def vtp_tiny(**overrides): ...

    model = create_model("vtp-tiny", decoder_depth=2)

Factories are plain functions returning an ``nn.Module``; keyword overrides
are passed through so a preset is a starting point, not a cage. The registry
imports no model: ``vtp_gen.models`` imports the model packages, whose presets
register themselves, so any import of this module (which loads its parent
package first) sees every name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered (a ValueError too, so the CLI prints it as one line)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_models(prefix: str = "") -> list[str]:
    return sorted(n for n in _REGISTRY if n.startswith(prefix))


def get_factory(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def create_model(name: str, **overrides) -> nn.Module:
    return get_factory(name)(**overrides)
