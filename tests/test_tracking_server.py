"""A shared tracking server: a real `mlflow server --app-name basic-auth` on a real PostgreSQL
(tests/servers.py), used by real trainings over HTTP; and the one line a user reads when the
server is unreachable or refuses the credentials (docs/tracking-server.md).

One server serves the whole module: it starts in 10-40 s on 2 busy cores, so the tests that
kill it run last and the next user starts it again.
"""

from __future__ import annotations

import configparser
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import requests
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import REPO, Meanwhile, cli_options, ray_driver_here, subprocess_env
from resnet_exp import schema as S
from resnet_exp.cli import main
from servers import ADMIN, DB_ROLE, PROJECT, READER, SUPERUSER, PostgreSQL, TrackingServer

EPOCH_METRICS = (S.TRAIN_LOSS, S.TRAIN_ACC, S.VAL_LOSS, S.VAL_ACC)
TINY = cli_options(
    data="demo",
    weights="none",
    image_size=32,
    batch_size=16,
    limit_batches=2,
    freeze_blocks=0,
    feature_cache="off",
    precision="32-true",
    num_workers=0,
)


@pytest.fixture(scope="module")
def postgres():
    server = PostgreSQL().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("tracking-server")
    # the role and databases of docs/tracking-server.md
    postgres.create_role(*DB_ROLE)
    server = TrackingServer(
        root,
        postgres.create_database("mlflow", owner=DB_ROLE[0]),
        postgres.create_database("mlflow_auth", owner=DB_ROLE[0]),
        postgres.passfile_line(DB_ROLE),
    )
    server.start()
    server.create_user(*PROJECT)
    yield server
    server.stop()


@pytest.fixture
def server(tracking_server, monkeypatch):
    """The module's server, started again if an earlier test killed it; this process and its
    subprocesses reach it as the project's user."""
    tracking_server.ensure_up()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", PROJECT[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PROJECT[1])
    # MlflowClient() reads MLflow's process-wide URI, which an earlier in-process training of the
    # session pinned to its own SQLite store (mlflow.set_tracking_uri): point it here.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_server.uri)
    yield tracking_server
    mlflow.set_tracking_uri(previous)


def train(tmp_path: Path, data_dir: Path, experiment: str, *args: str):
    """`resnet-exp train` in this process (click's CliRunner, which returns its exit status and
    its stderr): what these tests check travels over HTTP between the training and the server,
    and a process of its own would add its imports (~15 s of CPU each) and what Python does at
    exit, checked in the server-gone test."""
    return CliRunner().invoke(
        main,
        [
            "train",
            *TINY,
            "--data-dir",
            str(data_dir),
            "--output-dir",
            str(tmp_path / "results"),
            "--experiment-name",
            experiment,
            *args,
        ],
    )


