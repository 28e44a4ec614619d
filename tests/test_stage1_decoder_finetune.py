"""DecoderFinetune: frozen encoder, decoder + PatchGAN, discriminator start step, two optimisers."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from test_stage1_system import CaptionedShapes, stage1_config

from vtp_gen.models.discriminator import PatchDiscriminator
from vtp_gen.pipeline.stage1.run import build_finetune_data, build_tokenizer
from vtp_gen.systems.decoder_finetune import OPTIMIZER_STEPS_PER_STEP, DecoderFinetune


class Snapshots(L.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.logged: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not self.states:
            self.states.append({n: t.detach().clone() for n, t in module.state_dict().items()})

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.states.append({n: t.detach().clone() for n, t in module.state_dict().items()})
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def run_finetune(steps: int, disc_start: int, overrides=()):
    cfg = stage1_config(
        "vtp",
        overrides=(
            f"decoder_finetune.max_steps={steps}",
            f"decoder_finetune.disc_start_step={disc_start}",
            "decoder_finetune.disc_layers=2",
            "decoder_finetune.disc_channels=8",
            "decoder_finetune.lpips_weight=0",
            "decoder_finetune.batch_size=4",
            *overrides,
        ),
    )
    model = build_tokenizer(cfg)
    ft = cfg.decoder_finetune
    discriminator = PatchDiscriminator(channels=ft.disc_channels, n_layers=ft.disc_layers, norm=ft.disc_norm)
    system = DecoderFinetune(model, discriminator, ft)
    snapshots = Snapshots()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps * OPTIMIZER_STEPS_PER_STEP,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        callbacks=[snapshots],
    )
    trainer.fit(system, datamodule=build_finetune_data(cfg, dataset=CaptionedShapes(16)))
    return system, trainer, snapshots


def differs(a: dict, b: dict, prefix: str) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def test_only_the_decoder_and_discriminator_learn_and_the_discriminator_starts_late():
    system, trainer, snap = run_finetune(steps=4, disc_start=2)
    assert system.finetune_step == 4 and trainer.global_step == 4 * OPTIMIZER_STEPS_PER_STEP
    first = snap.states[0]
    for step, state in enumerate(snap.states[1:]):
        assert not differs(first, state, "model.trunk.")  # the latent space stays fixed
        assert not differs(first, state, "model.text.")
        assert differs(first, state, "model.pixel_decoder.")
        # Before the start step the discriminator's loss is multiplied by 0: it does not move.
        assert differs(first, state, "discriminator.") == (step >= 2), step
        logged = snap.logged[step]
        assert logged["finetune/disc_factor"] == (1.0 if step >= 2 else 0.0)
        if step >= 2:
            assert logged["finetune/adaptive_weight"] > 0
        else:
            assert logged["finetune/adaptive_weight"] == 0
        assert math.isfinite(logged["finetune/loss"])
    assert all(not p.requires_grad for p in system.model.trunk.parameters())


def test_generator_term_does_not_train_the_discriminator():
    cfg = stage1_config(
        "vtp", overrides=("decoder_finetune.lpips_weight=0", "decoder_finetune.disc_start_step=0")
    )
    model = build_tokenizer(cfg)
    discriminator = PatchDiscriminator(channels=8, n_layers=2, norm="group")
    system = DecoderFinetune(model, discriminator, cfg.decoder_finetune)
    images = torch.randn(4, 3, 32, 32)
    reconstruction = model.decode(model.encode_latents(images))
    logits = system.discriminator_logits_for_generator(reconstruction)
    torch.testing.assert_close(logits, discriminator(reconstruction))
    logits.mean().backward()
    assert all(p.grad is None for p in discriminator.parameters())
    assert model.pixel_decoder.proj_out.weight.grad is not None


def test_decoder_finetune_needs_a_decoder():
    cfg = stage1_config(
        "vtp", overrides=("model.overrides.train_reconstruction=false", "objectives.lambda_rec=0")
    )
    with pytest.raises(ValueError, match="pixel decoder"):
        DecoderFinetune(build_tokenizer(cfg), PatchDiscriminator(), cfg.decoder_finetune)
