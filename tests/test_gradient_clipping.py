"""Gradient clipping with a fused AdamW under bf16-mixed (the paper recipes' settings) in all three systems.

Lightning alone refuses the combination ("does not allow for gradient clipping
because it performs unscaling of gradients internally"); vtp_gen.systems.clipping
clips instead. Each test takes real optimiser steps on the CPU (bf16 autocast
runs there) with a clip value small enough to bite, and reads the gradients the
step used: fused AdamW leaves them in place, so their norm after the step is the
clipped norm.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_stage1_system import CaptionedShapes, make_system, stage1_config
from test_stage2_helpers import make_latent_cache

from vtp_gen.latents.dataset import LatentDataset
from vtp_gen.models.discriminator import PatchDiscriminator
from vtp_gen.models.registry import create_model
from vtp_gen.pipeline.stage1.run import build_finetune_data, build_tokenizer
from vtp_gen.systems.clipping import clip_gradients_, sharded_clip_grad_norm_
from vtp_gen.systems.decoder_finetune import OPTIMIZER_STEPS_PER_STEP, DecoderFinetune
from vtp_gen.systems.flow_matching import AdamWSettings, LatentFlowMatching
from vtp_gen.systems.latent_data import LatentDataModule
from vtp_gen.systems.nonfinite import NonFiniteGuard
from vtp_gen.transport import Transport

CLIP = 1e-3  # far below every unclipped gradient norm here


def trainer(steps: int, clip: float | None, precision: str = "bf16-mixed") -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[NonFiniteGuard()],
    )


def grad_norm(parameters) -> float:
    grads = [p.grad.float() for p in parameters if p.grad is not None]
    assert grads, "no gradients left to read"
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


def test_stage1_pretraining_clips_with_a_fused_adamw_under_bf16():
    cfg = stage1_config("vtp", overrides=("optim.fused=true", "trainer.max_steps=2"))
    system, data = make_system(cfg)
    before = {n: p.detach().clone() for n, p in system.model.named_parameters()}
    trainer(2, CLIP).fit(system, datamodule=data)
    optimizer = system.trainer.optimizers[0]
    assert optimizer.defaults["fused"] and system.trainer.precision == "bf16-mixed"
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert grad_norm(params) <= CLIP * 1.001
    moved = [n for n, p in system.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert moved and all(torch.isfinite(p).all() for p in system.parameters())


def test_decoder_finetune_clips_each_network_with_a_fused_adamw_under_bf16():
    cfg = stage1_config(
        "vtp",
        overrides=(
            "decoder_finetune.max_steps=2",
            "decoder_finetune.disc_start_step=0",
            "decoder_finetune.disc_layers=2",
            "decoder_finetune.disc_channels=8",
            "decoder_finetune.lpips_weight=0",
            "decoder_finetune.batch_size=4",
            "decoder_finetune.fused=true",
            f"decoder_finetune.gradient_clip_val={CLIP}",
        ),
    )
    ft = cfg.decoder_finetune
    system = DecoderFinetune(
        build_tokenizer(cfg), PatchDiscriminator(channels=8, n_layers=2, norm=ft.disc_norm), ft
    )
    # Manual optimisation: no Trainer clip value, the system clips itself.
    trainer(2 * OPTIMIZER_STEPS_PER_STEP, None).fit(
        system, datamodule=build_finetune_data(cfg, dataset=CaptionedShapes(16))
    )
    assert system.finetune_step == 2
    for optimizer in system.trainer.optimizers:
        assert optimizer.defaults["fused"]
        assert grad_norm([p for g in optimizer.param_groups for p in g["params"]]) <= CLIP * 1.001


def test_stage2_clips_with_a_fused_adamw_under_bf16(tmp_path):
    latents = LatentDataset(make_latent_cache(tmp_path / "cache", num_items=32), flip_prob=0.5)
    torch.manual_seed(0)
    model = create_model(
        "LightningDiT-T/1", input_size=4, in_channels=16, num_classes=4, depth=1, hidden_size=32
    )
    system = LatentFlowMatching(model, Transport(), AdamWSettings(fused=True), ema_decay=0.9)
    trainer(2, CLIP).fit(system, datamodule=LatentDataModule(latents, 8, 0, 0.5, 0))
    optimizer = system.trainer.optimizers[0]
    assert optimizer.defaults["fused"]
    assert grad_norm(system.model.parameters()) <= CLIP * 1.001
    assert all(torch.isfinite(p).all() for p in system.parameters())


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_unfused_fp32_clipping_is_lightnings_own(algorithm):
    """Without a grad scaler the clip is torch's clip_grad_*_, as Lightning's: runs resume bit-exactly as before."""

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(8, 8)

    torch.manual_seed(0)
    ours, theirs = Tiny(), Tiny()
    theirs.load_state_dict(ours.state_dict())
    for module in (ours, theirs):
        (module.layer(torch.randn(4, 8, generator=torch.Generator().manual_seed(1))) ** 2).sum().backward()
        module.trainer = trainer(1, None, precision="32-true")  # a Trainer for its precision plugin only
    optimizer = torch.optim.AdamW(ours.parameters())
    clip_gradients_(ours, optimizer, 0.05, algorithm)
    if algorithm == "norm":
        torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 0.05)
    else:
        torch.nn.utils.clip_grad_value_(list(theirs.parameters()), 0.05)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_sharded_norm_on_one_rank_is_the_plain_norm():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(3)]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    for x, y in zip(a, b):
        x.grad = torch.randn_like(x)
        y.grad = x.grad.clone()
    b[1].grad = None  # a parameter without a gradient (another rank's shard) is skipped
    a[1].grad = None
    total = sharded_clip_grad_norm_(a, 0.5)
    expected = torch.nn.utils.clip_grad_norm_(b, 0.5)
    torch.testing.assert_close(total, expected)
    for x, y in zip(a, b):
        if x.grad is not None:
            torch.testing.assert_close(x.grad, y.grad)
