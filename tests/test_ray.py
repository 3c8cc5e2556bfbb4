"""The Ray Tune executor of sweeps (resnet_exp/sweep/executors.py): its options, then real Ray: a sweep
under `mlflow run` with executor=ray (its children nested under one parent in the launch's
experiment), one of whose trials has its worker killed, that a local sweep of the same grid then
skips, and that `mlflow run -e analyze` ranks; and a cluster started by hand with `ray start` as
docs/cluster.md says, whose node that trains the cell dies (the retry on another node, under
another hostname, continues the run), then a sweep on it that gets SIGTERM. The sweep on a
two-node cluster simulated on this machine (ray.cluster_utils.Cluster) is
tests/test_tracking_server.py's: it also writes to the server."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import REPO, cli_options, mlflow_run_command, resumable_epoch, subprocess_env
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


def failing_trial(tmp_path: Path, cell: int, text: str):
    """A stand-in for Tune's Trial (the real one: the hand-started cluster's sweep below) and a
    function that appends a failure to its error file, as Tune does in the driver before calling
    back."""
    from types import SimpleNamespace

    error = tmp_path / "error.txt"

    def fails(attempt: int) -> None:
        with open(error, "a") as file:
            file.write(
                f"Failure # {attempt} (occurred at 2026-12-03_18-53-53)\n"
                'ray::ImplicitFunc.train() (pid=1, ip=127.0.0.1)\n  File "x.py", line 1\n'
                f"{text}\nits details\n"
            )

    trial = SimpleNamespace(
        trial_id="abc_00001", config={"cell": cell}, last_result={}, error_file=str(error)
    )
    return trial, fails


def test_a_trial_that_errors_for_good_ends_its_cell_failed(tmp_path, caplog):
    """The driver's callback: an error, its retry, then an error after the last retry ends the
    cell FAILED, a line each."""
    from resnet_exp.sweep.progress import SweepProgress
    from resnet_exp.sweep.ray_trial import TrialProgress

    caplog.set_level(logging.INFO, logger=PROGRESS)
    cells = SweepGrid(**GRID).expand(TrainConfig(data="demo"))
    progress = SweepProgress(at_once=2)
    callback = TrialProgress(
        progress, cells, progress.add([c.run_name for c in cells]), max_failures=1
    )
    trial, fails = failing_trial(tmp_path, 1, "RuntimeError: worker lost")
    callback.on_trial_start(0, [], trial)
    fails(1)
    callback.on_trial_recover(0, [], trial)
    callback.on_trial_start(0, [], trial)  # the retry: announced already
    fails(2)
    callback.on_trial_error(0, [], trial)
    cell = "[2/4] r12-b1121-f4-s0"
    assert caplog.messages == [
        f"{cell} started (ray trial abc_00001)",
        f"ray trial abc_00001 {cell}: errored (RuntimeError: worker lost); attempt 2/2 "
        "retries the cell",
        f"ray trial abc_00001 {cell}: errored after 2 attempts: RuntimeError: worker lost",
        f"{cell} FAILED: Ray trial failed: RuntimeError: worker lost",
    ]


def test_a_trial_whose_node_died_is_one_line_and_its_retry_resumes_the_run_on_any_host(
    tmp_path, tracking_uri, caplog
):
    """A trial's worker died on another host (its run RUNNING there, heartbeat fresh, last.ckpt
    on the shared output_dir): the driver says so in one line naming the run and the epoch the
    retry starts at, and marks the run KILLED, so that the retry, wherever it lands, resumes it
    (a fresh heartbeat made it look alive, and the retry started the cell over in a new run)."""
    import time

    import torch

    from resnet_exp.sweep.progress import SweepProgress
    from resnet_exp.sweep.ray_trial import NODE_KEY, TrialProgress
    from resnet_exp.tracking import resume
    from resnet_exp.tracking.training_run import ParentRun

    caplog.set_level(logging.INFO, logger=PROGRESS)
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("ray-retry")
    parent = ParentRun(client.create_run(experiment).info.run_id, experiment)
    cells = SweepGrid(**GRID).expand(TrainConfig(data="demo"))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    torch.save({"epoch": 1}, folder / resume.LAST_CHECKPOINT)  # epochs 0 and 1 trained
    trials = tmp_path / "ray" / "sweep" / "20261203-185353-ab12cd"
    dead = client.create_run(
        experiment,
        run_name=cells[1].run_name,
        tags={
            S.MLFLOW_PARENT_RUN_ID: parent.run_id,
            S.TAG_KIND: S.KIND_TRAIN,
            S.TAG_CONFIG_HASH: cells[1].config_hash,
            S.TAG_PROCESS: "node-b 4242 1.00",  # another host: only the heartbeat tells
            S.TAG_HEARTBEAT: f"{time.time():.0f}",
            S.TAG_CHECKPOINT_DIR: str(folder),
            S.TAG_RAY_TRIAL_DIR: str(trials / "run_trial_abc_00001_1_cell=1_2026-12-03_18-53-53"),
        },
    ).info.run_id
    client.log_param(dead, S.SEED, str(cells[1].seed))
    progress = SweepProgress(at_once=2)
    callback = TrialProgress(
        progress, cells, progress.add([c.run_name for c in cells]), 2, parent, str(trials)
    )
    trial, fails = failing_trial(
        tmp_path, 1, "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing"
    )
    callback.on_trial_start(0, [], trial)
    node = "a1b2c3d4" + "0" * 48
    callback.on_trial_result(0, [], trial, {NODE_KEY: node, "node_ip": "10.0.0.12", "pid": 7})
    fails(1)
    callback.on_trial_recover(0, [], trial)
    assert caplog.messages[-1] == (
        "ray trial abc_00001 [2/4] r12-b1121-f4-s0: died on node 10.0.0.12 (a1b2c3d4); "
        f"attempt 2/3 resumes run {dead} from epoch 2"
    )
    assert client.get_run(dead).info.status == "KILLED"
    point = resume.plan(cells[1].replace(resume=dead), experiment, parent.run_id)
    assert point is not None and point.run_id == dead


def test_a_trial_below_normal_priority_is_named_with_the_setting_that_fixes_it(caplog):
    """A node started without RAY_worker_niceness=0 runs trials at nice 15 (2.5-3x slower
    beside any busy process): the driver says so when the trial reports where it runs."""
    from types import SimpleNamespace

    from resnet_exp.sweep.progress import SweepProgress
    from resnet_exp.sweep.ray_trial import NICE_KEY, NODE_KEY, TrialProgress

    caplog.set_level(logging.INFO, logger=PROGRESS)
    cells = SweepGrid(**GRID).expand(TrainConfig(data="demo"))
    progress = SweepProgress()
    callback = TrialProgress(progress, cells, progress.add([c.run_name for c in cells]), 0)
    trial = SimpleNamespace(trial_id="abc_00000", config={"cell": 0}, last_result={})
    for nice in (0, 15):
        result = {NODE_KEY: "a1b2c3d4" + "0" * 48, NICE_KEY: nice, "node_ip": "10.0.0.12"}
        callback.on_trial_result(0, [], trial, {**result, "pid": 7})
    warnings = [m for m in caplog.messages if "nice" in m]
    assert len(warnings) == 1 and "at nice 15" in warnings[0]
    assert "RAY_worker_niceness=0" in warnings[0]


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
    # one line for the death, naming the run and epoch that the retry continues
    died = [s for s in killed if s.startswith("died on node ")]
    assert len(died) == 1 and re.search(
        f"; attempt 2/2 resumes run {killed_run} from epoch [12]$", died[0]
    ), killed
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
    # the trial's folder is bookkeeping: no tag the UI shows holds a local path
    assert not [
        (k, v)
        for r in runs
        for k, v in r.data.tags.items()
        if not k.startswith("mlflow.") and str(tmp_path) in v
    ]
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


# --- a cluster started by hand, as docs/cluster.md says -----------------------------------------


def own_hostname(name: str) -> list[str]:
    """A command prefix that runs a node under hostname `name` (a user and UTS namespace), as a
    node of a real cluster has its own; [] where this machine allows no user namespaces."""
    probe = subprocess.run(["unshare", "-Ur", "--uts", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        return []
    return ["unshare", "-Ur", "--uts", "sh", "-c", f'hostname {name} && exec "$0" "$@"']


class HandStartedCluster:
    """A head without CPUs (the driver's node) and worker nodes of one CPU each, each under its
    own hostname where the machine allows it, started with `ray start --block` as
    docs/cluster.md says: token auth, its own temp dir and ports, trials at nice 0."""

    def __init__(self, folder: Path, ray_tmp: Path) -> None:
        from servers import free_port

        self.folder, self.temp_dir = folder, ray_tmp
        self.port = free_port()
        token = folder / "auth_token"  # what `ray get-auth-token --generate` writes, copied
        token.write_text(os.urandom(32).hex())
        self.env = subprocess_env(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_worker_niceness="0"
        )
        self.nodes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *options: str, prefix: Sequence[str] = ()) -> None:
        from servers import free_port

        log = (self.folder / f"{name}.log").open("w")
        self.nodes[name] = subprocess.Popen(
            [*prefix, "ray", "start", "--block", "--disable-usage-stats",
             f"--dashboard-agent-listen-port={free_port()}", *options],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def start_head(self) -> None:
        from servers import free_port

        self.start(
            "head", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
            f"--temp-dir={self.temp_dir}", "--num-cpus=0", "--include-dashboard=false",
            f"--dashboard-port={free_port()}", f"--ray-client-server-port={free_port()}",
        )  # fmt: skip

    def start_worker(self, name: str) -> None:
        address = f"--address=127.0.0.1:{self.port}"
        self.start(name, address, "--num-cpus=1", prefix=own_hostname(name))

    def wait_started(self, timeout: float = 120) -> None:
        import time

        deadline = time.monotonic() + timeout
        for name, node in self.nodes.items():
            log = self.folder / f"{name}.log"
            while "Ray runtime started" not in log.read_text():
                assert node.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)

    def node_of(self, pid: int) -> str:
        """The name of the node that started process `pid` (a worker: its raylet's parent is
        that node's `ray start`)."""
        import psutil

        ancestors = {p.pid for p in psutil.Process(pid).parents()}
        return next(n for n, p in self.nodes.items() if p.pid in ancestors)

    def stop(self) -> list[str]:
        """SIGTERM to each node's `ray start --block`, as the docs say; the command lines of any
        process of this cluster left after 30 s (then killed)."""
        import psutil

        for node in self.nodes.values():
            if node.poll() is None:
                node.terminate()
        for node in self.nodes.values():
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        left = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(process.info["cmdline"] or [])
            if str(self.temp_dir) in line or f"127.0.0.1:{self.port}" in line:
                left.append(line[:200])
                process.kill()
        return left


def sweep_on(cluster: HandStartedCluster, data_dir: Path, tmp_path: Path, log: Path, seed: int):
    """`resnet-exp sweep --executor ray --ray-address 127.0.0.1:<port>` of one cell, a process;
    six epochs of a network trained whole, so that the node dies while the cell trains."""
    import sys

    args = cli_options(
        data="demo", weights="none", image_size=32, batch_size=16, limit_batches=3,
        max_epochs=6, precision="32-true", blocks="1,1,1,1", freeze_blocks=0, seeds=f"{seed},",
        executor="ray", ray_address=f"127.0.0.1:{cluster.port}", trial_resources="cpu=1",
        max_failures=2, data_dir=data_dir, output_dir=tmp_path / "results",
    )  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "resnet_exp", "sweep", *args],
        env=cluster.env, cwd=tmp_path, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip


@pytest.mark.slow
def test_a_hand_started_cluster_continues_a_trial_whose_node_died_and_stops_on_sigterm(
    tmp_path, data_dir, tracking_uri, ray_tmp
):
    """Two worker nodes under their own hostnames: the node that trains the cell dies (its
    `ray start` and every process of it killed) once epoch 0 is saved; the retry on the other
    node continues the same run from the shared last.ckpt although the dead node's heartbeat is
    fresh, and the driver says so in one line. Meanwhile a second sweep, waiting in Tune for a
    CPU, gets SIGTERM: exit 143 within 2 s, its parent KILLED. Then the cluster stops as the
    docs say, leaving no process."""
    import re
    import signal
    import time

    cluster = HandStartedCluster(tmp_path, ray_tmp)
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    try:
        cluster.start_head()
        cluster.wait_started()
        # one node at a time: two nodes started together timed out registering
        for name in ("node-b", "node-c"):
            cluster.start_worker(name)
            cluster.wait_started()
        log = tmp_path / "sweep.log"
        # watched from its start: on an idle machine the six tiny epochs take a few seconds
        sweep = sweep_on(cluster, data_dir, tmp_path, log, seed=1)
        deadline, found = time.monotonic() + 300, None
        while found is None and time.monotonic() < deadline and sweep.poll() is None:
            found = resumable_epoch(db, 0)
            time.sleep(0.2)
        assert found is not None, log.read_text()[-3000:]
        killed_run, worker = found[0], int(found[1][S.TAG_PROCESS].split()[1])
        assert os.getpriority(os.PRIO_PROCESS, worker) == 0, "trials at normal priority"
        dead = cluster.node_of(worker)
        # the node dies, all of it: its training first (a worker whose raylet died trains on
        # until it notices, which on an idle machine is the rest of these tiny epochs)
        os.kill(worker, signal.SIGKILL)
        os.killpg(cluster.nodes[dead].pid, signal.SIGKILL)

        # Meanwhile, SIGTERM to a second sweep once Tune waits (for the one CPU left, or its trial)
        stopped_log = tmp_path / "sigterm.log"
        stopped = sweep_on(cluster, data_dir, tmp_path, stopped_log, seed=2)
        deadline = time.monotonic() + 300
        while "ray: 1 trials of" not in stopped_log.read_text() and time.monotonic() < deadline:
            assert stopped.poll() is None, stopped_log.read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(2)  # into Tune's loop
        sent = time.monotonic()
        stopped.send_signal(signal.SIGTERM)
        code = stopped.wait(timeout=60)
        took = time.monotonic() - sent
        assert code == 143 and took < 2, (code, took, stopped_log.read_text()[-3000:])

        assert sweep.wait(timeout=300) == 0, log.read_text()[-3000:]
        console = log.read_text()
        client = MlflowClient(tracking_uri)
        assert sorted(r.info.status for r in sweeps(client)) == ["FINISHED", "KILLED"]
        runs = [r for r in children(client) if r.info.run_name.endswith("-s1")]
        assert [r.info.run_id for r in runs] == [killed_run], "resumed, not started over"
        [run] = runs
        assert run.info.status == "FINISHED"
        assert not [r for r in children(client) if r.info.status == "RUNNING"]
        assert re.match(r"epoch [1-5] from ", run.data.tags[S.TAG_RESUMED]), "resumed mid-training"
        nodes = run.data.tags[S.TAG_RAY_NODES].split(",")
        assert (
            len(nodes) == 2
            and nodes[0] != nodes[1]
            and nodes[1] == run.data.tags[S.TAG_RAY_NODE_ID]
        )
        if own_hostname(dead):  # the retry ran under the other node's hostname
            assert run.data.tags[S.TAG_PROCESS].split()[0] != found[1][S.TAG_PROCESS].split()[0]
        history = client.get_metric_history(run.info.run_id, S.VAL_LOSS)
        assert [m.step for m in history] == list(range(6)), "each epoch once"
        died = [line for line in console.splitlines() if " died on node " in line]
        assert len(died) == 1 and re.search(
            rf"; attempt 2/3 resumes run {killed_run} from epoch [1-5]$", died[0]
        ), console[-3000:]
        assert "Traceback" not in console and "ActorDiedError" not in console, console[-3000:]
    finally:
        left = cluster.stop()
    assert not left, f"processes of the cluster left after `kill <ray start pid>`: {left}"
