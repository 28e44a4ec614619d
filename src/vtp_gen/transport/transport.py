"""The flow-matching training objective (SiT / LightningDiT, as VTP trains its generators)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vtp_gen.transport.path import interpolate, target_velocity
from vtp_gen.transport.timesteps import TIME_DISTRIBUTIONS, sample_training_times


def mean_per_sample(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return x.flatten(1).mean(dim=1)


def velocity_losses(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample loss terms between predicted and true velocities, both (B, C, H, W).

    ``mse``: mean squared error over all elements. ``cosine``: 1 - cosine
    similarity between the C-dimensional velocity vectors at each position,
    averaged over positions (LightningDiT's ``use_cosine_loss``). Computed in at
    least float32: under bf16 autocast the prediction arrives in bf16.
    """
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    prediction, target = prediction.to(dtype), target.to(dtype)
    return {
        "mse": mean_per_sample((prediction - target) ** 2),
        "cosine": mean_per_sample(1 - F.cosine_similarity(prediction, target, dim=1)),
    }


@dataclass
class Transport:
    """Linear path from noise (t = 0) to data (t = 1) with velocity prediction.

    time_distribution: ``"uniform"`` or ``"logit_normal"`` (with ``logit_mean``,
      ``logit_std``); see ``timesteps.sample_training_times``.
    cosine_weight: weight of the (1 - cosine similarity) term; the LightningDiT /
      VTP recipe uses 1.0 (loss = MSE + cosine), plain SiT uses 0.
    """

    time_distribution: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    cosine_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(
                f"unknown time distribution {self.time_distribution!r}; expected one of {TIME_DISTRIBUTIONS}"
            )

    def sample_times(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        return sample_training_times(
            batch_size, self.time_distribution, self.logit_mean, self.logit_std, device, generator
        )

    def training_losses(
        self,
        model,
        x1: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **model_kwargs,
    ) -> dict[str, torch.Tensor]:
        """Per-sample losses for a batch of data ``x1`` (B, C, H, W).

        Calls ``model(x_t, t, **model_kwargs)`` (e.g. ``y=labels``). Returns a dict
        of (B,) tensors: ``loss`` (what to average and backpropagate: mse +
        cosine_weight * cosine), its terms ``mse`` and ``cosine`` (the cosine term
        is computed for logging even when its weight is 0), and the times ``t``.
        ``noise`` and ``t`` may be given (tests, validation at fixed t); otherwise
        they are drawn, from ``generator`` if one is passed.
        """
        if noise is None:
            noise = torch.randn(x1.shape, device=x1.device, dtype=x1.dtype, generator=generator)
        if t is None:
            t = self.sample_times(x1.shape[0], x1.device, generator)
        # Times stay at least float32: bf16 latents would otherwise quantise t to ~3 significant digits.
        t = t.to(device=x1.device, dtype=torch.promote_types(x1.dtype, torch.float32))
        prediction = model(interpolate(t, noise, x1).to(x1.dtype), t, **model_kwargs)
        if prediction.shape != x1.shape:
            raise ValueError(
                f"the model returned {tuple(prediction.shape)} for inputs {tuple(x1.shape)}; a velocity model must "
                "return the input's shape (a DiT with learn_sigma=True also returns variances: use SiT-* or "
                "learn_sigma=False)"
            )
        terms = velocity_losses(prediction, target_velocity(noise, x1))
        loss = terms["mse"] + self.cosine_weight * terms["cosine"] if self.cosine_weight else terms["mse"]
        return {"loss": loss, **terms, "t": t}
