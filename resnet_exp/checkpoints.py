"""Checkpoint files that are complete or absent.

Each checkpoint is serialized into a rewound in-memory buffer, then written to `<name>.tmp` in
its own folder, flushed to disk and renamed into place. Lightning's own save writes through a
temporary file elsewhere and copies it across filesystems, which on a full disk leaves a
truncated file under the finished name. `wait` and `teardown` keep the interface of a write in
the background (tried at stop 16, withdrawn: see docs/resources.md). `seconds` is the time spent
on checkpoints, kept for the run's phases.

    python -c "from resnet_exp.checkpoints import AtomicCheckpointIO as A; a = A(); a.save_checkpoint({'a': 1}, '/tmp/x.ckpt'); a.teardown()"
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch.utils.serialization import config as serialization

from resnet_exp.disk import disk_error, is_disk_error

TMP_SUFFIX = ".tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with an atomic local write in the background; `seconds` sums the time
    the training thread spent saving."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._pending = None  # a write in flight: none while writes are synchronous
        # Rewound, not replaced, for each save: serializing into pages already touched takes half
        # the time of a fresh BytesIO, which faults every page in again (0.11 against 0.25 s for
        # 135 MB). A BytesIO writes in C, so a signal cannot land inside one of torch.save's writes.
        self._buffer = io.BytesIO()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        start = time.perf_counter()
        try:
            self.wait()  # the buffer is free again
            self._buffer.seek(0)
            # No CRC32 over every record: the rename after fsync is what says a file is whole,
            # and torch.load does not check it (0.26 instead of 0.39 s for 135 MB).
            with serialization.patch({"save.compute_crc32": False}):
                torch.save(checkpoint, self._buffer)
            size = self._buffer.tell()  # what is left beyond it belongs to an earlier, larger save
            # Written here, not in a background thread: with one (pooled or daemon), a training
            # stopped with Ctrl-C hung at exit in full test-suite runs, though never alone (stop 16).
            _write_atomically(self._buffer.getbuffer()[:size], Path(path))
        finally:
            self.seconds += time.perf_counter() - start

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def load_checkpoint(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self._timed_wait()
        return super().load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        self._timed_wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        """End of fit or test: every checkpoint is on disk (or its error raised) when it returns."""
        try:
            self._timed_wait()
        finally:
            self._buffer = io.BytesIO()  # memory back

    def _timed_wait(self) -> None:
        start = time.perf_counter()
        try:
            self.wait()
        finally:
            self.seconds += time.perf_counter() - start


def _write_atomically(data: memoryview, target: Path) -> None:
    with data:  # released at the end: a BytesIO with a view on it cannot grow for the next save
        _write_file(data, target)


def _write_file(data: memoryview, target: Path) -> None:
    partial = target.with_name(target.name + TMP_SUFFIX)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before the name says it is finished
        os.replace(partial, target)
    except OSError as err:
        partial.unlink(missing_ok=True)
        if is_disk_error(err):
            raise disk_error(err, need=data.nbytes, path=target) from None
        raise
