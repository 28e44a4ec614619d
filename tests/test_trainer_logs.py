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