def only_run(client: MlflowClient, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def wait_for_epoch(postgres: PostgreSQL, experiment: str, done: threading.Event, epoch: int) -> str:
    """Poll until the training's val_loss of `epoch` is stored; returns the run id. Straight from
    the server's database: three REST calls every 0.2 s kept the server busier than the training."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not done.is_set():
        found = postgres.query(
            "mlflow",
            "SELECT r.run_uuid FROM runs r JOIN experiments e ON e.experiment_id = "
            "r.experiment_id JOIN metrics m ON m.run_uuid = r.run_uuid WHERE e.name = %s "
            "AND m.key = %s AND m.step = %s",
            experiment,
            S.VAL_LOSS,
            epoch,
        )
        if found:
            return found[0][0]
        time.sleep(0.2)
    pytest.fail(f"no val_loss at epoch {epoch} before the training ended or 240 s passed")


def assert_one_error_line(stderr: str, uri: str, *words: str) -> str:
    """No traceback anywhere, and exactly one error line, naming the server and `words`."""
    assert "Traceback" not in stderr, stderr[-4000:]
    errors = [line for line in stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, stderr[-4000:]
    assert f"tracking server {uri} " in errors[0] and all(w in errors[0] for w in words), errors[0]
    return errors[0]


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_an_unreachable_server_is_one_line_naming_it_in_seconds(command, monkeypatch, tmp_path):
    """Fast tier: the CLI in this process and a closed port, with MLflow's own retry budget
    (about 4 minutes) left as it is: the check before any work answers in seconds."""
    import time

    from resnet_exp.cli import main
    from servers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    start = time.monotonic()
    result = CliRunner().invoke(main, [command, "--data", "demo", "--output-dir", str(tmp_path)])
    assert time.monotonic() - start < 15
    assert result.exit_code == 1, result.output
    assert_one_error_line(
        result.output,
        uri,
        "unreachable",
        "nothing was done",
        "MLFLOW_TRACKING_URI",
        "docs/tracking-server.md",
    )


@pytest.mark.parametrize(
    ("uri", "hint"),
    [
        ("http://127.0.0.1:25000", "open http://127.0.0.1:25000 in a browser"),
        ("https://u:secret@mlflow.example:5000/", "open https://mlflow.example:5000/ in a browser"),
        ("sqlite:////work/mlflow.db", "mlflow ui --backend-store-uri sqlite:////work/mlflow.db"),
        (
            "postgresql+psycopg2://db/mlflow",
            "mlflow ui --backend-store-uri postgresql+psycopg2://db/mlflow",
        ),
    ],
)
def test_the_hint_after_a_training_opens_a_server_in_a_browser_and_a_store_with_mlflow_ui(
    uri, hint
):
    """`mlflow ui --backend-store-uri http://...` fails: a server's runs are seen in its own UI."""
    from resnet_exp.tracking.store import browse_hint

    assert browse_hint(uri) == hint


@pytest.mark.slow
def test_the_server_has_no_password_on_its_command_line(server):
    """The database password reaches `mlflow server` through PGPASSFILE, as the docs say: no
    process of the server shows it (or the URI's user:password form) to `ps`."""
    lines = server.command_lines()
    assert any(server.backend_uri in line for line in lines), lines
    for line in lines:
        assert DB_ROLE[1] not in line and SUPERUSER[1] not in line and ADMIN[1] not in line, line
    assert f"{DB_ROLE[0]}@" in server.backend_uri and f"{DB_ROLE[0]}:" not in server.backend_uri


@pytest.mark.slow
def test_the_server_refuses_a_client_without_the_right_credentials(server, tmp_path, monkeypatch):
    answer = requests.get(
        f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30
    )
    assert answer.status_code == 401
    answer = requests.get(
        f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=30, auth=PROJECT
    )
    assert answer.status_code == 200

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")  # MLflow reads it at each request
    result = CliRunner().invoke(main, ["train", "--data", "demo", "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    line = assert_one_error_line(
        result.stderr,
        server.uri,
        f"refused user '{PROJECT[0]}'",
        "HTTP 401",
        "MLFLOW_TRACKING_PASSWORD",
    )
    assert "wrong" not in line and not (tmp_path / "data").exists()  # refused before any data work


@pytest.mark.slow
def test_a_training_with_credentials_is_stored_whole_and_keeps_them_secret(
    server, tmp_path, data_dir, caplog, monkeypatch
):
    # the training's log lines, which a process would print to stderr
    caplog.set_level(logging.INFO)
    result = train(tmp_path, data_dir, "server-train", "--max-epochs", "2")
    assert result.exit_code == 0, result.output[-4000:]

    client = MlflowClient()
    run = only_run(client, "server-train")
    assert run.info.status == "FINISHED"
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    assert client.search_model_versions(f"run_id='{run.info.run_id}'"), "the model is registered"
    assert f"open {server.uri} in a browser" in result.output, result.output[-2000:]
    # artifacts went through the server into its --artifacts-destination
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert list((server.root / "artifacts").rglob(S.CONFIG_FILE))
    assert run.data.tags[S.MLFLOW_USER] == PROJECT[0]  # the server records who wrote the run
    texts = [*run.data.params.items(), *run.data.tags.items()]
    assert not [
        kv for kv in texts if ADMIN[0] in kv[1] or PROJECT[0] in kv[1] and kv[0] != S.MLFLOW_USER
    ]
    for password in (PROJECT[1], ADMIN[1]):
        assert (
            not [kv for kv in texts if password in kv[1]]
            and password not in result.output + caplog.text
        )

    # A user who may only read the experiment (default_permission = READ) cannot log an
    # analysis there: refused in one line before any run is loaded or any file written.
    server.create_user(*READER)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", READER[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", READER[1])
    output = tmp_path / "analysis"
    refused = CliRunner().invoke(
        main, ["analyze", "--experiment-name", "server-train", "--output-dir", str(output)]
    )
    assert refused.exit_code == 1, refused.output[-3000:]
    assert_one_error_line(refused.stderr, server.uri, f"user '{READER[0]}'", "HTTP 403")
    assert not output.exists()


@pytest.mark.slow
def test_a_ray_sweep_on_two_nodes_with_two_concurrent_trials_writes_to_the_server(
    server, tmp_path, data_dir
):
    """Two Ray scenarios in one sweep: two concurrent trials writing to the shared server, on
    a two-node cluster simulated on this machine (ray.cluster_utils.Cluster, one CPU per node),
    so one trial runs on each node. The sweep's driver is this process; its trials run in Ray
    worker processes, which get the credentials from the driver's environment, as on a cluster
    whose workers start with them set."""
    from ray.cluster_utils import Cluster

    grid = [
        "sweep",
        *TINY,
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(tmp_path / "results"),
        "--experiment-name",
        "server-sweep",
        "--freeze-blocks",
        "4",
        "--blocks",
        "1,1,1,1",
        "--seeds",
        "2",
        "--max-epochs",
        "1",
        "--registered-model-name",
        "none",
        "--precision",
        "32-true",
        "--executor",
        "ray",
    ]
    with ray_driver_here():
        cluster = Cluster(
            initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
        )
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            grid += ["--ray-address", cluster.address]
            # a trial no node can hold would wait for ever in Tune: refused before any run
            too_big = CliRunner().invoke(main, [*grid, "--trial-resources", "cpu=2"])
            assert too_big.exit_code != 0 and "trial_resources=cpu=2" in too_big.stderr, (
                too_big.output[-3000:]
            )
            assert (
                "cpu=1 gpu=0, cpu=1 gpu=0" in too_big.stderr and "Traceback" not in too_big.output
            )
            experiment = MlflowClient().get_experiment_by_name("server-sweep")
            assert experiment is None or not MlflowClient().search_runs(
                [experiment.experiment_id]
            ), "no run yet"
            result = CliRunner().invoke(
                main, [*grid, "--trial-resources", "cpu=1", "--max-concurrent-trials", "2"]
            )
            nodes = {node.node_id for node in cluster.list_all_nodes()}
        finally:
            cluster.shutdown()
    assert result.exit_code == 0 and "2 trained" in result.output, result.output[-4000:]
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("server-sweep").experiment_id])
    parent = [r for r in runs if S.MLFLOW_PARENT_RUN_ID not in r.data.tags]
    trials = [r for r in runs if S.MLFLOW_PARENT_RUN_ID in r.data.tags]
    assert len(parent) == 1 and len(trials) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags[S.MLFLOW_USER] for r in runs} == {PROJECT[0]}
    for run in trials:
        assert [m.step for m in client.get_metric_history(run.info.run_id, S.VAL_LOSS)] == [0]
    assert max(r.info.start_time for r in trials) < min(r.info.end_time for r in trials), (
        "concurrent"
    )
    used = {r.data.tags[S.TAG_RAY_NODE_ID] for r in trials}
    assert used == nodes and len(used) == 2, "one trial on each node of 1 CPU"


