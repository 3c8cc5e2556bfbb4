"""MLflow runs of every kind (training, sweep parent, analysis): where they are stored and how
one is opened, described and closed. MLflow only, no torch or Lightning, so that analysis stays
light.

The MLflow variables are read here and nowhere else: MLFLOW_TRACKING_URI (else MLflow's
default, sqlite:///mlflow.db in the working directory) and MLFLOW_RUN_ID, which `mlflow run`
sets for the run it created.

    python -c "from resnet_exp.runs import tracking_uri; print(tracking_uri())"
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param, Run, RunStatus, RunTag
from mlflow.tracking.context.registry import resolve_tags

from resnet_exp import schema as S
from resnet_exp.errors import ConfigError
from resnet_exp.tracking_server import TrackingFailure, one_attempt, tracking_failure

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ERROR_TEXT_LIMIT = 4000  # characters; MLflow tag values are limited to 8,000
PARAMS_PER_BATCH = 100  # MLflow's log_batch limit
PAGE_SIZE = 1000  # runs per search_runs page


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else MLflow's embedded default: mlflow.db in the working directory.

    Read from the environment each time, not from mlflow.get_tracking_uri(): Lightning's
    MLFlowLogger pins MLflow's process-wide URI, which would send a later run in the same
    process to an earlier run's store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def project_run_id() -> str | None:
    """The run `mlflow run` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def claim_project_run_id() -> str | None:
    """The run `mlflow run` created, taken out of the environment: mlflow.start_run() without a
    run id joins MLFLOW_RUN_ID, which must not happen to a sweep's children."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


def git_tags() -> dict[str, str]:
    """The commit the code came from, and whether tracked files had changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        return {S.TAG_GIT_COMMIT: git("rev-parse", "HEAD"),
                S.TAG_GIT_DIRTY: str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()}
    except (OSError, subprocess.SubprocessError):
        return {}  # not a git checkout (an installed wheel): nothing to record


# --- one scope for every kind of run ----------------------------------------------------------


