"""Lightning Trainer construction shared by every training step.

One place decides precision, loggers (CSV + TensorBoard), checkpointing
(atomic writes, ``last.ckpt`` as the resume point, corrupt files skipped) and
progress bars, so stage 1 and stage 2 behave the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from vtp_gen.config import ConfigError, TrainerConfig
from vtp_gen.pretrained.safe_unpickle import load_tensors_only
from vtp_gen.systems.nonfinite import GuardedModelCheckpoint, NonFiniteGuard
from vtp_gen.systems.stop_on_signal import StopOnSignal
from vtp_gen.utils.atomic import atomic_output


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary name and rename when complete; load without unpickling code.

    A run killed mid-write leaves the previous checkpoint intact instead of a
    truncated file under the real name.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_output(path, fsync=True) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        return load_tensors_only(path, map_location=map_location or "cpu")


def read_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path`` (memory-mapped, without unpickling code), or None when unreadable."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None


def checkpoint_is_readable(path: Path) -> bool:
    return read_checkpoint(path) is not None


def find_resume_checkpoint(
    checkpoint_dir: Path, mismatch: Callable[[dict], str | None] | None = None
) -> Path | None:
    """The newest readable checkpoint in ``checkpoint_dir``, warning about bad ones.

    Newest by modification time, ``last.ckpt`` winning a tie (it is written
    right after the step checkpoint of the same step). Not ``last.ckpt``
    unconditionally: when the disk fills while ``last.ckpt`` is being replaced,
    the step checkpoint written just before it is complete and newer.
    ``mismatch`` (e.g. :func:`~vtp_gen.systems.resume.state_dict_mismatch`)
    says why a readable checkpoint does not fit this run; such a one is
    skipped with a warning, and when none fits, resuming is refused.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    candidates = sorted(
        checkpoint_dir.glob("*.ckpt"), key=lambda p: (-p.stat().st_mtime, p.name != "last.ckpt")
    )
    misfits = []
    for path in candidates:
        checkpoint = read_checkpoint(path)
        if checkpoint is None:
            warnings.warn(f"checkpoint {path} is truncated or corrupt; trying an older one", stacklevel=2)
            continue
        reason = mismatch(checkpoint) if mismatch is not None else None
        del checkpoint
        if reason is None:
            for name, why in misfits:  # said only when there is something to fall back to
                warnings.warn(f"checkpoint {name} does not fit this model ({why}); passed over", stacklevel=2)
            return path
        misfits.append((path, reason))
    if misfits:
        raise ConfigError(
            f"no checkpoint in {checkpoint_dir} fits this model ({misfits[0][0].name}: {misfits[0][1]}): the "
            "model settings of a run cannot change on a resume. Set them back, or choose another run.name "
            "to start a new run"
        )
    return None


def keep_csv_history(log_dir: Path) -> None:
    """Set an existing ``metrics.csv`` aside before a resumed fit.

    Lightning's CSVLogger deletes the file it finds when it starts; renaming it
    to ``metrics.partNNN.csv`` keeps a resumed run's curves whole (read them
    back in order with :func:`csv_logs`). Rank 0 only: the logger lives there.
    """
    current = Path(log_dir) / "metrics.csv"
    if rank_zero_only.rank == 0 and current.is_file():
        index = len(list(current.parent.glob("metrics.part*.csv")))
        current.rename(current.parent / f"metrics.part{index:03d}.csv")


def csv_logs(log_dir: Path) -> list[Path]:
    """The CSV history of a run folder's ``logs/``, oldest first (what exists of it)."""
    log_dir = Path(log_dir)
    return [p for p in [*sorted(log_dir.glob("metrics.part*.csv")), log_dir / "metrics.csv"] if p.is_file()]


def resolve_precision(cfg: TrainerConfig) -> str:
    if cfg.precision != "auto":
        return cfg.precision
    # bf16 autocast on GPUs; never on this kind of CPU (bf16 matmul is ~5x slower than fp32 there).
    return "bf16-mixed" if torch.cuda.is_available() and cfg.accelerator != "cpu" else "32-true"


class BatchProgressBar(TQDMProgressBar):
    """Counts batches when a manually optimised system steps several optimisers per batch.

    Lightning's ``global_step`` (and so ``max_steps`` and its bar) counts
    optimiser steps: the decoder fine-tune (decoder + discriminator) would show
    "60/120" when done.
    """

    def __init__(self, optimizer_steps_per_batch: int, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.optimizer_steps_per_batch = optimizer_steps_per_batch

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if trainer.max_epochs == -1 and trainer.max_steps is not None and trainer.max_steps > 0:
            remaining_batches = -(
                -(trainer.max_steps - trainer.global_step) // self.optimizer_steps_per_batch
            )
            return min(trainer.num_training_batches, remaining_batches)
        return trainer.num_training_batches


def build_trainer(
    cfg: TrainerConfig,
    run_folder: Path,
    callbacks: list | None = None,
    optimizer_steps_per_batch: int = 1,
    **overrides,
) -> L.Trainer:
    run_folder = Path(run_folder)
    guard = NonFiniteGuard(cfg.max_nonfinite_steps)
    checkpointing = GuardedModelCheckpoint(
        guard,
        dirpath=run_folder / "checkpoints",
        filename="step{step:08d}",
        auto_insert_metric_name=False,
        every_n_train_steps=max(1, cfg.checkpoint_every_n_steps),
        save_last=True,
        # The two newest step checkpoints stay beside last.ckpt: a fallback when last.ckpt is damaged,
        # and one from before a divergence (the newest may hold weights that already diverged).
        monitor="step",
        mode="max",
        save_top_k=2,
    )
    all_callbacks = [checkpointing, guard, *(callbacks or [])]
    if not any(isinstance(c, StopOnSignal) for c in all_callbacks):
        # SIGTERM / SIGINT: stop after the current step with last.ckpt saved (after the caller's callbacks).
        all_callbacks.append(StopOnSignal(run_folder / "checkpoints"))
    if cfg.progress_bar:
        all_callbacks.append(
            BatchProgressBar(optimizer_steps_per_batch, refresh_rate=max(1, cfg.log_every_n_steps // 2))
        )
    loggers = [
        CSVLogger(run_folder / "logs", name="", version=""),
        TensorBoardLogger(run_folder / "logs", name="tensorboard", version="", default_hp_metric=False),
    ]
    kwargs = dict(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=resolve_precision(cfg),
        max_steps=cfg.max_steps,
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.gradient_clip_val or None,
        log_every_n_steps=cfg.log_every_n_steps,
        callbacks=all_callbacks,
        logger=loggers,
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_folder),
        deterministic=False,
        use_distributed_sampler=True,
        num_sanity_val_steps=0,
    )
    kwargs.update(overrides)
    return L.Trainer(**kwargs)


def build_predict_trainer(
    cfg: TrainerConfig, callbacks: list, precision: str, run_folder: Path | None = None
) -> L.Trainer:
    """A Trainer for ``predict`` loops (latent caching, sampling): no logger, no checkpoints.

    ``precision`` is the caller's choice: outputs that are data (latents,
    samples) stay fp32 where training would use bf16. Each caller's DataModule
    hands every rank its own disjoint indices, so Lightning's distributed
    sampler stays off.
    """
    # SIGTERM / SIGINT stop the loop at once (Lightning alone would note them and go on).
    callbacks = [*callbacks, StopOnSignal()]
    if cfg.progress_bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=1)]
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=cfg.progress_bar,
        callbacks=callbacks,
        use_distributed_sampler=False,
        default_root_dir=str(run_folder) if run_folder is not None else None,
        inference_mode=True,
    )
