"""How a sweep runs its cells: `local` trains them one after another in this process; `ray`
makes each (configuration, seed) one Ray Tune trial, on this machine or on a cluster
(docs/cluster.md). Either way each cell goes through resnet_exp/sweep/cells.py, so skipping
FINISHED cells, recording failures and resuming a partly trained run hold alike; the driver
(this process) owns the one parent run. Ray is imported only when executor=ray.

    resnet-exp sweep --executor ray --data demo --weights none --image-size 32 --max-epochs 2 --seeds 2
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mlflow import MlflowClient
from mlflow.entities import RunStatus

from resnet_exp import schema as S
from resnet_exp.compat import ray_worker_priority
from resnet_exp.errors import ConfigError
from resnet_exp.signals import sigterm_as_ctrl_c
from resnet_exp.sweep.cells import (
    FAILED,
    OUTCOME_KEY,
    ChildOutcome,
    new_attempt,
    record_failure,
    skip_if_finished,
    train_cell,
)
from resnet_exp.sweep.grid import SweepGrid
from resnet_exp.sweep.progress import SweepProgress, slots
from resnet_exp.tracking.runs import ERROR_TEXT_LIMIT
from resnet_exp.tracking.store import search_all, tracking_uri

if TYPE_CHECKING:
    from resnet_exp.config import TrainConfig
    from resnet_exp.tracking.training_run import ParentRun

log = logging.getLogger(__name__)
# The tracking server's credentials stay in the environment of the processes that start Ray's:
# Ray writes a runtime_env into its logs (runtime_env_agent.log) and onto each new worker's
# command line, so they never go there (see trial_variables).
CREDENTIAL_VARIABLES = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
# how to reach the server
TLS_VARIABLES = (
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
)


@contextmanager
def open_executor(grid: SweepGrid) -> Iterator[LocalExecutor | RayExecutor]:
    """The grid's executor, ready to run cells; Ray (if this process started it) stops at the end."""
    if grid.parsed("executor") == "local":
        yield LocalExecutor()
        return
    executor = RayExecutor(grid)
    try:
        yield executor
    finally:
        executor.shutdown()


class LocalExecutor:
    """The cells one after another, in this process."""

    def __init__(self) -> None:
        self.progress = SweepProgress(at_once=1)

    def run(
        self, cells: Sequence[TrainConfig], parent: ParentRun, reasons: Sequence[str] = ()
    ) -> list[ChildOutcome]:
        reasons = list(reasons) or [""] * len(cells)
        outcomes = []
        for number, config, reason in zip(
            self.progress.add([c.run_name for c in cells]), cells, reasons
        ):
            outcome = skip_if_finished(config, parent, reason)  # a finished cell never "starts"
            if outcome is None:
                self.progress.started(number)
                outcome = train_cell(config, parent, reason)
            self.progress.ended(number, outcome)
            outcomes.append(outcome)
        return outcomes


