"""The stage-2 training system: a class-conditional generator trained by flow matching on latents.

    system = LatentFlowMatching(create_model("LightningDiT-XL/1", in_channels=64), Transport(...))
    trainer.fit(system, datamodule=LatentDataModule(...))

What it adds to the model: the objective (``Transport.training_losses``), an
EMA copy that is what samples (``system.ema.module``), AdamW, and random
numbers that are a function of the batch number. Batches come from
:class:`~vtp_gen.systems.latent_data.LatentDataModule`, whose batches carry
their number; each training step seeds a private RNG stream from
``(seed, batch number, rank)`` for the noise, the times and the label dropout.
Together with the step-indexed data this makes a run resumed from a
checkpoint bit-identical to an uninterrupted one (same device and threads),
with nothing RNG-related to save.

Mixed precision is the trainer's (``build_trainer``): bf16 autocast on GPUs,
fp32 on CPUs; the EMA is kept in fp32. ``trainer.gradient_clip_val`` is
applied by :mod:`vtp_gen.systems.clipping`, which also clips for a fused AdamW
under bf16 (Lightning alone refuses that).
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
import torch

from vtp_gen.systems.clipping import ClipsGradients
from vtp_gen.systems.latent_data import derive_seed
from vtp_gen.systems.nonfinite import step_was_skipped, watch_loss
from vtp_gen.transport import Transport
from vtp_gen.utils.ema import EMA

GENERATOR_CONFIG_KEY = "generator_config"


@dataclass(frozen=True)
class AdamWSettings:
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    eps: float = 1e-8
    fused: bool = False  # torch's fused AdamW kernel (stage2_config.OptimConfig turns it on)


@contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Run a block on the global RNG seeded with ``seed``, restoring the previous state afterwards.

    The model draws its label dropout from the global generator, so a private
    ``torch.Generator`` alone would not cover it; forking keeps every other
    user of the global RNG (data workers, callbacks) undisturbed.
    """
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        torch.manual_seed(seed)
        yield


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names and bytes, in name order: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().cpu().contiguous().reshape(-1)
        digest.update(name.encode())
        digest.update(f"{value.dtype}{tuple(tensors[name].shape)}".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LatentFlowMatching(ClipsGradients, L.LightningModule):
    """Model + EMA + flow-matching objective + AdamW, for ``trainer.fit``.

    ``model(x, t, y)`` is any generator of the LightningDiT family; its
    ``config`` dict is stored in checkpoints so they can be sampled from
    without the training config. ``seed`` is the run seed.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        transport: Transport,
        optimizer: AdamWSettings = AdamWSettings(),
        ema_decay: float = 0.9999,
        seed: int = 0,
    ):
        super().__init__()
        self.model = model
        self.ema = EMA(model, ema_decay)
        self.transport = transport
        self.optimizer_settings = optimizer
        self.seed = seed

    def configure_optimizers(self) -> torch.optim.Optimizer:
        s = self.optimizer_settings
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(
            trainable, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, eps=s.eps, fused=s.fused or None
        )

    def on_train_start(self) -> None:
        # A resume restores the optimiser with the hyperparameters it was saved with; this run's
        # settings win, so `optim.lr=...` on the command line of a rerun is what it trains with.
        s = self.optimizer_settings
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                group.update(lr=s.lr, betas=s.betas, weight_decay=s.weight_decay, eps=s.eps)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        # (latents, labels, batch number): the number is a Python int (see LatentDataModule), so
        # deriving the step's seed from it costs no device sync.
        latents, labels, number = batch
        seed = derive_seed("stage2-step", self.seed, int(number), self.global_rank)
        with seeded_rng(seed, latents.device):
            terms = self.transport.training_losses(self.model, latents, y=labels)
        loss = terms["loss"].mean()
        watch_loss(self, loss)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/mse", terms["mse"].detach().mean())
        self.log("train/cosine", terms["cosine"].detach().mean())
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if not step_was_skipped(self):  # a skipped (NaN/Inf) step leaves the EMA alone too
            self.ema.update(self.model)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[GENERATOR_CONFIG_KEY] = dict(self.model.config)

    def weight_digests(self) -> dict[str, str]:
        """Digests of the trained and the averaged weights (to compare runs and ranks)."""
        return {
            "model": tensor_digest(self.model.state_dict()),
            "ema": tensor_digest(self.ema.module.state_dict()),
        }