class Terminated(SystemExit):
    """SIGTERM, raised where the process was: exits as a process ended by SIGTERM does (143)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _status(error: BaseException | None) -> str:
    """FINISHED without an error; KILLED for Ctrl-C and SIGTERM (KeyboardInterrupt, Terminated,
    and the SystemExit that Lightning turns either into); FAILED for anything else."""
    if error is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    if isinstance(error, (KeyboardInterrupt, SystemExit)):
        return RunStatus.to_string(RunStatus.KILLED)
    return RunStatus.to_string(RunStatus.FAILED)


@dataclass
class RunScope:
    """An open MLflow run: its ids, and the one way to add params and its description."""

    run_id: str
    experiment_id: str
    client: MlflowClient
    note: str = ""
    failure: str = ""  # set by fail(): the run ends FAILED with this error, without an exception
    open_after: bool = False  # set by leave_running(): others still add to the run

    def log_params(self, params: Mapping[str, str],
                   same: Callable[[str, str], bool] | None = None) -> None:
        """Log the params the run does not have yet: `mlflow run` logged its parameters already,
        another shard may have, and MLflow refuses to change a param's value. With `same`, an
        existing param whose text does not mean the new value is an error (a stale run id)."""
        existing = self.client.get_run(self.run_id).data.params
        if same is not None:
            clash = [k for k in params if k in existing and not same(k, existing[k])]
            if clash:
                k = clash[0]
                raise ConfigError(f"run {self.run_id} already has {k}={existing[k]!r}, but this one "
                                  f"has {k}={params[k]!r}: unset MLFLOW_RUN_ID to start a new run")
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[start:start + PARAMS_PER_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def fail(self, error: str) -> None:
        """End FAILED when the scope closes normally: some of the work failed (a sweep's child)."""
        self.failure = error

    def leave_running(self) -> None:
        """Leave the run RUNNING when the scope closes normally: other processes still work in
        it (a sweep's other shards), and the last of them closes it."""
        self.open_after = True

    def describe(self, text: str) -> None:
        """The run's description in the UI (one paragraph: what it is and how it ended)."""
        self.note = text
        self.client.set_tag(self.run_id, S.MLFLOW_NOTE, text)


@contextmanager
def run_scope(kind: str, run_name: str, *, experiment_name: str | None = None,
              experiment_id: str | None = None, experiment_note: str = "", run_id: str | None = None, parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None, active: bool = False,
              system_metrics: bool = False) -> Iterator[RunScope]:
    """Open a run of `kind` and always close it: FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED
    (with an `error` tag) on any other error.

    The run is `run_id` when given (the one `mlflow run` created, or a sweep's parent found
    again), else a new run in `experiment_id`, or in `experiment_name` (created, with
    `experiment_note`, if missing), nested under `parent_run_id` if given. `active` makes it MLflow's active run, for code that
    logs through the fluent API (Lightning's logger, log_model); `system_metrics` starts MLflow's
    CPU/memory/GPU monitor for it."""
    client = MlflowClient(use_tracking_store())
    if run_id:  # its source and user are already set (by `mlflow run`, or when it was created)
        existing = client.get_run(run_id).info
        experiment_id = existing.experiment_id
        if existing.status != RunStatus.to_string(RunStatus.RUNNING):
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        source = {}
    else:
        experiment_id = experiment_id or ensure_experiment(client, experiment_name or "Default",
                                                           experiment_note)
        parent = {S.MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {}
        # MLflow's own context tags (user, source), as mlflow.start_run() would set them
        run_id = client.create_run(experiment_id, run_name=run_name,
                                   tags=resolve_tags({**(tags or {}), **parent})).info.run_id
        source = source_tag()
    scope = RunScope(run_id, experiment_id, client)
    scope.set_tags({S.TAG_KIND: kind, S.MLFLOW_RUN_NAME: run_name, **git_tags(), **source, **(tags or {})})
    previous = _catch_sigterm()
    error: BaseException | None = None
    try:
        if active:
            mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
        yield scope
    except SystemExit as err:
        error = _mark_killed(err, run_id)
        if err.code is None:
            # Lightning's SIGTERMException: a SystemExit without a code, i.e. exit status 0;
            # exit as a process ended by SIGTERM does, so that callers see the failure.
            raise _mark_killed(Terminated(), run_id) from err
        raise
    except BaseException as err:
        error = _mark_killed(err, run_id)
        raise
    finally:
        _close(scope, error, active)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _mark_killed(error: BaseException, run_id: str) -> BaseException:
    """Note on an interrupt (Ctrl-C, SIGTERM) which run it marked KILLED, for the CLI's one
    line; the innermost scope (a sweep's child) names it."""
    if _status(error) == RunStatus.to_string(RunStatus.KILLED) and not hasattr(error, "killed_run_id"):
        error.killed_run_id = run_id
    return error


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then handle them as they would have been.

    What the block does is never cut in half: a SQLite write interrupted midway lost the epoch's
    metrics (whose log line was already printed) and left a broken connection that printed
    sqlite3/sqlalchemy errors; a wait for the checkpoint writer (Thread.join) interrupted midway
    is, on Python 3.11, marked finished while the writer still runs. Main thread only (where
    Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    # A handler not set from Python (getsignal gives None) could not be put back: left alone.
    previous = {signum: handler for signum in (signal.SIGINT, signal.SIGTERM)
                if (handler := signal.getsignal(signum)) is not None}
    for signum in previous:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(caught):  # each once, in the order they came
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)  # Python's default raises KeyboardInterrupt, ours Terminated
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)  # the process ends as the signal would have ended it


def _close(scope: RunScope, error: BaseException | None, active: bool) -> None:
    failure = tracking_failure(error) if error is not None else None
    if failure is not None:
        _close_after_server_failure(scope, error, active, failure)
        return
    with interrupts_deferred():
        _end(scope, error, active)


def _close_after_server_failure(scope: RunScope, error: BaseException, active: bool,
                                failure: TrackingFailure) -> None:
    """The tracking server failed past its retry budget, or refused us: one quick try to end the
    run FAILED, else it stays RUNNING there. Waiting out the budget again for each closing write
    made a 278-line chain of tracebacks; the CLI prints the failure's one line instead."""
    innermost = not hasattr(failure.error, "tracking_run_id")  # a sweep's child, not its parent
    if innermost:
        failure.error.tracking_run_id = scope.run_id
    with one_attempt(), interrupts_deferred():
        try:
            _end(scope, error, active)
        except Exception:  # noqa: BLE001 - the server is still gone: the first failure is the news
            if innermost:
                failure.error.run_left_running = True
            if active and mlflow.active_run() and mlflow.active_run().info.run_id == scope.run_id:
                with suppress(Exception):  # leaves MLflow no active run to end at exit, with retries
                    mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def _end(scope: RunScope, error: BaseException | None, active: bool) -> None:
    status = _status(error)
    reason = f"{type(error).__name__}: {error}" if error is not None else scope.failure
    if error is None and scope.failure:
        status = RunStatus.to_string(RunStatus.FAILED)
    if status != RunStatus.to_string(RunStatus.FINISHED):
        what = "was interrupted" if status == RunStatus.to_string(RunStatus.KILLED) else f"failed: {reason}"
        scope.set_tags({S.TAG_ERROR: reason[:ERROR_TEXT_LIMIT]})
        scope.describe(f"{scope.note} It {what}"[:ERROR_TEXT_LIMIT].strip())
    if error is None and scope.open_after and not scope.failure:
        return
    if active and mlflow.active_run() and mlflow.active_run().info.run_id == scope.run_id:
        mlflow.end_run(status)
    else:
        scope.client.set_terminated(scope.run_id, status)


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM as an exception (Terminated) for a whole command, not only while a run is open:
    the work before a run opens (data, image store, feature cache) then removes its temporary
    folders too, and a sweep's parent is closed KILLED between its children."""
    previous = _catch_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _catch_sigterm():
    """Make SIGTERM an exception while a run is open (main thread only), so the run is closed
    KILLED instead of left RUNNING; returns the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)
        return previous
    return None  # an enclosing scope (a sweep around its children) already catches it


def search_all(client: MlflowClient, experiment_id: str, filter_string: str = "") -> Iterator[Run]:
    """Every active run of the experiment that matches `filter_string`, page by page."""
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=PAGE_SIZE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def use_tracking_store() -> str:
    """Point MLflow's fluent API at the tracking URI (see tracking_uri) and return it."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(client: MlflowClient, name: str, note: str = "") -> str:
    """The id of experiment `name`, created if missing; gives it `note` as description if it
    has none (the UI shows it at the top of the experiment)."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    if note and not (experiment and experiment.tags.get(S.MLFLOW_NOTE)):
        client.set_experiment_tag(experiment_id, S.MLFLOW_NOTE, note)
    return experiment_id


def source_tag() -> dict[str, str]:
    """The command that made the run, e.g. 'resnet-exp sweep', as its source: MLflow would
    record the console script's full path, or '-c'."""
    if not sys.argv or sys.argv[0] in ("", "-c"):
        return {}
    return {S.MLFLOW_SOURCE_NAME: " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]])}
