"""Stage-1 batches: B image-text pairs per step, with the SSL views and the reconstruction subset.

Every step loads B pairs per device. All B are centre-cropped and normalised
(``image``) and their captions tokenized (``text_tokens``) for CLIP; a random
subset of ``ssl_fraction * B`` gets the multi-crop views and iBOT masks
(:class:`~vtp_gen.data.multicrop.MultiCropCollate`, only when the SSL weight is
non-zero); a random subset of ``rec_fraction * B`` is named in ``rec_indices``
for reconstruction (only when the reconstruction weight is non-zero).

Exact resume: on map-style datasets the batch of step ``s`` is a pure function
of (seed, s, rank): :class:`StepBatchSampler` walks seeded epoch permutations
from any start step, and :class:`Stage1Collate` draws all of a batch's
randomness (subsets, crops, masks) from a generator seeded by the step. A run
restarted from a checkpoint at step s therefore sees exactly the batches an
uninterrupted run sees, whatever the number of DataLoader workers. Webdataset
streams in epoch mode are endless and deterministic per (seed, rank, worker),
and a resumed stream skips exactly the samples the earlier batches consumed
(:meth:`~vtp_gen.data.webdataset.ImageTextShards.training_stream`); resampled
streams restart with a stream seeded by the resume step instead.

Batches always hold exactly B samples: samples the data layer had to skip
(broken files) are replaced by repeats of good ones of the same batch and
counted (``data_issues["refilled_duplicate"]``), so per-rank shapes, and hence
the CLIP all-gather, stay equal on every rank. ``samples_drawn`` and
``samples_used`` say how many samples the batch was made from and how many of
them were usable, for the run's data account (:mod:`vtp_gen.data.accounting`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vtp_gen.config import DataConfig
from vtp_gen.data.accounting import REFILLED
from vtp_gen.data.build import build_dataset
from vtp_gen.data.decode import Skipped, collate_samples
from vtp_gen.data.multicrop import MultiCropCollate
from vtp_gen.data.transforms import CenterCropNormalize
from vtp_gen.data.webdataset import ImageTextShards
from vtp_gen.utils.stop_signals import worker_ignores_stop_signals


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed from ``seed`` and any keys (stage, step, rank, ...), stable across processes and runs."""
    words = [int(seed) & 0xFFFFFFFF]
    for key in keys:
        words.append(zlib.crc32(key.encode()) if isinstance(key, str) else int(key) & 0xFFFFFFFF)
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def subset_size(batch_size: int, fraction: float) -> int:
    """Samples in a per-step subset: at least 1 (and 2 for anything that needs a neighbour), at most B."""
    return min(batch_size, max(2, round(batch_size * fraction)))


class StepBatchSampler:
    """Yields, for steps ``start_step, start_step + 1, ...`` forever, this rank's batch as ``(step, index)`` pairs.

    The global batch of a step is the next ``batch_size * world_size`` indices of
    a sequence of epoch permutations (epoch e shuffled with a generator seeded by
    (seed, e)); rank r takes the r-th slice. Starting at any step is O(1).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if num_samples <= 0:
            raise ValueError("the training set is empty")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self.world_size = world_size
        self._epoch_cache: tuple[int, torch.Tensor] | None = None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._epoch_cache = (epoch, torch.randperm(self.num_samples, generator=generator))
        return self._epoch_cache[1]

    def indices_for_step(self, step: int) -> list[int]:
        global_batch = self.batch_size * self.world_size
        start = step * global_batch + self.rank * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, self.num_samples)
            out.append(int(self._permutation(epoch)[offset]))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield [(step, index) for index in self.indices_for_step(step)]
            step += 1


class StepIndexedDataset(Dataset):
    """Wraps a map-style dataset: item ``(step, index)`` is the sample ``index`` tagged with its ``step``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        step, index = item
        sample = self.dataset[index]
        if isinstance(sample, Skipped):
            return sample
        return {**sample, "step": step}


