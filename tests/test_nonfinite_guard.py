"""NaN/Inf gradients skip the optimiser step (weights, AdamW state and EMA untouched); a streak stops the run."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vtp_gen.config import TrainerConfig
from vtp_gen.losses.dino import TeacherCentering
from vtp_gen.systems.nonfinite import NonFiniteGuard, NonFiniteTrainingError, step_was_skipped
from vtp_gen.systems.trainer import build_trainer
from vtp_gen.utils.ema import EMA
from vtp_gen.utils.plots import read_metrics

pytestmark = pytest.mark.faults("numerical faults")


class Regression(L.LightningModule):
    """Linear regression with an EMA copy; batches whose target is NaN poison the loss (a corrupt sample)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.ema = EMA(self.layer, decay=0.9)
        self.history: list[dict] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not step_was_skipped(self):
            self.ema.update(self.layer)
        state = optimizer.state[self.layer.weight]
        self.history.append(
            {
                "skipped": step_was_skipped(self),
                "weight": self.layer.weight.detach().clone(),
                "ema": self.ema.module.weight.detach().clone(),
                "adam_step": float(state["step"]) if "step" in state else 0.0,
            }
        )

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.05)


def batches(poisoned: set[int], n: int = 12):
    torch.manual_seed(0)
    x, y = torch.randn(n * 4, 4), torch.randn(n * 4, 1)
    for b in poisoned:
        y[b * 4] = float("nan")
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)


def fit(tmp_path, poisoned: set[int], max_steps: int, limit: int = 3, module: Regression | None = None):
    cfg = TrainerConfig(
        accelerator="cpu",
        max_steps=max_steps,
        log_every_n_steps=1,
        checkpoint_every_n_steps=2,
        progress_bar=False,
        max_nonfinite_steps=limit,
    )
    module = module or Regression()
    trainer = build_trainer(cfg, tmp_path)
    trainer.fit(module, batches(poisoned))
    return module, trainer


def test_a_poisoned_batch_changes_nothing_and_is_counted(tmp_path, capsys):
    module, trainer = fit(tmp_path, poisoned={3, 7}, max_steps=10)
    history = module.history
    assert [h["skipped"] for h in history] == [i in (3, 7) for i in range(10)]
    for i in (3, 7):
        assert torch.equal(history[i]["weight"], history[i - 1]["weight"])  # weights untouched
        assert torch.equal(history[i]["ema"], history[i - 1]["ema"])  # EMA untouched
        assert history[i]["adam_step"] == history[i - 1]["adam_step"]  # AdamW state untouched
    assert not torch.equal(history[4]["weight"], history[3]["weight"])  # training goes on
    assert all(torch.isfinite(h["weight"]).all() for h in history)
    assert trainer.global_step == 10
    logged = read_metrics(tmp_path / "logs" / "metrics.csv")["train/skipped_nonfinite"]
    assert logged[-1][1] == 2.0
    assert "step 3: NaN/Inf gradients, step skipped" in capsys.readouterr().out


def test_a_streak_stops_the_run_and_the_checkpoint_predates_the_fault(tmp_path):
    module = Regression()
    with pytest.raises(NonFiniteTrainingError, match="3 optimiser steps in a row"):
        fit(tmp_path, poisoned={5, 6, 7, 8, 9}, max_steps=12, limit=3, module=module)
    assert [h["skipped"] for h in module.history] == [False] * 5 + [True] * 2  # the third one raised
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # The newest checkpoint from before the first bad step (5): step 4, after four good updates.
    # The one of step 6 was held back, and none of the bad steps' checkpoints is left to resume from.
    assert last["global_step"] == 4
    torch.testing.assert_close(
        last["state_dict"]["layer.weight"], module.history[3]["weight"], rtol=0, atol=0
    )
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt")) == [
        "last.ckpt",
        "step00000002.ckpt",
        "step00000004.ckpt",
    ]


def test_guard_keeps_its_count_across_a_resume():
    guard = NonFiniteGuard(4)
    guard.skipped_total = 7
    restored = NonFiniteGuard(4)
    restored.load_state_dict(guard.state_dict())
    assert restored.skipped_total == 7
    with pytest.raises(ValueError):
        NonFiniteGuard(0)


