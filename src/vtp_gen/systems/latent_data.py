"""Stage-2 training data: an endless, step-indexed stream of latent batches from a cache.

Exact resume is the point of this module. Lightning restores the loops and the
step counter but not a sampler's position inside an epoch, so batches are made
a pure function of their number instead of a stateful iterator:

- micro-batch ``k`` (counted over the whole run, ``accumulate`` per optimiser
  step) holds positions ``[k * G, (k + 1) * G)`` of an endless concatenation of
  per-epoch permutations, ``G`` = per-device batch x world size; rank ``r``
  takes the ``r``-th slice of that global batch;
- epoch ``e``'s permutation and its flip draws (horizontal-flip augmentation)
  come from a generator seeded by ``(seed, e)``;
- each epoch is cut to whole global batches (the reference's ``drop_last``).

So a run resumed from a checkpoint at step ``s`` restarts the stream at
micro-batch ``s * accumulate`` and sees exactly the batches an uninterrupted
run sees, and the set of latents in a global batch does not depend on how many
devices share it. Each batch carries its number, from which the training step
derives its own random numbers (noise, times, label dropout).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset, Sampler

from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.utils.stop_signals import worker_ignores_stop_signals

# One key per item: (micro-batch number, global index in the cache, use the flipped latent).
ItemKey = tuple[int, int, bool]


def derive_seed(*keys: object) -> int:
    """A 63-bit seed from any tuple of ints / strings (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class StepIndexedBatchSampler(Sampler[list[ItemKey]]):
    """Endless batch sampler whose ``k``-th batch depends only on ``(seed, k, rank, world_size)``.

    ``start_batch`` is where iteration begins (the resume point). See the
    module docstring for the layout.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        flip_prob: float = 0.5,
        start_batch: int = 0,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.global_batch = batch_size * world_size
        if num_items < self.global_batch:
            raise ValueError(
                f"the cache holds {num_items} latents, fewer than one global batch of {self.global_batch}"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.flip_prob = flip_prob
        self.start_batch = start_batch
        self.batches_per_epoch = num_items // self.global_batch
        self._epoch: int | None = None
        self._order: torch.Tensor | None = None
        self._flips: torch.Tensor | None = None

    def _load_epoch(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        generator = torch.Generator().manual_seed(derive_seed("stage2-data", self.seed, epoch))
        self._order = torch.randperm(self.num_items, generator=generator)
        self._flips = torch.rand(self.num_items, generator=generator) < self.flip_prob
        self._epoch = epoch

    def batch(self, k: int) -> list[ItemKey]:
        """The keys of micro-batch ``k`` on this rank."""
        epoch, position = divmod(k, self.batches_per_epoch)
        self._load_epoch(epoch)
        start = position * self.global_batch + self.rank * self.batch_size
        rows = self._order[start : start + self.batch_size]
        flips = self._flips[rows]
        return [(k, int(i), bool(f)) for i, f in zip(rows.tolist(), flips.tolist())]

    def __iter__(self) -> Iterator[list[ItemKey]]:
        k = self.start_batch
        while True:
            yield self.batch(k)
            k += 1


class KeyedLatents(Dataset):
    """Fetches whole batches of standardised latents by :data:`ItemKey`.

    ``__getitems__`` (used by DataLoader for batched fetching) gathers a batch
    with one indexing operation when the cache is held in memory. Returns
    ``(latents (B, C, H, W) float32, labels (B,) int64, batch_number (B,) int64)``.
    """

    def __init__(self, latents: LatentDataset):
        self.latents = latents

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, key: ItemKey):
        latents, labels, numbers = self.__getitems__([key])
        return latents[0], labels[0], numbers[0]

    def __getitems__(self, keys: list[ItemKey]):
        numbers = torch.tensor([k for k, _, _ in keys], dtype=torch.long)
        index = torch.tensor([i for _, i, _ in keys], dtype=torch.long)
        flipped = torch.tensor([f for _, _, f in keys], dtype=torch.bool)
        memory = self.latents.memory
        if memory is not None:
            latents = memory["latents"][index]
            if bool(flipped.any()):
                latents = torch.where(flipped.view(-1, 1, 1, 1), memory["latents_flip"][index], latents)
            labels = memory["labels"][index]
        else:
            pairs = [self.latents.raw(i, f) for _, i, f in keys]
            latents = torch.stack([z for z, _ in pairs])
            labels = torch.stack([y for _, y in pairs])
        latents = latents.float()
        if self.latents.stats is not None:
            latents = self.latents.stats.normalize(latents)
        return latents, labels.long(), numbers


def _batched(items):
    # KeyedLatents.__getitems__ already returns the collated batch.
    return items


def cache_labels(latents: LatentDataset) -> torch.Tensor:
    """Every label of a cache, in order (read from memory, or from each shard's small label tensor)."""
    if latents.memory is not None:
        return latents.memory["labels"]
    parts = []
    for path in latents.files:
        with safe_open(str(path), framework="pt") as f:
            parts.append(f.get_tensor("labels"))
    return torch.cat(parts)


def latent_shape(latents: LatentDataset) -> tuple[int, int, int]:
    """(C, H, W) of the cached latents."""
    return tuple(latents.raw(0)[0].shape)  # type: ignore[return-value]


def per_device_batch_size(global_batch_size: int, world_size: int, accumulate: int) -> int:
    parts = world_size * accumulate
    if global_batch_size % parts:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} is not divisible by devices x nodes x "
            f"accumulate_grad_batches = {parts}"
        )
    return global_batch_size // parts


class LatentDataModule(L.LightningDataModule):
    """Serves :class:`StepIndexedBatchSampler` batches of a cache, starting where the run stands.

    ``train_dataloader`` is called after Lightning restored a checkpoint, so
    ``trainer.global_step`` is the resume step. The trainer must be built with
    ``use_distributed_sampler=False``: each rank's slice is chosen here.
    """

    def __init__(
        self,
        latents: LatentDataset,
        global_batch_size: int,
        seed: int = 0,
        flip_prob: float = 0.5,
        num_workers: int = 0,
    ):
        super().__init__()
        self.latents = latents
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.flip_prob = flip_prob
        self.num_workers = num_workers
        self.sampler: StepIndexedBatchSampler | None = None

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accumulate = trainer.accumulate_grad_batches
        batch_size = per_device_batch_size(self.global_batch_size, trainer.world_size, accumulate)
        self.sampler = StepIndexedBatchSampler(
            len(self.latents),
            batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            seed=self.seed,
            flip_prob=self.flip_prob,
            start_batch=trainer.global_step * accumulate,
        )
        return DataLoader(
            KeyedLatents(self.latents),
            batch_sampler=self.sampler,
            collate_fn=_batched,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=worker_ignores_stop_signals,  # a stop signal ends training after a step
        )

    def on_before_batch_transfer(self, batch, dataloader_idx: int = 0):
        # The batch number becomes a plain int here, on the CPU: the step seeds its RNG from it
        # without waiting for the device.
        latents, labels, numbers = batch
        return latents, labels, int(numbers[0])


def count_classes(labels: torch.Tensor) -> int:
    """Classes implied by a label tensor: one more than the largest label."""
    if labels.numel() == 0:
        raise ValueError("the cache holds no labels")
    if int(np.asarray(labels.min())) < 0:
        raise ValueError(
            "the cache holds unlabelled images (label -1, e.g. webdataset shards without a json label): "
            "a class-conditional generator needs labels; train a text-to-image recipe on it instead"
        )
    return int(np.asarray(labels.max())) + 1
