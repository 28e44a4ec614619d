"""One command at a time per folder: a run folder (or a latent cache) is locked while a step works in it.

Two identical commands on one folder at once used to both train into the same
checkpoints and both report done, or both write the same cache shards until
one failed to finalise. While a step runs, its folder holds ``.vtp_gen.lock``,
locked with ``fcntl.flock``: the kernel releases that lock when the process
ends, however it ends (SIGKILL included), so a dead command never blocks the
next one. The file also holds a small JSON record of the holder (pid, host,
start time, command), which the refusal message quotes. A clean exit clears the
record; a record found under a free lock is what a killed holder left behind,
and is taken over with a warning.

Only the launching process takes the lock: the ranks that torchrun or SLURM
start beside it (``RANK`` / ``SLURM_PROCID`` > 0), the processes Lightning's
DDP launcher starts for the other local ranks (``LOCAL_RANK`` > 0) and the
other nodes' processes (``NODE_RANK`` > 0) work under rank 0's lock, so ranks
never wait for each other. Re-entrant within a process (``make stage2`` runs
the cache step in process, on another folder; the scaling study runs steps one
after another).
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: folders are not locked
    fcntl = None

LOCK_FILE = ".vtp_gen.lock"
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
# File systems without flock (some network mounts) answer with one of these: run unlocked, with a warning.
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

_held: dict[str, int] = {}  # lock file -> nesting depth, in this process


class FolderInUseError(RuntimeError):
    """Another command is working in this folder right now."""


def launching_process() -> bool:
    """True unless the environment says this process is a rank other than zero."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_VARIABLES)


def holder_record(step: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "step": step,
        "command": shlex.join(sys.argv) if sys.argv and sys.argv[0] else "(python)",
    }


def _read_record(fd: int) -> dict | None:
    try:
        text = os.pread(fd, 1 << 16, 0).decode("utf-8", errors="replace").strip()
        record = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(fd: int, record: dict | None) -> None:
    # Best effort: the record only words the refusal message; a full disk must not stop the step here.
    try:
        os.ftruncate(fd, 0)
        if record is not None:
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    except OSError:
        pass


def _busy_message(folder: Path, step: str, holder: dict | None) -> str:
    if holder is None:  # it has the lock but has not written its record yet
        return (
            f"{folder} is in use by another vtp-gen command that is just starting; "
            f"wait for it to end (or stop it), then rerun this {step} command"
        )
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    where = "" if host == socket.gethostname() else f" on host {host}"
    return (
        f"{folder} is in use: pid {pid} on {host} has been running `{holder.get('command', '?')}` there "
        f"since {holder.get('since', '?')}; wait for it to end or stop it (kill {pid}{where}), then rerun "
        f"this {step} command (it resumes where that one stopped)"
    )


def _stale_warning(folder: Path, previous: dict) -> str:
    pid, host = previous.get("pid", "?"), previous.get("host", "?")
    text = (
        f"{folder}: taking over the lock left by pid {pid} on {host} "
        f"(`{previous.get('command', '?')}`, since {previous.get('since', '?')}), which ended without "
        "releasing it (killed?)"
    )
    if host != socket.gethostname():
        text += (
            "; if that command still runs on its host, this file system does not share locks between "
            "hosts: stop one of the two"
        )
    return text


_lock_fds: set[int] = set()  # descriptors of the locks this process holds


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the inherited lock descriptors.

    flock belongs to the open file, which a fork shares: a worker that kept its
    copy would hold the folder after its parent was killed, and a rerun would be
    refused until the orphan exited. The parent's own descriptors are untouched.
    """
    for fd in list(_lock_fds):
        try:
            os.close(fd)
        except OSError:
            pass
    _lock_fds.clear()
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextmanager
def hold_folder(folder: str | Path, step: str) -> Iterator[None]:
    """Hold ``folder`` for ``step`` (created if missing); :class:`FolderInUseError` when another holds it."""
    if not launching_process() or fcntl is None:
        yield
        return
    folder = Path(folder)
    created = []  # the folders made here for the lock, deepest first: removed again if nothing else came
    missing = folder
    while not missing.exists():
        created.append(missing)
        missing = missing.parent
    folder.mkdir(parents=True, exist_ok=True)
    key = str((folder / LOCK_FILE).resolve())
    if key in _held:
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_record(fd)
        os.close(fd)
        raise FolderInUseError(_busy_message(folder, step, holder)) from None
    except OSError as error:
        os.close(fd)
        if error.errno not in _NO_LOCKING:
            raise
        warnings.warn(
            f"{folder}: this file system does not support locks ({error.strerror}), so two commands on "
            "this folder at once are not prevented",
            stacklevel=3,
        )
        yield
        return
    previous = _read_record(fd)
    if previous is not None and previous.get("pid") != os.getpid():
        warnings.warn(_stale_warning(folder, previous), stacklevel=3)
    _write_record(fd, holder_record(step))
    _held[key] = 1
    _lock_fds.add(fd)
    try:
        yield
    finally:
        if _held.get(key) == 1:
            del _held[key]
            try:
                if created and [p.name for p in folder.iterdir()] == [LOCK_FILE]:
                    # The step stopped before writing anything (say a config error): leave no folder.
                    os.unlink(key)
                    for made in created:
                        made.rmdir()
                else:
                    _write_record(fd, None)  # a clean exit leaves no record behind
            except OSError:
                pass
            finally:
                _lock_fds.discard(fd)
                os.close(fd)  # releases the lock
