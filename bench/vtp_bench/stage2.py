"""Stage-2 workloads: the generator training step beside diffusers' DiT of the same size, and sampling.

The step is ``LatentFlowMatching``'s: ``Transport.training_losses`` (logit-normal
times, velocity MSE + cosine term), backward, AdamW, EMA update. The baseline is
``diffusers.DiTTransformer2DModel`` with the same depth, width, heads, patch and
latent shape, trained on the same flow-matching MSE with the same AdamW, but
without the EMA update (so it gets the easier job).

Sampling is measured per function evaluation (NFE): one velocity evaluation of
a batch, then whole Euler runs (with and without classifier-free guidance,
which doubles the batch of every NFE) counted in image-NFEs so their rate can
be compared with the single evaluation's, and the pixel decoder that turns
latents into images.

Settings:

- ``tiny``: what ``configs/stage2/tiny.yaml`` says (model, batch, sampler steps) on vtp-tiny's 8x8x16 latents;
- ``small-B``: LightningDiT-B/1 blocks (width 768, 12 heads) at depth 4, 8x8x64 latents, B = 16;
- ``B`` / ``XL``: LightningDiT-B/1 and -XL/1 on VTP's 16x16x64 latents, B = 256 / 128 (GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vtp_bench.suite import Group, Settings, Workload, prepare

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO_ROOT / "configs" / "stage2" / "tiny.yaml"


@dataclass(frozen=True)
class GeneratorSetting:
    name: str
    model: str
    latent_size: int
    latent_channels: int
    num_classes: int
    batch_size: int
    overrides: tuple[tuple[str, object], ...] = ()
    sampling_steps: int = 50
    description: str = ""


def tiny_setting() -> GeneratorSetting:
    """The embedded default as configs/stage2/tiny.yaml has it (model, batch, sampler steps), on vtp-tiny latents."""
    from omegaconf import OmegaConf

    recipe = OmegaConf.load(TINY_RECIPE)
    model, batch = recipe.model.name, int(recipe.train.global_batch_size)
    return GeneratorSetting(
        "tiny",
        model,
        8,
        16,
        10,
        batch,
        sampling_steps=int(recipe.sampling.steps),
        description=f"configs/stage2/tiny.yaml: {model}, 8x8x16, B={batch}",
    )


GENERATOR_SETTINGS = {
    "tiny": tiny_setting(),
    "small-B": GeneratorSetting(
        "small-B",
        "LightningDiT-B/1",
        8,
        64,
        1000,
        16,
        overrides=(("depth", 4),),
        description="LightningDiT-B/1 blocks at depth 4, 8x8x64, B=16",
    ),
    "B": GeneratorSetting(
        "B",
        "LightningDiT-B/1",
        16,
        64,
        1000,
        256,
        sampling_steps=250,
        description="LightningDiT-B/1, 16x16x64, B=256",
    ),
    "XL": GeneratorSetting(
        "XL",
        "LightningDiT-XL/1",
        16,
        64,
        1000,
        128,
        sampling_steps=250,
        description="LightningDiT-XL/1, 16x16x64, B=128",
    ),
}


def stage2_config(setting: GeneratorSetting):
    """The tiny recipe's objective, optimiser and EMA (the paper's values except lr / EMA length)."""
    from vtp_gen.config import load_config
    from vtp_gen.pipeline.stage2.config import Stage2Config

    return load_config(Stage2Config, [TINY_RECIPE], [f"model.name={setting.model}"])


def build_generator(setting: GeneratorSetting, **extra) -> nn.Module:
    from vtp_gen.models.registry import create_model

    return create_model(
        setting.model,
        input_size=setting.latent_size,
        in_channels=setting.latent_channels,
        num_classes=setting.num_classes,
        **dict(setting.overrides),
        **extra,
    )


def latent_batch(setting: GeneratorSetting, device: torch.device, batch_size: int | None = None):
    generator = torch.Generator().manual_seed(0)
    batch = batch_size or setting.batch_size
    shape = (batch, setting.latent_channels, setting.latent_size, setting.latent_size)
    latents = torch.randn(shape, generator=generator).to(device)
    labels = torch.randint(0, setting.num_classes, (batch,), generator=generator).to(device)
    return latents, labels


class FlowMatchingStep:
    """One step of ``LatentFlowMatching``: objective, backward, clipping, AdamW, EMA."""

    def __init__(
        self,
        setting: GeneratorSetting,
        settings: Settings,
        batch_size: int,
        model: nn.Module | None = None,
    ) -> None:
        from vtp_gen.pipeline.stage2.run import build_system

        cfg = stage2_config(setting)
        self.settings = settings
        self.system = build_system(cfg, model if model is not None else build_generator(setting))
        self.system.to(settings.device)
        self.model = self.system.model
        optimizers = self.system.configure_optimizers()
        self.optimizer = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        self.clip_value = cfg.trainer.gradient_clip_val
        self.latents, self.labels = latent_batch(setting, settings.device, batch_size)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with self.settings.autocast():
            terms = self.system.transport.training_losses(self.model, self.latents, y=self.labels)
        terms["loss"].mean().backward()
        if self.clip_value:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_value)
        self.optimizer.step()
        self.system.ema.update(self.model)

    def compile(self) -> None:
        # What stage 2 does with trainer.compile=true: the whole generator.
        self.model.compile()


def diffusers_dit_like(model: nn.Module) -> nn.Module:
    """diffusers' DiT with the generator's depth, width, heads, patch, latent shape and classes."""
    from diffusers import DiTTransformer2DModel

    config = model.config
    return DiTTransformer2DModel(
        num_attention_heads=config["num_heads"],
        attention_head_dim=config["hidden_size"] // config["num_heads"],
        in_channels=config["in_channels"],
        out_channels=config["in_channels"],
        num_layers=config["depth"],
        sample_size=config["input_size"],
        patch_size=config["patch_size"],
        num_embeds_ada_norm=config["num_classes"],
    )


class DiffusersStep:
    """Flow-matching MSE step of diffusers' DiT with the same AdamW settings (no EMA)."""

    def __init__(
        self,
        setting: GeneratorSetting,
        settings: Settings,
        batch_size: int,
        model: nn.Module,
        lr: float,
        betas,
        fused: bool = False,
    ) -> None:
        self.settings = settings
        self.model = model.to(settings.device).train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=lr, betas=betas, weight_decay=0.0, fused=fused or None
        )
        self.latents, self.labels = latent_batch(setting, settings.device, batch_size)

    def __call__(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        x1 = self.latents
        noise = torch.randn_like(x1)
        t = torch.sigmoid(torch.randn(x1.shape[0], device=x1.device) * 1.25 - 0.5)
        x_t = t.view(-1, 1, 1, 1) * x1 + (1 - t.view(-1, 1, 1, 1)) * noise
        with self.settings.autocast():
            velocity = self.model(x_t, timestep=t, class_labels=self.labels, return_dict=False)[0]
        ((velocity.float() - (x1 - noise)) ** 2).mean().backward()
        self.optimizer.step()

    def compile(self) -> None:
        self.model.compile()


def stage2_step_group(name: str) -> Group:
    setting = GENERATOR_SETTINGS[name]

    def build(settings: Settings) -> list[Workload]:
        batch = settings.sized(setting.batch_size, 8)
        ours = FlowMatchingStep(setting, settings, batch)
        optim = stage2_config(setting).optim
        model = diffusers_dit_like(ours.model)
        # The same AdamW on both sides (fused or not), so the ratio is about the model code.
        theirs = DiffusersStep(
            setting, settings, batch, model, optim.lr, (optim.beta1, optim.beta2), optim.fused
        )
        return [
            Workload(
                "step",
                ours,
                batch,
                baseline="diffusers_dit",
                tracked=(ours.system, ours.optimizer),
                flops=prepare(ours, settings),
            ),
            Workload(
                "diffusers_dit",
                theirs,
                batch,
                tracked=(theirs.model, theirs.optimizer),
                flops=prepare(theirs, settings),
            ),
        ]

    return Group("stage2", name, f"generator training step ({setting.description}) vs diffusers DiT", build)


# ---------------------------------------------------------------------- sampling
class VelocityEval:
    """One NFE: the generator on a batch of noisy latents, in inference mode."""

    def __init__(self, model: nn.Module, latents: torch.Tensor, labels: torch.Tensor, settings: Settings):
        self.model, self.latents, self.labels, self.settings = model, latents, labels, settings
        self.t = torch.full((latents.shape[0],), 0.5, device=latents.device)

    @torch.inference_mode()
    def __call__(self) -> None:
        with self.settings.autocast():
            self.model(self.latents, self.t, self.labels)


class EulerSampling:
    """A whole sampler run (``transport.sample``) from fixed noise, optionally guided."""

    def __init__(self, model, latents, labels, steps: int, cfg_scale: float, settings: Settings):
        self.model, self.latents, self.labels = model, latents, labels
        self.steps, self.cfg_scale, self.settings = steps, cfg_scale, settings

    @torch.inference_mode()
    def __call__(self) -> None:
        from vtp_gen.transport import sample

        with self.settings.autocast():
            sample(
                self.model,
                self.latents,
                self.labels,
                method="euler",
                steps=self.steps,
                shift=0.3,
                cfg_scale=self.cfg_scale,
            )


def decoder_for(setting: GeneratorSetting) -> nn.Module:
    """The pixel decoder of the tokenizer whose latents the setting models (random weights)."""
    from vtp_gen.models.registry import create_model

    presets = {"tiny": ("vtp-tiny", {}), "small-B": ("vtp-b", {"decoder_depth": 4, "vision_depth": 1})}
    preset, overrides = presets.get(setting.name, ("vtp-b", {}))
    with torch.device("meta"):
        probe = create_model(preset, **overrides)
    patch = probe.config.vision_patch_size
    model = create_model(
        preset, image_size=setting.latent_size * patch, train_clip=False, rope_dtype="float32", **overrides
    )
    if model.trunk.latent_channels != setting.latent_channels:
        raise ValueError(
            f"{preset} makes {model.trunk.latent_channels}-channel latents, not {setting.latent_channels}"
        )
    return model.pixel_decoder


def sampling_group(name: str, steps: int | None = None) -> Group:
    """One NFE, Euler runs of ``steps`` grid points with and without CFG (in image-NFEs), pixel decoding."""
    setting = GENERATOR_SETTINGS[name]

    def build(settings: Settings) -> list[Workload]:
        device = settings.device
        model = build_generator(setting).to(device).eval()
        batch = settings.sized(setting.batch_size, 4)
        latents, labels = latent_batch(setting, device, batch)
        one = VelocityEval(model, latents, labels, settings)
        workloads = [Workload("nfe1", one, batch, "img-NFE", tracked=(model,))]
        grid = settings.sized(steps or setting.sampling_steps, 4)
        for cfg_scale in (1.0, 2.0):
            # `grid` points, grid - 1 Euler updates; a guided NFE evaluates twice the batch and counts once.
            workloads.append(
                Workload(
                    f"euler{grid}" + ("_cfg" if cfg_scale > 1 else ""),
                    EulerSampling(model, latents, labels, grid, cfg_scale, settings),
                    batch * (grid - 1),
                    "img-NFE",
                    baseline="nfe1",
                    tracked=(model,),
                )
            )
        decoder = decoder_for(setting).to(device).eval()

        @torch.inference_mode()
        def decode() -> None:
            with settings.autocast():
                decoder(latents)

        workloads.append(Workload("decode", decode, batch, tracked=(decoder,)))
        return workloads

    return Group("sampling", name, f"sampling per NFE and decoding ({setting.description})", build)
