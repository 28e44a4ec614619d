"""Text-to-image training batches: the class-conditional step-indexed latent stream, plus caption ids.

Batches are those of :class:`~vtp_gen.systems.latent_data.LatentDataModule`
(a pure function of their number, so resume is exact) with the labels
replaced by each latent's caption choices: ``(latents, choices (B, K) caption
ids padded with -1, batch number)``. Which of an image's captions a step
uses is drawn by the training step from its own seeded RNG.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.systems.latent_data import ItemKey, KeyedLatents, LatentDataModule, _batched
from vtp_gen.t2i.captions import CacheCaptions


class KeyedCaptionedLatents(KeyedLatents):
    def __init__(self, latents: LatentDataset, captions: CacheCaptions):
        super().__init__(latents)
        if len(captions) != len(latents):
            raise ValueError(f"{len(captions)} caption rows for {len(latents)} cached latents")
        self.captions = captions

    def __getitems__(self, keys: list[ItemKey]):
        latents, _, numbers = super().__getitems__(keys)
        index = torch.tensor([i for _, i, _ in keys], dtype=torch.long)
        return latents, self.captions.choices[index], numbers


class CaptionedLatentDataModule(LatentDataModule):
    def __init__(self, latents: LatentDataset, captions: CacheCaptions, *args, **kwargs):
        super().__init__(latents, *args, **kwargs)
        self.captions = captions

    def train_dataloader(self) -> DataLoader:
        loader = super().train_dataloader()  # sets up self.sampler at the resume step
        return DataLoader(
            KeyedCaptionedLatents(self.latents, self.captions),
            batch_sampler=self.sampler,
            collate_fn=_batched,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=loader.pin_memory,
        )
