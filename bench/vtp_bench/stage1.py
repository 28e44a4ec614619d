"""Stage-1 workloads: the pre-training step beside timm's ViT of the trunk's size, and the decoder
fine-tune step.

Steps are the training systems' own code (``TokenizerPretraining.compute_losses``,
``DecoderFinetune.compute_losses``) plus what the Lightning loop adds around
them: backward, gradient clipping, the optimiser step, the logit-scale clamp and
the EMA teacher update. Lightning itself (logging, callbacks) is left out: it
is the same for every model and is not what these numbers are about.

Batches are made once by the real stage-1 collate (centre crops, multi-crop
views, iBOT masks, BPE captions) from synthetic images, so the step sees
exactly the tensors training sees without depending on a dataset being
installed (the collate itself is not timed).

Settings (tiny and small-B run on the CPU; B and L are the GPU sizes):

- ``tiny``: ``configs/stage1/tiny.yaml`` as it is (vtp-tiny, 32 px, its batch size).
- ``small-B``: the tiny recipe with VTP-B blocks (width 768, 12 heads, SwiGLU)
  at depth 4 for the encoder, decoder and text tower, 128 px (8x8 latents),
  B = 16, 8192 prototypes and the paper's L1 + LPIPS: the real layer shapes of
  VTP-B at a size 2 CPU cores step in seconds.
- ``B`` / ``L``: VTP-B / VTP-L as released, 256 px, the recipe's defaults
  (65536 prototypes, 2 global 256 px + 8 local 112 px crops per SSL image).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vtp_bench.suite import Group, Settings, Workload, prepare
from vtp_gen.utils.compile import compile_blocks

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO_ROOT / "configs" / "stage1" / "tiny.yaml"

# Dotlist overrides on top of a recipe; ``recipe=None`` starts from the schema defaults (the paper recipe).
SMALL_B = [
    "model.preset=vtp-b",
    "+model.overrides.vision_depth=4",
    "+model.overrides.decoder_depth=4",
    "+model.overrides.text_depth=4",
    "+model.overrides.text_context_length=32",
    # The released models rotate in bf16; on a CPU without bf16 units that costs time for nothing.
    "+model.overrides.rope_dtype=float32",
    "data.image_size=128",
    "data.batch_size=16",
    # The paper's reconstruction loss, L1 + LPIPS 1:1 (tiny.yaml drops LPIPS at 32 px for time).
    "objectives.lpips_weight=1.0",
    "ssl.global_crop_size=128",
    "ssl.local_crop_size=64",
    "ssl.n_local_crops=4",
    "ssl.prototypes=8192",
    "ssl.head_hidden_dim=2048",
    "ssl.head_bottleneck_dim=256",
    "decoder_finetune.disc_layers=3",
    "decoder_finetune.disc_channels=64",
]
PAPER_SIZE = [
    "data.image_size=256",
    "optim.fused=true",  # fused AdamW: one kernel per parameter group on the GPU
    "objectives.ssl_fraction=0.25",
    "objectives.rec_fraction=0.125",
    "decoder_finetune.disc_start_step=0",
]


@dataclass(frozen=True)
class Stage1Setting:
    name: str
    recipe: Path | None
    overrides: tuple[str, ...]
    description: str


STAGE1_SETTINGS = {
    "tiny": Stage1Setting("tiny", TINY_RECIPE, (), "configs/stage1/tiny.yaml as it is: vtp-tiny, 32 px"),
    "small-B": Stage1Setting(
        "small-B", TINY_RECIPE, tuple(SMALL_B), "VTP-B blocks, depth 4/4/4, 128 px, B=16, L1+LPIPS"
    ),
    "B": Stage1Setting(
        "B", None, ("model.preset=vtp-b", "data.batch_size=128", *PAPER_SIZE), "VTP-B, 256 px, B=128"
    ),
    "L": Stage1Setting(
        "L", None, ("model.preset=vtp-l", "data.batch_size=64", *PAPER_SIZE), "VTP-L, 256 px, B=64"
    ),
}
CLASS_NAMES = ("shirt", "sneaker", "bag", "dress", "coat", "sandal", "trouser", "pullover")


def load_stage1_config(setting: str, extra: tuple[str, ...] = (), batch_size: int | None = None):
    from vtp_gen.config import load_config
    from vtp_gen.pipeline.stage1.config import Stage1Config

    chosen = STAGE1_SETTINGS[setting]
    overrides = [*chosen.overrides, *extra]
    if batch_size is not None:
        overrides.append(f"data.batch_size={batch_size}")
    recipes = [chosen.recipe] if chosen.recipe is not None else None
    return load_config(Stage1Config, recipes, _plain_overrides(overrides))


def _plain_overrides(overrides: list[str]) -> list[str]:
    """``+model.overrides.key=value`` entries go into the free-form ``model.overrides`` dict."""
    plain, free_form = [], []
    for item in overrides:
        (free_form if item.startswith("+model.overrides.") else plain).append(item)
    if free_form:
        pairs = ", ".join(item.removeprefix("+model.overrides.").replace("=", ": ", 1) for item in free_form)
        plain.append(f"model.overrides={{{pairs}}}")
    return plain


def synthetic_samples(count: int, image_size: int, seed: int = 0) -> list[dict]:
    """Dataset-style samples (PIL RGB image, caption, label): smooth random images, label captions."""
    rng = np.random.default_rng(seed)
    samples = []
    for index in range(count):
        # Low-frequency noise upsampled: closer to photographs than white noise, and cheap to make.
        coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((image_size, image_size), Image.BICUBIC)
        label = index % len(CLASS_NAMES)
        samples.append({"image": image, "caption": f"a photo of a {CLASS_NAMES[label]}.", "label": label})
    return samples


def perceptual_network(device: torch.device) -> tuple[nn.Module, str]:
    """LPIPS-VGG with the real weights when they are installed, else the same network randomly initialised.

    The cost is the same either way; the note says which one ran.
    """
    from vtp_gen.pretrained.cache import WeightsNotFoundError
    from vtp_gen.pretrained.lpips import build_lpips_vgg

    try:
        return build_lpips_vgg(device=device), "LPIPS-VGG16"
    except WeightsNotFoundError:
        import lpips

        net = lpips.LPIPS(net="vgg", pretrained=False, pnet_rand=True, use_dropout=False, verbose=False)
        return net.to(device).eval().requires_grad_(False), "LPIPS-VGG16 (random weights: none installed)"


def to_device(batch: dict, device: torch.device) -> dict:
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
    }


# ---------------------------------------------------------------------- pre-training step
class PretrainingStep:
    """One optimiser step of ``TokenizerPretraining`` on a fixed batch, as the training loop runs it."""

    def __init__(self, cfg, settings: Settings, perceptual: nn.Module, batch: dict | None = None) -> None:
        from vtp_gen.pipeline.stage1.run import build_pretraining_data, build_tokenizer
        from vtp_gen.systems.tokenizer_pretraining import TokenizerPretraining

        self.settings = settings
        model = build_tokenizer(cfg)
        self.system = TokenizerPretraining(
            model,
            cfg.objectives,
            cfg.ssl,
            cfg.optim,
            total_steps=cfg.trainer.max_steps,
            seed=cfg.run.seed,
            perceptual=perceptual if cfg.objectives.lambda_rec > 0 else None,
        ).to(settings.device)
        self.optimizer = self.system.configure_optimizers()
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.clip_value = cfg.trainer.gradient_clip_val
        if batch is None:
            collate = build_pretraining_data(cfg, model).collate
            batch = collate(synthetic_samples(cfg.data.batch_size, cfg.data.image_size))
        self.batch = to_device(batch, settings.device)
        # Past the warm-ups, where the schedules are at their working values.
        self.step_index = cfg.trainer.max_steps // 2
        self.batch_size = int(self.batch["image"].shape[0])

    def __call__(self) -> None:
        system = self.system
        self.optimizer.zero_grad(set_to_none=True)
        with self.settings.autocast():
            losses = system.compute_losses(self.batch, self.step_index)
        losses["loss"].backward()
        if self.clip_value:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.clip_value)
        self.optimizer.step()
        if system.clip_on:
            from vtp_gen.losses import clamp_logit_scale_

            clamp_logit_scale_(system.model.logit_scale)
        if system.ssl_on:
            system.update_teacher(system.teacher_momentum(self.step_index))

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters)

    def compile(self) -> int:
        """Regional ``torch.compile`` of every transformer block (encoder, teacher, decoder, text tower)."""
        return compile_blocks(self.system, transformer_block_types())


def transformer_block_types() -> tuple[type, ...]:
    """Ours (the training recipe's regional compile) plus timm's, for the baselines."""
    from timm.models.vision_transformer import Block

    from vtp_gen.pipeline.stage1.run import tokenizer_block_types

    return (*tokenizer_block_types(), Block)


def timm_vit_like(trunk: nn.Module, image_size: int) -> nn.Module:
    """timm's VisionTransformer with the trunk's width, depth, heads and patch: same size, plain blocks."""
    from timm.models.vision_transformer import VisionTransformer

    heads = trunk.blocks[0].attn.num_heads
    return VisionTransformer(
        img_size=image_size,
        patch_size=trunk.patch_size,
        embed_dim=trunk.embed_dim,
        depth=len(trunk.blocks),
        num_heads=heads,
        mlp_ratio=4.0,
        num_classes=0,
        global_pool="token",
    )


class ForwardBackward:
    """Forward + backward of ``forward()``'s output (mean as the loss); gradients reset each call."""

    def __init__(self, module: nn.Module, forward, settings: Settings) -> None:
        self.module = module
        self.forward = forward
        self.settings = settings

    def __call__(self) -> None:
        self.module.zero_grad(set_to_none=True)
        with self.settings.autocast():
            out = self.forward()
        out.float().mean().backward()

    def compile(self) -> int:
        return compile_blocks(self.module, transformer_block_types())


def _images(batch_size: int, image_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)


def stage1_step_group(setting: str) -> Group:
    """The pre-training step with all objectives beside timm's ViT of the trunk's size (fwd+bwd), by FLOP rate."""

    def build(settings: Settings) -> list[Workload]:
        device = settings.device
        perceptual, _ = perceptual_network(device)
        cfg = load_stage1_config(setting, batch_size=settings.sized(None, 8))
        step = PretrainingStep(cfg, settings, perceptual)
        vit = timm_vit_like(step.system.model.trunk, cfg.data.image_size).to(device)
        images = _images(cfg.data.batch_size, cfg.data.image_size, device)
        vit_step = ForwardBackward(vit, lambda: vit.forward_features(images), settings)
        return [
            Workload(
                "step",
                step,
                step.batch_size,
                baseline="timm_vit",
                compare="flop_rate",
                tracked=(step.system, step.optimizer),
                flops=prepare(step, settings),
            ),
            Workload(
                "timm_vit",
                vit_step,
                cfg.data.batch_size,
                tracked=(vit,),
                flops=prepare(vit_step, settings),
            ),
        ]

    description = f"pre-training step ({STAGE1_SETTINGS[setting].description}) vs timm ViT fwd+bwd"
    return Group("stage1", setting, description, build)


# ---------------------------------------------------------------------- decoder fine-tune
class DecoderFinetuneStep:
    """One step of ``DecoderFinetune`` past the discriminator start: both optimisers, one backward."""

    def __init__(self, cfg, settings: Settings, perceptual: nn.Module) -> None:
        from vtp_gen.models.discriminator import PatchDiscriminator
        from vtp_gen.pipeline.stage1.run import build_tokenizer
        from vtp_gen.systems.decoder_finetune import DecoderFinetune

        ft = cfg.decoder_finetune
        self.settings = settings
        model = build_tokenizer(cfg)
        discriminator = PatchDiscriminator(
            channels=ft.disc_channels, n_layers=ft.disc_layers, norm=ft.disc_norm
        )
        self.system = DecoderFinetune(model, discriminator, ft, perceptual=perceptual).to(settings.device)
        self.system.model.trunk.eval()
        self.optimizers = self.system.configure_optimizers()
        self.clip_value = ft.gradient_clip_val
        batch_size = ft.batch_size or cfg.data.batch_size
        self.images = _images(batch_size, cfg.data.image_size, settings.device)
        self.step_index = ft.disc_start_step + 1  # the adversarial term (and its extra backward) is on
        self.batch_size = batch_size

    def __call__(self) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=True)
        with self.settings.autocast():
            losses = self.system.compute_losses(self.images, self.step_index)
        losses["loss"].backward()
        for optimizer in self.optimizers:
            if self.clip_value:
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.clip_value)
            optimizer.step()


def decoder_finetune_group(setting: str) -> Group:
    def build(settings: Settings) -> list[Workload]:
        perceptual, _ = perceptual_network(settings.device)
        quick = ("decoder_finetune.batch_size=4",) if settings.quick else ()
        step = DecoderFinetuneStep(load_stage1_config(setting, quick), settings, perceptual)
        return [Workload("step", step, step.batch_size, tracked=(step.system, *step.optimizers))]

    description = f"decoder GAN fine-tune step ({STAGE1_SETTINGS[setting].description})"
    return Group("decoder_finetune", setting, description, build)
