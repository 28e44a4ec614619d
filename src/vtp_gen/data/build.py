"""One place that turns a ``DataConfig`` into a dataset and a DataLoader."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from vtp_gen.config import DataConfig
from vtp_gen.data.decode import collate_samples
from vtp_gen.data.fashion_mnist import FashionMNIST
from vtp_gen.data.image_folder import LabelledImageFolder
from vtp_gen.data.webdataset import ImageTextShards
from vtp_gen.data.webdataset_index import IndexedImageTextShards

SOURCES = ("fashion_mnist", "image_folder", "webdataset")


def build_dataset(
    cfg: DataConfig, transform=None, with_captions: bool = False, split: str | None = None, seed: int = 0
) -> Dataset | IterableDataset:
    """The dataset named by ``cfg.source``; items are dicts (see :mod:`vtp_gen.data.decode`)."""
    split = split or cfg.split
    if cfg.source == "fashion_mnist":
        return FashionMNIST(
            cfg.root or None, split, transform, with_captions, cfg.max_samples, cfg.caption_variants
        )
    if cfg.source == "image_folder":
        if not cfg.root:
            raise ValueError("data.source=image_folder needs data.root=FOLDER (root/<class>/<image>)")
        return LabelledImageFolder(
            cfg.root,
            transform,
            with_captions,
            cfg.max_samples,
            caption_variants=cfg.caption_variants,
            max_pixels=cfg.max_image_pixels,
        )
    if cfg.source == "webdataset":
        return ImageTextShards(
            cfg.shards,
            transform,
            resampled=cfg.resampled,
            require_caption=with_captions,
            seed=seed,
            shuffle_buffer=1000 if split == "train" else 0,
            max_pixels=cfg.max_image_pixels,
        )
    raise ValueError(f"unknown data.source {cfg.source!r}; choose one of {', '.join(SOURCES)}")


def build_map_dataset(
    cfg: DataConfig, transform=None, with_captions: bool = False, index_file=None
) -> Dataset:
    """The dataset of ``cfg`` with a stable global index (what latent caching needs): webdataset
    shards are indexed for random access (:mod:`vtp_gen.data.webdataset_index`, the index recorded
    in ``index_file``); the other sources are map-style already."""
    if cfg.source == "webdataset":
        return IndexedImageTextShards(
            cfg.shards,
            transform,
            require_caption=True,
            max_samples=cfg.max_samples,
            max_pixels=cfg.max_image_pixels,
            index_file=index_file,
        )
    return build_dataset(cfg, transform, with_captions)


def build_dataloader(
    dataset: Dataset | IterableDataset,
    cfg: DataConfig,
    shuffle: bool = False,
    collate_fn=collate_samples,
    drop_last: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
) -> DataLoader:
    iterable = isinstance(dataset, IterableDataset)
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size or cfg.batch_size,
        shuffle=shuffle and not iterable,
        num_workers=cfg.num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=cfg.num_workers > 0,
        generator=generator,
    )
