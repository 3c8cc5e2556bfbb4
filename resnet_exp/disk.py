"""Disk and filesystem errors as one line a user can act on: folders are probed for writing
before any run opens, and a full disk, a read-only filesystem or a refused permission met later
becomes a DiskError naming the path (and the space needed where known). No Lightning here.

    python -c "from resnet_exp.disk import check_writable; check_writable('/proc/x', 'output_dir')"
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resnet_exp.errors import DiskError

# The errors a user fixes by freeing space or choosing another folder, not by changing code.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}  # space is missing; for the others, the right to write


def check_writable(folder: str | os.PathLike, name: str) -> Path:
    """Create `folder` if needed and really write (and delete) a probe file in it; raise
    DiskError naming the option and the folder if that fails. os.access is not enough: it says
    yes to root on a read-only mount and knows nothing of a full disk."""
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        try:
            os.write(handle, b"resnet-exp")
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as err:
        raise DiskError(
            f"{name}={str(folder)!r} is not a writable folder "
            f"({err.strerror or err}{_at(err, path)}): choose another {name}"
        ) from None
    return path


def is_disk_error(err: BaseException) -> bool:
    return isinstance(err, OSError) and not isinstance(err, DiskError) and err.errno in DISK_ERRNOS


def disk_error(
    err: OSError, need: int | None = None, path: str | os.PathLike | None = None
) -> DiskError:
    """One line for an OSError of the disk: what happened, where, and what it needed (space),
    or what to do (a folder that cannot be written)."""
    where = path or err.filename
    if isinstance(where, bytes):
        where = os.fsdecode(where)  # TensorBoard's writer names its files as bytes
    text = f"{err.strerror or err}" + (f": {where}" if where else "")
    if err.errno not in FULL_ERRNOS:
        folder = Path(where).parent if where else "the folder"
        return DiskError(f"{text}: make {folder} writable again, then run the same command")
    if need is not None:
        text += f" (needs {need / 1e6:,.1f} MB{_free(where)})"
    elif where:
        text += f" ({_free(where).removeprefix('; ')})"
    return DiskError(text)


@contextmanager
def disk_errors_in_one_line() -> Iterator[None]:
    """In the block, an OSError of the disk becomes a DiskError (one line naming the path), and
    TensorBoard's background writer thread, which meets the error first when a folder turns
    read-only or fills up, prints no traceback of its own ("Exception in thread Thread-1", 17
    lines): its writer raises the same error again in this thread at the next write or flush,
    where it becomes that one line. Other threads' errors are printed as before."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        writer = type(args.thread).__module__.startswith("tensorboard.")
        if not (writer and args.exc_value is not None and is_disk_error(args.exc_value)):
            previous(args)

    threading.excepthook = hook
    try:
        yield
    except OSError as err:
        if is_disk_error(err):
            raise disk_error(err) from None
        raise
    finally:
        threading.excepthook = previous


def _free(where: str | os.PathLike | None) -> str:
    folder = Path(where) if where else None
    while folder is not None and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder is None:
        return ""
    try:
        return f"; {shutil.disk_usage(folder).free / 1e6:,.1f} MB free there"
    except OSError:
        return ""


def _at(err: OSError, path: Path) -> str:
    return f": {err.filename}" if err.filename and str(err.filename) != str(path) else ""
