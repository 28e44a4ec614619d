"""``VTPPipeline``: class-conditional flow-matching generation with a VTP tokenizer, as a diffusers pipeline.

    pipe = VTPPipeline.from_pretrained("exported/")
    images = pipe(class_labels=[0, 7], num_inference_steps=50, generator=torch.manual_seed(0)).images

Components: ``transformer`` (``LightningDiTTransformer2DModel``), ``vae``
(``AutoencoderVTP``: the tokenizer, under the name diffusers pipelines give
their autoencoder) and ``scheduler`` (diffusers' ``FlowMatchEulerDiscreteScheduler``).

Conventions meet in ``sample_with_scheduler`` (``VTPTextPipeline`` shares it).
diffusers' flow schedulers integrate in sigma from 1 (noise) to 0 (data),
``x = sigma * noise + (1 - sigma) * data``, and step with
``d x / d sigma = noise - data``; our generators take the flow time
t = 1 - sigma and predict ``data - noise``. So the model is called at
``t = 1 - timestep / num_train_timesteps`` and its velocity is negated for
``scheduler.step``. Our timestep shift s (``t' = s t / (1 + (s - 1) t)``) is
the scheduler's ``shift = 1 / s`` on sigma. With the uniform sigma grid passed
here, ``num_inference_steps = N`` Euler steps land on exactly the grid of
``vtp_gen.transport.sample(..., method="euler", steps=N + 1, shift=s)``.

Guidance is ours (``vtp_gen.transport.guided_velocity``): classifier-free with
the null class, only where t >= ``guidance_interval_start``, on all channels or
on the first three (``guidance_mode="reference"``, the published code's quirk).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers import FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from vtp_gen.data.transforms import denormalize
from vtp_gen.guidance import GUIDANCE_MODES
from vtp_gen.interop.diffusers.autoencoder import AutoencoderVTP
from vtp_gen.interop.diffusers.transformer import LightningDiTTransformer2DModel
from vtp_gen.transport import guided_velocity

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def uniform_sigmas(num_inference_steps: int) -> np.ndarray:
    """The N sigmas 1, 1 - 1/N, ..., 1/N (the scheduler appends 0): the uniform grid our samplers use."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    return 1.0 - np.linspace(0.0, 1.0, num_inference_steps + 1, dtype=np.float32)[:-1]


def set_scheduler_timesteps(scheduler, num_inference_steps: int, device: torch.device) -> None:
    """Uniform sigma grid where the scheduler takes one (as Flux / SD3 pipelines do), else its own grid."""
    if "sigmas" in inspect.signature(scheduler.set_timesteps).parameters:
        scheduler.set_timesteps(sigmas=uniform_sigmas(num_inference_steps).tolist(), device=device)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device)


def sample_with_scheduler(
    pipe: DiffusionPipeline, velocity, latents: Tensor, num_inference_steps: int
) -> Tensor:
    """Euler steps of ``pipe.scheduler`` along our velocity ``v(x, t)``, from noise ``latents``.

    Shared by the class and text pipelines: the conventions meet here (module docstring).
    """
    device = latents.device
    set_scheduler_timesteps(pipe.scheduler, num_inference_steps, device)
    num_train_timesteps = pipe.scheduler.config.num_train_timesteps
    for timestep in pipe.progress_bar(pipe.scheduler.timesteps):
        # Scheduler timestep = sigma * num_train_timesteps; our flow time is t = 1 - sigma.
        t = (1.0 - timestep.float() / num_train_timesteps).expand(len(latents)).to(device)
        v = velocity(latents, t)
        # The scheduler steps along d x / d sigma = noise - data, the opposite of our velocity.
        latents = pipe.scheduler.step(-v, timestep, latents, return_dict=False)[0]
    return latents


def latents_to_output(vae: AutoencoderVTP, latents: Tensor, output_type: str):
    """The generator's latents -> ``output_type`` (``"latent"``: unchanged; else decoded pixels in [0, 1])."""
    if output_type == "latent":
        return latents
    images = vae.decode(vae.denormalize_latents(latents), return_dict=False)[0]
    pixels = denormalize(images.float()).clamp(0, 1)
    if output_type == "pt":
        return pixels.cpu()
    array = pixels.permute(0, 2, 3, 1).cpu().numpy()
    return array if output_type == "np" else DiffusionPipeline.numpy_to_pil(array)


def initial_noise(shape: tuple, generator, latents: Tensor | None, device, dtype) -> Tensor:
    """``latents`` when given (checked against ``shape``), else noise drawn with ``randn_tensor``."""
    if latents is None:
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)
    if tuple(latents.shape) != shape:
        raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
    return latents.to(device=device, dtype=dtype)