def test_dino_centre_ignores_a_nan_batch():
    centering = TeacherCentering(8, center_momentum=0.5).train()
    centering(torch.ones(4, 8), teacher_temp=0.1)
    before = centering.center.clone()
    centering(torch.full((4, 8), math.nan), teacher_temp=0.1)
    assert torch.equal(centering.center, before)


def test_stage2_system_skips_a_nan_latent_batch(tmp_path):
    """The real flow-matching system: a batch with a NaN latent leaves model, EMA and AdamW state as they were."""
    from vtp_gen import create_model
    from vtp_gen.systems.flow_matching import LatentFlowMatching
    from vtp_gen.transport import Transport

    torch.manual_seed(0)
    model = create_model("LightningDiT-T/2", input_size=4, in_channels=16, num_classes=4)
    system = LatentFlowMatching(model, Transport(), ema_decay=0.9)
    latents = torch.randn(6 * 8, 16, 4, 4)
    latents[2 * 8 + 3, 0, 0, 0] = float("nan")  # one corrupt latent in batch 2
    labels = torch.randint(0, 4, (6 * 8,))
    snapshots = []

    class Snapshot(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            snapshots.append(
                (
                    step_was_skipped(pl_module),
                    {k: v.clone() for k, v in pl_module.model.state_dict().items()},
                    {k: v.clone() for k, v in pl_module.ema.module.state_dict().items()},
                )
            )

    data = [(latents[i : i + 8], labels[i : i + 8], i // 8) for i in range(0, 48, 8)]
    cfg = TrainerConfig(accelerator="cpu", max_steps=5, log_every_n_steps=1, progress_bar=False)
    build_trainer(cfg, tmp_path, callbacks=[Snapshot()]).fit(system, DataLoader(data, batch_size=None))
    assert [s[0] for s in snapshots] == [False, False, True, False, False]
    for index in (1, 2):  # model and EMA after the skipped step equal those before it
        assert all(torch.equal(snapshots[1][index][k], snapshots[2][index][k]) for k in snapshots[1][index])
    assert not all(torch.equal(snapshots[2][1][k], snapshots[3][1][k]) for k in snapshots[2][1])


def test_manual_optimisation_steps_are_guarded_too(tmp_path):
    """The decoder fine-tune steps two optimisers by hand; the guard sees each of those steps."""

    class Manual(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.automatic_optimization = False
            self.weights = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(torch.nn.functional.mse_loss(self.layer(x), y))
            optimizer.step()
            self.weights.append((step_was_skipped(self), self.layer.weight.detach().clone()))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=0.05)

    module = Manual()
    cfg = TrainerConfig(accelerator="cpu", max_steps=4, log_every_n_steps=1, progress_bar=False)
    build_trainer(cfg, tmp_path).fit(module, batches({2}))
    assert [skipped for skipped, _ in module.weights] == [False, False, True, False]
    assert torch.equal(module.weights[1][1], module.weights[2][1])


def test_gradient_check_finds_every_kind_of_non_finite_value():
    from vtp_gen.systems.nonfinite import gradients_are_finite

    def params(*grads):
        out = []
        for grad in grads:
            p = torch.nn.Parameter(torch.zeros_like(grad) if grad is not None else torch.zeros(2))
            p.grad = grad
            out.append(p)
        return out

    finite = torch.randn(5, 7)
    assert gradients_are_finite(params(finite, None, torch.full((10,), 1e20)))
    assert gradients_are_finite(params())  # no gradients at all
    # Large but finite half-precision values: summed in float32, not in their own dtype (65504 max).
    assert gradients_are_finite(params(torch.full((1000,), 60000.0, dtype=torch.float16)))
    for bad in (float("nan"), float("inf"), float("-inf")):
        poisoned = finite.clone()
        poisoned[3, 4] = bad
        assert not gradients_are_finite(params(finite, poisoned)), bad
    opposite = finite.clone()
    opposite[0, 0], opposite[1, 1] = float("inf"), float("-inf")  # they would cancel in a plain max/min
    assert not gradients_are_finite(params(opposite))
