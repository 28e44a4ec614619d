"""A resumed fit keeps the loss curves of the run before it (CSVLogger deletes metrics.csv on start)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from vtp_gen.config import TrainerConfig
from vtp_gen.systems.trainer import build_trainer, csv_logs, find_resume_checkpoint, keep_csv_history
from vtp_gen.utils.plots import read_metrics


class LinearRegression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(folder, max_steps: int) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    cfg = TrainerConfig(
        accelerator="cpu",
        max_steps=max_steps,
        log_every_n_steps=1,
        checkpoint_every_n_steps=2,
        progress_bar=False,
    )
    resume = find_resume_checkpoint(folder / "checkpoints")
    if resume is not None:
        keep_csv_history(folder / "logs")
    trainer = build_trainer(cfg, folder)
    trainer.fit(LinearRegression(), DataLoader(data, batch_size=8), ckpt_path=resume)


def test_resumed_fit_keeps_the_earlier_curve(tmp_path):
    fit(tmp_path, max_steps=4)
    fit(tmp_path, max_steps=8)  # resumes from step 4
    parts = csv_logs(tmp_path / "logs")
    assert [p.name for p in parts] == ["metrics.part000.csv", "metrics.csv"]
    steps = [step for step, _ in read_metrics(parts)["train/loss"]]
    assert steps == list(range(8))  # steps 0-3 from the first run, 4-7 from the resumed one


def test_csv_logs_of_a_fresh_folder_is_empty(tmp_path):
    assert csv_logs(tmp_path / "logs") == []


class TwoOptimizers(LinearRegression):
    """Manual optimisation with two optimiser steps per batch, as the decoder fine-tune does."""

    def __init__(self):
        super().__init__()
        self.other = torch.nn.Linear(4, 1)
        self.automatic_optimization = False

    def training_step(self, batch, batch_idx):
        x, y = batch
        for optimizer, layer in zip(self.optimizers(), (self.layer, self.other)):
            optimizer.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(layer(x), y))
            optimizer.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.layer.parameters(), lr=0.1), torch.optim.SGD(
            self.other.parameters(), lr=0.1
        )


def test_progress_bar_counts_batches_not_optimiser_steps(tmp_path):
    from vtp_gen.systems.trainer import BatchProgressBar

    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    cfg = TrainerConfig(accelerator="cpu", max_steps=2 * 5, log_every_n_steps=1, progress_bar=True)
    trainer = build_trainer(cfg, tmp_path, optimizer_steps_per_batch=2)
    trainer.fit(TwoOptimizers(), DataLoader(data, batch_size=8))
    bar = next(c for c in trainer.callbacks if isinstance(c, BatchProgressBar))
    assert trainer.global_step == 10
    assert bar.train_progress_bar.total == 5 and bar.train_progress_bar.n == 5
