"""``DecoderFinetune``: the second stage-1 phase, pixel decoder + PatchGAN with the encoder frozen.

The pre-trained encoder (and with it the latent space the generator will
model) stays fixed; only the pixel decoder learns, from L1 + LPIPS plus a hinge
GAN term whose weight adapts to keep its gradient at the scale of the
reconstruction gradient (LDM / VA-VAE recipe, the usual default for this
UNKNOWN part of the paper). The discriminator starts to count at
``disc_start_step``.

Both networks are updated from one backward pass per step: the generator term
reads the discriminator through a functional call on *detached* weights (so
only the decoder learns from it) and the discriminator term reads the
reconstructions detached (so only the discriminator learns from it). One
backward keeps every trainable parameter in every step's graph, which is what
DDP needs without searching for unused parameters.

Lightning counts an optimiser step per ``optimizer.step()``, so with the two
optimisers here ``trainer.global_step`` advances by 2 per training step;
:attr:`finetune_step` is the step count of this phase.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.func import functional_call

from vtp_gen.interop.vtp import save_pretrained
from vtp_gen.losses import AdversarialLoss, ReconstructionLoss, schedules
from vtp_gen.models.tokenizer import VTPModel
from vtp_gen.systems.clipping import clip_gradients_
from vtp_gen.systems.data_accounting import AccountsForData
from vtp_gen.systems.optim import apply_schedule

OPTIMIZER_STEPS_PER_STEP = 2


class DecoderFinetune(AccountsForData, L.LightningModule):
    """Fine-tune ``model.pixel_decoder`` against ``discriminator``; ``cfg`` is a ``DecoderFinetuneConfig``."""

    data_phase = "decoder fine-tune"

    def __init__(
        self,
        model: VTPModel,
        discriminator: nn.Module,
        cfg,
        perceptual: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if model.pixel_decoder is None:
            raise ValueError("decoder fine-tuning needs a tokenizer with a pixel decoder")
        self.automatic_optimization = False
        self.model = model
        self.discriminator = discriminator
        self.cfg = cfg
        self.total_steps = max(int(cfg.max_steps), 1)
        model.requires_grad_(False)
        model.pixel_decoder.requires_grad_(True)
        self.rec_loss = ReconstructionLoss(cfg.l1_weight, cfg.lpips_weight, perceptual)
        self.adversarial = AdversarialLoss(disc_weight=cfg.disc_weight, disc_start_step=cfg.disc_start_step)
        self.init_data_account()

    @property
    def finetune_step(self) -> int:
        return self.global_step // OPTIMIZER_STEPS_PER_STEP

    def configure_optimizers(self):
        betas, fused = (self.cfg.beta1, self.cfg.beta2), self.cfg.fused or None
        decoder = torch.optim.AdamW(
            self.model.pixel_decoder.parameters(), lr=self.cfg.lr, betas=betas, weight_decay=0.0, fused=fused
        )
        disc = torch.optim.AdamW(
            self.discriminator.parameters(), lr=self.cfg.disc_lr, betas=betas, weight_decay=0.0, fused=fused
        )
        return [decoder, disc]

    def learning_rate_factor(self, step: int) -> float:
        warmup = min(self.cfg.warmup_steps, self.total_steps)
        return schedules.learning_rate(step, self.total_steps, 1.0, warmup, 1.0) if warmup else 1.0

    def on_train_start(self) -> None:
        # The encoder is frozen: keep it (and any norm statistics) in inference mode.
        self.model.trunk.eval()

    def discriminator_logits_for_generator(self, images: Tensor) -> Tensor:
        """D(images) with D's weights treated as constants: gradients reach ``images`` only."""
        params = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        buffers = dict(self.discriminator.named_buffers())
        return functional_call(self.discriminator, {**params, **buffers}, (images,))

    def compute_losses(self, images: Tensor, step: int) -> dict[str, Tensor]:
        with torch.no_grad():
            latents = self.model.encode_latents(images)
        reconstruction = self.model.decode(latents)
        rec = self.rec_loss(reconstruction, images)
        generator = self.adversarial.generator_loss(
            rec["loss"],
            self.discriminator_logits_for_generator(reconstruction),
            self.model.pixel_decoder.proj_out.weight,
            step,
        )
        disc = self.adversarial.discriminator_loss(
            self.discriminator(images), self.discriminator(reconstruction.detach()), step
        )
        out = {
            "loss": generator["loss"] + disc["loss"],
            "rec_loss": rec["loss"].detach(),
            "rec_l1": rec["l1"],
            "gan_loss": generator["gan_loss"],
            "adaptive_weight": generator["adaptive_weight"],
            "disc_factor": generator["disc_factor"],
            "disc_loss": disc["hinge"],
            "logits_real": disc["logits_real"],
            "logits_fake": disc["logits_fake"],
        }
        if "lpips" in rec:
            out["rec_lpips"] = rec["lpips"]
        return out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        step = self.finetune_step
        self.count_data(batch)
        decoder_opt, disc_opt = self.optimizers()
        factor = self.learning_rate_factor(step)
        apply_schedule(decoder_opt.optimizer, self.cfg.lr * factor)
        apply_schedule(disc_opt.optimizer, self.cfg.disc_lr * factor)
        losses = self.compute_losses(batch["image"], step)
        decoder_opt.zero_grad(set_to_none=True)
        disc_opt.zero_grad(set_to_none=True)
        self.manual_backward(losses["loss"])
        # Each network's gradients clipped on their own; through vtp_gen.systems.clipping because
        # Lightning's clip_gradients refuses a fused AdamW under bf16 and any norm clip under FSDP.
        for optimizer in (decoder_opt, disc_opt):
            clip_gradients_(self, optimizer.optimizer, self.cfg.gradient_clip_val)
        decoder_opt.step()
        disc_opt.step()

        batch_size = int(batch["image"].shape[0])
        values = {f"finetune/{k}": v.detach().float() for k, v in losses.items() if k != "loss"}
        values["finetune/lr"] = self.cfg.lr * factor
        values["finetune/step"] = float(step)
        values.update(self.data_log_values())
        self.log("finetune/loss", losses["loss"].detach(), prog_bar=True, batch_size=batch_size)
        self.log_dict(values, batch_size=batch_size)
        return losses["loss"].detach()

    def export_tokenizer(self, directory: str | Path) -> Path:
        """The tokenizer with its fine-tuned decoder (no discriminator) in the official VTP layout."""

        return save_pretrained(self.model, directory)
