"""The one run scope that opens and closes training runs, sweep parents and analysis runs, on a
real SQLite tracking store: status rules, params logged once, source, user and description.

    pytest tests/test_runs.py
"""

from __future__ import annotations

import os
import signal

import pytest
from mlflow import MlflowClient

from resnet_exp import schema as S
from resnet_exp.errors import ConfigError
from resnet_exp.signals import RunInterrupted, Terminated
from resnet_exp.tracking.runs import run_scope


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One SQLite store for the module (creating one costs seconds); each test has its own
    experiment in it."""
    return f"sqlite:///{tmp_path_factory.mktemp('runs') / 'mlflow.db'}"


@pytest.fixture
def tracking_uri(store_uri, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_uri)
    return store_uri


@pytest.fixture
def experiment(request) -> str:
    return request.node.name


def the_run(tracking_uri: str, experiment: str, kind: str = S.KIND_ANALYSIS):
    client = MlflowClient(tracking_uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], f"tags.{S.TAG_KIND} = '{kind}'"
    )
    return run


@pytest.mark.parametrize("kind", [S.KIND_TRAIN, S.KIND_SWEEP, S.KIND_ANALYSIS])
def test_a_run_that_ends_well_is_finished_and_says_what_it_is(tracking_uri, experiment, kind):
    with run_scope(
        kind, "the-run", experiment_name=experiment, experiment_note="what these runs are"
    ) as scope:
        scope.describe("A run that tests the scope.")
        scope.log_params({"freeze_blocks": "2"})
    run = the_run(tracking_uri, experiment, kind)
    assert run.info.status == "FINISHED" and run.info.run_name == "the-run"
    assert run.data.tags[S.MLFLOW_NOTE] == "A run that tests the scope."
    assert run.data.tags[S.MLFLOW_SOURCE_NAME] and run.data.tags[S.MLFLOW_USER]
    assert run.data.tags[S.TAG_GIT_COMMIT] and run.data.params == {"freeze_blocks": "2"}
    experiment = MlflowClient(tracking_uri).get_experiment(run.info.experiment_id)
    assert experiment.tags[S.MLFLOW_NOTE] == "what these runs are"


@pytest.mark.parametrize("user", ["", "alice", "from-file"])
def test_who_and_what_made_a_run_are_recorded_as_mlflow_start_run_records_them(
    tracking_uri, experiment, monkeypatch, tmp_path, user
):
    """The run page's User and Source: the same tags as a run mlflow.start_run() opens in the
    same process (the server's user name if one is set, in the environment or in MLflow's
    credentials file, else the login name; source type LOCAL); and the commit, as MLflow's tag."""
    import mlflow

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.mlflow/credentials but the one written here
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    if user == "alice":
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    elif user == "from-file":
        (tmp_path / ".mlflow").mkdir()
        (tmp_path / ".mlflow" / "credentials").write_text(
            "[mlflow]\nmlflow_tracking_username = bob\n"
        )
    with run_scope(S.KIND_ANALYSIS, "ours", experiment_name=experiment):
        pass
    ours = the_run(tracking_uri, experiment).data.tags
    # the scope pointed the fluent API at this store, as it does for every run
    with mlflow.start_run(
        experiment_id=the_run(tracking_uri, experiment).info.experiment_id
    ) as run:
        theirs = mlflow.get_run(run.info.run_id).data.tags
    expected = {"": theirs[S.MLFLOW_USER], "alice": "alice", "from-file": "bob"}[user]
    assert ours[S.MLFLOW_USER] == theirs[S.MLFLOW_USER] == expected
    assert ours[S.MLFLOW_SOURCE_TYPE] == theirs[S.MLFLOW_SOURCE_TYPE] == "LOCAL"
    assert ours[S.MLFLOW_SOURCE_NAME] and ours[S.MLFLOW_GIT_COMMIT] == ours[S.TAG_GIT_COMMIT]


