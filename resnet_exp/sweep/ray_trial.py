"""What runs inside one Ray Tune trial of a sweep (executor=ray): the driver's tracking store and
working directory, torch threads that follow the trial's CPUs, then the same `_run_child` the
local executor calls, with each epoch's val_loss and val_acc also reported to Tune. Imported
only in Ray's worker processes (resnet_exp/sweep/executors.py starts the trials).

    pytest tests/test_ray.py -k two_nodes
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import ray
from ray import tune

from resnet_exp import schema as S
from resnet_exp.sweep.cells import OUTCOME_KEY
from resnet_exp.hardware import CPUS_VARIABLE
from resnet_exp.tracking.store import claim_project_run_id
from resnet_exp.tracking.training_run import ParentRun


class TuneReport(pl.Callback):
    """Each epoch's validation metrics to Tune, once the epoch (its validation included) ends."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {k: float(trainer.callback_metrics[k]) for k in (S.VAL_LOSS, S.VAL_ACC)
                   if k in trainer.callback_metrics}
        tune.report({"epoch": trainer.current_epoch, **metrics})


def run_trial(trial: dict[str, Any], *, cells: list, reasons: list[str], parent: ParentRun,
              env: dict[str, str], cwd: str, experiment_dir: str, run_child) -> None:
    """Train cell `trial['cell']` as a child of `parent`; the last result holds its outcome."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.update(env)
    claim_project_run_id()  # never join the run `mlflow run` made for the driver
    if Path(cwd).is_dir():  # this machine, or a shared filesystem mounted at the same path
        os.chdir(cwd)
    context = tune.get_context()
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    os.environ[CPUS_VARIABLE] = str(max(1, int(cpus)))  # torch threads = the trial's CPUs
    index = trial["cell"]
    tags = {**parent.child_tags, S.TAG_RAY_NODE_ID: ray.get_runtime_context().get_node_id(),
            # the trial's folder under the sweep's storage path (get_trial_dir() is Ray's local staging copy)
            S.TAG_RAY_TRIAL_DIR: str(Path(experiment_dir) / Path(context.get_trial_dir()).name)}
    outcome = run_child(cells[index], ParentRun(parent.run_id, parent.experiment_id, tags), reasons[index],
                        callbacks=[TuneReport()])
    tune.report({OUTCOME_KEY: json.dumps(asdict(outcome))})
