"""SIGTERM and SIGINT while a step runs: stop soon, keep what is finished, say so, exit non-zero.

A cluster's time limit or a preemption sends SIGTERM and, seconds later,
SIGKILL; Ctrl-C sends SIGINT. Lightning alone only notes a SIGTERM ("Received
SIGTERM") and lets the work go on, so the SIGKILL that follows lost whatever
was not yet saved. Inside :func:`stop_signals`:

- in a training loop (:class:`vtp_gen.systems.stop_on_signal.StopOnSignal`
  defers the signal), the first signal ends the run after the current
  optimiser step, with ``last.ckpt`` saved (stage 2 also exports its
  generator);
- anywhere else (latent caching, sampling, preview grids, evaluation) it raises
  :class:`StopRequested` at once: those loops write every shard, PNG and file
  atomically as it is finished, so stopping between two of them loses only the
  one in progress;
- a second signal always raises :class:`StopRequested` at once.

The command line prints the message of :class:`StopRequested` as one line and
exits with 128 + the signal number (143 for SIGTERM, 130 for SIGINT), as a
shell does for a process killed by that signal.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# A signal this soon after the first is the same stop arriving twice (Ctrl-C reaches every rank of the
# terminal's process group, and the launching rank forwards it too), not a second request.
REPEAT_AFTER_SECONDS = 1.0


class StopRequested(BaseException):
    """A stop signal arrived. A BaseException, like KeyboardInterrupt: no ``except Exception`` swallows it."""

    def __init__(self, signum: int, message: str = "", detailed: bool = False):
        self.signum = int(signum)
        self.detailed = detailed  # the message already says what was saved and what to do
        super().__init__(message or f"{signal_name(signum)} received")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class _State:
    def __init__(self):
        self.depth = 0  # nesting of stop_signals()
        self.requested: int | None = None  # the first signal received
        self.requested_at = 0.0
        self.deferring = 0  # > 0 inside a loop that checks requested() at its step boundaries
        self.forward: Callable[[int], None] | None = None  # passes the signal on to launched ranks
        self.previous: dict[int, object] = {}
        self.owner = 0  # the process that installed the handlers


_state = _State()


def _notice(text: str) -> None:
    # os.write, not print: a signal handler may interrupt a print in progress.
    os.write(2, f"\n[vtp-gen] {text}\n".encode())


def _handle(signum: int, frame) -> None:
    if os.getpid() != _state.owner:
        # A forked helper (a DataLoader worker) that inherited the handler: Ctrl-C and a scheduler's
        # SIGTERM reach it too. It is shut down by its parent, which stops as above.
        return
    first = _state.requested is None
    now = time.monotonic()
    if first:
        _state.requested, _state.requested_at = signum, now
    elif now - _state.requested_at < REPEAT_AFTER_SECONDS:
        return
    if _state.forward is not None:
        _state.forward(signum)
    if first and _state.deferring:
        _notice(
            f"{signal_name(signum)} received: stopping after the current step, saving a checkpoint "
            "(send it again to stop at once)"
        )
        return
    raise StopRequested(signum)


def handle(signum: int) -> None:
    """Install this module's handler for ``signum`` (Lightning replaces the SIGTERM one when a fit starts)."""
    if threading.current_thread() is threading.main_thread():
        _state.owner = os.getpid()
        signal.signal(signum, _handle)


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM / SIGINT handled as the module docstring says, for the duration (nestable)."""
    if _state.depth == 0:
        _state.requested, _state.owner = None, os.getpid()
        if threading.current_thread() is threading.main_thread():
            _state.previous = {signum: signal.getsignal(signum) for signum in SIGNALS}
            for signum in SIGNALS:
                signal.signal(signum, _handle)
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if _state.depth == 0:
            for signum, handler in _state.previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
            _state.previous = {}
            _state.forward = None


def requested() -> int | None:
    """The stop signal received so far in this step, or None."""
    return _state.requested


def note(signum: int) -> None:
    """Record a stop that another rank received (training ranks agree on stopping at the same step)."""
    if _state.requested is None:
        _state.requested = signum


def forward_to(forward: Callable[[int], None] | None) -> None:
    """Pass every stop signal on with ``forward(signum)`` (to the ranks Lightning launched) until the step ends."""
    _state.forward = forward


@contextmanager
def deferred() -> Iterator[None]:
    """Inside: the first signal is only noted; the loop checks :func:`requested` at its step boundaries."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1


def worker_ignores_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of training DataLoaders: the workers ignore SIGTERM and SIGINT.

    A scheduler signals every process of a job, Ctrl-C the whole process group.
    torch's workers die at once on SIGTERM, and their parent then fails in the
    middle of a step ("DataLoader worker ... is killed by signal") instead of
    stopping after it with a checkpoint. Ignoring it, they are shut down by
    their parent as at any end of training (or exit when it dies).
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def raise_if_requested(message: str) -> None:
    """Raise :class:`StopRequested` with ``message`` (what was saved, what to do) if a signal came."""
    if _state.requested is not None:
        raise StopRequested(
            _state.requested, f"{signal_name(_state.requested)} received: {message}", detailed=True
        )
