"""``VTPTextEncoder``: the VTP tokenizer's CLIP text tower and its BPE tokenizer, as one diffusers model.

Text-to-image generators here condition on the tokenizer's own text tower
(``vtp_gen.t2i.text_features``): per-token hidden states after the tower's
final norm, a mask that is True up to and including the end-of-text token,
and the pooled, projected embedding. This component computes the same three
from a prompt: ``encode_prompt(["a coat", ""])``. The empty prompt is the
null condition of classifier-free guidance, as in training's caption dropout.

Why tower and tokenizer are one component: diffusers saves and loads a
pipeline's components only through the methods of the base classes it knows
(its own models and schedulers, or transformers' tokenizers and models).
open_clip's BPE tokenizer is none of these and transformers is not a
dependency here, so the tokenizer travels inside this model: its vocabulary
file is saved beside the weights (``bpe_vocab.txt.gz``) and read back from
there, and its context length is the tower's (``text_context_length``).

Weights: the tower under ``text.*``, the names it has inside ``VTPModel``.
The tower is frozen (gradients off, always in eval mode).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import Tensor

from vtp_gen.data.text_tokenizer import CLIPTextTokenizer, valid_token_mask
from vtp_gen.models.tokenizer.config import VTPConfig
from vtp_gen.models.tokenizer.model import VTPModel
from vtp_gen.models.tokenizer.text import TextTower

VOCABULARY_FILE = "bpe_vocab.txt.gz"
TEXT_KEY_PREFIX = "text_"


@dataclass
class VTPTextEncoderOutput(BaseOutput):
    """Caption features, what ``TextDiTTransformer2DModel`` takes.

    last_hidden_state: (B, L, width) token states after the final norm (float32);
    attention_mask: (B, L) bool, True up to and including the end-of-text token;
    pooled_output: (B, pooled_dim) the tower's pooled, projected embedding (float32).
    """

    last_hidden_state: Tensor
    attention_mask: Tensor
    pooled_output: Tensor


def text_config_dict(config: VTPConfig) -> dict:
    """The tokenizer config's ``text_*`` keys: all the tower (and the BPE's context length) depends on."""
    return {k: v for k, v in config.to_dict().items() if k.startswith(TEXT_KEY_PREFIX)}


class VTPTextEncoder(ModelMixin, ConfigMixin):
    """Frozen VTP text tower + its CLIP BPE tokenizer.

    Args:
        text_config: the tokenizer config's ``text_*`` keys (official names); None is VTP-B's tower.
    """

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, text_config: dict | None = None):
        super().__init__()
        unknown = [k for k in (text_config or {}) if not k.startswith(TEXT_KEY_PREFIX)]
        if unknown:
            raise ValueError(f"text_config holds only text_* keys, got {unknown}")
        config = VTPConfig.from_dict({**(text_config or {}), "train_clip": True})
        self.text = TextTower.from_config(config)
        self.text.requires_grad_(False)
        self.bpe = CLIPTextTokenizer(config.text_context_length)

    # ---------------------------------------------------------------- building
    @classmethod
    def from_vtp(cls, model: VTPModel) -> VTPTextEncoder:
        """The text tower of a trained ``VTPModel`` (weights copied); refuses a tokenizer without one."""
        if model.text is None:
            raise ValueError(
                "this tokenizer has no text tower (trained without the CLIP objective): text-to-image "
                "conditions on the tokenizer's own text tower"
            )
        encoder = cls(text_config_dict(model.config))
        encoder.text.load_state_dict(model.text.state_dict(), strict=True)
        encoder.to(next(model.text.parameters()).device)
        return encoder.eval()

    def save_pretrained(self, save_directory: str | Path, **kwargs) -> None:
        super().save_pretrained(save_directory, **kwargs)
        shutil.copyfile(self.bpe.bpe_path, Path(save_directory) / VOCABULARY_FILE)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> VTPTextEncoder:
        """As ``ModelMixin.from_pretrained``; the BPE vocabulary is the folder's copy when it has one."""
        encoder = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        vocabulary = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "") / VOCABULARY_FILE
        if vocabulary.is_file():
            encoder.bpe = CLIPTextTokenizer(encoder.bpe.context_length, vocabulary)
        return encoder

    def train(self, mode: bool = True) -> VTPTextEncoder:
        super().train(mode)
        self.text.eval()  # frozen: never in training mode, whatever the parent does
        return self

    # ------------------------------------------------------------ properties
    @property
    def width(self) -> int:
        """Width of the token states (the generator's ``text_dim``)."""
        return self.text.width

    @property
    def pooled_dim(self) -> int:
        return self.text.output_dim

    @property
    def context_length(self) -> int:
        return self.bpe.context_length

    # ----------------------------------------------------------------- API
    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """Prompts -> token ids (B, context_length): lower-cased BPE, truncated, padded with 0."""
        if isinstance(prompts, str):
            raise TypeError("pass a list of prompts, not a single string")
        return self.bpe(list(prompts))

    @torch.no_grad()
    def forward(
        self, input_ids: Tensor, return_dict: bool = True
    ) -> VTPTextEncoderOutput | tuple[Tensor, Tensor, Tensor]:
        """Token ids (B, L) -> token states, mask and pooled embedding (see ``VTPTextEncoderOutput``)."""
        input_ids = input_ids.to(self.device)
        pooled, states = self.text.encode_with_states(input_ids)
        mask = valid_token_mask(input_ids, self.bpe.eot_token_id)
        out = (states.float(), mask, pooled.float())
        return VTPTextEncoderOutput(*out) if return_dict else out

    def encode_prompt(self, prompts: Sequence[str]) -> VTPTextEncoderOutput:
        """Prompts -> caption features; ``""`` gives the null condition."""
        return self(self.tokenize(prompts))
