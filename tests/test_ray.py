"""The Ray Tune executor of sweeps (resnet_exp/sweep/executors.py): its options, then real Ray: a sweep
under `mlflow run` with executor=ray (its children nested under one parent in the launch's
experiment), one of whose trials has its worker killed, that a local sweep of the same grid then
skips, and that `mlflow run -e analyze` ranks. The sweep on a two-node cluster simulated on this machine
(ray.cluster_utils.Cluster) is tests/test_tracking_server.py's: it also writes to the server."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import REPO, mlflow_run_command, resumable_epoch, subprocess_env
from resnet_exp import schema as S
from resnet_exp.cli import main
from resnet_exp.config import TrainConfig
from resnet_exp.errors import ConfigError
from resnet_exp.sweep.grid import SweepGrid, sweep_id
from test_sweep import (
    PROGRESS,
    TINY,
    assert_analysis,
    assert_progress,
    children,
    sweep_args,
    sweeps,
)

# 2 configurations x 2 seeds, the smallest grid that ranks two configurations over seeds
GRID = {"freeze_blocks": "4", "blocks": "1,1,1,1;1,1,2,1", "seeds": "2"}
PASSWORD = "not-a-real-password-4711"  # a tracking password the Ray sweep's driver holds


def assert_no_file_holds(secret: str, *folders: Path) -> None:
    found = [
        p
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()
    ]
    assert not found, f"{secret!r} written to {found}"


@pytest.fixture
def ray_tmp():
    """RAY_TMPDIR for a Ray that a test's subprocess starts: its session folder (logs, sockets)
    apart from other Ray users of this machine, in a path short enough for Unix sockets."""
    folder = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# --- options ----------------------------------------------------------------------------------


def test_trial_resources_parse_cpu_and_fractional_gpu():
    assert SweepGrid(trial_resources="cpu=2,gpu=0.25").parsed("trial_resources") == {
        "cpu": 2.0,
        "gpu": 0.25,
    }
    assert SweepGrid(trial_resources=" gpu=1 ").parsed("trial_resources") == {"gpu": 1.0}
    assert SweepGrid().parsed("trial_resources") == {}  # auto: the executor decides
    assert SweepGrid(max_concurrent_trials="0").parsed("max_concurrent_trials") == 0


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"executor": "dask"}, ["executor='dask'", "local, ray"]),
        (
            {"trial_resources": "cpu=2,tpu=1"},
            ["trial_resources='cpu=2,tpu=1'", "'tpu=1'", "cpu, gpu"],
        ),
        ({"trial_resources": "cpu=0"}, ["'cpu=0'", "positive numbers"]),
        ({"trial_resources": "gpu=half"}, ["'gpu=half'", "cpu=2,gpu=0.25"]),
        ({"trial_resources": "cpu=1,cpu=2"}, ["'cpu=2'"]),
        ({"trial_resources": ""}, ["trial_resources=''"]),
        ({"max_concurrent_trials": "-1"}, ["max_concurrent_trials='-1'", ">= 0"]),
        ({"max_failures": "two"}, ["max_failures='two'", ">= 0"]),
        ({"ray_address": "head node:6379"}, ["ray_address='head node:6379'", "'auto'"]),
    ],
)
def test_bad_executor_options_are_named_with_what_is_accepted(changes, words):
    with pytest.raises(ConfigError) as err:
        SweepGrid(**changes)
    for word in words:
        assert word in str(err.value)


def test_executor_options_change_neither_the_sweep_nor_its_children():
    base = TrainConfig(data="demo")
    local = SweepGrid(**GRID).expand(base)
    ray = SweepGrid(
        **GRID,
        executor="ray",
        ray_address="auto",
        trial_resources="cpu=2,gpu=0.5",
        max_concurrent_trials="3",
        max_failures="5",
    ).expand(base)
    assert [(c.config_hash, c.seed) for c in ray] == [(c.config_hash, c.seed) for c in local]
    assert sweep_id(ray) == sweep_id(local)


def test_a_trials_cpus_cap_the_cores_a_training_uses(monkeypatch):
    from resnet_exp.hardware import CPUS_VARIABLE, resolve_runtime, usable_cores

    monkeypatch.setenv(CPUS_VARIABLE, "1")  # what ray.init's runtime_env gives a trial with cpu=1
    assert (
        usable_cores() == 1 and resolve_runtime(TrainConfig(precision="32-true")).torch_threads == 1
    )
    monkeypatch.setenv(CPUS_VARIABLE, "10000")
    assert usable_cores() < 10000  # a cap, never more than the machine gives


def test_ray_gets_its_settings_and_the_trials_their_variables_but_never_a_password(monkeypatch):
    from resnet_exp.sweep.executors import ray_settings, trial_variables

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    here = ray_settings(start_here=True)
    assert here["RAY_worker_niceness"] == "0" and here["RAY_AIR_NEW_OUTPUT"] == "0"
    # a cluster's nodes have their own
    assert "RAY_worker_niceness" not in ray_settings(start_here=False)
    monkeypatch.setenv("RAY_worker_niceness", "5")
    # a private default, not a rule
    assert ray_settings(start_here=True)["RAY_worker_niceness"] == "5"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", "/etc/ssl/tracking.pem")
    assert trial_variables(2.5) == {
        "RESNET_EXP_CPUS": "2",
        "MLFLOW_TRACKING_URI": "http://tracking:5000",
        "MLFLOW_TRACKING_SERVER_CERT_PATH": "/etc/ssl/tracking.pem",
    }
    # Ray writes a runtime_env into its logs and onto worker command lines: no password goes there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://mlflow:s3cret@db/mlflow")
    assert (
        "MLFLOW_TRACKING_URI" not in trial_variables(0.5)
        and trial_variables(0.5)["RESNET_EXP_CPUS"] == "1"
    )


def test_a_trial_that_errors_for_good_ends_its_cell_failed(tmp_path, caplog):
    """The driver's callback on a fake trial (a real one: the killed worker's sweep below):
    an error, its retry, then an error after the last retry ends the cell FAILED."""
    from types import SimpleNamespace

    from resnet_exp.sweep.progress import SweepProgress
    from resnet_exp.sweep.ray_trial import TrialProgress

    caplog.set_level(logging.INFO, logger=PROGRESS)
    error = tmp_path / "error.txt"  # as Tune appends to it in the driver before calling back

    def fails(attempt: int) -> None:
        with open(error, "a") as file:
            file.write(
                f"Failure # {attempt} (occurred at 2026-12-03_18-53-53)\n"
                'ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n  File "x.py", line 1\n'
                "RuntimeError: worker lost\nits details\n"
            )

    cells = SweepGrid(**GRID).expand(TrainConfig(data="demo"))
    progress = SweepProgress(at_once=2)
    callback = TrialProgress(
        progress, cells, progress.add([c.run_name for c in cells]), max_failures=1
    )
    trial = SimpleNamespace(
        trial_id="abc_00001", config={"cell": 1}, last_result={}, error_file=str(error)
    )
    callback.on_trial_start(0, [], trial)
    fails(1)
    callback.on_trial_recover(0, [], trial)
    callback.on_trial_start(0, [], trial)
    fails(2)
    callback.on_trial_error(0, [], trial)
    cell = "[2/4] r12-b1121-f4-s0"
    assert caplog.messages == [
        f"{cell} started (ray trial abc_00001)",
        f"ray trial abc_00001 {cell}: errored (RuntimeError: worker lost), to be retried",
        f"ray trial abc_00001 {cell}: retried, attempt 2 of 2",
        f"ray trial abc_00001 {cell}: errored after 2 attempts: RuntimeError: worker lost",
        f"{cell} FAILED: Ray trial failed: RuntimeError: worker lost",
    ]


def ray_sweep_command(data_dir, *options: str):
    """`resnet-exp sweep --executor ray` of the tiny grid, in this process."""
    return CliRunner().invoke(
        main, ["sweep", *TINY, "--data-dir", str(data_dir), "--executor", "ray", *options]
    )


def test_a_ray_address_that_does_not_answer_is_one_line_in_seconds(
    tmp_path, data_dir, tracking_uri
):
    """Ray itself retries an address that does not answer for about 14 minutes."""
    import time

    from servers import free_port

    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    result = ray_sweep_command(data_dir, "--ray-address", address)
    assert time.monotonic() - start < 10
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and f"ray_address='{address}'" in errors[0], result.output
    assert "no Ray cluster answers there" in errors[0] and "ray start --head" in errors[0]
    assert sweeps(MlflowClient(tracking_uri)) == []


def test_a_bad_trial_resource_stops_the_sweep_before_any_run(tmp_path, data_dir, tracking_uri):
    result = ray_sweep_command(data_dir, "--trial-resources", "cpu=1,gpu=-1")
    assert (
        result.exit_code != 0 and "'gpu=-1'" in result.output and "Traceback" not in result.output
    )
    assert sweeps(MlflowClient(tracking_uri)) == []


# --- real Ray ---------------------------------------------------------------------------------


def test_only_the_trial_module_imports_ray_at_import_time():
    """`import resnet_exp.sweep.run` (and everything a local sweep loads) stays Ray-free: Ray is
    imported inside the Ray executor's functions, and at module level only by ray_trial.py,
    which runs in Ray's workers."""
    import ast

    eager = []
    for path in sorted((REPO / "resnet_exp").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only, not inside functions
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "ray" or name.startswith("ray.") for name in names):
                eager.append(path.name)
    assert sorted(set(eager)) == ["ray_trial.py"]


