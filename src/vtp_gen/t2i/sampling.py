"""From prompts to images: loading a text generator, sampling with guidance, grids captioned with their prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch

from vtp_gen.data.images import captioned_grid, save_png, to_pixels
from vtp_gen.models.generators.text_dit import TextLightningDiT
from vtp_gen.systems.latent_data import derive_seed
from vtp_gen.systems.sampling import LatentDecoder, sample_noise
from vtp_gen.t2i.guidance import sample_text
from vtp_gen.t2i.text_features import CaptionEncoder

SAMPLING_KEYS = ("method", "steps", "shift", "cfg_scale", "cfg_interval_start", "guidance_mode")


def sampling_settings(sampling) -> dict:
    """``sample_text`` keyword arguments from a SamplingConfig-like object."""
    kwargs = {key: getattr(sampling, key) for key in SAMPLING_KEYS}
    if kwargs["method"] == "dopri5":
        kwargs.update(atol=sampling.atol, rtol=sampling.rtol)
    return kwargs


@torch.no_grad()
def generate(
    model: TextLightningDiT,
    encoder: CaptionEncoder,
    decoder: LatentDecoder,
    prompts: Sequence[str],
    indices: Sequence[int],
    seed: int,
    sampling: dict,
) -> torch.Tensor:
    """Images (normalised space) for ``prompts[i]`` with the noise of sample ``indices[i]`` (seeded)."""
    device = next(model.parameters()).device
    shape = (model.in_channels, model.input_size, model.input_size)
    noise = sample_noise(list(indices), shape, seed).to(device)
    cond = encoder(list(prompts)).to(device)
    null = encoder.null().to(device)
    latents = sample_text(model, noise, cond, null, **sampling)
    return decoder(latents.float())


class PromptGridCallback(L.Callback):
    """A grid of the EMA model's samples for fixed prompts, every N steps and at the end of training."""

    def __init__(
        self,
        folder: Path,
        make_decoder: Callable[[], LatentDecoder],
        encoder: CaptionEncoder,
        prompts: Sequence[str],
        per_prompt: int,
        sampling: dict,
        every_n_steps: int = 0,
        seed: int = 0,
    ):
        self.folder = Path(folder)
        self.make_decoder = make_decoder
        self.decoder: LatentDecoder | None = None
        self.encoder = encoder
        self.prompts = list(prompts)
        self.per_prompt = per_prompt
        self.sampling = sampling
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.written: list[Path] = []
        self.last_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self.last_step:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self.last_step:
            self.write(trainer, pl_module)

    def write(self, trainer, pl_module) -> Path | None:
        self.last_step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        if self.decoder is None:
            self.decoder = self.make_decoder()
        self.decoder.to(pl_module.device)
        prompts = [p for p in self.prompts for _ in range(self.per_prompt)]
        images = generate(
            pl_module.ema.module,
            self.encoder,
            self.decoder,
            prompts,
            range(len(prompts)),
            derive_seed("preview", self.seed),
            self.sampling,
        )
        grid = captioned_grid(images.cpu(), self.prompts, self.per_prompt)
        path = save_png(grid, self.folder / f"samples_step{trainer.global_step:08d}.png")
        self.written.append(path)
        return path


class PromptSampler(L.LightningModule):
    """``predict_step`` for ``trainer.predict``: sample indices -> uint8 (B, H, W, 3) images of their prompts.

    Sample ``i`` is prompt ``i // per_prompt`` with the noise of ``(seed, i)``,
    so which rank or batch makes it does not change it. The batches come from
    :class:`~vtp_gen.systems.sampling.SamplePlanData` (each rank its own aligned
    blocks of missing indices); indices past the last sample, which only keep a
    batch whole, take the prompts again from the first and are not written.
    """

    def __init__(
        self,
        generator: TextLightningDiT,
        encoder: CaptionEncoder,
        decoder: LatentDecoder,
        prompts: Sequence[str],
        per_prompt: int,
        sampling: dict,
        seed: int = 0,
    ):
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.encoder = encoder
        self.decoder = decoder
        self.prompts = list(prompts)
        self.per_prompt = per_prompt
        self.sampling = sampling
        self.seed = seed

    def prompt_of(self, index: int) -> str:
        return self.prompts[index // self.per_prompt % len(self.prompts)]

    def predict_step(self, batch: dict, batch_idx: int = 0) -> dict:
        indices = batch["index"].tolist()
        images = generate(
            self.generator,
            self.encoder,
            self.decoder,
            [self.prompt_of(i) for i in indices],
            indices,
            self.seed,
            self.sampling,
        )
        return {
            "index": batch["index"].cpu(),
            "write": batch["write"].cpu(),
            "pixels": torch.from_numpy(uint8_pixels(images)),
        }


def uint8_pixels(images: torch.Tensor) -> np.ndarray:
    """Normalised-space images -> uint8 (N, H, W, 3)."""
    return to_pixels(images.float().cpu(), normalized=True)
