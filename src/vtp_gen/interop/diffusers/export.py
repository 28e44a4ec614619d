"""Assemble a ``VTPPipeline`` / ``VTPTextPipeline`` from our own objects: a tokenizer, a generator, latent statistics, a sampler recipe."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from diffusers.schedulers import FlowMatchEulerDiscreteScheduler

from vtp_gen.interop.diffusers.autoencoder import AutoencoderVTP
from vtp_gen.interop.diffusers.pipeline import VTPPipeline
from vtp_gen.interop.diffusers.text_encoder import VTPTextEncoder
from vtp_gen.interop.diffusers.text_pipeline import VTPTextPipeline
from vtp_gen.interop.diffusers.transformer import LightningDiTTransformer2DModel, TextDiTTransformer2DModel
from vtp_gen.latents.dataset import LatentStats
from vtp_gen.models.generators import LightningDiT
from vtp_gen.models.generators.text_dit import TextLightningDiT
from vtp_gen.models.tokenizer.model import VTPModel

# diffusers' flow schedulers count time in units of 1/num_train_timesteps; 1000 is their convention.
NUM_TRAIN_TIMESTEPS = 1000


def scheduler_shift(shift: float) -> float:
    """Our timestep shift s (on t, 0 = noise; <= 0 or 1 = none) as the scheduler's shift on sigma = 1 - t: 1 / s."""
    return 1.0 if shift <= 0 else 1.0 / shift


def flow_scheduler(shift: float = 0.0) -> FlowMatchEulerDiscreteScheduler:
    """The Euler flow-matching scheduler whose grid equals ``vtp_gen.transport.time_grid(., shift)``."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=scheduler_shift(shift)
    )


def pipeline_sampling(sampling: Mapping) -> dict:
    """A stage-2 ``sampling`` recipe (``SamplingConfig`` keys) -> ``build_pipeline`` keyword arguments.

    ``steps`` counts grid points in our samplers, so the pipeline's Euler steps are
    ``steps - 1``. Only Euler maps onto the pipeline's scheduler; another method
    is reported and replaced by Euler on the same grid.
    """
    method = sampling.get("method", "euler")
    if method != "euler":
        warnings.warn(
            f"the recipe samples with {method!r}; the diffusers pipeline integrates with Euler on the same grid",
            stacklevel=2,
        )
    out = {
        "shift": float(sampling.get("shift", 0.0)),
        "guidance_scale": float(sampling.get("cfg_scale", 1.0)),
        "guidance_interval_start": float(sampling.get("cfg_interval_start", 0.0)),
        "guidance_mode": sampling.get("guidance_mode", "all_channels"),
    }
    if "steps" in sampling:
        out["num_inference_steps"] = max(1, int(sampling["steps"]) - 1)
    return out


def build_pipeline(
    tokenizer: VTPModel | AutoencoderVTP,
    generator: LightningDiT | LightningDiTTransformer2DModel,
    stats: LatentStats | None = None,
    *,
    shift: float = 0.0,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    guidance_interval_start: float = 0.0,
    guidance_mode: str = "all_channels",
    id2label: Mapping[int, str] | None = None,
) -> VTPPipeline:
    """A pipeline from a tokenizer, a generator (its EMA weights) and the statistics of its latent cache.

    ``shift`` is our timestep shift (VTP: 0.075), stored in the scheduler as 1 / shift;
    ``num_inference_steps`` and ``guidance_scale`` become the pipeline's defaults.
    Weights are copied: the pipeline does not alias the models given.
    """
    if isinstance(tokenizer, AutoencoderVTP):
        if stats is not None:
            raise ValueError("an AutoencoderVTP carries its statistics already: do not pass stats")
        vae = tokenizer
    else:
        vae = AutoencoderVTP.from_vtp(tokenizer, stats)
    if isinstance(generator, LightningDiTTransformer2DModel):
        transformer = generator
    else:
        transformer = LightningDiTTransformer2DModel.from_generator(generator)
    return VTPPipeline(
        transformer=transformer,
        vae=vae,
        scheduler=flow_scheduler(shift),
        id2label=dict(id2label) if id2label else None,
        default_num_inference_steps=num_inference_steps,
        default_guidance_scale=guidance_scale,
        guidance_interval_start=guidance_interval_start,
        guidance_mode=guidance_mode,
    )


def build_text_pipeline(
    tokenizer: VTPModel,
    generator: TextLightningDiT | TextDiTTransformer2DModel,
    stats: LatentStats | None = None,
    *,
    shift: float = 0.0,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    guidance_interval_start: float = 0.0,
    guidance_mode: str = "all_channels",
) -> VTPTextPipeline:
    """A text-to-image pipeline from a tokenizer (image and text sides), a text generator and its latent statistics.

    The tokenizer gives both the ``vae`` (encoder, pixel decoder) and the ``text_encoder`` (its CLIP
    text tower, which the generator was trained on). Arguments as in ``build_pipeline``.
    """
    if isinstance(generator, TextDiTTransformer2DModel):
        transformer = generator
    else:
        transformer = TextDiTTransformer2DModel.from_generator(generator)
    return VTPTextPipeline(
        transformer=transformer,
        vae=AutoencoderVTP.from_vtp(tokenizer, stats),
        text_encoder=VTPTextEncoder.from_vtp(tokenizer),
        scheduler=flow_scheduler(shift),
        default_num_inference_steps=num_inference_steps,
        default_guidance_scale=guidance_scale,
        guidance_interval_start=guidance_interval_start,
        guidance_mode=guidance_mode,
    )
