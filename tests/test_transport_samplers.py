"""Samplers: time grid and shift, solver orders on an exact Gaussian flow, SDE marginals, the sample() API."""

import pytest
import torch

from vtp_gen.models.generators import LightningDiT
from vtp_gen.transport import ode_sampler, sample, sde_sampler, shift_timesteps, time_grid

MU, STD = 1.5, 0.5  # data ~ N(MU, STD^2) per element


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x1 - x0 | x_t] for x1 ~ N(MU, STD^2), x0 ~ N(0, 1): the exact flow sends z to MU + STD * z."""
    t = t.reshape(-1, *([1] * (x.dim() - 1))).double()
    variance = t**2 * STD**2 + (1 - t) ** 2
    return (MU + (t * STD**2 - (1 - t)) / variance * (x.double() - t * MU)).to(x.dtype)


def _ode_error(method: str, steps: int, shift: float = 0.0) -> float:
    z = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = ode_sampler(method, steps=steps, shift=shift, atol=1e-9, rtol=1e-9)(z, gaussian_velocity)
    return (x - (MU + STD * z)).abs().max().item()


def test_time_grid_and_shift():
    grid = time_grid(8)
    assert grid.dtype == torch.float32 and len(grid) == 8 and grid[0] == 0 and grid[-1] == 1
    torch.testing.assert_close(time_grid(8, shift=0.0), torch.linspace(0, 1, 8))
    torch.testing.assert_close(time_grid(8, shift=1.0), torch.linspace(0, 1, 8))
    shifted = time_grid(8, shift=0.3)
    t = torch.linspace(0, 1, 8)
    torch.testing.assert_close(shifted, 0.3 * t / (1 + (0.3 - 1) * t))
    assert (
        shifted[0] == 0 and shifted[-1] == 1 and torch.all(shifted[1:-1] < t[1:-1])
    )  # s < 1: denser near noise
    assert torch.all(shift_timesteps(t, 3.0)[1:-1] > t[1:-1])
    with pytest.raises(ValueError):
        time_grid(1)


@pytest.mark.parametrize("method, model_calls", [("euler", 7), ("heun", 14)])
def test_fixed_step_solvers_evaluate_on_the_reference_grid(method, model_calls):
    seen = []

    def recording_velocity(x, t):
        seen.append(t[0].item())
        return torch.zeros_like(x)

    ode_sampler(method, steps=8, shift=0.3)(torch.zeros(2, 1), recording_velocity)
    grid = time_grid(8, shift=0.3).tolist()
    assert len(seen) == model_calls
    expected = grid[:-1] if method == "euler" else [t for pair in zip(grid[:-1], grid[1:]) for t in pair]
    assert seen == pytest.approx(expected, abs=1e-7)


def test_solver_orders_on_an_exact_gaussian_flow():
    euler = [_ode_error("euler", n) for n in (21, 41, 81)]
    heun = [_ode_error("heun", n) for n in (21, 41, 81)]
    # Halving the step halves Euler's error (order 1) and quarters Heun's (order 2).
    for coarse, fine in zip(euler, euler[1:]):
        assert 0.4 < fine / coarse < 0.6
    for coarse, fine in zip(heun, heun[1:]):
        assert 0.18 < fine / coarse < 0.32
    assert _ode_error("dopri5", 2) < 1e-6  # adaptive: only the output grid comes from steps
    assert _ode_error("heun", 250, shift=0.3) < 1e-4


def test_sde_sampler_reaches_the_data_distribution():
    z = torch.randn(20_000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    x = sde_sampler(steps=250, generator=torch.Generator().manual_seed(1))(z, gaussian_velocity)
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(STD, abs=0.02)
    # Stochastic: different from the deterministic ODE map, but reproducible from its generator.
    assert (x - (MU + STD * z)).abs().mean() > 0.05
    again = sde_sampler(steps=250, generator=torch.Generator().manual_seed(1))(z, gaussian_velocity)
    torch.testing.assert_close(x, again)
    with pytest.raises(ValueError, match="t_start"):
        sde_sampler(diffusion_form="SBDM")


def _tiny_model():
    model = LightningDiT(
        input_size=4, patch_size=1, in_channels=5, hidden_size=32, depth=1, num_heads=2, num_classes=3,
        use_swiglu=True, use_rope=True, use_rmsnorm=True,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def test_sample_api_guidance_options():
    model = _tiny_model().train()
    z, y = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 2])
    plain = sample(model, z, y, steps=6)
    assert model.training, "sample() restores the caller's mode"
    assert plain.shape == z.shape
    torch.testing.assert_close(sample(model, z, y, steps=6, cfg_scale=1.0, guidance_mode="reference"), plain)
    # An interval that starts after t = 1 never guides; one that starts at 0 always does.
    torch.testing.assert_close(sample(model, z, y, steps=6, cfg_scale=4.0, cfg_interval_start=1.5), plain)
    guided = sample(model, z, y, steps=6, cfg_scale=4.0)
    late = sample(model, z, y, steps=6, cfg_scale=4.0, cfg_interval_start=0.5)
    assert (guided - plain).abs().max() > 1e-3 and (late - guided).abs().max() > 1e-4
    reference = sample(model, z, y, steps=6, cfg_scale=4.0, guidance_mode="reference")
    assert (reference - guided).abs().max() > 1e-3
    for method in ("heun", "dopri5", "sde"):
        extra = {"generator": torch.Generator().manual_seed(0)} if method == "sde" else {}
        out = sample(model, z, y, method=method, steps=6, cfg_scale=2.0, **extra)
        assert out.shape == z.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="ODE samplers only"):
        sample(model, z, y, method="sde", shift=0.3)