@pytest.mark.parametrize(
    "error, status",
    [
        (KeyboardInterrupt(), "KILLED"),
        (Terminated(), "KILLED"),
        (SystemExit(1), "KILLED"),
        (RuntimeError("boom"), "FAILED"),
    ],
)
def test_every_kind_of_run_ends_by_the_same_rules(tracking_uri, experiment, error, status):
    """An interrupt comes out as RunInterrupted naming the run; any other error as itself."""
    with pytest.raises(RunInterrupted if status == "KILLED" else type(error)) as raised:
        with run_scope(S.KIND_ANALYSIS, "the-run", experiment_name=experiment) as scope:
            scope.describe("A run that tests the scope.")
            raise error
    run = the_run(tracking_uri, experiment)
    if status == "KILLED":
        assert raised.value.run_id == run.info.run_id and raised.value.__cause__ is error
    assert run.info.status == status
    assert run.data.tags[S.TAG_ERROR].startswith(type(error).__name__)
    assert run.data.tags[S.MLFLOW_NOTE].startswith("A run that tests the scope. It ")


def test_sigterm_ends_the_run_killed_with_status_143(tracking_uri, experiment):
    with pytest.raises(RunInterrupted) as exit_:
        with run_scope(S.KIND_SWEEP, "the-run", experiment_name=experiment):
            os.kill(os.getpid(), signal.SIGTERM)
    assert exit_.value.exit_code == 128 + signal.SIGTERM and exit_.value.signum == signal.SIGTERM
    assert the_run(tracking_uri, experiment, S.KIND_SWEEP).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored once the run is closed


def test_a_scope_can_fail_without_an_exception(tracking_uri, experiment):
    with run_scope(S.KIND_SWEEP, "the-run", experiment_name=experiment) as scope:
        scope.fail("1 of 2 children failed")
    run = the_run(tracking_uri, experiment, S.KIND_SWEEP)
    assert run.info.status == "FAILED" and run.data.tags[S.TAG_ERROR] == "1 of 2 children failed"


def test_params_are_logged_once_and_a_clash_is_named(tracking_uri, experiment):
    with run_scope(S.KIND_TRAIN, "the-run", experiment_name=experiment) as scope:
        scope.log_params({"learning_rate": "3e-5"})
        # already there: kept as first given
        scope.log_params({"learning_rate": "3e-05", "seed": "0"})
        with pytest.raises(ConfigError, match=r"learning_rate='3e-5'.*MLFLOW_RUN_ID"):
            scope.log_params({"learning_rate": "0.1"}, same=lambda name, text: float(text) == 0.1)
    assert the_run(tracking_uri, experiment, S.KIND_TRAIN).data.params == {
        "learning_rate": "3e-5",
        "seed": "0",
    }


def test_a_given_run_is_joined_and_closed(tracking_uri, experiment):
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(experiment)
    created = client.create_run(experiment_id, run_name="made-by-mlflow-run")
    client.set_terminated(created.info.run_id, "KILLED")  # e.g. an earlier, interrupted attempt
    tags = {S.TAG_SWEEP_ID: "abc123"}
    with run_scope(S.KIND_SWEEP, "the-run", run_id=created.info.run_id, tags=tags) as scope:
        assert client.get_run(scope.run_id).info.status == "RUNNING"
    run = client.get_run(created.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags[S.TAG_KIND] == S.KIND_SWEEP
    assert run.data.tags[S.TAG_SWEEP_ID] == "abc123"  # the scope's tags reach a joined run too
    assert len(client.search_runs([experiment_id])) == 1


def test_a_run_that_finishes_after_a_resume_keeps_no_error_tag(tracking_uri, experiment):
    """The earlier attempts' errors stay readable, but not as the run's state."""
    with pytest.raises(RunInterrupted):
        with run_scope(S.KIND_TRAIN, "the-run", experiment_name=experiment) as first:
            raise KeyboardInterrupt
    with pytest.raises(RuntimeError):
        with run_scope(S.KIND_TRAIN, "the-run", run_id=first.run_id):
            raise RuntimeError("disk full")
    with run_scope(S.KIND_TRAIN, "the-run", run_id=first.run_id):
        pass
    run = MlflowClient(tracking_uri).get_run(first.run_id)
    assert run.info.status == "FINISHED" and S.TAG_ERROR not in run.data.tags
    assert run.data.tags[S.TAG_EARLIER_ERRORS] == "KeyboardInterrupt:  | RuntimeError: disk full"
