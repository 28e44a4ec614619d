"""Caption features from a VTP tokenizer's frozen text tower: per-token hidden states and the pooled embedding.

A VTP tokenizer carries a CLIP text tower aligned with its own latent space,
so a text-to-image generator on its latents needs no second text encoder.
Captions go through the same open_clip BPE tokenizer (and context length) as
in stage 1; the tower's output after ``ln_final`` is the per-token sequence
the generator cross-attends to, and the pooled, projected embedding (what
CLIP compares with images) is the tower's own ``encode`` of the same tokens.
Official VTP checkpoints load into the same :class:`VTPModel`, so they work
the same way. The empty caption is the null condition of classifier-free
guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vtp_gen.data.text_tokenizer import CLIPTextTokenizer, valid_token_mask

NULL_CAPTION = ""


@dataclass
class TextFeatures:
    """A batch of caption features.

    tokens: (B, L, D) hidden states after the tower's final norm; mask: (B, L)
    bool, True up to and including the end-of-text token (the padding after
    it is never attended to); pooled: (B, D_pool) the tower's pooled output.
    """

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device=None, dtype=None) -> TextFeatures:
        floats = dict(device=device, dtype=dtype)
        return TextFeatures(self.tokens.to(**floats), self.mask.to(device=device), self.pooled.to(**floats))

    def index(self, rows: Tensor) -> TextFeatures:
        return TextFeatures(self.tokens[rows], self.mask[rows], self.pooled[rows])

    def where(self, keep: Tensor, other: TextFeatures) -> TextFeatures:
        """Row-wise choice: ``self`` where ``keep`` (B,) is True, else ``other`` (B rows or one row)."""
        k3, k2 = keep.view(-1, 1, 1), keep.view(-1, 1)
        return TextFeatures(
            torch.where(k3, self.tokens, other.tokens),
            torch.where(k2, self.mask, other.mask),
            torch.where(k2, self.pooled, other.pooled),
        )

    def repeat(self, n: int) -> TextFeatures:
        """One row repeated ``n`` times (the null condition for a batch)."""
        if len(self) != 1:
            raise ValueError(f"repeat() expects a single row, got {len(self)}")
        return TextFeatures(self.tokens.expand(n, -1, -1), self.mask.expand(n, -1), self.pooled.expand(n, -1))

    @staticmethod
    def cat(parts: Sequence[TextFeatures]) -> TextFeatures:
        return TextFeatures(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )

    def as_kwargs(self) -> dict[str, Tensor]:
        """The generator's keyword arguments (``TextLightningDiT.forward``)."""
        return {"text": self.tokens, "text_mask": self.mask, "pooled_text": self.pooled}


class CaptionEncoder(nn.Module):
    """Frozen text tower + its BPE tokenizer: ``encoder(["a photo of a bag", ""])`` -> :class:`TextFeatures`.

    Build it from a loaded tokenizer (``CaptionEncoder.from_tokenizer(load_tokenizer(folder))``);
    the tower is put in eval mode with gradients off and never trained here.
    """

    def __init__(self, tower: nn.Module, context_length: int):
        super().__init__()
        self.tower = tower.eval().requires_grad_(False)
        self.bpe = CLIPTextTokenizer(context_length)

    @classmethod
    def from_tokenizer(cls, tokenizer: nn.Module) -> CaptionEncoder:
        if getattr(tokenizer, "text", None) is None:
            raise ValueError(
                "this tokenizer has no text tower (trained without the CLIP objective): text-to-image "
                "conditions on the tokenizer's own text tower, use a tokenizer trained with lambda_clip > 0"
            )
        return cls(tokenizer.text, tokenizer.config.text_context_length)

    def train(self, mode: bool = True) -> CaptionEncoder:
        super().train(mode)
        self.tower.eval()  # frozen: never in training mode (no dropout), whatever the parent does
        return self

    @property
    def width(self) -> int:
        return self.tower.width

    @property
    def pooled_dim(self) -> int:
        return self.tower.output_dim

    @property
    def context_length(self) -> int:
        return self.bpe.context_length

    def tokenize(self, captions: Sequence[str]) -> Tensor:
        return self.bpe(list(captions))

    @torch.no_grad()
    def encode_tokens(self, token_ids: Tensor) -> TextFeatures:
        device = next(self.tower.parameters()).device
        token_ids = token_ids.to(device)
        pooled, tokens = self.tower.encode_with_states(token_ids)
        return TextFeatures(
            tokens.float(), valid_token_mask(token_ids, self.bpe.eot_token_id), pooled.float()
        )

    def forward(self, captions: Sequence[str]) -> TextFeatures:
        if isinstance(captions, str):
            raise TypeError("pass a list of captions, not a single string")
        return self.encode_tokens(self.tokenize(captions))

    def null(self) -> TextFeatures:
        """Features of the empty caption: the unconditional input of classifier-free guidance."""
        return self([NULL_CAPTION])