def ray_settings(start_here: bool) -> dict[str, str]:
    """Ray's and Tune's own settings, applied to this process's environment just before Ray is
    imported and started: the driver reads them (Tune's output and Ctrl-C handling), and the Ray
    processes it starts here inherit them."""
    settings = {
        # Trials keep the driver's working directory, so relative data_dir and output_dir mean
        # the same there (Tune passes this one on to the trials' processes on every node).
        "RAY_CHDIR_TO_TRIAL_DIR": "0",
        # No warnings about migrating to Ray Train's V2 API, which a Tune-only sweep does not use.
        "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
        # Ctrl-C reaches our run scope instead of Tune's graceful-stop handler.
        "TUNE_DISABLE_SIGINT_HANDLER": "1",
        # verbose=0 silences only the old output engine: the new one still prints its
        # configuration box, where results go, and a table per errored trial.
        "RAY_AIR_NEW_OUTPUT": "0",
        # A trial's error is one line of TrialProgress's (ray_trial.py), not a 30-line traceback
        # per failed attempt from Tune's controller.
        "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    }
    if start_here:  # trials at normal priority: a private Ray setting (resnet_exp/compat.py)
        settings = {**ray_worker_priority(os.environ), **settings}
    return settings


def trial_variables(cpus: float) -> dict[str, str]:
    """What a trial's process reads from its environment, for ray.init's runtime_env, which
    reaches every worker of the job, on a cluster started by hand too: the tracking store and
    how to reach it, and the trial's CPUs as the cap on its torch threads (resnet_exp/hardware.py).
    Nothing secret: a tracking URI with a password in it stays out, like the credentials."""
    from resnet_exp.hardware import CPUS_VARIABLE

    uri = tracking_uri()
    return {
        CPUS_VARIABLE: str(max(1, int(cpus))),
        **({"MLFLOW_TRACKING_URI": uri} if urlsplit(uri).password is None else {}),
        **{k: os.environ[k] for k in TLS_VARIABLES if os.environ.get(k)},
    }


class RayExecutor:
    """One Ray Tune trial per cell; cells already FINISHED are skipped here, without a trial."""

    def __init__(self, grid: SweepGrid) -> None:
        self.address = grid.parsed("ray_address")
        self.resources = grid.parsed("trial_resources")
        self.resources_text = grid.trial_resources.strip()
        self.max_concurrent = grid.parsed("max_concurrent_trials") or None
        self.max_failures = grid.parsed("max_failures")
        # Ray's settings before `import ray` (some are read when it is imported), the trials'
        # variables as it starts: the one place where this sweep sets an environment.
        os.environ.update(ray_settings(start_here=not self.address))
        import ray

        self.started = not ray.is_initialized()
        if self.started:
            sigterm = signal.getsignal(signal.SIGTERM)
            # address '' means a Ray of our own here ("local"), never one that `ray start` left
            # running on this machine, which ray.init() without an address would join
            ray.init(
                address=self.address or "local",
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                runtime_env={"env_vars": trial_variables(self.resources.get("cpu", 1.0))},
            )
            if threading.current_thread() is threading.main_thread() and sigterm is not None:
                # ray.init makes SIGTERM a sys.exit(15), with a stack dump from Ray's failure-signal
                # handler; the run scope's handler ends the parent KILLED and exits 143 (while
                # Tune waits, through signals.sigterm_as_ctrl_c)
                signal.signal(signal.SIGTERM, sigterm)
        else:
            log.warning(
                "ray: joining the Ray this process started earlier: its trials read "
                "MLFLOW_TRACKING_URI and their CPUs from that job's runtime_env"
            )
        if self.address and any(os.environ.get(k) for k in CREDENTIAL_VARIABLES):
            log.info(
                "ray: the trials read the tracking server's credentials from the environment "
                "of each node's `ray start`; the driver does not send them (docs/cluster.md)"
            )
        self.wanted = self.trial_resources()
        cpu, gpu = self.wanted.get("cpu", 1.0), self.wanted.get("gpu", 0.0)
        nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
        fit = slots(nodes, cpu, gpu)
        if fit == 0:  # Tune would wait for ever for a trial that no node can hold: say so now
            largest = ", ".join(f"cpu={n.get('CPU', 0):g} gpu={n.get('GPU', 0):g}" for n in nodes)
            self.shutdown()
            raise ConfigError(
                f"trial_resources={self.resources_text} asks for cpu={cpu:g} gpu={gpu:g} per "
                f"trial, more than any node of the Ray cluster has ({largest}): ask for less, or "
                "add nodes"
            )
        self.progress = SweepProgress(at_once=min(fit, self.max_concurrent or fit))

    def shutdown(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()

    def trial_resources(self) -> dict[str, float]:
        """trial_resources, or for `auto` one CPU plus one GPU where the cluster has GPUs."""
        import ray

        if self.resources:
            return dict(self.resources)
        return {"cpu": 1.0, **({"gpu": 1.0} if ray.cluster_resources().get("GPU", 0) >= 1 else {})}

    def run(
        self, cells: Sequence[TrainConfig], parent: ParentRun, reasons: Sequence[str] = ()
    ) -> list[ChildOutcome]:
        reasons = list(reasons) or [""] * len(cells)
        numbers = self.progress.add([c.run_name for c in cells])
        outcomes: dict[int, ChildOutcome] = {}
        for i, config in enumerate(cells):
            skipped = skip_if_finished(config, parent, reasons[i])
            if skipped:
                outcomes[i] = skipped
                self.progress.ended(numbers[i], skipped)
        todo = [i for i in range(len(cells)) if i not in outcomes]
        if todo:
            outcomes.update(self._trials(cells, reasons, todo, numbers, parent))
        return [outcomes[i] for i in range(len(cells))]

    def _trials(
        self,
        cells: Sequence[TrainConfig],
        reasons: list[str],
        todo: list[int],
        numbers: list[int],
        parent: ParentRun,
    ) -> dict[int, ChildOutcome]:
        import ray
        from ray import tune

        from resnet_exp.sweep.ray_trial import TrialProgress, run_trial

        sid = parent.child_tags.get(S.TAG_SWEEP_ID, "sweep")
        storage = Path(cells[0].output_dir).resolve() / "ray" / sid
        name = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"  # this driver's trials
        resources = self.wanted
        trainable = tune.with_resources(
            tune.with_parameters(
                run_trial,
                cells=list(cells),
                reasons=reasons,
                parent=parent,
                cwd=os.getcwd(),
                experiment_dir=str(storage / name),
            ),
            {"cpu": resources.get("cpu", 1.0), "gpu": resources.get("gpu", 0.0)},
        )
        tuner = tune.Tuner(
            trainable,
            param_space={"cell": tune.grid_search(todo)},
            # reuse_actors: a later trial runs in an earlier one's process, as the local loop runs every
            # cell in one: torch, Lightning and MLflow are imported once per worker, not per trial
            tune_config=tune.TuneConfig(
                max_concurrent_trials=self.max_concurrent, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(storage),
                verbose=0,
                callbacks=[
                    TrialProgress(
                        self.progress,
                        cells,
                        numbers,
                        self.max_failures,
                        parent,
                        str(storage / name),
                    )
                ],
                failure_config=tune.FailureConfig(max_failures=self.max_failures),
            ),
        )
        log.info(
            "ray: %d trials of %s each, %d at once, results under %s",
            len(todo),
            resources,
            min(self.progress.at_once, len(todo)),
            storage / name,
        )
        try:
            # Ray's waits let only Ctrl-C through: SIGTERM unwinds as Ctrl-C and still exits 143
            with sigterm_as_ctrl_c():
                results = tuner.fit()
        except BaseException:
            # Ctrl-C, SIGTERM or a Tune error: stop the trials, then close the runs they left open.
            ray.shutdown()
            self.started = False
            _close_open_children(
                parent, storage / name, RunStatus.KILLED, "the sweep's driver was interrupted"
            )
            raise
        outcomes: dict[int, ChildOutcome] = {}
        for result in results:
            index = result.config["cell"]
            text = (result.metrics or {}).get(OUTCOME_KEY)
            if text:
                outcomes[index] = ChildOutcome(**json.loads(text))
            else:
                outcomes[index] = _trial_failure(
                    cells[index],
                    reasons[index],
                    parent,
                    storage / name,
                    f"Ray trial failed: {result.error}",
                )
        return outcomes


def _trial_failure(
    config: TrainConfig, reason: str, parent: ParentRun, experiment: Path, error: str
) -> ChildOutcome:
    """A trial that ended without an outcome (its worker died more than max_failures times):
    its child run, left RUNNING by the dead worker, ends FAILED; if none was opened, one is
    recorded FAILED so that the UI and the next sweep see it."""
    error = error[:ERROR_TEXT_LIMIT]
    log.debug("%s failed: %s", config.run_name, error)  # TrialProgress said it
    closed = _close_open_children(parent, experiment, RunStatus.FAILED, error, config)
    run_id = closed[-1] if closed else record_failure(config, new_attempt(parent, reason), error)
    return ChildOutcome(
        config.run_name, config.seed, config.config_hash, FAILED, run_id, error, reason
    )


def _close_open_children(
    parent: ParentRun,
    experiment: Path,
    status: int,
    error: str,
    config: TrainConfig | None = None,
) -> list[str]:
    """End the RUNNING children that this driver's trials (under `experiment`) opened, or only
    those of `config`'s cell: a worker killed by Ray or by a signal cannot close its run."""
    client = MlflowClient(tracking_uri())
    found = search_all(
        client,
        parent.experiment_id,
        f"tags.{S.MLFLOW_PARENT_RUN_ID} = '{parent.run_id}' and attributes.status = 'RUNNING'",
    )
    closed = []
    for run in sorted(found, key=lambda r: r.info.start_time):
        tags = run.data.tags
        if not (S.tag(tags, S.TAG_RAY_TRIAL_DIR) or "").startswith(f"{experiment}{os.sep}"):
            continue
        if config is not None and (tags.get(S.TAG_CONFIG_HASH), run.data.params.get(S.SEED)) != (
            config.config_hash,
            str(config.seed),
        ):
            continue
        client.set_tag(run.info.run_id, S.TAG_ERROR, error)
        client.set_terminated(run.info.run_id, RunStatus.to_string(status))
        closed.append(run.info.run_id)
    return closed
