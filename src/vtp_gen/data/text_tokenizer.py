"""The CLIP text tokenizer: OpenAI's byte-level BPE (49408 ids) as shipped with open_clip.

This is the tokenizer the official VTP code uses (``get_tokenizer('ViT-B-32',
context_length=model.config.text_context_length)``): lower-cased, ftfy/whitespace
cleaned, ``<start_of_text>`` = 49406, ``<end_of_text>`` = 49407, padded with 0
to the context length, and truncated to ``context_length - 1`` tokens followed by
``<end_of_text>``. The vocabulary file ships inside open_clip, so nothing is
downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from open_clip.tokenizer import SimpleTokenizer, default_bpe


class CLIPTextTokenizer:
    """``tokenizer(["a photo of a dog", ...])`` -> LongTensor (B, context_length)."""

    def __init__(self, context_length: int = 77, bpe_path: str | Path | None = None) -> None:
        if context_length < 2:
            raise ValueError("context_length must leave room for the start and end tokens (>= 2)")
        self.context_length = context_length
        # The vocabulary file: open_clip's own unless a copy is named (an exported pipeline carries one).
        self.bpe_path = Path(bpe_path) if bpe_path is not None else Path(default_bpe())
        self._bpe = SimpleTokenizer(bpe_path=str(self.bpe_path), context_length=context_length)

    @classmethod
    def from_config(cls, config) -> CLIPTextTokenizer:
        """Context length from a ``VTPConfig`` (``text_context_length``)."""
        return cls(context_length=config.text_context_length)

    @property
    def vocab_size(self) -> int:
        return len(self._bpe.encoder)

    @property
    def sot_token_id(self) -> int:
        return self._bpe.sot_token_id

    @property
    def eot_token_id(self) -> int:
        return self._bpe.eot_token_id

    @property
    def pad_token_id(self) -> int:
        return 0

    def __call__(self, texts: str | Sequence[str]) -> torch.LongTensor:
        if isinstance(texts, str):
            texts = [texts]
        return self._bpe(list(texts), context_length=self.context_length)

    def decode(self, token_ids: Sequence[int] | torch.Tensor) -> str:
        """Text of one id sequence, without the start/end markers and the padding."""
        ids = [
            int(i)
            for i in token_ids
            if int(i) not in (self.sot_token_id, self.eot_token_id, self.pad_token_id)
        ]
        return self._bpe.decode(ids).strip()


def valid_token_mask(token_ids: torch.Tensor, eot_token_id: int) -> torch.Tensor:
    """True from the start token up to and including the end-of-text token of each row."""
    is_eot = token_ids == eot_token_id
    if not bool(is_eot.any(dim=1).all()):
        raise ValueError("every tokenised caption must hold an end-of-text token")
    eot_position = is_eot.int().argmax(dim=1, keepdim=True)
    return torch.arange(token_ids.shape[1], device=token_ids.device)[None] <= eot_position
