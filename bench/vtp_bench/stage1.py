"""Stage-1 workloads: the pre-training step (per objective and all together), the decoder
fine-tune step, the stage-1 collate, and each tower against timm's ViT of the same size.

Steps are the training systems' own code (``TokenizerPretraining.compute_losses``,
``DecoderFinetune.compute_losses``) plus what the Lightning loop adds around
them: backward, gradient clipping, the optimiser step, the logit-scale clamp and
the EMA teacher update. Lightning itself (logging, callbacks) is left out: it
is the same for every model and is not what these numbers are about.

Batches are made once by the real stage-1 collate (centre crops, multi-crop
views, iBOT masks, BPE captions) from synthetic images, so the step sees
exactly the tensors training sees without depending on a dataset being
installed; the collate's own cost is a separate workload.

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

from vtp_bench.replay import SameCallsReplay, record_forwards
from vtp_bench.suite import Group, Settings, Workload, count_parameters, prepare
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
OBJECTIVES = {
    "clip": ("objectives.lambda_ssl=0", "objectives.lambda_rec=0"),
    "ssl": ("objectives.lambda_clip=0", "objectives.lambda_rec=0"),
    "rec": ("objectives.lambda_clip=0", "objectives.lambda_ssl=0"),
    "all": (),
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


class WithFusedAttentionOnly:
    """Runs ``step`` with the short-sequence attention path switched off (SDPA for every length)."""

    def __init__(self, step: PretrainingStep) -> None:
        self.step = step

    def __call__(self) -> None:
        from vtp_gen.models import attention

        saved = attention.EXPLICIT_MAX_TOKENS
        attention.EXPLICIT_MAX_TOKENS = 0
        try:
            self.step()
        finally:
            attention.EXPLICIT_MAX_TOKENS = saved


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


def stage1_step_group(
    setting: str,
    objectives: tuple[str, ...] = tuple(OBJECTIVES),
    with_collate: bool = True,
    fused_adamw_variant: bool = True,
    same_calls_baseline: bool = True,
) -> Group:
    """Pre-training steps per objective, the collate, and timm's ViT of the trunk's size (fwd+bwd).

    ``same_calls_baseline`` adds timm blocks replaying the all-objectives step's own transformer
    calls (:mod:`vtp_bench.replay`) and that step timed again beside them.

    ``fused_adamw_variant`` adds the all-objectives step with ``optim.fused=true``, compared with the
    configured step (profiling showed torch's default per-parameter AdamW loop at ~8% of the small-B
    step on the CPU).
    """

    def build(settings: Settings) -> list[Workload]:
        device = settings.device
        perceptual, lpips_note = perceptual_network(device)
        batch_size = settings.sized(None, 8)
        workloads = []
        trunk_params = None
        baseline_name = f"stage1/{setting}/timm_vit_fwd_bwd"
        for objective in objectives:
            cfg = load_stage1_config(setting, OBJECTIVES[objective], batch_size)
            step = PretrainingStep(cfg, settings, perceptual)
            if objective == "all" and same_calls_baseline:
                # Before any compile: the hooks must see the eager blocks.
                replayed = record_forwards(step)
            flops = prepare(step, settings)
            trunk = step.system.model.trunk
            trunk_params = count_parameters(trunk)
            notes = f"B={step.batch_size}"
            if step.system.rec_on:
                notes += f", rec via {lpips_note}"
            workloads.append(
                Workload(
                    name=f"stage1/{setting}/step_{objective}",
                    step=step,
                    items=step.batch_size,
                    baseline=baseline_name,
                    compare="flop_rate",
                    tracked=(step.system, step.optimizer),
                    flops=flops,
                    params=step.trainable_parameters(),
                    notes=notes,
                )
            )
        if "all" in objectives and fused_adamw_variant:
            recipe_fuses = load_stage1_config(setting, batch_size=batch_size).optim.fused
            cfg = load_stage1_config(setting, ("optim.fused=true",), batch_size)
            if not (recipe_fuses or settings.quick):  # otherwise nothing to compare / a smoke test
                fused = PretrainingStep(cfg, settings, perceptual)
                workloads.append(
                    Workload(
                        name=f"stage1/{setting}/step_all_fused_adamw",
                        step=fused,
                        items=fused.batch_size,
                        baseline=f"stage1/{setting}/step_all",
                        compare="throughput",
                        tracked=(fused.system, fused.optimizer),
                        flops=prepare(fused, settings),
                        params=fused.trainable_parameters(),
                        notes="step_all with optim.fused=true (one fused AdamW kernel)",
                    )
                )
        if "all" in objectives and same_calls_baseline:
            all_workload = next(w for w in workloads if w.name == f"stage1/{setting}/step_all")
            replay = SameCallsReplay(replayed, device, settings)
            replay_name = f"stage1/{setting}/timm_same_calls"
            workloads += [
                Workload(
                    name=replay_name,
                    step=replay,
                    items=all_workload.items,
                    flops=prepare(replay, settings),
                    tracked=(replay.towers,),
                    params=count_parameters(replay.towers),
                    notes=f"timm Blocks on step_all's own block calls (batch x tokens): {replay.describe()}",
                ),
                Workload(
                    name=f"stage1/{setting}/step_all_vs_same_calls",
                    step=all_workload.step,
                    items=all_workload.items,
                    baseline=replay_name,
                    compare="flop_rate",
                    tracked=all_workload.tracked,
                    flops=all_workload.flops,
                    params=all_workload.params,
                    notes="step_all timed again beside timm_same_calls: the gap that is not the shapes",
                ),
            ]
        if "all" in objectives and not settings.on_gpu:
            # The same step with every attention on SDPA's fused kernel: what the short-sequence
            # CPU path of vtp_gen.models.attention gains inside the whole step.
            all_step = next(w.step for w in workloads if w.name == f"stage1/{setting}/step_all")
            workloads.append(
                Workload(
                    name=f"stage1/{setting}/step_all_sdpa_only",
                    step=WithFusedAttentionOnly(all_step),
                    items=all_step.batch_size,
                    baseline=f"stage1/{setting}/step_all",
                    compare="throughput",
                    tracked=(all_step.system, all_step.optimizer),
                    params=all_step.trainable_parameters(),
                    notes="step_all with EXPLICIT_MAX_TOKENS=0 (torch's SDPA for every sequence)",
                )
            )
        if "all" in objectives and with_collate:
            cfg = load_stage1_config(setting, batch_size=batch_size)
            from vtp_gen.pipeline.stage1.run import build_pretraining_data, build_tokenizer

            with torch.device("meta"):
                meta_model = build_tokenizer(cfg)
            collate = build_pretraining_data(cfg, meta_model).collate
            samples = synthetic_samples(cfg.data.batch_size, cfg.data.image_size, seed=1)
            workloads.append(
                Workload(
                    name=f"stage1/{setting}/collate",
                    step=lambda: collate(samples),
                    items=cfg.data.batch_size,
                    baseline=f"stage1/{setting}/step_all",
                    compare="throughput",
                    flops=0,
                    notes="multi-crop + masks + BPE in the main process; ratio = how much faster than the step",
                )
            )
        cfg = load_stage1_config(setting, batch_size=batch_size)
        vit = timm_vit_like(step.system.model.trunk, cfg.data.image_size).to(device)
        images = _images(cfg.data.batch_size, cfg.data.image_size, device)
        vit_step = ForwardBackward(vit, lambda: vit.forward_features(images), settings)
        workloads.append(
            Workload(
                name=baseline_name,
                step=vit_step,
                items=cfg.data.batch_size,
                flops=prepare(vit_step, settings),
                tracked=(vit,),
                params=count_parameters(vit),
                notes=f"timm VisionTransformer, trunk has {trunk_params / 1e6:.1f}M params",
            )
        )
        return workloads

    return Group(
        name=f"stage1/{setting}",
        description=f"pre-training step ({STAGE1_SETTINGS[setting].description}) vs timm ViT fwd+bwd",
        build=build,
        tags=("stage1", setting),
    )


# ---------------------------------------------------------------------- towers vs timm
def towers_group(setting: str) -> Group:
    """Encoder, pixel decoder and text tower forward+backward, each beside timm's equivalent of the same size."""

    def build(settings: Settings) -> list[Workload]:
        from timm.models.vision_transformer import Block, VisionTransformer

        from vtp_gen.pipeline.stage1.run import build_tokenizer

        device = settings.device
        cfg = load_stage1_config(setting, batch_size=settings.sized(None, 4))
        model = build_tokenizer(cfg).to(device)
        batch, size = cfg.data.batch_size, cfg.data.image_size
        images = _images(batch, size, device)
        trunk, decoder, text = model.trunk, model.pixel_decoder, model.text
        grid = size // trunk.patch_size
        latents = torch.randn(batch, trunk.latent_channels, grid, grid, device=device)
        context = text.context_length
        tokens = torch.randint(1, 49000, (batch, context), device=device)
        tokens[:, -1] = 49407  # EOT last: the pooled position

        timm_encoder = timm_vit_like(trunk, size).to(device)
        timm_decoder = VisionTransformer(
            img_size=grid,
            patch_size=1,
            in_chans=trunk.latent_channels,
            embed_dim=decoder.embed_dim,
            depth=len(decoder.blocks),
            num_heads=decoder.blocks[0].attn.num_heads,
            class_token=False,
            global_pool="avg",
            num_classes=0,
        ).to(device)
        width = text.width
        mlp_ratio = text.transformer.resblocks[0].mlp.c_fc.out_features / width
        # The token embedding is part of both sides (its dense gradient is a real cost of the tower).
        timm_text = nn.Sequential(
            nn.Embedding(text.vocab_size, width),
            *[Block(width, text.heads, mlp_ratio=mlp_ratio) for _ in range(len(text.transformer.resblocks))],
        ).to(device)

        def pair(
            name: str, ours: nn.Module, ours_fn, theirs: nn.Module, theirs_fn, note: str
        ) -> list[Workload]:
            base = f"towers/{setting}/timm_{name}"
            ours_step = ForwardBackward(ours, ours_fn, settings)
            theirs_step = ForwardBackward(theirs, theirs_fn, settings)
            ours_flops, theirs_flops = prepare(ours_step, settings), prepare(theirs_step, settings)
            return [
                Workload(
                    name=f"towers/{setting}/{name}",
                    step=ours_step,
                    flops=ours_flops,
                    items=batch,
                    baseline=base,
                    compare="throughput",
                    tracked=(ours,),
                    params=count_parameters(ours),
                ),
                Workload(
                    name=base,
                    step=theirs_step,
                    flops=theirs_flops,
                    items=batch,
                    tracked=(theirs,),
                    params=count_parameters(theirs),
                    notes=note,
                ),
            ]

        return [
            *pair(
                "encoder",
                trunk,
                lambda: trunk.encode_features(images).patch_tokens,
                timm_encoder,
                lambda: timm_encoder.forward_features(images),
                "timm VisionTransformer, same width/depth/heads/patch",
            ),
            *pair(
                "decoder",
                decoder,
                lambda: decoder(latents),
                timm_decoder,
                lambda: timm_decoder.forward_features(latents),
                "timm VisionTransformer on the latent grid (patch 1), same width/depth/heads",
            ),
            *pair(
                "text",
                text,
                lambda: text.encode(tokens),
                timm_text,
                lambda: timm_text(tokens),
                "token embedding + timm Blocks, same width/depth/heads/MLP (no causal mask)",
            ),
        ]

    return Group(
        name=f"towers/{setting}",
        description=f"VTP towers fwd+bwd vs timm equivalents ({STAGE1_SETTINGS[setting].description})",
        build=build,
        tags=("towers", setting),
    )


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
        perceptual, lpips_note = perceptual_network(settings.device)
        quick = ("decoder_finetune.batch_size=4",) if settings.quick else ()
        cfg = load_stage1_config(setting, quick)
        step = DecoderFinetuneStep(cfg, settings, perceptual)
        decoder_params = count_parameters(step.system.model.pixel_decoder)
        return [
            Workload(
                name=f"decoder_finetune/{setting}/step",
                step=step,
                items=step.batch_size,
                tracked=(step.system, *step.optimizers),
                params=decoder_params + count_parameters(step.system.discriminator),
                notes=f"B={step.batch_size}, frozen encoder, decoder + PatchGAN, {lpips_note}",
            )
        ]

    return Group(
        name=f"decoder_finetune/{setting}",
        description=f"decoder GAN fine-tune step ({STAGE1_SETTINGS[setting].description})",
        build=build,
        tags=("stage1", setting),
    )