class Stage1Collate:
    """The DataLoader ``collate_fn`` of stage 1 (picklable, for worker processes).

    ``multicrop`` (None = no SSL views) makes the SSL subset; ``rec_fraction``
    (None = no reconstruction subset) draws ``rec_indices``; ``tokenizer``
    (None = no captions needed) makes ``text_tokens``. Without ``multicrop`` the
    images are centre-cropped to ``image_size`` here.
    """

    def __init__(
        self,
        batch_size: int,
        image_size: int,
        seed: int,
        rank: int = 0,
        tokenizer=None,
        multicrop: MultiCropCollate | None = None,
        rec_fraction: float | None = None,
    ) -> None:
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.tokenizer = tokenizer
        self.multicrop = multicrop
        self.rec_fraction = rec_fraction
        self.centre_crop = CenterCropNormalize(image_size)

    def __call__(self, samples: Sequence[dict | Skipped]) -> dict:
        good = [s for s in samples if not isinstance(s, Skipped)]
        skipped = [s for s in samples if isinstance(s, Skipped)]
        if not good:
            raise ValueError(
                f"a batch of {len(samples)} samples held no usable image ({collate_samples(skipped)['data_issues']}); "
                "check the data source"
            )
        used = len(good)
        refilled = self.batch_size - used
        if refilled > 0:
            # Repeats carry no issues: a repaired sample used twice was still repaired once.
            good = good + [{**good[i % used], "issues": []} for i in range(refilled)]
        steps = {s.get("step") for s in good}
        step = steps.pop() if len(steps) == 1 else None
        if step is None:
            # Streams carry no step: the worker's own generator (seeded by the DataLoader) decides.
            batch = self._collate(good, skipped)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.seed, "batch", step, self.rank))
                batch = self._collate(good, skipped)
            batch["step"] = torch.tensor(step)
        if refilled > 0:
            batch["data_issues"][REFILLED] = refilled
        # For the data account (data/accounting.py): what was drawn, and how much of it was usable.
        batch["samples_drawn"], batch["samples_used"] = len(samples), used
        return batch

    def _collate(self, good: list[dict], skipped: list[Skipped]) -> dict:
        good = [{k: v for k, v in s.items() if k != "step"} for s in good]
        if self.multicrop is not None:
            batch = self.multicrop(good + skipped)
        else:
            plain = [{**s, "image": self.centre_crop(s["image"])} for s in good]
            batch = collate_samples(plain + skipped)
            if self.tokenizer is not None:
                batch["text_tokens"] = self.tokenizer([s["caption"] for s in good])
        if self.rec_fraction is not None:
            count = subset_size(self.batch_size, self.rec_fraction)
            batch["rec_indices"] = torch.randperm(self.batch_size)[:count].sort().values
        return batch


class Stage1DataModule(L.LightningDataModule):
    """Training batches for either stage-1 phase; resumes at the trainer's restored step.

    ``collate`` is a :class:`Stage1Collate` whose rank is filled in when the
    trainer (and hence the process group) exists.
    """

    def __init__(
        self,
        data: DataConfig,
        collate: Stage1Collate,
        batch_size: int,
        seed: int,
        with_captions: bool,
        optimizer_steps_per_batch: int = 1,
        dataset: Dataset | IterableDataset | None = None,
    ) -> None:
        super().__init__()
        self.data = data
        self.collate = collate
        self.batch_size = batch_size
        self.seed = seed
        self.with_captions = with_captions
        # Lightning's global_step counts optimiser steps: more than one per batch with two optimisers.
        self.optimizer_steps_per_batch = optimizer_steps_per_batch
        # Built from ``data`` on first use unless given (tests, custom sources).
        self._dataset = dataset

    def dataset(self) -> Dataset | IterableDataset:
        if self._dataset is None:
            # Raw PIL images: the collate makes the centre crops and the SSL views from them.
            self._dataset = build_dataset(self.data, transform=None, with_captions=self.with_captions)
        return self._dataset

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # The batch index to start from: restored optimiser steps -> batches (with accumulation, several per step).
        start_step = 0
        if trainer is not None:
            start_step = (
                trainer.global_step // self.optimizer_steps_per_batch * trainer.accumulate_grad_batches
            )
        rank = trainer.global_rank if trainer is not None else 0
        world_size = trainer.world_size if trainer is not None else 1
        self.collate.rank = rank
        dataset = self.dataset()
        common = dict(
            num_workers=self.data.num_workers,
            collate_fn=self.collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.data.num_workers > 0,
            worker_init_fn=worker_ignores_stop_signals,  # a stop signal ends training after a step
        )
        if isinstance(dataset, IterableDataset):
            if isinstance(dataset, ImageTextShards):
                # Epoch mode skips what the batches before start_step consumed; resampled reseeds.
                dataset = dataset.training_stream(
                    derive_seed(self.seed, "stream"), start_step, self.batch_size
                )
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "workers", start_step, rank))
            return DataLoader(dataset, batch_size=self.batch_size, generator=generator, **common)
        sampler = StepBatchSampler(len(dataset), self.batch_size, self.seed, start_step, rank, world_size)
        return DataLoader(StepIndexedDataset(dataset), batch_sampler=sampler, **common)
