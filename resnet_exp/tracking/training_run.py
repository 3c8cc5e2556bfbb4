"""MLflow and TensorBoard for a training: its run (opened by the run scope of runs.py), tags,
artifacts, dataset inputs, and loggers that store every epoch-level metric at step = epoch index.
Under `mlflow run` (MLFLOW_RUN_ID, read in runs.py) we train into the run it created instead of
opening a second one.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db resnet-exp train --data demo --weights none --max-epochs 1
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger

from resnet_exp import schema as S
from resnet_exp.config import AUTO, TrainConfig, describe_weights
from resnet_exp.data.splits import SPLITS, DataSplits
from resnet_exp.signals import interrupts_deferred
from resnet_exp.tracking.resume import ResumePoint, heartbeat
from resnet_exp.tracking.runs import RunScope, run_scope
from resnet_exp.tracking.store import project_run_id, tracking_uri

if TYPE_CHECKING:
    from mlflow.data.meta_dataset import MetaDataset

log = logging.getLogger(__name__)


def results_dir(config: TrainConfig) -> Path:
    return Path(config.output_dir) / config.dataset_slug


def logs_dir(config: TrainConfig) -> Path:
    """`tensorboard --logdir` this folder to see every run on this dataset."""
    return results_dir(config) / "logs"


def run_folder_name(config: TrainConfig, run_id: str) -> str:
    return f"{config.run_name}-{run_id[:8]}"


def checkpoint_dir(config: TrainConfig, run_id: str) -> Path:
    return results_dir(config) / "checkpoints" / run_folder_name(config, run_id)


# --- the run's lifecycle ----------------------------------------------------------------------


@dataclass(frozen=True)
class ParentRun:
    """A sweep's parent run: its trainings open nested runs under it, in its experiment."""

    run_id: str
    experiment_id: str
    child_tags: dict[str, str] = field(default_factory=dict)
    # Params a child logs in place of its own config's: a sweep resolves precision=auto once for
    # all its children (their configs carry the result), but the params say what the user gave,
    # as on every other path, plus what the sweep measured (resolved/bf16_speedup).
    child_params: dict[str, str] = field(default_factory=dict)


@contextmanager
def training_run(
    config: TrainConfig, parent: ParentRun | None = None, point: ResumePoint | None = None
) -> Iterator[RunScope]:
    """The training's MLflow run, opened (or, under `mlflow run`, joined; or, to resume, the
    stopped run of `point` reopened) and always closed by the one run scope; the active run,
    so Lightning's logger and log_model write to it. A sweep's training opens a child of
    `parent` instead: MLFLOW_RUN_ID is then the sweep's own run. While the run is open, a
    heartbeat tells other processes that it is alive (resnet_exp/tracking/resume.py)."""
    launcher = None if parent else project_run_id()
    if launcher:
        warn_if_experiment_name_ignored(config)  # the experiment is the one `mlflow run` chose
    if launcher and point:
        _point_launcher_to(launcher, point.run_id)
    with run_scope(
        S.KIND_TRAIN,
        config.run_name,
        experiment_name=config.default_experiment_name,
        experiment_id=parent.experiment_id if parent else None,
        experiment_note=experiment_note(config.dataset_slug),
        run_id=point.run_id if point else launcher,
        parent_run_id=parent.run_id if parent else None,
        # a resumed child moves to the parent that continues it (a rerun of its sweep)
        tags={**config_tags(config), **(_child_of(parent) if parent else {})},
        active=True,
        system_metrics=True,
    ) as scope:
        with heartbeat(scope.client, scope.run_id):
            yield scope


def _child_of(parent: ParentRun) -> dict[str, str]:
    return {**parent.child_tags, S.MLFLOW_PARENT_RUN_ID: parent.run_id}


def resume_experiment_id(config: TrainConfig, parent: ParentRun | None) -> str | None:
    """Where a stopped run of this training would be: the sweep's, `mlflow run`'s or the
    config's experiment (None if that does not exist yet)."""
    if parent:
        return parent.experiment_id
    client = MlflowClient(tracking_uri())
    launcher = project_run_id()
    if launcher:
        return client.get_run(launcher).info.experiment_id
    experiment = client.get_experiment_by_name(config.default_experiment_name)
    return experiment.experiment_id if experiment else None


def _point_launcher_to(launcher: str, resumed: str) -> None:
    """`mlflow run` created a run for this launch, but the training continues an older one:
    the launcher says so (and, with no run_kind, stays out of analysis); `mlflow run` ends it."""
    client = MlflowClient(tracking_uri())
    client.set_tag(launcher, S.TAG_RESUMED_INTO, resumed)
    client.set_tag(
        launcher,
        S.MLFLOW_NOTE,
        f"This launch resumed the stopped training run {resumed}; "
        "its metrics, checkpoints and model are there.",
    )


def experiment_note(dataset: str) -> str:
    """The description of a dataset's experiment, shown at the top of it in the UI."""
    return (
        f"resnet-exp runs on {dataset}: one run per training (run_kind=train), sweeps as parent "
        "runs with a nested child per (configuration, seed) (run_kind=sweep), and analyses that "
        "rank the configurations (run_kind=analysis; open report.html in their artifacts). "
        f"Open 'Model training' to see the runs; group charts by {S.TAG_DEPTH} for each "
        "configuration's mean over seeds."
    )


@dataclass(frozen=True)
class Outcome:
    """How a training ended, for its description."""

    best_epoch: int
    epochs: int  # epochs trained (early stopping may end before max_epochs)
    val_acc: float | None  # at the best epoch
    test_acc: float | None  # of the best checkpoint
    model_uri: str


def describe_training(
    config: TrainConfig, facts: Mapping[str, str], outcome: Outcome | None = None
) -> str:
    """The run's description: configuration, data, initialisation and (once known) outcome."""
    frozen = (
        f"the stem and the first {config.freeze_blocks} of 4 stages frozen"
        if config.freeze_blocks
        else "every stage trained"
    )
    sizes = "/".join(facts.get(S.SPLIT_SIZE.format(split=name), "?") for name in SPLITS)
    text = (
        f"{config.arch_name} ({config.block} blocks {config.to_params()[S.BLOCKS]} per stage) with {frozen}, "
        f"seed {config.seed}, trained on {config.data} ({facts.get(S.NUM_CLASSES, '?')} classes; "
        f"{sizes} train/validation/test images) from {describe_weights(config.weights)}."
    )
    if outcome is None:
        return text + " Training..."
    accuracy = ", ".join(
        f"{name} {value:.4f}"
        for name, value in ((S.VAL_ACC, outcome.val_acc), (S.TEST_ACC, outcome.test_acc))
        if value is not None
    )
    return (
        f"{text} Best val_loss at epoch {outcome.best_epoch} (0-based) of {outcome.epochs} trained: "
        f"{accuracy}. Model: {outcome.model_uri}."
    )


def warn_if_experiment_name_ignored(config: TrainConfig) -> None:
    """Under `mlflow run`, the experiment is already chosen when our code starts."""
    if config.experiment_name != AUTO:
        log.warning(
            "experiment_name=%r is ignored under `mlflow run`, which already chose the "
            "experiment: use `mlflow run --experiment-name %s`",
            config.experiment_name,
            config.experiment_name,
        )


def config_tags(config: TrainConfig) -> dict[str, str]:
    return {
        S.TAG_CONFIG_HASH: config.config_hash,
        S.TAG_DEPTH: config.depth_label,
        S.TAG_ARCH: config.arch_name,
        S.TAG_DATASET: config.dataset_slug,
    }


def split_dataset(splits: DataSplits, name: str) -> MetaDataset:
    """One split as an MLflow dataset (name, source, digest): a Hub dataset's source is its id
    and split, a folder's its file URI (source type 'local')."""
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    if splits.source == "hub":  # a carved split is a part of the Hub's train split
        source = HuggingFaceDatasetSource(
            path=splits.location, split="train" if name in splits.carved else name
        )
    else:
        source = LocalArtifactDatasetSource(Path(splits.location).as_uri())
    return MetaDataset(
        source=source, name=f"{Path(splits.location).name}-{name}", digest=splits.digest(name)
    )


def log_dataset_inputs(splits: DataSplits) -> None:
    """Record the three splits as MLflow dataset inputs (name, source, digest, size)."""
    for name, context in zip(SPLITS, ("training", "validation", "testing")):
        mlflow.log_input(
            split_dataset(splits, name),
            context=context,
            tags={"rows": str(len(splits.split(name)))},
        )


def log_new_metrics(metrics: Mapping[str, float], step: int, stored: Mapping[str, int]) -> None:
    """Log to the active run the metrics not already stored at `step` or later (`stored`: a
    resumed run's latest step per metric), so that no step of a metric is stored twice."""
    new = {key: value for key, value in metrics.items() if step > stored.get(key, -1)}
    if new:
        mlflow.log_metrics(new, step=step)


def metric_at_step(run_id: str, key: str, step: int) -> float:
    """The value of an epoch metric at one epoch (epoch metrics are stored at step = epoch)."""
    values = [
        m.value for m in mlflow.MlflowClient().get_metric_history(run_id, key) if m.step == step
    ]
    if not values:
        raise RuntimeError(f"run {run_id} has no {key} at step {step}")
    return values[-1]


