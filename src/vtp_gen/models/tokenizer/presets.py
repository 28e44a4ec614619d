"""Named tokenizer presets, registered with the model registry.

``vtp-s`` / ``vtp-b`` / ``vtp-l`` are the released f16d64 tokenizers at 256 px
(symmetric decoder, 12-layer width-768 CLIP text tower); ``vtp-tiny`` is a
CPU-sized model for 32 px images (patch 4 -> 8x8x16 latents) that trains in
seconds on two cores. Any VTPConfig key can be overridden:
``create_model("vtp-tiny", decoder_depth=1)``.

Published totals (trunk + decoder + text tower + projections): VTP-B 295.6M,
VTP-L 731.6M. ``python -m vtp_gen.models.tokenizer`` prints the
counts of every preset without allocating weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vtp_gen.models.registry import register_model
from vtp_gen.models.tokenizer.config import VTPConfig
from vtp_gen.models.tokenizer.model import VTPModel

PRESETS: dict[str, dict[str, Any]] = {
    "vtp-tiny": dict(
        image_size=32,
        vision_patch_size=4,
        vision_embed_dim=64,
        vision_depth=3,
        vision_num_heads=4,
        vision_feature_bottleneck=16,
        decoder_embed_dim=64,
        decoder_depth=2,
        decoder_num_heads=4,
        text_embed_dim=64,
        text_depth=2,
        text_num_heads=4,
        # Captions made from class labels are short; 32 positions leave ample room.
        text_context_length=32,
        # CPUs without bf16 units rotate faster in float32; the official bf16 path is for
        # reproducing released checkpoints, which this preset cannot be anyway (patch 4).
        rope_dtype="float32",
    ),
    "vtp-s": dict(
        vision_embed_dim=384,
        vision_depth=12,
        vision_num_heads=6,
        decoder_embed_dim=384,
        decoder_depth=12,
        decoder_num_heads=6,
    ),
    # VTPConfig's defaults are VTP-B-f16d64.
    "vtp-b": dict(),
    "vtp-l": dict(
        vision_embed_dim=1024,
        vision_depth=24,
        vision_num_heads=16,
        decoder_embed_dim=1024,
        decoder_depth=24,
        decoder_num_heads=16,
    ),
}


def preset_config(name: str, **overrides: Any) -> VTPConfig:
    """The VTPConfig of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown tokenizer preset {name!r} (known: {', '.join(PRESETS)})")
    return VTPConfig().replace(**PRESETS[name]).replace(**overrides)


def _register(name: str) -> None:
    def factory(**overrides: Any) -> VTPModel:
        return VTPModel(preset_config(name, **overrides))

    factory.__name__ = name.replace("-", "_")
    factory.__doc__ = f"The {name} tokenizer; keyword arguments override VTPConfig keys."
    register_model(name)(factory)


for _name in PRESETS:
    _register(_name)


def count_parameters(model: VTPModel) -> dict[str, int]:
    """Parameters per part (trunk incl. bottleneck, pixel decoder, text tower, projections + logit scale) and total."""

    def size(module: nn.Module | None) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    counts = {
        "trunk": size(model.trunk),
        "pixel_decoder": size(model.pixel_decoder),
        "text": size(model.text),
        "projections": size(model.visual_proj)
        + sum(p.numel() for p in (model.logit_scale, model.logit_bias) if p is not None),
    }
    counts["total"] = sum(counts.values())
    return counts


def format_parameter_counts(name: str, counts: dict[str, int]) -> str:
    return f"{name:9s} " + "  ".join(f"{part} {count / 1e6:7.1f}M" for part, count in counts.items())


def main() -> None:
    for name in PRESETS:
        # The meta device builds shapes only: VTP-L's 731M parameters cost no memory.
        with torch.device("meta"):
            model = VTPModel(preset_config(name))
        print(format_parameter_counts(name, count_parameters(model)))
