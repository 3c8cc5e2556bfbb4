"""Checkpoint files that are complete or absent.

Each checkpoint is serialized into a rewound in-memory buffer, then written to `<name>.tmp` in
its own folder, flushed to disk and renamed into place. Lightning's own save writes through a
temporary file elsewhere and copies it across filesystems, which on a full disk leaves a
truncated file under the finished name. `seconds` is the time spent on checkpoints, kept for
the run's phases (a write in a background thread was tried at stop 16 and withdrawn: see
docs/resources.md).

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
    """TorchCheckpointIO with an atomic local write; `seconds` sums the time spent saving."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0
        # Rewound, not replaced, for each save: serializing into pages already touched took
        # 0.05-0.08 s for 135 MB against 0.25 s into a fresh BytesIO, which faults every page in
        # again. A BytesIO writes in C, so a signal cannot land inside one of torch.save's writes.
        self._buffer = io.BytesIO()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        start = time.perf_counter()
        try:
            self._buffer.seek(0)
            # No CRC32 over every record: the rename after fsync is what says a file is whole,
            # and torch.load does not check it (0.26 instead of 0.39 s for 135 MB).
            with serialization.patch({"save.compute_crc32": False}):
                torch.save(checkpoint, self._buffer)
            size = self._buffer.tell()  # what is left beyond it belongs to an earlier, larger save
            with self._buffer.getbuffer()[:size] as data:  # released after: the buffer may grow
                _write_atomically(data, Path(path))
        finally:
            self.seconds += time.perf_counter() - start

    def teardown(self) -> None:
        """End of fit or test: give the buffer's memory back."""
        self._buffer = io.BytesIO()


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
