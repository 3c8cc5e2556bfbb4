"""The Tune side of a sweep (executor=ray): what runs inside one trial, and the driver's view of
its trials. A trial works in the driver's working directory, reports the node it landed on,
then calls cells.run_child (the local executor's train_cell, after a check for a FINISHED run:
a retry may follow a worker that died once its run had finished), with each epoch's val_loss and
val_acc also reported to Tune. A retried trial continues the run its dead attempt opened (found
by the trial's folder, whatever node or hostname the retry lands on) from its last.ckpt. Its
environment (tracking store, CPUs for torch threads) comes from ray.init's runtime_env
(resnet_exp/sweep/executors.py); it writes none. The module imports Ray at the top: the driver
imports it only once Ray runs (executors.py starts the trials).

    pytest tests/test_ray.py -k hand_started
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import mlflow
import pytorch_lightning as pl
import ray
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from ray import tune

from resnet_exp import schema as S
from resnet_exp.sweep.cells import FAILED, OUTCOME_KEY, ChildOutcome, run_child
from resnet_exp.sweep.progress import SweepProgress, first_line, log
from resnet_exp.tracking.resume import checkpoint_of
from resnet_exp.tracking.store import search_all, tracking_uri
from resnet_exp.tracking.training_run import ParentRun

NODE_KEY = "ray_node_id"  # a trial's first result: the node it runs on (Tune adds node_ip and pid)
NICE_KEY = "nice"  # and the priority its worker runs at
# Words of the errors Ray gives a trial whose worker process or node died: ActorDiedError ("The
# actor died unexpectedly before finishing this task."), and ActorUnavailableError when the node
# went with it ("The actor ... is unavailable: ... Socket closed").
DEATH = re.compile(r"ActorDied|NodeDied|ActorUnavailable|died unexpectedly|is unavailable", re.I)


class TuneReport(pl.Callback):
    """Each epoch's validation metrics to Tune, once the epoch (its validation included) ends;
    and, as the training starts, this node appended to the run's list of nodes (a resumed run
    keeps the nodes of its earlier attempts)."""

    def __init__(self, node: str = "") -> None:
        self.node = node

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = mlflow.active_run()
        if run is None or not self.node:
            return
        client = MlflowClient(tracking_uri())
        try:
            earlier = client.get_run(run.info.run_id).data.tags.get(S.TAG_RAY_NODES, "")
            nodes = [n for n in earlier.split(",") if n] + [self.node]
            client.set_tag(run.info.run_id, S.TAG_RAY_NODES, ",".join(nodes))
        except Exception:  # noqa: BLE001 - bookkeeping never ends a training; ray_node_id stays
            log.debug("ray_nodes of run %s not written", run.info.run_id, exc_info=True)

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
    # the driver says where the trial runs now, not after epoch 0, and warns of a low priority
    tune.report({NODE_KEY: node, NICE_KEY: os.getpriority(os.PRIO_PROCESS, 0)})
    index = trial["cell"]
    tags = {
        **parent.child_tags,
        S.TAG_RAY_NODE_ID: node,
        # the trial's folder under the sweep's storage path (get_trial_dir() is Ray's local staging copy)
        S.TAG_RAY_TRIAL_DIR: str(Path(experiment_dir) / Path(context.get_trial_dir()).name),
    }
    config = cells[index]
    earlier = dead_attempt(parent, experiment_dir, context.get_trial_id())
    if earlier is not None and checkpoint_of(earlier):
        # Tune runs one attempt of a trial at a time: the run an earlier attempt opened is dead,
        # whatever its heartbeat says, and this attempt continues it, on this node or another
        config = config.replace(resume=earlier.info.run_id)
    outcome = run_child(
        config,
        replace(parent, child_tags=tags),
        reasons[index],
        callbacks=[TuneReport(node)],
    )
    tune.report({OUTCOME_KEY: json.dumps(asdict(outcome))})


def dead_attempt(parent: ParentRun, experiment_dir: str, trial_id: str) -> Run | None:
    """The latest unfinished run that an earlier attempt of trial `trial_id` opened, marked
    KILLED if it was still RUNNING: Ray retries a trial only once its worker (or node) has died,
    so that run's process is gone even where its heartbeat is fresh. Called by the driver when
    the attempt dies and by the retry itself; None if the attempt opened no run."""
    client = MlflowClient(tracking_uri())
    # Tune's trial folders are named '<trainable>_<trial id>_<config>...', under experiment_dir
    found = [
        run
        for run in search_all(
            client,
            parent.experiment_id,
            f"tags.`{S.MLFLOW_PARENT_RUN_ID}` = '{parent.run_id}' and "
            f"tags.`{S.TAG_RAY_TRIAL_DIR}` LIKE '{experiment_dir}{os.sep}%{trial_id}%'",
        )
        if run.info.status != RunStatus.to_string(RunStatus.FINISHED)
    ]
    if not found:
        return None
    run = max(found, key=lambda r: r.info.start_time)
    if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
        client.set_tag(run.info.run_id, S.TAG_ERROR, "its Ray worker died; Ray retries the trial")
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        run = client.get_run(run.info.run_id)
    return run


def resume_epoch(run: Run) -> int | None:
    """The epoch a resume of `run` starts at (the one after its last.ckpt's), None without one."""
    import torch  # the driver has it loaded already (its checks load the initial weights)

    checkpoint = checkpoint_of(run)
    if checkpoint is None:
        return None
    return torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["epoch"] + 1


class TrialProgress(tune.Callback):
    """In the driver: each cell's start and end line (resnet_exp/sweep/progress.py) as its
    trial starts and ends, and the trial's state changes in between: the node it runs on, one
    line per death or error saying what its retry continues, completed or errored for good.
    Reads only the Trial attributes Tune documents (trial_id, config, last_result, error_file)
    and counts the failures itself. With `parent` and `experiment_dir` (this driver's trials'
    folder), a dead attempt's run is found and marked KILLED before Tune starts the retry."""

    def __init__(
        self,
        progress: SweepProgress,
        cells: list,
        numbers: list[int],
        max_failures: int,
        parent: ParentRun | None = None,
        experiment_dir: str = "",
    ) -> None:
        self.progress, self.cells, self.numbers = progress, cells, numbers
        self.max_failures = max_failures
        self.parent, self.experiment_dir = parent, experiment_dir
        self.failures: dict[str, int] = {}  # trial id -> attempts that errored
        self.nodes: dict[str, str] = {}  # trial id -> 'ip (node id)' of its latest attempt

    def _number(self, trial) -> int:
        return self.numbers[trial.config["cell"]]

    def _state(self, trial, text: str) -> None:
        log.info(
            "ray trial %s %s: %s", trial.trial_id, self.progress.label(self._number(trial)), text
        )

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if trial.trial_id not in self.failures:  # a retry was announced when its attempt died
            self.progress.started(self._number(trial), f"(ray trial {trial.trial_id})")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info) -> None:
        if NODE_KEY in result:
            node = self.nodes[trial.trial_id] = f"{result.get('node_ip')} ({result[NODE_KEY][:8]})"
            self._state(trial, f"running on node {node}, pid {result.get('pid')}")
            if result.get(NICE_KEY):
                self._state(
                    trial,
                    f"its worker runs at nice {result[NICE_KEY]} (slower beside any busy "
                    "process): start each node with RAY_worker_niceness=0 (docs/cluster.md)",
                )

    def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
        attempts = self.failures[trial.trial_id] = self.failures.get(trial.trial_id, 0) + 1
        error = trial_error(trial)
        node = self.nodes.get(trial.trial_id) or (trial.last_result or {}).get("node_ip")
        what = "died" if DEATH.search(error) else f"errored ({error})"
        self._state(
            trial,
            f"{what}{f' on node {node}' if node else ''}; attempt {attempts + 1}/{self.max_failures + 1} "
            f"{self._continues(trial)}",
        )

    def _continues(self, trial) -> str:
        """What the retry does: resume the dead attempt's run, or start the cell over."""
        if self.parent is None:
            return "retries the cell"
        try:
            run = dead_attempt(self.parent, self.experiment_dir, trial.trial_id)
        except Exception:  # noqa: BLE001 - a line of progress must not end the sweep; the retry
            log.debug("the dead attempt's run not found", exc_info=True)  # looks for it again
            return "retries the cell"
        if run is None:
            return "starts the cell (its attempt opened no run)"
        epoch = resume_epoch(run)
        if epoch is None:
            return f"starts over (run {run.info.run_id} has no last.ckpt yet)"
        return f"resumes run {run.info.run_id} from epoch {epoch}"

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._state(trial, "completed")
        text = (trial.last_result or {}).get(OUTCOME_KEY)
        if text:
            self.progress.ended(self._number(trial), ChildOutcome(**json.loads(text)))

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        attempts = self.failures[trial.trial_id] = self.failures.get(trial.trial_id, 0) + 1
        error = trial_error(trial)
        node = self.nodes.get(trial.trial_id)
        what = ("died" if DEATH.search(error) else "errored") + (f" on node {node}" if node else "")
        self._state(trial, f"{what} after {attempts} attempt{'s' if attempts > 1 else ''}: {error}")
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
