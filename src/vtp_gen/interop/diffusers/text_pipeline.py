"""``VTPTextPipeline``: text-to-image flow-matching generation with a VTP tokenizer, as a diffusers pipeline.

    pipe = VTPTextPipeline.from_pretrained("exported/")
    images = pipe(prompt=["a coat", "a sneaker"], num_inference_steps=49, guidance_scale=4.0).images

Components: ``transformer`` (``TextDiTTransformer2DModel``), ``vae``
(``AutoencoderVTP``), ``text_encoder`` (``VTPTextEncoder``: the tokenizer's
own CLIP text tower with its BPE tokenizer) and ``scheduler``
(``FlowMatchEulerDiscreteScheduler``). The vae and the text encoder are two
parts of the same VTP tokenizer: the image side encodes and decodes, the text
side gives the caption features the generator was trained on.

This is a class of its own rather than an option of ``VTPPipeline`` because
diffusers builds a pipeline from ``model_index.json``, whose components and
call signature are fixed per class: a class pipeline has no text encoder and
takes class labels, this one needs the text encoder and takes prompts. The
sampling itself is shared: the same scheduler, the same Euler loop and
conventions (``vtp_gen.interop.diffusers.pipeline``), so ``num_inference_steps
= N`` lands on the grid of our Euler sampler with ``steps = N + 1``.

Guidance is that of ``vtp_gen.t2i.guidance.sample_text``: classifier-free,
the null condition is the empty caption's features (the caption dropout of
training replaces a caption by ``""``), only where t >= ``guidance_interval_start``.
A ``negative_prompt`` replaces the empty caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from torch import Tensor

from vtp_gen.guidance import GUIDANCE_MODES, combine_guidance
from vtp_gen.interop.diffusers.autoencoder import AutoencoderVTP
from vtp_gen.interop.diffusers.pipeline import (
    OUTPUT_TYPES,
    initial_noise,
    latents_to_output,
    sample_with_scheduler,
)
from vtp_gen.interop.diffusers.text_encoder import VTPTextEncoder, VTPTextEncoderOutput
from vtp_gen.interop.diffusers.transformer import TextDiTTransformer2DModel

NULL_PROMPT = ""


def as_prompt_list(prompt: str | Sequence[str], name: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError(f"{name} is empty")
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must be a string or a list of strings")
    return prompts


def repeat_rows(features: VTPTextEncoderOutput, repeats: int) -> VTPTextEncoderOutput:
    """Each row ``repeats`` times in a row (images per prompt)."""
    if repeats == 1:
        return features
    return VTPTextEncoderOutput(*(x.repeat_interleave(repeats, dim=0) for x in features.to_tuple()))


def cat_rows(a: VTPTextEncoderOutput, b: VTPTextEncoderOutput) -> VTPTextEncoderOutput:
    return VTPTextEncoderOutput(*(torch.cat([x, y]) for x, y in zip(a.to_tuple(), b.to_tuple(), strict=True)))


class VTPTextPipeline(DiffusionPipeline):
    """Text-to-image generation: a TextDiT on VTP latents, conditioned on the tokenizer's own text tower.

    Args:
        transformer: the text generator (its EMA weights, as a t2i run exports them).
        vae: the tokenizer's encoder / decoder with the statistics of the generator's latents.
        text_encoder: the same tokenizer's text tower and BPE tokenizer.
        scheduler: ``FlowMatchEulerDiscreteScheduler`` reproduces our Euler sampler.
        default_num_inference_steps, default_guidance_scale: what ``__call__`` uses when not told.
        guidance_interval_start: guidance only where the flow time t >= this (0 = everywhere).
        guidance_mode: ``"all_channels"`` or ``"reference"`` (first 3 channels only).
    """

    model_cpu_offload_seq = "text_encoder->transformer->vae"

    def __init__(
        self,
        transformer: TextDiTTransformer2DModel,
        vae: AutoencoderVTP,
        text_encoder: VTPTextEncoder,
        scheduler: FlowMatchEulerDiscreteScheduler,
        default_num_inference_steps: int = 50,
        default_guidance_scale: float = 1.0,
        guidance_interval_start: float = 0.0,
        guidance_mode: str = "all_channels",
    ):
        super().__init__()
        if guidance_mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance_mode {guidance_mode!r} is not one of {GUIDANCE_MODES}")
        config = transformer.config
        if config.in_channels != vae.latent_channels:
            raise ValueError(
                f"the transformer models {config.in_channels}-channel latents, "
                f"the tokenizer makes {vae.latent_channels}"
            )
        if (config.text_dim, config.pooled_dim) != (text_encoder.width, text_encoder.pooled_dim):
            raise ValueError(
                f"the transformer reads {config.text_dim}-wide caption states and a {config.pooled_dim}-wide "
                f"pooled embedding, the text encoder gives {text_encoder.width} and {text_encoder.pooled_dim}"
            )
        self.register_modules(
            transformer=transformer, vae=vae, text_encoder=text_encoder, scheduler=scheduler
        )
        self.register_to_config(
            default_num_inference_steps=int(default_num_inference_steps),
            default_guidance_scale=float(default_guidance_scale),
            guidance_interval_start=float(guidance_interval_start),
            guidance_mode=guidance_mode,
        )

    # --------------------------------------------------------------- prompts
    def encode_prompt(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
    ) -> tuple[VTPTextEncoderOutput, VTPTextEncoderOutput | None]:
        """Caption features of the prompts and of the null condition (None without guidance).

        Each prompt is encoded once and repeated ``num_images_per_prompt`` times. The null
        condition is the empty caption, encoded once and repeated, as ``sample_text`` does;
        ``negative_prompt`` (one string, or one per prompt) replaces it.
        """
        prompts = as_prompt_list(prompt, "prompt")
        cond = repeat_rows(self.text_encoder.encode_prompt(prompts), num_images_per_prompt)
        if not do_classifier_free_guidance:
            return cond, None
        rows = len(cond.pooled_output)
        if negative_prompt is None or isinstance(negative_prompt, str):
            null = self.text_encoder.encode_prompt(
                [NULL_PROMPT if negative_prompt is None else negative_prompt]
            )
            return cond, VTPTextEncoderOutput(*(x.expand(rows, *x.shape[1:]) for x in null.to_tuple()))
        negatives = as_prompt_list(negative_prompt, "negative_prompt")
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts")
        return cond, repeat_rows(self.text_encoder.encode_prompt(negatives), num_images_per_prompt)

    # ------------------------------------------------------------ generation
    def _predict(self, latents: Tensor, t: Tensor, text: VTPTextEncoderOutput) -> Tensor:
        dtype = self.transformer.dtype
        return self.transformer(
            latents,
            t,
            text.last_hidden_state.to(dtype),
            text.attention_mask,
            text.pooled_output.to(dtype),
            return_dict=False,
        )[0]

    def _guided_velocity(self, cond, null, scale: float, start: float, mode: str):
        """v(x, t) under classifier-free guidance where t >= start (``text_guided_velocity``'s rule)."""
        both = cat_rows(cond, null) if null is not None else None

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            active = t >= start
            if both is None or not bool(active.any()):
                return self._predict(x, t, cond)
            conditional, unconditional = self._predict(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            return combine_guidance(conditional, unconditional, scale, mode, active=active)

        return velocity

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval_start: float | None = None,
        guidance_mode: str | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate ``num_images_per_prompt`` images per prompt (prompt-major order).

        Args:
            prompt: one prompt or a list; ``""`` asks for an unconditional sample.
            negative_prompt: the guidance's null condition instead of the empty caption.
            num_inference_steps: Euler steps (our ``steps`` grid points = this + 1).
            guidance_scale: classifier-free guidance (1.0 = none).
            guidance_interval_start, guidance_mode: override the pipeline's config.
            generator: seeds the initial noise (``randn_tensor``: one generator, or one per image).
            latents: the initial noise (B, C, H, W) instead of drawing it.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` (pixels in [0, 1]) or ``"latent"``
                (the generator's standardised latents).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {OUTPUT_TYPES}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {num_images_per_prompt}")
        config = self.config
        steps = config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = config.default_guidance_scale if guidance_scale is None else guidance_scale
        start = config.guidance_interval_start if guidance_interval_start is None else guidance_interval_start
        mode = config.guidance_mode if guidance_mode is None else guidance_mode
        if mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance_mode {mode!r} is not one of {GUIDANCE_MODES}")

        cond, null = self.encode_prompt(prompt, negative_prompt, num_images_per_prompt, scale != 1.0)
        device = self._execution_device
        model_config = self.transformer.config
        shape = (
            len(cond.pooled_output),
            model_config.in_channels,
            model_config.input_size,
            model_config.input_size,
        )
        latents = initial_noise(shape, generator, latents, device, self.transformer.dtype)
        cond = VTPTextEncoderOutput(*(x.to(device) for x in cond.to_tuple()))
        if null is not None:
            null = VTPTextEncoderOutput(*(x.to(device) for x in null.to_tuple()))
        velocity = self._guided_velocity(cond, null, scale, start, mode)
        images = latents_to_output(
            self.vae, sample_with_scheduler(self, velocity, latents, steps), output_type
        )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
