"""The Lightning side of caching: which rank encodes which images, and the encoding step.

Why no DistributedSampler: it pads every rank to the same length by repeating
images, which the reference pipeline then writes as duplicate latents. Here
rank 0 lists the shards still to do, broadcasts the list, and rank r takes
every world_size-th pending shard, whole. Shards are disjoint ranges of global
indices, so every image is encoded exactly once; ranks may get unequal work
(at most one shard apart), which inference does not mind.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vtp_gen.config import DataConfig
from vtp_gen.data.build import build_dataloader
from vtp_gen.data.decode import Skipped, collate_samples
from vtp_gen.data.transforms import center_crop_arr, normalize
from vtp_gen.latents.writer import ShardLayout, completed_shards, remove_stale_files


class CenterCropUint8:
    """PIL image -> ADM centre crop -> uint8 (3, H, W) tensor; picklable for DataLoader workers.

    Normalisation happens on the whole batch in :class:`LatentEncoder` instead
    of per image: cheaper on the CPU, and 4x fewer bytes to the GPU. The
    arithmetic is that of ``vtp_gen.data.transforms.CenterCropNormalize``.
    """

    def __init__(self, image_size: int):
        self.image_size = image_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = np.asarray(center_crop_arr(image, self.image_size).convert("RGB"), dtype=np.uint8)
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


class IndexedSubset(Dataset):
    """Items ``(global_index, dataset[global_index])`` for a list of global indices."""

    def __init__(self, dataset: Dataset, indices: list[int]):
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int):
        index = self.indices[position]
        return index, self.dataset[index]


def collate_indexed(items: list[tuple[int, dict | Skipped]]) -> dict:
    """:func:`collate_samples` plus ``index`` (global indices of the usable images, in batch order)
    and ``skipped`` ((index, kind) of the unreadable ones, which must be accounted for, not lost)."""
    batch = collate_samples([sample for _, sample in items])
    batch["index"] = torch.tensor([i for i, s in items if not isinstance(s, Skipped)], dtype=torch.long)
    batch["skipped"] = [(i, s.kind) for i, s in items if isinstance(s, Skipped)]
    return batch


class LatentEncoder(L.LightningModule):
    """Wraps a frozen tokenizer; ``predict_step`` encodes a batch and, optionally, its mirror image.

    Image and flip go through one forward pass of twice the batch: the same
    work as two passes, with better device utilisation at small batch sizes.
    """

    def __init__(self, tokenizer: torch.nn.Module, image_size: int, flips: bool = True):
        super().__init__()
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.image_size = image_size
        self.flips = flips
        self.latent_shape: tuple[int, ...] | None = None

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.get_reconstruction_latents(images)

    def probe_latent_shape(self) -> tuple[int, ...]:
        # Only needed for a batch of nothing but unreadable images, which must still yield
        # well-shaped (empty) output; not done up front, where it would cost a cold forward pass.
        if self.latent_shape is None:
            probe = torch.zeros(1, 3, self.image_size, self.image_size, device=self.device)
            self.latent_shape = tuple(self.encode(probe).shape[1:])
        return self.latent_shape

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict:
        out = {"index": batch["index"], "skipped": batch["skipped"]}
        if batch["size"] == 0:
            empty = torch.zeros(0, *self.probe_latent_shape(), device=self.device)
            out.update(latents=empty, labels=torch.zeros(0, dtype=torch.long))
            if self.flips:
                out["latents_flip"] = empty
            return out
        # uint8 -> [0, 1] -> ImageNet mean/std, as CenterCropNormalize does per image.
        images = normalize(batch["image"].float().div_(255.0))
        if self.flips:
            latents, flipped = self.encode(torch.cat([images, images.flip(-1)])).chunk(2)
            out["latents_flip"] = flipped
        else:
            latents = self.encode(images)
        self.latent_shape = tuple(latents.shape[1:])
        out.update(latents=latents, labels=batch["label"])
        return out


class CacheDataModule(L.LightningDataModule):
    """Serves each rank the images of its share of the pending shards."""

    def __init__(self, dataset: Dataset, layout: ShardLayout, folder: str | Path, data_cfg: DataConfig):
        super().__init__()
        # Ranks with no shard left (a resume near the end) are expected, not an error. An instance
        # attribute: Lightning's DataHooks.__init__ sets it to False, hiding a class attribute.
        self.allow_zero_length_dataloader_with_multiple_devices = True
        self.dataset = dataset
        self.layout = layout
        self.folder = Path(folder)
        self.data_cfg = data_cfg
        self.assigned_shards: list[int] = []

    def pending_shards(self) -> list[int]:
        """Rank 0 decides (and cleans leftovers of unfinished shards); every rank gets its answer."""
        pending = None
        if self.trainer.is_global_zero:
            done = completed_shards(self.folder, self.layout)
            remove_stale_files(self.folder, set(done))
            pending = [k for k in range(self.layout.num_shards) if k not in done]
        return self.trainer.strategy.broadcast(pending, src=0)

    def predict_dataloader(self) -> DataLoader:
        pending = self.pending_shards()
        rank, world = self.trainer.global_rank, self.trainer.world_size
        self.assigned_shards = pending[rank::world]
        indices = [i for k in self.assigned_shards for i in range(*self.layout.bounds(k))]
        return build_dataloader(
            IndexedSubset(self.dataset, indices), self.data_cfg, collate_fn=collate_indexed
        )
