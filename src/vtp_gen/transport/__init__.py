"""Flow-matching transport (SiT-style split): path, training objective, guidance, ODE/SDE samplers.

transport = Transport(time_distribution="logit_normal", logit_mean=-0.5, logit_std=1.25, cosine_weight=1.0)
terms = transport.training_losses(model, latents, y=labels)   # terms["loss"]: (B,)
samples = sample(model, noise, labels, method="euler", steps=250, shift=0.3, cfg_scale=1.0)
"""

from vtp_gen.transport.guidance import VelocityFn, guided_velocity
from vtp_gen.transport.path import interpolate, score_from_velocity, target_velocity
from vtp_gen.transport.samplers import Sampler, ode_sampler, sample, sde_diffusion, sde_sampler
from vtp_gen.transport.timesteps import sample_training_times, shift_timesteps, time_grid
from vtp_gen.transport.transport import Transport, velocity_losses

__all__ = [
    "Sampler",
    "Transport",
    "VelocityFn",
    "guided_velocity",
    "interpolate",
    "ode_sampler",
    "sample",
    "sample_training_times",
    "score_from_velocity",
    "sde_diffusion",
    "sde_sampler",
    "shift_timesteps",
    "target_velocity",
    "time_grid",
    "velocity_losses",
]
