"""Folders that are complete or absent, never half-written: build in a temporary sibling, then
rename it into place. Used for the demo dataset, the preprocessed image store and the
analysis folder.

    python -c "from resnet_exp.atomic import build_atomically; \
print(build_atomically(__import__('pathlib').Path('/tmp/x'), lambda d: None))"
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def build_atomically(target: Path, write: Callable[[Path], None]) -> bool:
    """Create folder `target` by calling `write(staging_folder)` unless it exists already.

    True if this call built it; False if it was there (or a concurrent process, e.g. another
    sweep child, finished it first). An interrupted build leaves at most a hidden `.<name>-*`
    folder, which nothing mistakes for a finished one; an error in `write` leaves nothing."""
    if target.is_dir():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(staging)
        share_like_umask(staging)
        os.replace(staging, target)
        return True
    except OSError:
        if not target.is_dir():  # a concurrent process did not finish it either
            raise
        return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_atomically(target: Path, write: Callable[[Path], None]) -> Path:
    """Build `target` by calling `write(staging_folder)` in a hidden sibling, then swap it in.

    Unlike build_atomically, it replaces an existing folder (an analysis replaces the previous
    one). Between the two renames `target` is briefly absent, never half-written; an
    error in `write` leaves the previous analysis as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-new-", dir=target.parent))
    retired = target.parent / f".{target.name}-old-{staging.name.rsplit('-', 1)[-1]}"
    try:
        write(staging)
        share_like_umask(staging)
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target


def share_like_umask(folder: Path) -> None:
    """Give a finished folder the modes a plain mkdir/open would have: mkdtemp makes it 0700,
    which locks colleagues sharing a data_dir out. Folders 0o777 & ~umask, files 0o666 & ~umask
    (with the usual 022: 0755 and 0644)."""
    umask = current_umask()
    for path in (folder, *folder.rglob("*")):
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def current_umask() -> int:
    """The process umask, read from /proc where possible: os.umask() can only read it by
    setting it, which races with threads creating files meanwhile."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask
