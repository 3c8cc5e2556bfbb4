"""MLflow and TensorBoard: one MLflow run per training, params, tags, artifacts, dataset inputs,
and loggers that store every epoch-level metric at step = epoch index.

The MLflow variables are read here and nowhere else: MLFLOW_TRACKING_URI (else MLflow's
default, sqlite:///mlflow.db in the working directory) and MLFLOW_RUN_ID, which `mlflow run`
sets for the run it created; we train into that run instead of opening a second one.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db resnet-exp train --data demo --weights none --max-epochs 1
"""

from __future__ import annotations

import json
import logging
import os
import signal
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow.entities import RunStatus
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger
from pytorch_lightning.utilities.exceptions import SIGTERMException

from resnet_exp import metrics as M
from resnet_exp.config import AUTO, TrainConfig
from resnet_exp.data import SPLITS, DataSplits
from resnet_exp.errors import ConfigError
from resnet_exp.runs import claim_project_run_id, git_tags, project_run_id, tracking_uri  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# Tags that sweeps and analysis select runs by; spelled here only.
TAG_KIND = "run_kind"  # what a run is: one of the three kinds below
KIND_TRAIN, KIND_SWEEP, KIND_ANALYSIS = "train", "sweep", "analysis"
TAG_CONFIG_HASH = "config_hash"  # TrainConfig.config_hash: equal for runs that differ only by seed
TAG_DATASET = "dataset"  # TrainConfig.dataset_slug, e.g. 'demo' or 'animal-wildlife'
TAG_DEPTH = "depth_config"  # TrainConfig.depth_label, e.g. 'b2222-f2'
TAG_SWEEP_ID = "sweep_id"  # on a sweep's parent run and on each child it trained
SWEEP_GRID_FILE = "sweep.json"  # the parent's artifact listing the grid (see resnet_exp/sweep.py)


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


@contextmanager
def tracked_run(config: TrainConfig, parent: ParentRun | None = None) -> Iterator[mlflow.ActiveRun]:
    """Open (or, under `mlflow run`, join) the training's MLflow run and always close it:
    FINISHED on success, KILLED on Ctrl-C or SIGTERM, FAILED on any other error. A sweep's
    training opens a child of `parent` instead: MLFLOW_RUN_ID is then the sweep's own run."""
    mlflow.set_tracking_uri(tracking_uri())
    run_id = project_run_id()
    if parent:
        run = mlflow.start_run(experiment_id=parent.experiment_id, parent_run_id=parent.run_id,
                               run_name=config.run_name, tags=parent.child_tags)
    elif run_id:
        run = mlflow.start_run(run_id=run_id)  # the experiment is the one `mlflow run` chose
        warn_if_experiment_name_ignored(config)
    else:
        mlflow.set_experiment(config.default_experiment_name)
        run = mlflow.start_run(run_name=config.run_name)
    try:
        yield run
    except SIGTERMException as stop:
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        # Lightning's SIGTERMException is a SystemExit without a code, i.e. exit status 0:
        # exit as a process ended by SIGTERM does (128 + 15), so callers see the failure.
        raise SystemExit(128 + signal.SIGTERM) from stop
    except (KeyboardInterrupt, SystemExit):
        # Lightning turns Ctrl-C into a graceful shutdown followed by sys.exit(1).
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def warn_if_experiment_name_ignored(config: TrainConfig) -> None:
    """Under `mlflow run`, the experiment is already chosen when our code starts."""
    if config.experiment_name != AUTO:
        log.warning("experiment_name=%r is ignored under `mlflow run`, which already chose the "
                    "experiment: use `mlflow run --experiment-name %s`", config.experiment_name,
                    config.experiment_name)


def log_params(config: TrainConfig, params: Mapping[str, str]) -> None:
    """Log params the run does not have yet. `mlflow run` already logged its parameters as the
    text given (e.g. '3e-5'), and MLflow refuses to change a param's value. A param that means
    something else (a stale MLFLOW_RUN_ID pointing at another training) is an error."""
    run_id = mlflow.active_run().info.run_id
    existing = mlflow.get_run(run_id).data.params
    clash = [k for k in existing if k in config.__dataclass_fields__ and not config.same_value(k, existing[k])]
    if clash:
        k = clash[0]
        raise ConfigError(f"run {run_id} (MLFLOW_RUN_ID) already has {k}={existing[k]!r}, but this "
                          f"training has {k}={params[k]!r}: unset MLFLOW_RUN_ID to start a new run")
    mlflow.log_params({k: v for k, v in params.items() if k not in existing})


def config_tags(config: TrainConfig) -> dict[str, str]:
    return {
        "mlflow.runName": config.run_name,
        TAG_KIND: KIND_TRAIN,
        TAG_CONFIG_HASH: config.config_hash,
        TAG_DEPTH: config.depth_label,
        "arch": config.arch_name,
        TAG_DATASET: config.dataset_slug,
        **git_tags(),
    }


def log_dataset_inputs(splits: DataSplits) -> None:
    """Record the three splits as MLflow dataset inputs (name, source, digest, size)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    for name, context in zip(SPLITS, ("training", "validation", "testing")):
        if splits.source == "hub":  # a carved split is a part of the Hub's train split
            source = HuggingFaceDatasetSource(path=splits.location,
                                              split="train" if name in splits.carved else name)
        else:
            with warnings.catch_warnings():  # MLflow warns that two local sources match
                warnings.simplefilter("ignore")
                source = resolve_dataset_source(Path(splits.location).as_uri())
        split = splits.split(name)
        dataset = MetaDataset(source=source, name=f"{Path(splits.location).name}-{name}",
                              digest=split._fingerprint[:16])
        mlflow.log_input(dataset, context=context, tags={"rows": str(len(split))})


def metric_at_step(run_id: str, key: str, step: int) -> float:
    """The value of an epoch metric at one epoch (epoch metrics are stored at step = epoch)."""
    values = [m.value for m in mlflow.MlflowClient().get_metric_history(run_id, key) if m.step == step]
    if not values:
        raise RuntimeError(f"run {run_id} has no {key} at step {step}")
    return values[-1]


def log_json(data: Any, artifact_file: str) -> None:
    mlflow.log_text(json.dumps(data, indent=2, sort_keys=False), artifact_file)


# --- Lightning loggers ---------------------------------------------------------------------------


class EpochStepMixin:
    """Store each epoch-level metric at step = epoch index and under its bare name.

    Lightning logs every metric at step = global step and names the epoch value of an
    on_step+on_epoch metric `<name>_epoch`; the UI's x-axis should read epochs, and analysis
    measures convergence in epochs. Per-step values keep their `_step` name and global step."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        per_step = {k: v for k, v in metrics.items() if k.endswith(M.STEP_SUFFIX)}
        per_epoch = {k.removesuffix(M.EPOCH_SUFFIX): v for k, v in metrics.items() if k not in per_step}
        if per_step:
            super().log_metrics(per_step, step)
        if per_epoch:
            super().log_metrics(per_epoch, int(epoch) if epoch is not None else step)


class EpochMLFlowLogger(EpochStepMixin, MLFlowLogger):
    """Lightning's MLflow logger bound to our run: params and the run's status belong to
    `tracked_run`, so it neither logs hyperparameters (they would clash with the params
    `mlflow run` logged) nor ends the run (fit ends before test does)."""

    def log_hyperparams(self, params: Any) -> None:
        pass

    def finalize(self, status: str = "success") -> None:
        pass


class EpochTensorBoardLogger(EpochStepMixin, TensorBoardLogger):
    """TensorBoard with the same metric names and epoch steps as MLflow."""


def make_loggers(config: TrainConfig, run_id: str) -> list:
    mlflow_logger = EpochMLFlowLogger(run_id=run_id, tracking_uri=tracking_uri())
    tensorboard = EpochTensorBoardLogger(save_dir=str(logs_dir(config)), name="",
                                         version=run_folder_name(config, run_id),
                                         default_hp_metric=False)
    return [mlflow_logger, tensorboard]
