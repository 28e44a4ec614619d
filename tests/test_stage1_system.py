"""TokenizerPretraining under a real Lightning Trainer on a small captioned set (CPU, a few steps)."""

from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from torch.utils.data import Dataset

from vtp_gen.config import load_config
from vtp_gen.interop.vtp import load_tokenizer
from vtp_gen.pipeline.stage1.config import Stage1Config
from vtp_gen.pipeline.stage1.run import build_pretraining_data, build_tokenizer
from vtp_gen.systems.tokenizer_pretraining import TokenizerPretraining

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("ae_only", "clip_ae", "ssl_ae", "vtp")
# Small enough for a few seconds per run on two shared cores.
FAST = [
    "data.batch_size=8",
    "objectives.ssl_fraction=0.5",
    "objectives.rec_fraction=0.5",
    "objectives.lpips_weight=0",
    "ssl.prototypes=64",
    "ssl.head_hidden_dim=32",
    "ssl.head_bottleneck_dim=16",
    "ssl.n_local_crops=2",
    "ssl.teacher_temp_warmup_steps=4",
    "optim.warmup_steps=2",
    "trainer.max_steps=3",
    "model.overrides.vision_depth=2",
    "model.overrides.decoder_depth=1",
    "model.overrides.text_depth=1",
]


class CaptionedShapes(Dataset):
    """Grey squares of three sizes, captioned by size: real structure for CLIP, SSL and reconstruction."""

    names = ("small", "medium", "large")

    def __init__(self, count: int = 48) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng(index)
        label = index % 3
        pixels = rng.integers(0, 40, size=(28, 28), dtype=np.uint8)
        side = 6 + 6 * label
        top, left = rng.integers(0, 28 - side, size=2)
        pixels[top : top + side, left : left + side] = 220
        image = Image.fromarray(pixels).convert("RGB")
        return {"image": image, "label": label, "caption": f"a photo of a {self.names[label]} square"}


def stage1_config(*presets: str, overrides: tuple[str, ...] = ()):
    recipes = [REPO / "configs/stage1/tiny.yaml", *(REPO / f"configs/stage1/{p}.yaml" for p in presets)]
    return load_config(Stage1Config, recipes, [*FAST, *overrides])


def make_system(cfg) -> tuple[TokenizerPretraining, L.LightningDataModule]:
    model = build_tokenizer(cfg)
    system = TokenizerPretraining(
        model, cfg.objectives, cfg.ssl, cfg.optim, cfg.trainer.max_steps, cfg.run.seed
    )
    return system, build_pretraining_data(cfg, model, dataset=CaptionedShapes())


def fit(system, datamodule, steps: int, callbacks=(), clip: float = 3.0) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        gradient_clip_val=clip,
        log_every_n_steps=1,
        callbacks=list(callbacks),
    )
    trainer.fit(system, datamodule=datamodule)
    return trainer


class Recorder(L.Callback):
    """Batches seen and parameter snapshots around every step."""

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []
        self.lr: list[dict[str, float]] = []

    @staticmethod
    def snapshot(module) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in module.state_dict().items()}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batches.append({k: v for k, v in batch.items() if isinstance(v, torch.Tensor)})
        self.before.append(self.snapshot(module))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after.append(self.snapshot(module))
        self.lr.append({g["name"]: (g["lr"], g["weight_decay"]) for g in trainer.optimizers[0].param_groups})


def changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix))


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_trains_a_few_steps(preset):
    cfg = stage1_config(preset)
    system, datamodule = make_system(cfg)
    recorder = Recorder()
    trainer = fit(system, datamodule, steps=3, callbacks=[recorder])
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["train/loss"]))
    clip, ssl = cfg.objectives.lambda_clip > 0, cfg.objectives.lambda_ssl > 0
    assert ("train/clip_loss" in metrics) == clip
    assert ("train/ssl_loss" in metrics) == ssl and ("train/teacher_momentum" in metrics) == ssl
    assert "train/rec_loss" in metrics  # every paper setting keeps the reconstruction term
    first, last = recorder.before[0], recorder.after[-1]
    assert changed(first, last, "model.trunk.blocks")
    assert changed(first, last, "model.pixel_decoder")
    assert changed(first, last, "model.text.") == clip
    assert changed(first, last, "dino_head.") == ssl
    assert changed(first, last, "teacher.") == ssl
    # The weighted sum is what was optimised.
    expected = sum(
        float(getattr(cfg.objectives, f"lambda_{name}")) * float(metrics[f"train/{name}_loss"])
        for name in ("clip", "ssl", "rec")
        if f"train/{name}_loss" in metrics
    )
    assert float(metrics["train/loss"]) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "preset, model_override, silent_module",
    [
        # The text tower exists (forced) but CLIP is off: it must never run nor learn.
        ("ae_only", "model.overrides.train_clip=true", "text"),
        ("ssl_ae", "model.overrides.train_clip=true", "text"),
        # No SSL: no DINO head, no teacher, no crops.
        ("clip_ae", None, None),
        # No reconstruction: the decoder exists (forced) but never runs.
        ("vtp", "model.overrides.train_reconstruction=true", "pixel_decoder"),
    ],
)
def test_a_zero_weight_costs_nothing(preset, model_override, silent_module):
    overrides = (model_override,) if model_override else ()
    if silent_module == "pixel_decoder":
        overrides += ("objectives.lambda_rec=0",)
    cfg = stage1_config(preset, overrides=overrides)
    system, datamodule = make_system(cfg)
    calls = []
    if silent_module:
        getattr(system.model, silent_module).register_forward_hook(lambda *_: calls.append(1))
    recorder = Recorder()
    fit(system, datamodule, steps=2, callbacks=[recorder])
    assert calls == []
    batch = recorder.batches[0]
    if cfg.objectives.lambda_ssl == 0:
        assert system.dino_head is None and system.teacher is None
        assert "global_crops" not in batch and "masks" not in batch
    if cfg.objectives.lambda_clip == 0:
        assert "text_tokens" not in batch
    if cfg.objectives.lambda_rec == 0:
        assert "rec_indices" not in batch
    if silent_module:
        module = getattr(system.model, silent_module)
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
        assert not changed(recorder.before[0], recorder.after[-1], f"model.{silent_module}.")
        optimised = {id(p) for g in system.trainer.optimizers[0].param_groups for p in g["params"]}
        assert not any(id(p) in optimised for p in module.parameters())


def test_one_student_forward_per_crop_size_equals_a_forward_per_objective():
    # CLIP + SSL + AE with no stochastic depth (tiny.yaml): the CLIP images and the SSL global
    # crops share one trunk forward, and reconstruction reuses the CLIP rows of its images.
    cfg = stage1_config("vtp")
    system, datamodule = make_system(cfg)
    batch = datamodule.collate([CaptionedShapes()[i] for i in range(cfg.data.batch_size)])
    reference = copy.deepcopy(system)  # the loss centres are state: each side starts from the same
    step = 1

    calls = []
    trunk = system.model.trunk
    forward_tokens = trunk.forward_tokens
    trunk.forward_tokens = lambda images, *args, **kwargs: (
        calls.append(tuple(images.shape[::2])) or forward_tokens(images, *args, **kwargs)
    )
    merged = system.compute_losses(batch, step)
    merged["loss"].backward()

    # The reference: every objective's inputs through the trunk on their own.
    own = reference.model.trunk.encode_features
    separate_features = {
        "clip": own(batch["image"]),
        "ssl_global": own(batch["global_crops"], masks=batch["masks"]),
        "ssl_local": own(batch["local_crops"]),
        "rec": own(batch["image"][batch["rec_indices"]]),
    }
    reference.student_features = lambda _batch: separate_features
    separate = reference.compute_losses(batch, step)
    separate["loss"].backward()

    batch_size, global_crops = cfg.data.batch_size, batch["global_crops"].shape[0]
    assert calls == [(batch_size + global_crops, 32), (batch["local_crops"].shape[0], 16)]
    for name in ("clip_loss", "dino_loss", "ibot_loss", "koleo_loss", "rec_loss", "loss"):
        torch.testing.assert_close(
            merged[name], separate[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )
    reference_params = dict(reference.named_parameters())
    compared = 0
    for name, parameter in system.named_parameters():
        if parameter.grad is None:
            assert reference_params[name].grad is None, name
            continue
        expected = reference_params[name].grad
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            parameter.grad, expected, rtol=1e-4, atol=1e-5 * scale + 1e-12, msg=lambda m, n=name: f"{n}: {m}"
        )
        compared += 1
    assert compared > 20