@pytest.mark.slow
def test_a_ray_sweep_under_mlflow_run_survives_a_killed_worker_then_a_local_sweep_skips_its_cells(
    tmp_path, data_dir, tracking_uri, ray_tmp
):
    """A Ray sweep under `mlflow run` and a killed worker, checked in one sweep: once the first
    trial has stored epoch 0 and saved it, its worker gets `kill -9`; Ray retries the trial
    (max_failures=1) and the retry resumes the child run in a new worker. Three epochs, so that
    the trial is still training when the kill comes (an epoch of the cached head is quick)."""
    import re
    import signal
    import time

    # the same training parameters as TINY, which the local sweep below uses: the same cells. fp32:
    # `auto` would measure bf16 in the driver first (seconds; the `mlflow run` main test covers it)
    params = {
        "executor": "ray",
        "data": "demo",
        "weights": "none",
        "image_size": "32",
        "batch_size": "16",
        "max_epochs": "3",
        "limit_batches": "3",
        "precision": "32-true",
        **GRID,
        "trial_resources": "cpu=1",
        "max_failures": "1",
        "data_dir": str(data_dir),
        "output_dir": str(tmp_path / "results"),
    }
    cmd = mlflow_run_command("ray-sweeps", params, entry="sweep")
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    log = tmp_path / "mlflow-run.log"  # a file, not a pipe nobody reads while the test polls
    # the driver holds a password (SQLite ignores it), which must reach no file
    env = subprocess_env(RAY_TMPDIR=str(ray_tmp), MLFLOW_TRACKING_PASSWORD=PASSWORD)
    sweep = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    try:
        deadline, found = time.monotonic() + 400, None
        while found is None and time.monotonic() < deadline and sweep.poll() is None:
            found = resumable_epoch(db, 0)  # a child has stored epoch 0 and saved it
            time.sleep(0.1)
        assert found is not None, "no trial reached epoch 0"
        killed_run, worker = found[0], int(found[1][S.TAG_PROCESS].split()[1])
        assert worker not in (sweep.pid, os.getpid()), "the child trains in a Ray worker"
        # the private RAY_worker_niceness the executor sets (Ray's default is 15)
        assert os.getpriority(os.PRIO_PROCESS, worker) == 0
        os.kill(worker, signal.SIGKILL)
        sweep.wait(timeout=600)
    finally:
        sweep.kill()
    assert sweep.returncode == 0, log.read_text()[-3000:]
    # the store (params, tags), artifacts, Tune's results, the console and Ray's logs, among them
    # runtime_env_agent.log, where Ray writes the runtime_env (and so the trials' variables)
    assert_no_file_holds(PASSWORD, tmp_path, ray_tmp)
    assert "RESNET_EXP_CPUS" in "".join(
        p.read_text() for p in ray_tmp.rglob("runtime_env_agent.log")
    )

    # The console: each cell's start and end as [i/4] lines in grid order; Ray's trial states
    console = log.read_text()
    lines = [
        line.split(": ", 1)[1]
        for line in console.splitlines()
        if line.startswith(f"INFO {PROGRESS}: ")
    ]
    names = ["r10-b1111-f4-s0", "r12-b1121-f4-s0", "r10-b1111-f4-s1", "r12-b1121-f4-s1"]
    assert_progress(lines, names)
    states = {
        name: [
            line.split(f" {name}: ", 1)[1]
            for line in lines
            if line.startswith("ray trial ") and f" {name}: " in line
        ]
        for name in names
    }
    for name, seen in states.items():
        assert seen[-1] == "completed" and any(s.startswith("running on node ") for s in seen), (
            name,
            lines,
        )
    killed = states[MlflowClient(tracking_uri).get_run(killed_run).info.run_name]
    assert any(s.startswith("errored (") and s.endswith(", to be retried") for s in killed), killed
    assert "retried, attempt 2 of 2" in killed, killed
    assert "Configuration for experiment" not in console, "Tune's own output stays quiet"

    client = MlflowClient(tracking_uri)
    [parent] = sweeps(client)
    runs = children(client)
    # both block lists arrived (MLflow quoted the ';' away from the shell), each cell once
    assert sorted(r.info.run_name for r in runs) == [
        "r10-b1111-f4-s0",
        "r10-b1111-f4-s1",
        "r12-b1121-f4-s0",
        "r12-b1121-f4-s1",
    ], "resumed, not redone"
    # nested under the one parent, in the experiment `mlflow run` was given, one sweep id
    assert {r.data.tags[S.MLFLOW_PARENT_RUN_ID] for r in runs} == {parent.info.run_id}
    assert client.get_experiment(parent.info.experiment_id).name == "ray-sweeps"
    assert {r.info.experiment_id for r in runs} == {parent.info.experiment_id}
    assert {r.data.tags[S.TAG_SWEEP_ID] for r in runs} == {parent.data.tags[S.TAG_SWEEP_ID]}
    assert {r.info.status for r in runs} == {"FINISHED"} and parent.info.status == "FINISHED"
    [resumed] = [r for r in runs if S.TAG_RESUMED in r.data.tags]
    # after epoch 0, or 1 if the poll came late: either way from the checkpoint the run had saved
    assert resumed.info.run_id == killed_run and re.match(
        r"epoch [12] from ", resumed.data.tags[S.TAG_RESUMED]
    )
    assert int(resumed.data.tags[S.TAG_PROCESS].split()[1]) != worker, (
        "the retry ran in a new worker"
    )
    assert all(r.data.tags[S.TAG_RAY_NODE_ID] and r.data.tags[S.TAG_RAY_TRIAL_DIR] for r in runs)
    assert {r.data.params["resolved/torch_threads"] for r in runs} == {"1"}, (
        "threads follow the trial's CPUs"
    )
    assert {r.data.params[S.OUTPUT_DIR] for r in runs} == {str(tmp_path / "results")}
    for run in runs:  # every epoch once in MLflow, and each epoch's val_loss and val_acc in Tune
        assert [m.step for m in client.get_metric_history(run.info.run_id, S.VAL_LOSS)] == [0, 1, 2]
        reported = [
            json.loads(line)
            for line in (Path(run.data.tags[S.TAG_RAY_TRIAL_DIR]) / "result.json")
            .read_text()
            .splitlines()
        ]
        epochs = [r["epoch"] for r in reported if S.VAL_LOSS in r and S.VAL_ACC in r]
        # the killed trial's first attempt may or may not have reported its epochs before the kill
        assert (
            epochs == [0, 1, 2]
            or run.info.run_id == killed_run
            and epochs[-1] == 2
            and set(epochs) <= {0, 1, 2}
        ), (run.info.run_name, epochs)

    aliases = client.get_registered_model("resnet-demo").aliases
    assert {"champion", "best-b1111-f4", "best-b1121-f4"} <= set(aliases)

    # The same grid with the local executor: the same parent, every cell already finished. In
    # this process: what is checked is which cells a local sweep finds FINISHED in the store, and
    # a fresh process would only add its imports (~15 s of CPU); the sweep's own process is the
    # one `mlflow run` started above.
    local = CliRunner().invoke(
        main,
        sweep_args(
            data_dir,
            tmp_path,
            *[f"--{k.replace('_', '-')}={v}" for k, v in GRID.items()],
            "--max-epochs",
            "3",
            "--precision",
            "32-true",
            "--experiment-name",
            "ray-sweeps",
        ),
    )
    assert local.exit_code == 0 and "0 trained, 4 skipped" in local.output, local.output[-3000:]
    assert parent.info.run_id in local.output and len(sweeps(client)) == 1

    # The analyze entry point: the run `mlflow run` creates for it holds the analysis.
    cmd = mlflow_run_command(
        "ray-sweeps",
        {"sweep_run_id": parent.info.run_id, "output_dir": tmp_path / "results"},
        entry="analyze",
    )
    analysis = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=tmp_path
    )
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    assert_analysis(tmp_path / "results" / "demo" / "analysis", {"b1111-f4", "b1121-f4"}, n_runs=2)
    [run] = client.search_runs([parent.info.experiment_id], f"tags.{S.TAG_KIND} = 'analysis'")
    assert run.info.status == "FINISHED"
    assert {"ranking.csv", "ranking.json", "report.html", "plots"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
