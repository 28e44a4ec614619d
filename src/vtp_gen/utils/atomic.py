"""Write a file so that readers see the old version or the complete new one, never a partial file.

Every file a run produces that a later step trusts (checkpoints, latent
shards and their records, statistics, manifests, exported weights, sample
PNGs and .npz files, reports) is written through :func:`atomic_output`: the
content goes to a hidden temporary file beside the target, which is renamed
onto the target only when the write finished. If the write fails (a full
disk, a file-size limit, an exception in the producer), the temporary file is
removed and the error propagates (an ``OSError`` with ``ENOSPC`` or ``EFBIG``
naming the target when space ran out); the target keeps its previous
content, or stays absent. A SIGKILL can still leave a hidden ``.<name>.tmp<pid>`` file,
which nothing reads.
"""

from __future__ import annotations

import errno
import json
import os
import re
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMPORARY_NAME = re.compile(r"^\..+\.tmp\d+$")


def is_temporary_name(name: str) -> bool:
    """A name :func:`atomic_output` writes to (left behind only by a killed process)."""
    return bool(_TEMPORARY_NAME.match(name))


@contextmanager
def atomic_output(path: str | os.PathLike, fsync: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write to; on success it replaces ``path``, on failure it is deleted.

    ``fsync`` flushes the file to the device before the rename, so that after
    a power loss the name never points at a file whose data did not reach the
    disk (worth it for large, expensive files: checkpoints, latent shards).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as error:
        disk_error = out_of_space_error(error, tmp, path)
        if disk_error is not None:
            raise disk_error from error
        raise
    finally:
        tmp.unlink(missing_ok=True)


OUT_OF_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_LOW_SPACE_BYTES = 1 << 20


def out_of_space_error(error: Exception, tmp: Path, target: Path) -> OSError | None:
    """``error`` as an ``OSError`` naming ``target`` when the write failed for lack of space, else None.

    torch.save and safetensors report a failed write as a RuntimeError or
    their own error type, not as the OSError underneath; a full disk or a
    file-size limit reached by the temporary file is recognised here, so
    callers (and the CLI's one-line error) see what actually happened.
    """
    if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
        return OSError(error.errno, os.strerror(error.errno), str(target))
    try:
        written = tmp.stat().st_size
        stats = os.statvfs(tmp.parent)
    except OSError:
        return None
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and written >= limit:
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(target))
    if stats.f_bavail * stats.f_frsize < _LOW_SPACE_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
    return None


def write_bytes_atomic(path: str | os.PathLike, data: bytes, fsync: bool = False) -> Path:
    with atomic_output(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: dict) -> Path:
    """``payload`` as indented, key-sorted JSON, written atomically (a reader never sees half a file)."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
