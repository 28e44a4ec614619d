"""ODE and SDE samplers from noise (t = 0) to data (t = 1), as factories returning closures.

A sampler is ``sampler(z, velocity_fn) -> x`` where ``velocity_fn(x, t)`` takes a
batch and a (B,) time tensor (see ``guidance.guided_velocity``). ``sample`` wires
a model, labels and guidance to one of them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torchdiffeq

from vtp_gen.transport.guidance import VelocityFn, guided_velocity
from vtp_gen.transport.path import expand_like, score_from_velocity
from vtp_gen.transport.timesteps import time_grid

Sampler = Callable[[torch.Tensor, VelocityFn], torch.Tensor]
FIXED_STEP_METHODS = ("euler", "heun")
METHOD_ALIASES = {"heun2": "heun", "euler-maruyama": "sde", "em": "sde"}


def _times(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


def _euler(velocity: VelocityFn, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    return x + (t1 - t0) * velocity(x, _times(t0, x))


def _heun(velocity: VelocityFn, x: torch.Tensor, t0: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    # Explicit trapezoidal rule (torchdiffeq's "heun2"): average the slopes at both ends.
    dt = t1 - t0
    k1 = velocity(x, _times(t0, x))
    k2 = velocity(x + dt * k1, _times(t1, x))
    return x + dt * 0.5 * (k1 + k2)


def ode_sampler(
    method: str = "euler",
    steps: int = 250,
    shift: float = 0.0,
    atol: float = 1e-6,
    rtol: float = 1e-3,
) -> Sampler:
    """Probability-flow ODE sampler.

    method: ``"euler"`` and ``"heun"`` step along the grid of ``steps`` points
      (``time_grid(steps, shift)``: ``steps - 1`` updates; Heun costs 2 model calls
      per update). Any adaptive torchdiffeq method (``"dopri5"``, ...) integrates
      with tolerances ``atol`` / ``rtol``; for it the grid (the reference's) only
      marks where the solution is reported. Unknown names fail in torchdiffeq.
    shift: timestep shift s of ``timesteps.shift_timesteps`` (<= 0: none).
    """
    method = METHOD_ALIASES.get(method, method)
    if method == "sde":
        raise ValueError("method 'sde' is the SDE sampler: use sde_sampler (or sample(method='sde'))")

    def sample(z: torch.Tensor, velocity: VelocityFn) -> torch.Tensor:
        # The grid stays on the CPU: its 0-dim entries scale GPU tensors without a device sync per step.
        grid = time_grid(steps, shift)
        if method in FIXED_STEP_METHODS:
            step = _euler if method == "euler" else _heun
            x = z
            for t0, t1 in zip(grid[:-1], grid[1:]):
                x = step(velocity, x, t0, t1)
            return x
        trajectory = torchdiffeq.odeint(
            lambda t, x: velocity(x, _times(t, x)), z, grid.to(z.device), method=method, atol=atol, rtol=rtol
        )
        return trajectory[-1]

    return sample


def sde_diffusion(t: torch.Tensor, form: str = "sigma", norm: float = 1.0) -> torch.Tensor:
    """Diffusion coefficient w(t) of the SDE dx = [v + w s] dt + sqrt(2 w) dW (SiT's forms for the linear path)."""
    if form in ("sigma", "linear"):  # sigma_t = 1 - t on the linear path
        return norm * (1 - t)
    if form == "constant":
        return torch.full_like(t, norm)
    if form == "SBDM":  # the score-based diffusion model's own diffusion, (1 - t) / t here
        return norm * (1 - t) / t
    if form == "decreasing":
        return 0.25 * (norm * torch.cos(torch.pi * t) + 1) ** 2
    if form == "increasing-decreasing":
        return norm * torch.sin(torch.pi * t) ** 2
    raise ValueError(f"unknown diffusion form {form!r}")


def sde_sampler(
    steps: int = 250,
    diffusion_form: str = "sigma",
    diffusion_norm: float = 1.0,
    last_step: str | None = "mean",
    last_step_size: float = 0.04,
    t_start: float = 0.0,
    generator: torch.Generator | None = None,
) -> Sampler:
    """Euler-Maruyama sampler of the reverse SDE with the same marginals as the flow (SiT's SDE sampler).

    Integrates dx = [v + w(t) score(x, t)] dt + sqrt(2 w(t)) dW on ``steps``
    uniform points from ``t_start`` to ``1 - last_step_size`` (``steps - 1``
    noisy updates), then takes a noise-free ``last_step``: ``"mean"`` (drift of
    the SDE), ``"euler"`` (ODE velocity) or None (stop there, ending at 1 with
    last_step_size = 0). The score comes from the velocity, so each update
    costs one model call. ``"SBDM"`` diverges at t = 0: give ``t_start > 0``.
    """
    last_step = last_step.lower() if isinstance(last_step, str) else last_step
    if last_step not in ("mean", "euler", None):
        raise ValueError(f"unknown last step {last_step!r}; expected 'mean', 'euler' or None")
    if diffusion_form == "SBDM" and t_start <= 0:
        raise ValueError("the SBDM diffusion is infinite at t = 0: pass t_start > 0 (SiT uses 1e-3)")
    end = 1.0 - last_step_size if last_step is not None else 1.0

    def sde_drift(
        velocity: VelocityFn, x: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        v = velocity(x, t)
        w = expand_like(sde_diffusion(t, diffusion_form, diffusion_norm), x)
        return v + w * score_from_velocity(v, x, t), w

    def sample(z: torch.Tensor, velocity: VelocityFn) -> torch.Tensor:
        grid = time_grid(steps, start=t_start, end=end)
        x = z
        for t0, t1 in zip(grid[:-1], grid[1:]):
            dt = t1 - t0
            drift, w = sde_drift(velocity, x, _times(t0, x))
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = x + drift * dt + torch.sqrt(2 * w * dt) * noise
        t_end = _times(grid[-1], x)
        if last_step == "mean":
            x = x + sde_drift(velocity, x, t_end)[0] * last_step_size
        elif last_step == "euler":
            x = x + velocity(x, t_end) * last_step_size
        return x

    return sample


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    method: str = "euler",
    steps: int = 250,
    shift: float = 0.0,
    cfg_scale: float = 1.0,
    cfg_interval_start: float = 0.0,
    guidance_mode: str = "all_channels",
    **solver_kwargs,
) -> torch.Tensor:
    """Generate latents from noise ``z`` (B, C, H, W) for labels ``y`` (B,); returns (B, C, H, W).

    method: ``"euler"``, ``"heun"``, ``"dopri5"`` (or another torchdiffeq ODE
      method) or ``"sde"`` (Euler-Maruyama); ``solver_kwargs`` go to
      ``ode_sampler`` (atol, rtol) or ``sde_sampler`` (diffusion_form,
      last_step, generator, ...).
    steps: grid points (``steps - 1`` updates), as in the reference code.
    shift: timestep shift s (t' = s t / (1 + (s - 1) t); <= 0 means none). ODE only.
    cfg_scale, cfg_interval_start, guidance_mode: classifier-free guidance, see
      ``guidance.guided_velocity``; guidance mode "reference" reproduces published numbers.
    The model is evaluated in eval mode (no label dropout) and restored afterwards.
    """
    velocity = guided_velocity(model, y, cfg_scale, cfg_interval_start, guidance_mode)
    return integrate(model, z, velocity, method, steps, shift, **solver_kwargs)


def integrate(
    model: torch.nn.Module,
    z: torch.Tensor,
    velocity,
    method: str,
    steps: int,
    shift: float = 0.0,
    **solver_kwargs,
) -> torch.Tensor:
    """Integrate ``velocity(x, t)`` (which calls ``model``) from noise ``z`` with the named sampler.

    Shared by every conditioning (class labels here, captions in ``vtp_gen.t2i``); the model runs
    in eval mode and is restored afterwards.
    """
    method = METHOD_ALIASES.get(method, method)
    if method == "sde":
        if shift > 0 and shift != 1:
            raise ValueError("the timestep shift is defined for the ODE samplers only (as in LightningDiT)")
        sampler = sde_sampler(steps=steps, **solver_kwargs)
    else:
        sampler = ode_sampler(method, steps=steps, shift=shift, **solver_kwargs)
    was_training = model.training
    model.eval()
    try:
        return sampler(z, velocity)
    finally:
        model.train(was_training)
