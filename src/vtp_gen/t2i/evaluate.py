"""Evaluating a text-to-image generator on the embedded Fashion-MNIST default.

Three measures, each saying something different:

- **Prompt agreement** (the headline): an independent judge, the garment
  classifier of :mod:`vtp_gen.metrics.domain` (trained on the Fashion-MNIST train
  split, its test accuracy reported beside it; ``make eval``'s domain metric uses
  the same one), classifies the samples of each held-out prompt; the agreement
  is the share classified as the prompt's garment. The held-out
  prompts (``HELD_OUT_PROMPTS``) use wordings that never occur in the
  training captions, so the number measures whether the model reads the text,
  not whether it memorised caption strings. The class-conditional generator's
  agreement (samples of each class label, same sampler and guidance) is the
  yardstick beside it.
- **CLIP score** with the tokenizer's own towers: 100 x max(cos(image, text), 0).
  This is the conditioning model judging itself (the generator reads the same
  text tower), so it is reported, not trusted on its own.
- **FID** of the samples against real test images (Inception features).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vtp_gen.data.text_tokenizer import CLIPTextTokenizer
from vtp_gen.data.transforms import normalize


@torch.no_grad()
def clip_score(tokenizer: nn.Module, pixels: np.ndarray, prompts: Sequence[str], batch: int = 250) -> float:
    """Mean 100 x max(cos, 0) between the tokenizer's CLIP image and text embeddings."""

    bpe = CLIPTextTokenizer.from_config(tokenizer.config)
    device = next(tokenizer.parameters()).device
    size = tokenizer.config.image_size
    scores = []
    for i in range(0, len(prompts), batch):
        x = torch.as_tensor(np.asarray(pixels[i : i + batch])).permute(0, 3, 1, 2).float().div(255.0)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
        image = tokenizer.get_clip_image_feature(normalize(x).to(device), normalize=True)
        text = tokenizer.get_clip_text_feature(bpe(list(prompts[i : i + batch])).to(device), normalize=True)
        scores.append(100.0 * (image * text).sum(-1).clamp(min=0))
    return round(float(torch.cat(scores).mean()), 3)
