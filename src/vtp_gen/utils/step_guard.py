"""What every pipeline step's ``run(cfg)`` runs under: its folder's lock and the stop-signal handling.

    @guarded_step("cache", cache_folder, on_stop="finished shards are kept; rerun the same command to resume")
    def run(cfg): ...

See :mod:`vtp_gen.utils.run_lock` (one command per folder) and
:mod:`vtp_gen.utils.stop_signals` (SIGTERM / SIGINT).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from vtp_gen.utils.run_lock import hold_folder
from vtp_gen.utils.stop_signals import StopRequested, requested, signal_name, stop_signals


def guarded_step(step: str, folder_of: Callable, on_stop: str) -> Callable:
    """Decorator: hold ``folder_of(cfg)`` and handle stop signals while the step runs.

    ``on_stop`` completes the message of a stop that came outside a training
    loop (which says itself what it saved): what is kept and how to go on.
    """

    def wrap(run: Callable) -> Callable:
        @functools.wraps(run)
        def guarded_run(cfg, *args, **kwargs):
            with stop_signals(), hold_folder(folder_of(cfg), step):
                try:
                    return run(cfg, *args, **kwargs)
                except StopRequested as stop:
                    if stop.detailed:
                        raise
                    message = f"{signal_name(stop.signum)} received during {step}: {on_stop}"
                    raise StopRequested(stop.signum, message, detailed=True) from None
                except Exception as error:
                    # After a stop signal, helpers die too: a scheduler signals the whole process group,
                    # and DataLoader workers then report "killed by signal" in place of the stop.
                    signum = requested()
                    if signum is None:
                        raise
                    lines = str(error).strip().splitlines()
                    what = type(error).__name__ + (f": {lines[0]}" if lines else "")
                    message = (
                        f"{signal_name(signum)} received during {step}: {on_stop} (stopping raised {what})"
                    )
                    raise StopRequested(signum, message, detailed=True) from error

        return guarded_run

    return wrap
