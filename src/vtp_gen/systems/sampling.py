"""Generating images from a trained generator: decoding, sample plans, grids, and the resumable sample writer.

Every sample is a function of ``(seed, i)``: its class label and its initial
noise come from generators seeded by the sample index ``i``. Batches are
aligned blocks of the index space (``[k*B, (k+1)*B)``), so sample ``i`` is
always computed in the same batch whatever the number of devices or
interruptions: a resumed run makes bit-identical PNGs. Another batch size
changes the batch composition, and float kernels are not batch-invariant, so
images then agree up to rounding (a pixel may move by one level). Resuming is
"make the samples whose PNG is missing":

- :class:`SamplePlanData` hands each rank whole blocks that hold missing
  samples (rank 0 lists them, every rank gets the list); a block is computed
  in full and only its missing samples are written;
- :class:`LatentSampler` (``trainer.predict``) samples latents, undoes the
  latent standardisation and decodes them with the tokenizer;
- :class:`PngWriter` writes ``{i:06d}.png`` atomically as batches finish;
- :func:`write_adm_npz` packs the PNGs into the ADM evaluator's ``.npz``.

:class:`SampleGridCallback` is the training-time preview: a fixed grid (one
row per class, fixed noise) from the EMA model, saved as PNG and to
TensorBoard.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from vtp_gen.data.images import load_png, save_grid, save_png
from vtp_gen.data.transforms import to_uint8
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.systems.latent_data import derive_seed
from vtp_gen.transport import sample as transport_sample
from vtp_gen.utils.atomic import atomic_output
from vtp_gen.utils.log import step_logger
from vtp_gen.utils.stop_signals import StopRequested, requested

preview_log = step_logger("preview")

LABEL_MODES = ("uniform", "balanced")
PNG_NAME = "{:06d}.png"


# ---------------------------------------------------------------------------
# What sample i is: its label and its noise.


def sample_label(index: int, num_classes: int, mode: str, seed: int) -> int:
    """The class of sample ``index``.

    ``uniform``: independent uniform draws (the ADM / DiT protocol).
    ``balanced``: each consecutive block of ``num_classes`` samples holds every
    class once, in a random order per block, so any prefix is as balanced as
    it can be and the plan does not depend on the total count.
    """
    if mode == "uniform":
        generator = torch.Generator().manual_seed(derive_seed("sample-label", seed, index))
        return int(torch.randint(num_classes, (1,), generator=generator))
    if mode == "balanced":
        block, position = divmod(index, num_classes)
        generator = torch.Generator().manual_seed(derive_seed("sample-label-block", seed, block))
        return int(torch.randperm(num_classes, generator=generator)[position])
    raise ValueError(f"unknown label mode {mode!r}; expected one of {LABEL_MODES}")


def sample_labels(indices, num_classes: int, mode: str, seed: int) -> torch.Tensor:
    if mode == "balanced":
        # One permutation per block instead of one per sample.
        perms: dict[int, torch.Tensor] = {}
        out = []
        for index in indices:
            block, position = divmod(int(index), num_classes)
            if block not in perms:
                generator = torch.Generator().manual_seed(derive_seed("sample-label-block", seed, block))
                perms[block] = torch.randperm(num_classes, generator=generator)
            out.append(int(perms[block][position]))
        return torch.tensor(out, dtype=torch.long)
    return torch.tensor([sample_label(int(i), num_classes, mode, seed) for i in indices], dtype=torch.long)


def sample_noise(indices, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """(len(indices), *shape) float32 standard normal noise, drawn on the CPU per sample."""
    out = torch.empty(len(indices), *shape)
    for row, index in enumerate(indices):
        generator = torch.Generator().manual_seed(derive_seed("sample-noise", seed, int(index)))
        out[row] = torch.randn(shape, generator=generator)
    return out


def preview_labels(num_classes: int, rows: int, per_class: int) -> torch.Tensor:
    """``rows`` classes evenly spread over all classes, each repeated ``per_class`` times (one row each)."""
    rows = max(1, min(rows, num_classes))
    classes = torch.linspace(0, num_classes - 1, rows).round().long().unique()
    return classes.repeat_interleave(per_class)


# ---------------------------------------------------------------------------
# From generator latents to pixels.


class LatentDecoder(torch.nn.Module):
    """Generator-space latents -> images in ImageNet mean/std space.

    Undoes the cache's standardisation (a step that fails silently when
    forgotten: the decoder accepts any tensor) and calls the tokenizer's
    official ``get_latents_decoded_images``.
    """

    def __init__(self, tokenizer: torch.nn.Module, stats: LatentStats):
        super().__init__()
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        self.register_buffer("mean", stats.mean.float().clone(), persistent=False)
        self.register_buffer("std", stats.std.float().clone(), persistent=False)
        self.multiplier = stats.multiplier

    @torch.no_grad()
    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        raw = latents.float() / self.multiplier * self.std + self.mean
        return self.tokenizer.get_latents_decoded_images(raw)


def sampling_kwargs(sampling) -> dict:
    """``transport.sample`` keyword arguments from a ``SamplingConfig`` (or any object with its fields)."""
    kwargs = dict(
        method=sampling.method,
        steps=int(sampling.steps),
        shift=float(sampling.shift),
        cfg_scale=float(sampling.cfg_scale),
        cfg_interval_start=float(sampling.cfg_interval_start),
        guidance_mode=sampling.guidance_mode,
    )
    if sampling.method not in ("euler", "heun", "heun2", "sde", "euler-maruyama", "em"):
        kwargs.update(atol=float(sampling.atol), rtol=float(sampling.rtol))
    return kwargs


# ---------------------------------------------------------------------------
# Training-time preview grids.


class SampleGridCallback(L.Callback):
    """Every ``every_n_steps`` optimiser steps (and at the end), a grid from the EMA model on rank 0.

    Rows are classes, columns fixed noise seeds, so successive grids show the
    same samples improving. Saved as ``<folder>/samples_step{N:08d}.png`` and
    as the TensorBoard image ``samples``. ``make_decoder`` builds the
    :class:`LatentDecoder` on first use (only rank 0 loads the tokenizer).
    ``at_train_end=False`` leaves the last grid to the caller (stage 2 writes it
    after its checkpoint and export). A stop signal during a grid in training
    abandons the grid, so that the run stops after its current step.
    """

    def __init__(
        self,
        folder: str | Path,
        make_decoder: Callable[[], LatentDecoder],
        labels: torch.Tensor,
        sampling: dict,
        every_n_steps: int = 0,
        nrow: int = 8,
        seed: int = 0,
        at_train_end: bool = True,
    ):
        self.folder = Path(folder)
        self.make_decoder = make_decoder
        self.labels = labels
        self.sampling = sampling
        self.every_n_steps = every_n_steps
        self.nrow = nrow
        self.seed = seed
        self.at_train_end = at_train_end
        self.decoder: LatentDecoder | None = None
        self.last_step: int | None = None
        self.written: list[Path] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0 and step != self.last_step:
            self._write_unless_stopped(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_train_end and trainer.global_step != self.last_step:
            self._write_unless_stopped(trainer, pl_module)

    def _write_unless_stopped(self, trainer, pl_module) -> None:
        if requested() is not None:
            return

        def stop_if_requested(module, args):  # checked before every model evaluation of the sampler
            if requested() is not None:
                raise StopRequested(requested())

        if trainer.is_global_zero:
            preview_log.info(
                f"grid of step {trainer.global_step}: {len(self.labels)} samples, "
                f"{self.sampling['steps']} sampler points"
            )
        hook = pl_module.ema.module.register_forward_pre_hook(stop_if_requested)
        try:
            self.write(trainer, pl_module)
        except StopRequested:
            preview_log.warning(f"grid of step {trainer.global_step} abandoned: stop requested")
        finally:
            hook.remove()

    @torch.no_grad()
    def write(self, trainer, pl_module) -> Path | None:
        step = trainer.global_step
        self.last_step = step
        if not trainer.is_global_zero:
            return None
        device = pl_module.device
        if self.decoder is None:
            self.decoder = self.make_decoder()
        self.decoder.to(device)
        generator = pl_module.ema.module
        shape = (generator.in_channels, generator.input_size, generator.input_size)
        noise = sample_noise(range(len(self.labels)), shape, derive_seed("preview", self.seed)).to(device)
        latents = transport_sample(generator, noise, self.labels.to(device), **self.sampling)
        images = self.decoder(latents)
        path = save_grid(images, self.folder / f"samples_step{step:08d}.png", nrow=self.nrow, normalized=True)
        self.written.append(path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                grid = np.asarray(load_png(path))
                logger.experiment.add_image("samples", grid, step, dataformats="HWC")
                logger.experiment.flush()  # the last grid comes after the fit has closed the logger
        return path


# ---------------------------------------------------------------------------
# Distributed, resumable sampling with trainer.predict.


class _Indices(Dataset):
    def __init__(self, indices: list[int], labels: torch.Tensor, write: list[bool]):
        self.indices = indices
        self.labels = labels
        self.write = write

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        return {
            "index": self.indices[position],
            "label": self.labels[position],
            "write": self.write[position],
        }


def png_path(folder: Path, index: int) -> Path:
    return Path(folder) / PNG_NAME.format(index)


def missing_indices(folder: Path, num_samples: int) -> list[int]:
    """Sample indices below ``num_samples`` without a finished PNG in ``folder``."""
    folder = Path(folder)
    existing = {p.name for p in folder.glob("*.png")} if folder.is_dir() else set()
    return [i for i in range(num_samples) if PNG_NAME.format(i) not in existing]


class SamplePlanData(L.LightningDataModule):
    """Each rank's share of the missing samples, as whole aligned blocks of ``batch_size`` indices.

    Rank r takes every world_size-th block that holds a missing sample. Blocks
    run past ``num_samples`` at the end so that the last batch has the same
    composition whatever ``num_samples`` is; only missing samples below it are
    written (``self.assigned``).
    """

    # A rank with nothing left to do near the end of a resumed run is expected.
    allow_zero_length_dataloader_with_multiple_devices = True

    def __init__(
        self, folder: Path, num_samples: int, num_classes: int, label_mode: str, seed: int, batch_size: int
    ):
        super().__init__()
        self.folder = Path(folder)
        self.num_samples = num_samples
        self.num_classes = num_classes
        self.label_mode = label_mode
        self.seed = seed
        self.batch_size = batch_size
        self.assigned: list[int] = []

    def predict_dataloader(self) -> DataLoader:
        pending = missing_indices(self.folder, self.num_samples) if self.trainer.is_global_zero else None
        pending = self.trainer.strategy.broadcast(pending, src=0)
        blocks = sorted({index // self.batch_size for index in pending})
        mine = set(blocks[self.trainer.global_rank :: self.trainer.world_size])
        self.assigned = [index for index in pending if index // self.batch_size in mine]
        indices = [b * self.batch_size + k for b in sorted(mine) for k in range(self.batch_size)]
        wanted = set(self.assigned)
        write = [index in wanted for index in indices]
        labels = sample_labels(indices, self.num_classes, self.label_mode, self.seed)
        return DataLoader(_Indices(indices, labels, write), batch_size=self.batch_size, shuffle=False)


class LatentSampler(L.LightningModule):
    """``predict_step``: sample indices + labels -> uint8 (B, H, W, 3) images."""

    def __init__(self, generator: torch.nn.Module, decoder: LatentDecoder, sampling: dict, seed: int = 0):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.decoder = decoder
        self.sampling = sampling
        self.seed = seed
        self.latent_shape = (generator.in_channels, generator.input_size, generator.input_size)

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict:
        indices = batch["index"].tolist()
        noise = sample_noise(indices, self.latent_shape, self.seed).to(self.device)
        labels = batch["label"].to(self.device)
        kwargs = dict(self.sampling)
        if kwargs.get("method") in ("sde", "euler-maruyama", "em"):
            # The SDE's per-step noise cannot be per sample; seed it by the batch's first index.
            kwargs["generator"] = torch.Generator(self.device).manual_seed(
                derive_seed("sample-sde", self.seed, indices[0])
            )
        latents = transport_sample(self.generator, noise, labels, **kwargs)
        images = self.decoder(latents.float())
        return {
            "index": batch["index"].cpu(),
            "write": batch["write"].cpu(),
            "pixels": to_uint8(images.float()).cpu(),
        }


class PngWriter(BasePredictionWriter):
    """Writes each finished batch as ``{index:06d}.png`` files (atomic), so an interrupted run loses at most a batch."""

    def __init__(self, folder: str | Path):
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.written = 0

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        rows = zip(prediction["index"].tolist(), prediction["write"].tolist(), prediction["pixels"].numpy())
        for index, write, pixels in rows:
            if not write:  # already on disk, or past num_samples: computed only to keep the batch intact
                continue
            save_png(pixels, png_path(self.folder, index))
            self.written += 1


# ---------------------------------------------------------------------------
# The ADM .npz.


def write_adm_npz(
    path: str | Path, png_folder: str | Path, num_samples: int, labels: torch.Tensor | None
) -> Path:
    """Pack ``{0..num_samples-1:06d}.png`` into the ``.npz`` the ADM evaluator reads.

    ``arr_0``: uint8 (N, H, W, 3), ``arr_1`` (when labels are given): int64 (N,)
    class labels, as ADM's ``image_sample.py`` writes them. The images are
    streamed into the archive one by one (50k ImageNet samples are ~10 GB), and
    the file appears under its name only when complete.
    """
    path, png_folder = Path(path), Path(png_folder)
    if num_samples <= 0:
        raise ValueError("an .npz needs at least one sample")
    first = load_png(png_path(png_folder, 0))
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
        "fortran_order": False,
        "shape": (num_samples, *first.shape),
    }
    with (
        atomic_output(path) as tmp,
        zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive,
    ):
        with archive.open("arr_0.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, header)  # what np.save writes for such a header
            for index in range(num_samples):
                pixels = first if index == 0 else load_png(png_path(png_folder, index))
                if pixels.shape != first.shape:
                    raise ValueError(f"sample {index} has shape {pixels.shape}, sample 0 {first.shape}")
                f.write(np.ascontiguousarray(pixels).tobytes())
        if labels is not None:
            with archive.open("arr_1.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, labels.numpy().astype(np.int64), allow_pickle=False)
    return path
