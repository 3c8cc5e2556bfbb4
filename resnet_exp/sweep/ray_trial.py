"""The Tune side of a sweep (executor=ray): what runs inside one trial, and the driver's view of
its trials. A trial works in the driver's working directory, reports the node it landed on,
then calls cells.run_child (the local executor's train_cell, after a check for a FINISHED run:
a retry may follow a worker that died once its run had finished), with each epoch's val_loss and
val_acc also reported to Tune. Its environment (tracking store, CPUs for torch threads) comes
from ray.init's runtime_env (resnet_exp/sweep/executors.py); it writes none. The module imports
Ray at the top: the driver imports it only once Ray runs (executors.py starts the trials).

    pytest tests/test_ray.py -k two_nodes
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import ray
from ray import tune

from resnet_exp import schema as S
from resnet_exp.sweep.cells import FAILED, OUTCOME_KEY, ChildOutcome, run_child
from resnet_exp.sweep.progress import SweepProgress, first_line, log
from resnet_exp.tracking.training_run import ParentRun

NODE_KEY = "ray_node_id"  # a trial's first result: the node it runs on (Tune adds node_ip and pid)


class TuneReport(pl.Callback):
    """Each epoch's validation metrics to Tune, once the epoch (its validation included) ends."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        metrics = {
            k: float(trainer.callback_metrics[k])
            for k in (S.VAL_LOSS, S.VAL_ACC)
            if k in trainer.callback_metrics
        }
        tune.report({"epoch": trainer.current_epoch, **metrics})


def run_trial(
    trial: dict[str, Any],
    *,
    cells: list,
    reasons: list[str],
    parent: ParentRun,
    cwd: str,
    experiment_dir: str,
) -> None:
    """Train cell `trial['cell']` as a child of `parent`; the last result holds its outcome."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if Path(cwd).is_dir():  # this machine, or a shared filesystem mounted at the same path
        os.chdir(cwd)
    context = tune.get_context()
    node = ray.get_runtime_context().get_node_id()
    tune.report({NODE_KEY: node})  # the driver says where the trial runs now, not after epoch 0
    index = trial["cell"]
    tags = {
        **parent.child_tags,
        S.TAG_RAY_NODE_ID: node,
        # the trial's folder under the sweep's storage path (get_trial_dir() is Ray's local staging copy)
        S.TAG_RAY_TRIAL_DIR: str(Path(experiment_dir) / Path(context.get_trial_dir()).name),
    }
    outcome = run_child(
        cells[index],
        replace(parent, child_tags=tags),
        reasons[index],
        callbacks=[TuneReport()],
    )
    tune.report({OUTCOME_KEY: json.dumps(asdict(outcome))})


class TrialProgress(tune.Callback):
    """In the driver: each cell's start and end line (resnet_exp/sweep/progress.py) as its
    trial starts and ends, and the trial's state changes in between: the node it runs on, an
    error and its retry, completed or errored for good. Reads only the Trial attributes Tune
    documents (trial_id, config, last_result, error_file) and counts the failures itself."""

    def __init__(
        self, progress: SweepProgress, cells: list, numbers: list[int], max_failures: int
    ) -> None:
        self.progress, self.cells, self.numbers = progress, cells, numbers
        self.max_failures = max_failures
        self.failures: dict[str, int] = {}  # trial id -> attempts that errored

    def _number(self, trial) -> int:
        return self.numbers[trial.config["cell"]]

    def _state(self, trial, text: str) -> None:
        log.info(
            "ray trial %s %s: %s", trial.trial_id, self.progress.label(self._number(trial)), text
        )

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        failures = self.failures.get(trial.trial_id, 0)
        if failures == 0:
            self.progress.started(self._number(trial), f"(ray trial {trial.trial_id})")
        else:
            self._state(trial, f"retried, attempt {failures + 1} of {self.max_failures + 1}")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if NODE_KEY in result:
            self._state(
                trial,
                f"running on node {result.get('node_ip')} ({result[NODE_KEY][:8]}), "
                f"pid {result.get('pid')}",
            )

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        self.failures[trial.trial_id] = self.failures.get(trial.trial_id, 0) + 1
        self._state(trial, f"errored ({trial_error(trial)}), to be retried")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._state(trial, "completed")
        text = (trial.last_result or {}).get(OUTCOME_KEY)
        if text:
            self.progress.ended(self._number(trial), ChildOutcome(**json.loads(text)))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        attempts = self.failures[trial.trial_id] = self.failures.get(trial.trial_id, 0) + 1
        error = trial_error(trial)
        self._state(
            trial, f"errored after {attempts} attempt{'s' if attempts > 1 else ''}: {error}"
        )
        config = self.cells[trial.config["cell"]]
        # its run is closed FAILED once Tune has stopped (executors._trial_failure)
        self.progress.ended(
            self._number(trial),
            ChildOutcome(
                config.run_name,
                config.seed,
                config.config_hash,
                FAILED,
                "",
                f"Ray trial failed: {error}",
            ),
        )


def trial_error(trial) -> str:
    """The trial's latest error in one line, from the error file Tune appends to in the driver
    just before calling back: a 'Failure # N (occurred at ...)' header, then the error's text,
    whose last line of the form 'SomeError: ...' names the trial function's own exception."""
    try:
        text = Path(trial.error_file).read_text()
    except (OSError, TypeError):
        return "unknown error"
    latest = text.rsplit("Failure # ", 1)[-1].splitlines()[1:]  # the lines after the header
    named = [line.strip() for line in latest if re.match(r"\s*[\w.]+(Error|Exception): ", line)]
    return first_line(
        named[-1] if named else next((line for line in latest if line.strip()), "unknown error")
    )
