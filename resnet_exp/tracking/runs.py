"""MLflow runs of every kind (training, sweep parent, analysis): how one is opened, described
and closed. MLflow only, no torch or Lightning, so that analysis stays light. Where runs are
stored is resnet_exp/tracking/store.py.

    python -c "from resnet_exp.tracking.runs import git_tags; print(git_tags())"
"""

from __future__ import annotations

import configparser
import getpass
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus, RunTag, SourceType

from resnet_exp import schema as S
from resnet_exp.compat import LOGGED_ARTIFACTS_TAG, logged_tables_tag
from resnet_exp.errors import ConfigError
from resnet_exp.signals import RunInterrupted, interrupt_signal, interrupts_deferred, sigterm_raises
from resnet_exp.tracking.server import TrackingFailure, TrackingLost, one_attempt, tracking_failure
from resnet_exp.tracking.store import ensure_experiment, use_tracking_store

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ERROR_TEXT_LIMIT = 4000  # characters; MLflow tag values are limited to 8,000
PARAMS_PER_BATCH = 100  # MLflow's log_batch limit


def git_tags() -> dict[str, str]:
    """The commit the code came from (also as MLflow's own tag, which the UI shows on the run's
    page), and whether tracked files had changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return {
            S.TAG_GIT_COMMIT: commit,
            S.MLFLOW_GIT_COMMIT: commit,
            S.TAG_GIT_DIRTY: str(
                bool(git("status", "--porcelain", "--untracked-files=no"))
            ).lower(),
        }
    except (OSError, subprocess.SubprocessError):
        return {}  # not a git checkout (an installed wheel): nothing to record


# --- one scope for every kind of run ----------------------------------------------------------


def _status(error: BaseException | None) -> str:
    """FINISHED without an error; KILLED for Ctrl-C and SIGTERM (see interrupt_signal); FAILED
    for anything else."""
    if error is None:
        return RunStatus.to_string(RunStatus.FINISHED)
    if interrupt_signal(error) is not None:
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
    # a run joined again: the tags `earlier_errors` and `error` of its earlier attempts, which
    # its close moves out of `error`
    earlier_errors: str = ""
    earlier_error: str = ""

    def log_params(
        self, params: Mapping[str, str], same: Callable[[str, str], bool] | None = None
    ) -> None:
        """Log the params the run does not have yet: `mlflow run` logged its parameters already,
        another shard may have, and MLflow refuses to change a param's value. With `same`, an
        existing param whose text does not mean the new value is an error (a stale run id)."""
        existing = self.client.get_run(self.run_id).data.params
        if same is not None:
            clash = [k for k in params if k in existing and not same(k, existing[k])]
            if clash:
                k = clash[0]
                raise ConfigError(
                    f"run {self.run_id} already has {k}={existing[k]!r}, but this one "
                    f"has {k}={params[k]!r}: unset MLFLOW_RUN_ID to start a new run"
                )
        new = [Param(k, str(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[start : start + PARAMS_PER_BATCH])

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


def mark_tables(client: MlflowClient, run_id: str, paths: Iterable[str]) -> None:
    """Make the UI show these JSON artifacts of the run (pandas' split orient, as
    `MlflowClient.log_table` writes) as tables. Unlike log_table, which appends to a file of the
    same name, the caller uploads the file itself, so logging it again replaces it."""
    current = client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG)
    client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, logged_tables_tag(current, paths))


@contextmanager
def run_scope(
    kind: str,
    run_name: str,
    *,
    experiment_name: str | None = None,
    experiment_id: str | None = None,
    experiment_note: str = "",
    run_id: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    active: bool = False,
    system_metrics: bool = False,
) -> Iterator[RunScope]:
    """Open a run of `kind` and always close it: FINISHED, KILLED on Ctrl-C or SIGTERM, FAILED
    (with an `error` tag) on any other error.

    The run is `run_id` when given (the one `mlflow run` created, or a sweep's parent found
    again), else a new run in `experiment_id`, or in `experiment_name` (created, with
    `experiment_note`, if missing), nested under `parent_run_id` if given. `active` makes it
    MLflow's active run, for code that logs through the fluent API (Lightning's logger,
    log_model); `system_metrics` starts MLflow's CPU/memory/GPU monitor for it."""
    client = MlflowClient(use_tracking_store())
    if run_id:  # its source and user are already set (by `mlflow run`, or when it was created)
        existing = client.get_run(run_id)
        experiment_id = existing.info.experiment_id
        if existing.info.status != RunStatus.to_string(RunStatus.RUNNING):
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        found = existing.data.tags  # not `tags`: those are this scope's own, set below
        earlier = {
            "earlier_errors": found.get(S.TAG_EARLIER_ERRORS, ""),
            "earlier_error": found.get(S.TAG_ERROR, ""),
        }
    else:
        experiment_id = experiment_id or ensure_experiment(
            client, experiment_name or "Default", experiment_note
        )
        parent = {S.MLFLOW_PARENT_RUN_ID: parent_run_id} if parent_run_id else {}
        run_id = client.create_run(
            experiment_id, run_name=run_name, tags={**context_tags(), **(tags or {}), **parent}
        ).info.run_id
        earlier = {}
    scope = RunScope(run_id, experiment_id, client, **earlier)
    scope.set_tags({S.TAG_KIND: kind, S.MLFLOW_RUN_NAME: run_name, **git_tags(), **(tags or {})})
    with sigterm_raises():  # SIGTERM closes the run KILLED instead of leaving it RUNNING
        error: BaseException | None = None
        try:
            if active:
                mlflow.start_run(run_id=run_id, log_system_metrics=system_metrics)
            yield scope
        except RunInterrupted as err:  # a run inside this one (a sweep's child) was interrupted
            error = err
            raise
        except BaseException as err:
            error = err
            signum = interrupt_signal(err)
            if signum is not None:
                raise RunInterrupted(run_id, signum) from err
            failure = tracking_failure(err)
            # the innermost run names the loss: a sweep's child rather than its parent
            if failure is not None and not isinstance(err, TrackingLost):
                error = TrackingLost(failure, run_id)
                raise error from err
            raise
        finally:
            _close(scope, error, active)