@pytest.mark.slow
def test_claimers_racing_for_one_stopped_run_on_the_server_leave_exactly_one_resumer(
    server, tmp_path
):
    """The claim of tests/test_claims.py over HTTP: the server's PostgreSQL decides the race."""
    from test_claims import race_twice, stopped

    client = MlflowClient(server.uri)
    race_twice(client, stopped(client), tmp_path, claimers=4)


@pytest.mark.slow
def test_two_resumers_of_a_killed_training_on_the_server_leave_one_run_trained_once(
    server, postgres, tmp_path, data_dir
):
    """tests/test_resume.py's kill -9 and two resumers started together, against the server."""
    from test_resume import assert_one_resumed_the_other_refused, resume_together

    command = [
        sys.executable,
        "-m",
        "resnet_exp",
        "train",
        *TINY,
        *cli_options(
            blocks="1,1,1,1",
            max_epochs=3,
            seed=6,
            registered_model_name="none",
            experiment_name="server-claims",
            data_dir=data_dir,
            output_dir=tmp_path / "results",
        ),
    ]
    process = subprocess.Popen(
        command,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        run_id = wait_for_epoch(postgres, "server-claims", threading.Event(), epoch=0)
        wait_for_last_checkpoint(postgres, run_id)
        assert process.poll() is None, "it ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    assert_one_resumed_the_other_refused(resume_together(command, subprocess_env()), run_id)
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [0, 1, 2], key
    assert len(client.search_logged_models([run.info.experiment_id])) == 1


def wait_for_last_checkpoint(postgres: PostgreSQL, run_id: str) -> None:
    """Until the run's last.ckpt holds epoch 0 (it is written just after the epoch's metrics)."""
    import torch

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = postgres.query(
            "mlflow",
            "SELECT value FROM tags WHERE run_uuid = %s AND key = %s",
            run_id,
            S.TAG_CHECKPOINT_DIR,
        )
        last = Path(found[0][0]) / "last.ckpt" if found else None
        if last is not None and last.is_file():
            try:
                torch.load(last, map_location="cpu", weights_only=True, mmap=True)
                return
            except (OSError, RuntimeError, EOFError):
                pass  # being replaced
        time.sleep(0.1)
    pytest.fail(f"run {run_id} wrote no last.ckpt within 120 s")


@pytest.mark.slow
def test_a_server_killed_and_restarted_during_training_loses_nothing(
    server, postgres, tmp_path, data_dir, monkeypatch
):
    # Retries 1, 2, 4, 8 ... s apart (backoff factor 1; MLflow's default 2 waits 4, 8, 16 ...) and
    # MLflow's most retries, 10: about 6 minutes in all, more than the default 4, and the server,
    # back after 10-40 s, is found again at most about as long after that.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "10")
    epochs = 3  # epoch 0 before the kill, two after it
    client, seen = MlflowClient(), {}

    def kill_and_restart(done: threading.Event) -> None:
        seen["run_id"] = run_id = wait_for_epoch(postgres, "server-restart", done, epoch=0)
        seen["stored"] = [m.step for m in client.get_metric_history(run_id, S.VAL_LOSS)]
        server.kill()
        seen["training"] = not done.is_set()
        time.sleep(2)
        server.start()  # on the same port, well within the retry budget

    meanwhile = Meanwhile(kill_and_restart)
    meanwhile.start()
    result = train(
        tmp_path,
        data_dir,
        "server-restart",
        "--max-epochs",
        str(epochs),
        "--registered-model-name",
        "none",
    )
    meanwhile.join()
    assert seen["training"] and max(seen["stored"]) < epochs - 1, (
        "the kill came during the training"
    )
    assert result.exit_code == 0, result.output[-4000:]
    run_id = seen["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in EPOCH_METRICS:
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(epochs)), key


@pytest.mark.slow
def test_a_server_gone_for_good_ends_the_training_with_one_line(
    server, postgres, tmp_path, data_dir, monkeypatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    seen = {}

    def kill(done: threading.Event) -> None:
        seen["run_id"] = wait_for_epoch(postgres, "server-gone", done, epoch=0)
        server.kill()  # and not started again: the next test that needs it starts it

    meanwhile = Meanwhile(kill)
    meanwhile.start()
    result = train(tmp_path, data_dir, "server-gone", "--max-epochs", "8")
    meanwhile.join()
    run_id = seen["run_id"]
    assert result.exit_code == 1, result.output[-4000:]
    assert_one_error_line(
        result.stderr,
        server.uri,
        "unreachable after 1 retry",
        "could not",
        f"of run {run_id}",
        "stays RUNNING",
    )
    # The server could not be told: the run is still RUNNING in its database.
    assert postgres.query("mlflow", "SELECT status FROM runs WHERE run_uuid = %s", run_id) == [
        ("RUNNING",)
    ]
    # What a process of its own would add: MLflow ends the active run when Python exits, with the
    # full retry budget against the dead server; the run scope left it none to end.
    assert mlflow.active_run() is None


def test_the_tested_server_runs_the_configuration_the_docs_give(tmp_path):
    """docs/tracking-server.md's basic_auth.ini is the one the server fixture runs: every setting
    (the auth cache's TTL among them) the same, only the hosts and database names differ."""
    docs = (REPO / "docs" / "tracking-server.md").read_text()
    block = re.search(r"cat > basic_auth\.ini <<'EOF'\n(.*?)\nEOF", docs, re.S)
    assert block, "docs/tracking-server.md lost its basic_auth.ini block"
    documented, tested = configparser.ConfigParser(), configparser.ConfigParser()
    documented.read_string(block.group(1))
    server = TrackingServer(tmp_path, "unused", "postgresql+psycopg2://u@h/db", "h:1:*:u:pw\n")
    tested.read(server.auth_config)
    host_specific = {"database_uri"}
    assert {k: v for k, v in documented["mlflow"].items() if k not in host_specific} == {
        k: v for k, v in tested["mlflow"].items() if k not in host_specific
    }
    assert (
        "@" in documented["mlflow"]["database_uri"]
        and ":" not in (documented["mlflow"]["database_uri"].split("//")[1].split("@")[0])
    ), "the documented database URI must carry no password"
