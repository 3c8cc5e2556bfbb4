"""Checkpoint files that are complete or absent, written while training goes on.

Each checkpoint is serialized in the training thread (a snapshot: the next step changes the
tensors) into a rewound in-memory buffer; a writer thread then writes it to `<name>.tmp` in its
own folder, flushes it to disk and renames it into place. Lightning's own save writes through a
temporary file elsewhere and copies it across filesystems, which on a full disk leaves a
truncated file under the finished name. One write is in flight at most: the next save, a load,
a removal and the end of fit or test wait for it, and a write that failed raises there.
`seconds` is the time the training thread spent on checkpoints (serializing and waiting), kept
for the run's phases.

    python -c "from resnet_exp.training.checkpoints import AtomicCheckpointIO as A; a = A(); a.save_checkpoint({'a': 1}, '/tmp/x.ckpt'); a.teardown()"
"""

from __future__ import annotations

import io
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch.utils.serialization import config as serialization

from resnet_exp.disk import disk_error, is_disk_error
from resnet_exp.signals import interrupts_deferred

TMP_SUFFIX = ".tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with an atomic local write in the background; `seconds` sums the time
    the training thread spent saving."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        self._pending: _BackgroundWrite | None = None
        # Rewound, not replaced, for each save: serializing into pages already touched took
        # 0.05-0.08 s for 135 MB against 0.25 s into a fresh BytesIO, which faults every page in
        # again. A BytesIO writes in C, so a signal cannot land inside one of torch.save's writes.
        self._buffer = io.BytesIO()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        with self._timed():
            self.wait()  # the buffer is free again
            self._buffer.seek(0)
            # No CRC32 over every record: the rename after fsync is what says a file is whole,
            # and torch.load does not check it (0.26 instead of 0.39 s for 135 MB).
            with serialization.patch({"save.compute_crc32": False}):
                torch.save(checkpoint, self._buffer)
            size = self._buffer.tell()  # what is left beyond it belongs to an earlier, larger save
            self._pending = _BackgroundWrite(self._buffer.getbuffer()[:size], Path(path))

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error if it failed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def load_checkpoint(self, path: str | os.PathLike, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with self._timed():
            self.wait()
        return super().load_checkpoint(path, *args, **kwargs)

    def remove_checkpoint(self, path: str | os.PathLike) -> None:
        with self._timed():
            self.wait()
        super().remove_checkpoint(path)

    def teardown(self) -> None:
        """End of fit or test: every checkpoint is on disk (or its error raised) when it returns."""
        try:
            with self._timed():
                self.wait()
        finally:
            self._buffer = io.BytesIO()  # memory back

    @contextmanager
    def _timed(self) -> Iterator[None]:
        """Add the block's seconds to `seconds`, whether it returns or raises."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start


class _BackgroundWrite:
    """One checkpoint write in a daemon thread of its own: a process that a signal ends never
    waits at exit for a writer, and an unfinished write leaves at most a .tmp file."""

    def __init__(self, data: memoryview, target: Path) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(data, target), name="checkpoint-writer",
                                       daemon=True)
        self.thread.start()

    def _run(self, data: memoryview, target: Path) -> None:
        try:
            with data:  # released at the end: a BytesIO with a view on it cannot grow for the next save
                _write_atomically(data, target)
        except BaseException as err:  # noqa: BLE001 - raised again in the training thread by result()
            self.error = err

    def result(self) -> None:
        # A signal is handled once the write is done, never inside the join: on Python 3.11 a
        # Thread.join cut by KeyboardInterrupt marks the thread finished while it still writes,
        # and the next save would then reuse a buffer that is still being written out.
        with interrupts_deferred():
            self.thread.join()
        if self.error is not None:
            raise self.error


def _write_atomically(data: memoryview, target: Path) -> None:
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
