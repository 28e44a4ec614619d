"""One logger for every step: standard ``logging``, one line format, rank zero only.

    log = step_logger("stage2")
    log.info("latents: runs/x/cache")        # stdout: "[stage2] latents: runs/x/cache"

Every step's progress lines go through ``logging.getLogger("vtp_gen.<step>")``
to one handler on the ``vtp_gen`` logger, which prints ``[<step>] <message>``
to standard output. In a multi-process run only the process of global rank 0
prints (the others would repeat it line for line); warnings and errors are
printed by every rank, since a fault of one rank is news. Users tune it as any
``logging`` logger, e.g. ``logging.getLogger("vtp_gen").setLevel("WARNING")``
for a quiet run.
"""

from __future__ import annotations

import logging
import os
import sys

from lightning.fabric.utilities.rank_zero import rank_zero_only

ROOT_LOGGER = "vtp_gen"


def is_rank_zero() -> bool:
    """Global rank 0, judged from the launcher's environment (torchrun, Lightning, SLURM) or Lightning."""
    for variable in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        if int(os.environ.get(variable, "0") or 0) != 0:
            return False
    return getattr(rank_zero_only, "rank", 0) == 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_rank_zero()


class _StepFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        step = record.name.removeprefix(ROOT_LOGGER).lstrip(".") or ROOT_LOGGER
        return f"[{step}] {record.getMessage()}"


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _root() -> logging.Logger:
    root = logging.getLogger(ROOT_LOGGER)
    if not any(isinstance(h, _CurrentStdoutHandler) for h in root.handlers):
        handler = _CurrentStdoutHandler()
        handler.setFormatter(_StepFormatter())
        handler.addFilter(_RankZeroFilter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False  # one line per message, whatever the root logger's set-up
    return root


def step_logger(step: str) -> logging.Logger:
    """The logger of one step (``stage1``, ``cache``, ``eval``, ...), printing ``[step] message``."""
    _root()
    return logging.getLogger(f"{ROOT_LOGGER}.{step}")
