"""SIGTERM / SIGINT in Lightning loops: training stops after the current step with ``last.ckpt`` saved.

Lightning installs its own SIGTERM handler when a fit or predict starts: in
training it ends the fit with an exception and no checkpoint, in predict loops
it lets the work go on. :class:`StopOnSignal` puts the handler of
:mod:`vtp_gen.utils.stop_signals` back in its place, and in training:

- defers the first signal to the end of the current optimiser step; there
  every rank learns whether any rank was signalled (one scalar all-reduce per
  step, only with several ranks), so all stop at the same step;
- saves ``<checkpoint_dir>/last.ckpt`` (a full resume point, like the step
  checkpoints) and ends the fit;
- with ``raise_after_fit`` (stage 1), raises :class:`StopRequested` when the fit
  ends, saying what was saved; stage 2 instead exports its generator first and
  raises itself.

The launching process passes each signal on to the ranks Lightning started
(as Lightning's own handler does).
"""

from __future__ import annotations

import signal
from contextlib import ExitStack
from pathlib import Path

import lightning as L
import torch

from vtp_gen.utils import stop_signals


class StopOnSignal(L.Callback):
    def __init__(self, checkpoint_dir: str | Path | None = None, raise_after_fit: bool = True):
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.raise_after_fit = raise_after_fit
        self.stopped_at: int | None = None  # the optimiser step the run stopped after
        self.saved: Path | None = None
        self._deferring = ExitStack()

    def _take_over(self, trainer) -> None:
        stop_signals.handle(signal.SIGTERM)
        launcher = trainer.strategy.launcher
        if trainer.is_global_zero and launcher is not None and hasattr(launcher, "kill"):
            stop_signals.forward_to(launcher.kill)

    # ------------------------------------------------------------------ training
    def on_train_start(self, trainer, pl_module) -> None:
        self.stopped_at, self.saved = None, None
        self._take_over(trainer)
        self._deferring.enter_context(stop_signals.deferred())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        signum = stop_signals.requested() or 0
        if trainer.world_size > 1:
            agreed = trainer.strategy.reduce(torch.tensor(signum, device=pl_module.device), reduce_op="max")
            signum = int(agreed)
        if not signum or self.stopped_at is not None:
            return
        stop_signals.note(signum)
        self.stopped_at = trainer.global_step
        if self.checkpoint_dir is not None:
            self.saved = self.checkpoint_dir / "last.ckpt"
            trainer.save_checkpoint(self.saved, weights_only=False)  # every rank calls it; rank 0 writes
        trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self._deferring.close()
        if self.raise_after_fit and self.stopped_at is not None:
            saved = f"checkpoint {self.saved} saved" if self.saved else "stopped"
            stop_signals.raise_if_requested(
                f"stopped after step {self.stopped_at}, {saved}; rerun the same command to resume"
            )

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._deferring.close()

    # ------------------------------------------------------------------ predict loops
    def on_predict_start(self, trainer, pl_module) -> None:
        self._take_over(trainer)