class VTPPipeline(DiffusionPipeline):
    """Class-conditional image generation: LightningDiT / SiT / DiT on VTP latents, flow-matching ODE.

    Args:
        transformer: the generator (sampling with its EMA weights is the usual choice).
        vae: the tokenizer, carrying the statistics of the latents the generator was trained on.
        scheduler: a diffusers flow-matching scheduler; ``FlowMatchEulerDiscreteScheduler``
            reproduces ``vtp_gen.transport.sample(method="euler")``.
        id2label: class names, ``{class id: "name"}`` (several names: comma-separated).
        default_num_inference_steps, default_guidance_scale: what ``__call__`` uses when not told
            (an export records the training recipe's sampler here).
        guidance_interval_start: guidance only where the flow time t >= this (0 = everywhere).
        guidance_mode: ``"all_channels"`` or ``"reference"`` (first 3 channels only).
    """

    model_cpu_offload_seq = "transformer->vae"

    def __init__(
        self,
        transformer: LightningDiTTransformer2DModel,
        vae: AutoencoderVTP,
        scheduler: FlowMatchEulerDiscreteScheduler,
        # A plain dict: saved as JSON its keys come back as strings (converted below).
        id2label: dict | None = None,
        default_num_inference_steps: int = 50,
        default_guidance_scale: float = 1.0,
        guidance_interval_start: float = 0.0,
        guidance_mode: str = "all_channels",
    ):
        super().__init__()
        if guidance_mode not in GUIDANCE_MODES:
            raise ValueError(f"guidance_mode {guidance_mode!r} is not one of {GUIDANCE_MODES}")
        if transformer.config.in_channels != vae.latent_channels:
            raise ValueError(
                f"the transformer models {transformer.config.in_channels}-channel latents, "
                f"the tokenizer makes {vae.latent_channels}"
            )
        self.register_modules(transformer=transformer, vae=vae, scheduler=scheduler)
        # JSON turns the integer keys into strings; take them back.
        id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None
        self.register_to_config(
            id2label=id2label,
            default_num_inference_steps=int(default_num_inference_steps),
            default_guidance_scale=float(default_guidance_scale),
            guidance_interval_start=float(guidance_interval_start),
            guidance_mode=guidance_mode,
        )
        self.labels: dict[str, int] = {}
        for class_id, names in (id2label or {}).items():
            for name in names.split(","):
                self.labels[name.strip()] = class_id

    # ---------------------------------------------------------------- labels
    def get_label_ids(self, label: str | Sequence[str]) -> list[int]:
        """Class ids of class names (as in ``id2label``)."""
        names = [label] if isinstance(label, str) else list(label)
        missing = [name for name in names if name not in self.labels]
        if missing:
            known = ", ".join(sorted(self.labels)) or "none: this pipeline has no id2label"
            raise ValueError(f"unknown class name(s) {missing}; known: {known}")
        return [self.labels[name] for name in names]

    def _class_tensor(self, class_labels: int | str | Sequence[int | str] | Tensor) -> Tensor:
        if isinstance(class_labels, Tensor):
            labels = class_labels.flatten().long().cpu()
        else:
            items = [class_labels] if isinstance(class_labels, (int, str)) else list(class_labels)
            labels = torch.tensor(
                [self.get_label_ids(item)[0] if isinstance(item, str) else int(item) for item in items],
                dtype=torch.long,
            )
        num_classes = self.transformer.config.num_classes
        if labels.numel() == 0:
            raise ValueError("class_labels is empty")
        if bool(((labels < 0) | (labels >= num_classes)).any()):
            raise ValueError(f"class labels must lie in [0, {num_classes}), got {labels.tolist()}")
        return labels

    # ------------------------------------------------------------ generation
    def _velocity(self, latents: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        return self.transformer(latents, t, labels, return_dict=False)[0]

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | Sequence[int | str] | Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        guidance_interval_start: float | None = None,
        guidance_mode: str | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple:
        """Generate one image per class label.

        Args:
            class_labels: class ids, or class names when the pipeline has ``id2label``.
            num_inference_steps: Euler steps (model evaluations without guidance; twice that
                with it, inside the guidance interval). Our ``steps`` grid points = this + 1.
            guidance_scale: classifier-free guidance (1.0 = none).
            guidance_interval_start, guidance_mode: override the pipeline's config.
            generator: seeds the initial noise (``randn_tensor``: one generator, or one per image).
            latents: the initial noise (B, C, H, W) instead of drawing it.
            output_type: ``"pil"``, ``"np"`` (float (B, H, W, 3) in [0, 1]), ``"pt"`` (float
                (B, 3, H, W) in [0, 1]) or ``"latent"`` (the generator's standardised latents).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type {output_type!r} is not one of {OUTPUT_TYPES}")
        config = self.config
        steps = config.default_num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = config.default_guidance_scale if guidance_scale is None else guidance_scale
        start = config.guidance_interval_start if guidance_interval_start is None else guidance_interval_start
        mode = config.guidance_mode if guidance_mode is None else guidance_mode

        labels = self._class_tensor(class_labels)
        device = self._execution_device
        dtype = self.transformer.dtype
        model_config = self.transformer.config
        shape = (len(labels), model_config.in_channels, model_config.input_size, model_config.input_size)
        latents = initial_noise(shape, generator, latents, device, dtype)
        labels = labels.to(device)
        velocity = guided_velocity(
            self._velocity,
            labels,
            scale,
            start,
            mode,
            null_class=model_config.num_classes,
        )
        images = latents_to_output(
            self.vae, sample_with_scheduler(self, velocity, latents, steps), output_type
        )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
