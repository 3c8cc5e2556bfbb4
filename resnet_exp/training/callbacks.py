"""Training instrumentation: epoch wall time and training throughput, a row of the run's
`timing/epochs.csv` per epoch.

pytest tests/test_training.py -k direct_run   # checks epoch_time_s and train_images_per_s
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytorch_lightning as pl
import torch

from resnet_exp import schema as S
from resnet_exp.signals import interrupt_point
from resnet_exp.tracking import timing

log = logging.getLogger(__name__)
SUMMARY = (S.TRAIN_LOSS, S.TRAIN_ACC, S.VAL_LOSS, S.VAL_ACC)


class EpochTimer(pl.Callback):
    """Records `epoch_time_s` (the whole epoch, validation included: what an epoch costs) and
    `train_images_per_s` (training images per second of the epoch's training part, data
    loading included) in the run's epochs table. A resumed run passes the rows it has: those
    of the epochs before the one it restarts stay."""

    pending_line = ""

    def __init__(self, run_id: str, earlier: list[dict] | None = None) -> None:
        self.run_id = run_id
        self.rows = list(earlier or [])

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_pending_line()
        interrupt_point("fit", trainer.current_epoch)
        self.epoch_start = time.perf_counter()
        self.train_seconds = 0.0
        self.images = 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Up to the last training batch, data loading included; validation comes after it.
        if batch_idx + 1 == trainer.num_training_batches and pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # count the GPU work still queued, not only its launch
        self.train_seconds = time.perf_counter() - self.epoch_start
        self.images += len(batch[1])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        rate = self.images / self.train_seconds if self.train_seconds > 0 else None
        row = timing.epoch_row(epoch, time.perf_counter() - self.epoch_start, rate)
        self.rows = [r for r in self.rows if int(r[S.EPOCH]) < epoch] + [row]
        timing.log_epoch_times(self.run_id, self.rows)
        # One line per epoch, readable where the progress bar is off (logs, CI, pipes).
        # Printed once Lightning has stored the epoch's metrics (right after this hook), so a
        # Ctrl-C never leaves an epoch shown but unrecorded.
        values = {k: trainer.callback_metrics[k] for k in SUMMARY if k in trainer.callback_metrics}
        shown = " ".join(f"{k}={float(v):.4f}" for k, v in values.items())
        seconds = time.perf_counter() - self.epoch_start
        self.pending_line = f"epoch {trainer.current_epoch}: {shown} ({seconds:.1f} s)"

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print_pending_line()

    def _print_pending_line(self) -> None:
        if self.pending_line:
            log.info("%s", self.pending_line)
            self.pending_line = ""


class StoppedStaysStopped(pl.Callback):
    """A run resumed after early stopping had ended its fit (it was stopped during test or
    model logging) trains no further epoch: Lightning restores EarlyStopping's state from
    last.ckpt, but not the trainer's decision to stop."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        stopping = trainer.early_stopping_callback
        if stopping is not None and stopping.stopped_epoch > 0:
            trainer.should_stop = True


class PlateauStepBeforeCheckpoint(pl.Callback):
    """ReduceLROnPlateau steps when validation ends, before last.ckpt is written (Lightning runs
    checkpoint callbacks last), so the checkpoint holds the schedule the next epoch trains with.
    Lightning steps it after the epoch's end instead, and a fit resumed from a checkpoint written
    at validation end skips that epoch's end: each resume would lose one step of the schedule
    (the rate halved one epoch later per resume). ResNetClassifier.lr_scheduler_step leaves
    plateau schedulers to this callback."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for config in trainer.lr_scheduler_configs:
            value = trainer.callback_metrics.get(config.monitor)
            # without it, EarlyStopping (strict, same monitor) has already said so
            if config.reduce_on_plateau and value is not None:
                config.scheduler.step(value)