def _close(scope: RunScope, error: BaseException | None, active: bool) -> None:
    failure = tracking_failure(error) if error is not None else None
    if failure is not None:
        _close_after_server_failure(scope, error, active, failure)
        return
    with interrupts_deferred():
        _end(scope, error, active)


def _close_after_server_failure(
    scope: RunScope, error: BaseException, active: bool, failure: TrackingFailure
) -> None:
    """The tracking server failed past its retry budget, or refused us: one quick try to end the
    run FAILED, else it stays RUNNING there. Waiting out the budget again for each closing write
    made a 278-line chain of tracebacks; the CLI prints the failure's one line instead."""
    with one_attempt(), interrupts_deferred():
        try:
            _end(scope, error, active)
        except Exception:  # noqa: BLE001 - the server is still gone: the first failure is the news
            if isinstance(error, TrackingLost) and error.run_id == scope.run_id:
                error.left_running = True
            if active and mlflow.active_run() and mlflow.active_run().info.run_id == scope.run_id:
                # leaves MLflow no active run to end at exit, with retries
                with suppress(Exception):
                    mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def _end(scope: RunScope, error: BaseException | None, active: bool) -> None:
    status = _status(error)
    reason = f"{type(error).__name__}: {error}" if error is not None else scope.failure
    if error is None and scope.failure:
        status = RunStatus.to_string(RunStatus.FAILED)
    _retire_earlier_errors(scope)  # an earlier attempt's error is history, not this one's state
    if status != RunStatus.to_string(RunStatus.FINISHED):
        what = (
            "was interrupted"
            if status == RunStatus.to_string(RunStatus.KILLED)
            else f"failed: {reason}"
        )
        scope.set_tags({S.TAG_ERROR: reason[:ERROR_TEXT_LIMIT]})
        scope.describe(f"{scope.note} It {what}"[:ERROR_TEXT_LIMIT].strip())
    if error is None and scope.open_after and not scope.failure:
        return
    if active and mlflow.active_run() and mlflow.active_run().info.run_id == scope.run_id:
        mlflow.end_run(status)
    else:
        scope.client.set_terminated(scope.run_id, status)


def _retire_earlier_errors(scope: RunScope) -> None:
    """A run that is resumed (a training continued, a sweep's parent run again) ends with the
    `error` tag of this attempt only, and with none when it finishes: an earlier attempt's error
    would read as the run's state. The earlier attempts' errors, read when the run was joined,
    move to `earlier_errors`, newest last."""
    if not scope.earlier_error:
        return
    history = " | ".join(e for e in (scope.earlier_errors, scope.earlier_error) if e)
    scope.set_tags({S.TAG_EARLIER_ERRORS: history[-ERROR_TEXT_LIMIT:]})
    scope.client.delete_tag(scope.run_id, S.TAG_ERROR)


def source_tag() -> dict[str, str]:
    """The command that made the run, e.g. 'resnet-exp sweep', as its source: MLflow would
    record the console script's full path, or '-c'."""
    if not sys.argv or sys.argv[0] in ("", "-c"):
        return {}
    return {S.MLFLOW_SOURCE_NAME: " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]])}


def context_tags() -> dict[str, str]:
    """Who made a run and from what, as mlflow.start_run() records it and the UI shows it (User,
    Source), for the runs MlflowClient.create_run opens: the user, and the source (source_tag(),
    else what MLflow would name: the script, or '-c') of type LOCAL. The commit is in git_tags()."""
    main = sys.argv[0] if sys.argv and sys.argv[0] else "<console>"
    return {
        S.MLFLOW_USER: run_user(),
        S.MLFLOW_SOURCE_NAME: main,
        **source_tag(),
        S.MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
    }


def run_user() -> str:
    """Who a run is by, as MLflow records it: the tracking server's user name where one is set
    (MLFLOW_TRACKING_USERNAME, else `mlflow_tracking_username` in ~/.mlflow/credentials, both
    documented by MLflow), else the login name."""
    from mlflow.environment_variables import MLFLOW_TRACKING_USERNAME

    name = MLFLOW_TRACKING_USERNAME.get()
    if not name:
        credentials = configparser.ConfigParser()
        with suppress(configparser.Error):  # a missing file reads as empty
            credentials.read(Path("~/.mlflow/credentials").expanduser())
        name = credentials.get("mlflow", MLFLOW_TRACKING_USERNAME.name.lower(), fallback=None)
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "unknown"
