"""Checkpoint files that are complete or absent: each is written to `<name>.tmp` in its own
folder, flushed to disk, then renamed into place (Lightning's own save writes through a
temporary file elsewhere and copies it across filesystems, which on a full disk leaves a
truncated file under the finished name). The time spent writing is kept for the run's phases.

    python -c "from resnet_exp.checkpoints import AtomicCheckpointIO as A; A().save_checkpoint({'a': 1}, '/tmp/x.ckpt')"
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from resnet_exp.disk import disk_error, is_disk_error

TMP_SUFFIX = ".tmp"


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with an atomic local write; `seconds` sums the time spent saving."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = 0.0

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        start = time.perf_counter()
        target = Path(path)
        partial = target.with_name(target.name + TMP_SUFFIX)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())  # on disk before the name says it is finished
            os.replace(partial, target)
        except OSError as err:
            partial.unlink(missing_ok=True)
            if is_disk_error(err):
                raise disk_error(err, need=buffer.getbuffer().nbytes, path=target) from None
            raise
        finally:
            self.seconds += time.perf_counter() - start
