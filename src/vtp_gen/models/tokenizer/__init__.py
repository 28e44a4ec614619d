"""The VTP tokenizer: ViT encoder + bottleneck, pixel decoder, CLIP text tower, DINO head.

Importing this package registers the presets (``vtp-tiny``, ``vtp-s``,
``vtp-b``, ``vtp-l``) with ``vtp_gen.models.registry``.
"""

from vtp_gen.models.tokenizer import presets  # noqa: F401  (registers the presets)
from vtp_gen.models.tokenizer.config import VTPConfig
from vtp_gen.models.tokenizer.decoder import PixelDecoder
from vtp_gen.models.tokenizer.encoder import EncoderFeatures, TrunkInput, VisionEncoder
from vtp_gen.models.tokenizer.heads import DINOHead, ema_update, make_ema_teacher
from vtp_gen.models.tokenizer.model import CheckpointMismatchError, VTPModel
from vtp_gen.models.tokenizer.presets import count_parameters, preset_config
from vtp_gen.models.tokenizer.text import TextTower

__all__ = [
    "CheckpointMismatchError",
    "DINOHead",
    "EncoderFeatures",
    "PixelDecoder",
    "TextTower",
    "TrunkInput",
    "VTPConfig",
    "VTPModel",
    "VisionEncoder",
    "count_parameters",
    "ema_update",
    "make_ema_teacher",
    "preset_config",
]