def log_json(data: Any, artifact_file: str) -> None:
    """A JSON artifact of the active run."""
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=False), artifact_file)


# --- Lightning loggers ---------------------------------------------------------------------------


class EpochStepMixin:
    """Store each epoch-level metric at step = epoch index and under its bare name.

    Lightning logs every metric at step = global step and names the epoch value of an
    on_step+on_epoch metric `<name>_epoch`; the UI's x-axis should read epochs, and analysis
    measures convergence in epochs. Per-step values keep their `_step` name and global step,
    and are stored only where an epoch has several of them. Losses and rates keep 6 significant
    digits, accuracies stay exact (schema.recorded). `lr` waits until the schedule moves it from
    `initial_lr`, then fills in the epochs before: a rate that never moves is the
    `learning_rate` param, not a flat curve."""

    # A resumed run: the latest step of each metric it stored before it stopped. The epoch it
    # was in when it stopped may have stored some metrics; training that epoch again must not
    # store them twice (a deterministic resume computes the same values).
    stored_steps: Mapping[str, int] = {}
    # Per-step values (train_loss_step, ...) only when an epoch logs several: a single one per
    # epoch (global steps 19, 39, 59 on the demo) repeats the epoch curve on another x-axis.
    step_curves: bool = True
    initial_lr: float | None = None  # the `learning_rate` param
    lr_moved: bool = False

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = {k: S.recorded(k, v) for k, v in metrics.items()}
        epoch = metrics.pop("epoch", None)
        per_step = {k: v for k, v in metrics.items() if k.endswith(S.STEP_SUFFIX)}
        per_epoch = {
            k.removesuffix(S.EPOCH_SUFFIX): v for k, v in metrics.items() if k not in per_step
        }
        # test_* are results, at RESULT_STEP (Lightning would log them at the epoch after the last)
        results = {k: per_epoch.pop(k) for k in list(per_epoch) if k.startswith(f"{S.TEST}_")}
        at_epoch = int(epoch) if epoch is not None else step
        for values, at in (
            (per_step if self.step_curves else {}, step),
            *self._lr_until_now(per_epoch, at_epoch),
            (per_epoch, at_epoch),
            (results, S.RESULT_STEP),
        ):
            new = {
                k: v for k, v in values.items() if at is None or at > self.stored_steps.get(k, -1)
            }
            if new:
                super().log_metrics(new, at)

    def _lr_until_now(
        self, per_epoch: dict[str, float], epoch: int | None
    ) -> list[tuple[dict[str, float], int]]:
        """Hold `lr` back (taking it out of `per_epoch`) while it is the initial rate; when it
        first moves, the initial rate at each earlier epoch. A resumed run whose rate had moved
        fills in again, and stored_steps drops what is already there."""
        if S.LR not in per_epoch or self.lr_moved or self.initial_lr is None or epoch is None:
            return []
        if math.isclose(per_epoch[S.LR], self.initial_lr, rel_tol=1e-6):  # float32 on MPS
            del per_epoch[S.LR]
            return []
        self.lr_moved = True
        return [({S.LR: S.readable(self.initial_lr)}, e) for e in range(epoch)]


class EpochMLFlowLogger(EpochStepMixin, MLFlowLogger):
    """Lightning's MLflow logger bound to our run: params and the run's status belong to
    the run scope, so it neither logs hyperparameters (they would clash with the params
    `mlflow run` logged) nor ends the run (fit ends before test does)."""

    def log_hyperparams(self, params: Any) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        with interrupts_deferred():  # an epoch's metrics are stored whole or not at all
            super().log_metrics(metrics, step)

    def finalize(self, status: str = "success") -> None:
        pass


class EpochTensorBoardLogger(EpochStepMixin, TensorBoardLogger):
    """TensorBoard with the same metric names and epoch steps as MLflow."""


def make_loggers(
    config: TrainConfig,
    run_id: str,
    stored_steps: Mapping[str, int] | None = None,
    step_curves: bool = True,
) -> list:
    mlflow_logger = EpochMLFlowLogger(run_id=run_id, tracking_uri=tracking_uri())
    tensorboard = EpochTensorBoardLogger(
        save_dir=str(logs_dir(config)),
        name="",
        version=run_folder_name(config, run_id),
        default_hp_metric=False,
    )
    for logger in (mlflow_logger, tensorboard):
        logger.stored_steps = dict(stored_steps or {})
        logger.step_curves = step_curves
        logger.initial_lr = config.learning_rate
    return [mlflow_logger, tensorboard]