def test_teacher_is_the_scheduled_ema_of_the_student_and_schedules_are_applied():
    cfg = stage1_config("vtp", overrides=("ssl.momentum_start=0.9", "ssl.freeze_last_layer_steps=2"))
    system, datamodule = make_system(cfg)
    recorder = Recorder()
    fit(system, datamodule, steps=3, callbacks=[recorder])
    for step in range(3):
        before, after = recorder.before[step], recorder.after[step]
        momentum = system.teacher_momentum(step)
        for name in ("blocks.0.attn.qkv.weight", "cls_token"):
            expected = (
                momentum * before[f"teacher.trunk.{name}"] + (1 - momentum) * after[f"model.trunk.{name}"]
            )
            torch.testing.assert_close(after[f"teacher.trunk.{name}"], expected, rtol=1e-6, atol=1e-7)
        name = "head.mlp.0.weight"
        expected = momentum * before[f"teacher.{name}"] + (1 - momentum) * after[f"dino_{name}"]
        torch.testing.assert_close(after[f"teacher.{name}"], expected, rtol=1e-6, atol=1e-7)
        # lr and weight decay of this step, decay only where it belongs.
        lr, wd = system.learning_rate(step), system.weight_decay(step)
        assert recorder.lr[step]["decay"] == pytest.approx((lr, wd))
        assert recorder.lr[step]["no_decay"] == pytest.approx((lr, 0.0))
        # The prototypes stay fixed for the first freeze_last_layer_steps steps, then learn.
        weight = "dino_head.last_layer.parametrizations.weight.original1"
        assert torch.equal(before[weight], after[weight]) == (step < 2)
    assert system.teacher_momentum(0) == pytest.approx(0.9)
    assert system.teacher_temperature(0) == pytest.approx(cfg.ssl.teacher_temp_start)


def test_logit_scale_is_clamped_and_every_term_is_logged():
    cfg = stage1_config("vtp")
    system, datamodule = make_system(cfg)
    with torch.no_grad():
        system.model.logit_scale.fill_(6.0)  # above ln(100)
    trainer = fit(system, datamodule, steps=2)
    assert float(system.model.logit_scale) <= math.log(100) + 1e-6
    logged = set(trainer.callback_metrics)
    for key in (
        "loss",
        "clip_loss",
        "ssl_loss",
        "dino_loss",
        "ibot_loss",
        "koleo_loss",
        "rec_loss",
        "rec_l1",
        "logit_scale",
        "teacher_temp",
        "teacher_momentum",
        "lr",
        "weight_decay",
    ):
        assert f"train/{key}" in logged, key


def test_export_holds_the_tokenizer_only(tmp_path):
    cfg = stage1_config("vtp")
    system, datamodule = make_system(cfg)
    fit(system, datamodule, steps=1)
    folder = system.export_tokenizer(tmp_path / "tok")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert not any("dino" in n or "teacher" in n or "head." in n for n in names)
    loaded = load_tokenizer(folder)
    images = torch.randn(2, 3, 32, 32)
    system.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_latents(images), system.model.encode_latents(images))
        torch.testing.assert_close(loaded.encode_image(images), system.model.encode_image(images))


@pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on the CPU needs a C++ compiler"
)
def test_regional_compile_matches_the_eager_step():
    """trainer.compile: every encoder/teacher/decoder/text block compiled in place, same losses and grads."""
    from vtp_gen.pipeline.stage1.run import tokenizer_block_types
    from vtp_gen.utils.compile import compile_blocks

    cfg = stage1_config("vtp")
    eager, datamodule = make_system(cfg)
    batch = datamodule.collate([CaptionedShapes()[i] for i in range(cfg.data.batch_size)])
    compiled = copy.deepcopy(eager)
    names = list(compiled.state_dict())
    # 2 trunk + 2 teacher + 1 decoder + 1 text block (FAST depths).
    assert compile_blocks(compiled, tokenizer_block_types()) == 6
    assert list(compiled.state_dict()) == names  # checkpoints and exports keep their names

    results = []
    for system in (eager, compiled):
        losses = system.compute_losses(batch, step=1)
        losses["loss"].backward()
        results.append((losses, dict(system.named_parameters())))
    (eager_losses, eager_params), (compiled_losses, compiled_params) = results
    assert compiled.model.trunk.blocks[0]._compiled_call_impl is not None
    for name in ("clip_loss", "dino_loss", "ibot_loss", "rec_loss", "loss"):
        torch.testing.assert_close(compiled_losses[name], eager_losses[name], rtol=1e-4, atol=1e-5)
    for name, parameter in eager_params.items():
        if parameter.grad is not None:
            scale = parameter.grad.abs().max().item()
            torch.testing.assert_close(
                compiled_params[name].grad, parameter.grad, rtol=1e-3, atol=1e-4 * scale + 1e-10, msg=name
            )
