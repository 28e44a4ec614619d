"""VTPConfig: the tokenizer's architecture, with the official key names and defaults.

Every field below is a key of the official ``VTPConfig`` (MiniMax-AI/VTP,
``vtp/models/vtp_hf/configuration_vtp.py``) with the same default, so a
``config.json`` from the model hub maps onto this dataclass one to one and
``to_dict`` writes the keys the official loader expects. The defaults describe
VTP-B-f16d64 at 256 px.

Keys that exist only in vtp_gen (``VTPGEN_ONLY_DEFAULTS``) default to the
official behaviour and are written to ``config.json`` only when they differ
from it, so checkpoints that use none of them carry exactly the official keys.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

FFN_LAYERS = ("mlp", "swiglu", "swiglu32", "swiglu64", "swiglu128")
NORM_LAYERS = ("layernorm", "layernormbf16", "rmsnorm")
CLIP_FEATURES = ("cls", "pooled")
TEXT_POOL_TYPES = ("argmax", "first", "last")
TEXT_PROJ_TYPES = ("linear", "none")

# Keys a Hugging Face ``config.json`` carries besides the model's own; kept
# verbatim for round trips, never interpreted except ``model_type``.
HF_METADATA_KEYS = (
    "architectures",
    "model_type",
    "dtype",
    "torch_dtype",
    "transformers_version",
    "_name_or_path",
)
MODEL_TYPE = "vtp"
ARCHITECTURE = "VTPModel"
# The official files are written by transformers; we do not depend on it, so we
# record the version whose file layout we reproduce (that of the reference fixtures).
OFFICIAL_LAYOUT_TRANSFORMERS_VERSION = "5.24.0"

# vtp_gen extensions. DINOv3-style register ("storage") tokens are not used by
# the released models; the official code cannot load a checkpoint that has them.
# ``rope_dtype``: the official models rotate q/k in bfloat16; "float32" is ~1.3x
# faster on CPUs without bf16 units and moves outputs by ~1e-5.
VTPGEN_ONLY_DEFAULTS: dict[str, Any] = {"vision_num_register_tokens": 0, "rope_dtype": "bfloat16"}
ROPE_DTYPES = ("bfloat16", "float32")


@dataclass
class VTPConfig:
    # General
    image_size: int = 256
    train_clip: bool = True
    train_reconstruction: bool = True
    # Vision encoder ("trunk")
    vision_patch_size: int = 16
    vision_embed_dim: int = 768
    vision_depth: int = 12
    vision_num_heads: int = 12
    vision_mlp_ratio: float = 4.0
    vision_ffn_layer: str = "swiglu"
    vision_norm_layer: str = "rmsnorm"
    vision_init_values: float | None = None
    vision_use_qk_norm: bool = False
    vision_feature_bottleneck: int = 64
    vision_bottleneck_ae_only: bool = True
    vision_clip_feat: str = "cls"
    # Text encoder (OpenCLIP text transformer)
    text_context_length: int = 77
    text_vocab_size: int = 49408
    text_embed_dim: int = 768
    text_num_heads: int = 12
    text_depth: int = 12
    text_mlp_ratio: float = 4.0
    text_ls_init_value: float | None = None
    text_embed_cls: bool = False
    text_pad_id: int = 0
    text_no_causal_mask: bool = False
    text_pool_type: str = "argmax"
    text_proj_type: str = "linear"
    text_proj_bias: bool = False
    text_output_tokens: bool = False
    text_quick_gelu: bool = False
    # Pixel decoder
    decoder_embed_dim: int = 768
    decoder_num_heads: int = 12
    decoder_depth: int = 12
    decoder_ffn_layer: str = "swiglu"
    decoder_norm_layer: str = "layernorm"
    decoder_init_values: float | None = None
    decoder_use_qk_norm: bool = False
    # CLIP logits
    init_logit_scale: float | None = None
    init_logit_bias: float | None = None
    nonscalar_logit_scale: bool = False
    # vtp_gen extensions (see VTPGEN_ONLY_DEFAULTS)
    vision_num_register_tokens: int = 0
    rope_dtype: str = "bfloat16"
    # HF bookkeeping read from / written to config.json (architectures, dtype, ...).
    hf_metadata: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        def choice(key: str, allowed: tuple[str, ...]) -> None:
            value = getattr(self, key)
            if value not in allowed:
                raise ValueError(f"VTPConfig.{key}={value!r} is not one of {allowed}")

        choice("vision_ffn_layer", FFN_LAYERS)
        choice("decoder_ffn_layer", FFN_LAYERS)
        choice("vision_norm_layer", NORM_LAYERS)
        choice("decoder_norm_layer", NORM_LAYERS)
        choice("vision_clip_feat", CLIP_FEATURES)
        choice("text_pool_type", TEXT_POOL_TYPES)
        choice("text_proj_type", TEXT_PROJ_TYPES)
        choice("rope_dtype", ROPE_DTYPES)
        # 2-D axial RoPE splits each head into 4 equal parts (sin/cos x rows/cols).
        for prefix in ("vision", "decoder"):
            dim, heads = getattr(self, f"{prefix}_embed_dim"), getattr(self, f"{prefix}_num_heads")
            if dim % heads or (dim // heads) % 4:
                raise ValueError(
                    f"{prefix}_embed_dim={dim} must split into {heads} heads whose width is a multiple of 4 "
                    "(2-D RoPE needs head_dim % 4 == 0)"
                )
        if self.train_clip and self.text_embed_dim % self.text_num_heads:
            raise ValueError(f"text_embed_dim={self.text_embed_dim} is not divisible by text_num_heads")
        if self.text_embed_cls:
            # The official VTPModel never registers the text CLS embedding, so such a
            # checkpoint could neither be saved nor loaded in the official layout.
            raise ValueError("text_embed_cls=True is not supported by the official VTP layout")
        if self.vision_patch_size <= 0 or self.image_size % self.vision_patch_size:
            raise ValueError(
                f"image_size={self.image_size} must be a positive multiple of vision_patch_size={self.vision_patch_size}"
            )
        if self.vision_num_register_tokens < 0:
            raise ValueError("vision_num_register_tokens must be >= 0")

    # ------------------------------------------------------------- properties
    @property
    def latent_channels(self) -> int:
        return self.vision_feature_bottleneck

    @property
    def latent_size(self) -> int:
        """Side of the latent grid at ``image_size`` (e.g. 256 px / 16 = 16)."""
        return self.image_size // self.vision_patch_size

    @property
    def clip_embed_dim(self) -> int:
        # Official: the text projection maps text_embed_dim -> text_embed_dim and the
        # image projection maps the trunk width to the same size.
        return self.text_embed_dim

    @property
    def uses_vtpgen_extensions(self) -> bool:
        return any(getattr(self, k) != v for k, v in VTPGEN_ONLY_DEFAULTS.items())

    # ---------------------------------------------------------- (de)serialise
    @classmethod
    def official_keys(cls) -> list[str]:
        return [
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in VTPGEN_ONLY_DEFAULTS and f.name != "hf_metadata"
        ]

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VTPConfig:
        """Build from a ``config.json`` dict. Unknown keys are an error naming the nearest valid key."""
        known = cls.official_keys() + list(VTPGEN_ONLY_DEFAULTS)
        kwargs: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        for key, value in values.items():
            if key in HF_METADATA_KEYS:
                metadata[key] = value
            elif key in known:
                kwargs[key] = value
            else:
                close = difflib.get_close_matches(key, known + list(HF_METADATA_KEYS), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown VTP config key {key!r}{hint}")
        model_type = metadata.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config model_type is {model_type!r}, expected {MODEL_TYPE!r}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        for key, value in kwargs.items():
            _check_value_type(key, value, defaults.get(key, dataclasses.MISSING))
        return cls(**kwargs, hf_metadata=metadata)

    def to_dict(self, dtype: str = "float32") -> dict[str, Any]:
        """The ``config.json`` content: official keys + HF bookkeeping (+ extensions only if used)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in self.official_keys()}
        for key, default in VTPGEN_ONLY_DEFAULTS.items():
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        out["architectures"] = [ARCHITECTURE]
        out["model_type"] = MODEL_TYPE
        out["dtype"] = dtype
        out["transformers_version"] = self.hf_metadata.get(
            "transformers_version", OFFICIAL_LAYOUT_TRANSFORMERS_VERSION
        )
        return dict(sorted(out.items()))

    def replace(self, **overrides: Any) -> VTPConfig:
        """A copy with some keys changed (unknown keys are an error naming the nearest one)."""
        values = {k: getattr(self, k) for k in self.official_keys() + list(VTPGEN_ONLY_DEFAULTS)}
        for key in overrides:
            if key not in values:
                close = difflib.get_close_matches(key, list(values), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(f"unknown VTP config key {key!r}{hint}")
        values.update(overrides)
        return VTPConfig(**values, hf_metadata=dict(self.hf_metadata))


def _check_value_type(key: str, value: Any, default: Any) -> None:
    """A value of another JSON type than the field's default (e.g. "768" for an int) is an error naming the key."""
    if default is None or default is dataclasses.MISSING:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        return
    if not ok:
        raise ValueError(f"{key!r} must be {type(default).__name__}, got {value!r}")
