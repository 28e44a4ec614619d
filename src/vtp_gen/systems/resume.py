"""What a resumed run takes from its command line, and what it refuses to change.

A rerun of the same command resumes from the run folder's newest checkpoint.
Settings that only steer training from here on are taken from the command
line: the learning rate and the other AdamW hyperparameters (applied to the
restored optimiser, ``LatentFlowMatching.on_train_start``; stage 1 sets its
scheduled lr every step from the config), ``trainer.max_steps``, checkpoint,
logging and preview settings. Settings that define what the checkpoint is
cannot change: the model (its weights would not fit; checked by shape, see
:func:`state_dict_mismatch`) and what decides the data stream and the space
the generator is trained in (:data:`STAGE2_FIXED`). Changing one is a
one-line error that names it; a new ``run.name`` starts a new run instead.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from vtp_gen.config import ConfigError

# Stage-2 settings a resume refuses to change: the step-indexed data stream and the random draws
# are functions of them, and the multiplier sets the scale the generator has learnt.
STAGE2_FIXED = ("run.seed", "train.global_batch_size", "latents.flip_prob", "latents.multiplier")


def state_dict_mismatch(expected: dict[str, torch.Tensor]) -> Callable[[dict], str | None]:
    """A check for :func:`~vtp_gen.systems.trainer.find_resume_checkpoint`: None when a checkpoint's
    weights fit a module with ``expected`` (its ``state_dict()``), else what differs."""
    shapes = {k: tuple(v.shape) for k, v in expected.items()}

    def mismatch(checkpoint: dict) -> str | None:
        state = checkpoint.get("state_dict")
        if not isinstance(state, dict):
            return "it holds no weights"
        missing = sorted(set(shapes) - set(state))
        if missing:
            return (
                f"it lacks {missing[0]} (and {len(missing) - 1} more)"
                if len(missing) > 1
                else (f"it lacks {missing[0]}")
            )
        extra = sorted(set(state) - set(shapes))
        if extra:
            return f"it has {extra[0]}, which this model has not"
        for key, shape in shapes.items():
            if tuple(state[key].shape) != shape:
                return f"{key} is {tuple(state[key].shape)} there, {shape} in this model"
        return None

    return mismatch


class FixedSettings(L.Callback):
    """Stores the settings a resume must keep in each checkpoint, and refuses a resume that changes one."""

    def __init__(self, cfg: DictConfig, keys: tuple[str, ...] = STAGE2_FIXED):
        self.values = {key: OmegaConf.select(cfg, key) for key in keys}

    def state_dict(self) -> dict:
        return dict(self.values)

    def load_state_dict(self, state_dict: dict) -> None:
        for key, now in self.values.items():
            if key in state_dict and state_dict[key] != now:
                raise ConfigError(
                    f"{key}={now} differs from the {state_dict[key]} this run was started with; a resumed "
                    f"run keeps {key}. Set it back to resume, or choose another run.name to start a new run"
                )
