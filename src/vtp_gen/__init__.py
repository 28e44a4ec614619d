"""vtp_gen: VTP tokenizer pre-training, latent caching, DiT/SiT/LightningDiT and evaluation.

Importing the package has no side effects; the heavy entry points below are
imported lazily so that `import vtp_gen` stays cheap.
"""

__version__ = "0.1.0"

_LAZY = {
    "load_tokenizer": ("vtp_gen.interop.vtp", "load_tokenizer"),
    "save_pretrained": ("vtp_gen.interop.vtp", "save_pretrained"),
    "load_generator": ("vtp_gen.interop.generators", "load_generator"),
    "create_model": ("vtp_gen.models.registry", "create_model"),
    "list_models": ("vtp_gen.models.registry", "list_models"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        return getattr(importlib.import_module(module_name), attr)
    raise AttributeError(f"module 'vtp_gen' has no attribute {name!r}")
