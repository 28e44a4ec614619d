"""The text-to-image training system: the class-conditional flow-matching system with captions for labels.

Everything that makes stage 2 exact and robust is inherited from
:class:`~vtp_gen.systems.flow_matching.LatentFlowMatching` (EMA, AdamW, the
skipped-step guard, per-step RNG from the batch number); what changes is the
condition. Each step, inside the step's seeded RNG:

1. one caption per image is drawn among the image's captions;
2. its features come from the :class:`CaptionFeatureBank` (the frozen text tower);
3. with probability ``caption_dropout_prob`` they are replaced by the empty
   caption's features (the null condition classifier-free guidance needs);
4. the transport's loss is computed with them, as in class-conditional training.

The frozen text tower is held outside the module tree: it is not trained,
not wrapped by DDP, not averaged by the EMA and not saved in checkpoints
(it is part of the tokenizer the run names).
"""

from __future__ import annotations

import torch

from vtp_gen.systems.flow_matching import AdamWSettings, LatentFlowMatching, seeded_rng
from vtp_gen.systems.latent_data import derive_seed
from vtp_gen.t2i.text_features import CaptionEncoder, TextFeatures
from vtp_gen.transport import Transport

# Encoding the caption table in chunks keeps the tower's activations small.
TABLE_CHUNK = 256


class CaptionFeatureBank:
    """Caption id -> :class:`TextFeatures`.

    When the features of every distinct caption fit in ``table_max_bytes`` they
    are computed once and looked up (the embedded default: 120 captions, 1 MB);
    otherwise (web-scale sets, one caption per image) each batch's captions are
    encoded by the frozen tower as they come.
    """

    def __init__(self, encoder: CaptionEncoder, captions: list[str], table_max_bytes: int = 2 << 30):
        self.encoder = encoder
        self.captions = captions
        self.token_ids = encoder.tokenize(captions)
        self.null = encoder.null()
        row_bytes = 4 * (self.token_ids.shape[1] * encoder.width + encoder.pooled_dim)
        self.table: TextFeatures | None = None
        if len(captions) * row_bytes <= table_max_bytes:
            self.table = TextFeatures.cat(
                [
                    encoder.encode_tokens(self.token_ids[i : i + TABLE_CHUNK])
                    for i in range(0, len(captions), TABLE_CHUNK)
                ]
            )

    def to(self, device: torch.device) -> CaptionFeatureBank:
        self.encoder.to(device)
        self.null = self.null.to(device)
        if self.table is not None:
            self.table = self.table.to(device)
        return self

    def __call__(self, ids: torch.Tensor) -> TextFeatures:
        if self.table is not None:
            return self.table.index(ids.to(self.table.tokens.device))
        return self.encoder.encode_tokens(self.token_ids[ids.cpu()])


def draw_captions(choices: torch.Tensor) -> torch.Tensor:
    """One caption id per row of ``choices`` (B, K) (ids padded with -1), uniformly, from the global RNG."""
    counts = (choices >= 0).sum(dim=1)
    pick = (torch.rand(choices.shape[0], device=choices.device) * counts).long()
    return choices.gather(1, pick[:, None]).squeeze(1)


class TextFlowMatching(LatentFlowMatching):
    """``model(x, t, text, text_mask, pooled_text)`` trained by flow matching on captioned latents."""

    def __init__(
        self,
        model: torch.nn.Module,
        transport: Transport,
        bank: CaptionFeatureBank,
        caption_dropout_prob: float = 0.1,
        optimizer: AdamWSettings | None = None,
        ema_decay: float = 0.9999,
        seed: int = 0,
    ):
        super().__init__(model, transport, optimizer or AdamWSettings(), ema_decay, seed)
        if not 0.0 <= caption_dropout_prob < 1.0:
            raise ValueError(f"caption_dropout_prob must be in [0, 1), got {caption_dropout_prob}")
        self.bank = bank  # a plain object: not a submodule (see the module docstring)
        self.caption_dropout_prob = caption_dropout_prob

    def on_fit_start(self) -> None:
        self.bank.to(self.device)

    def condition(self, choices: torch.Tensor) -> TextFeatures:
        """Captions drawn and dropped for one batch, from the global RNG (seeded by the caller)."""
        features = self.bank(draw_captions(choices))
        keep = torch.rand(len(features), device=choices.device) >= self.caption_dropout_prob
        return features.where(keep.to(features.tokens.device), self.bank.null.repeat(len(features)))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        latents, choices, number = batch
        seed = derive_seed("stage2-step", self.seed, int(number), self.global_rank)
        with seeded_rng(seed, latents.device):
            features = self.condition(choices)
            terms = self.transport.training_losses(self.model, latents, **features.as_kwargs())
        loss = terms["loss"].mean()
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/mse", terms["mse"].detach().mean())
        self.log("train/cosine", terms["cosine"].detach().mean())
        return loss
