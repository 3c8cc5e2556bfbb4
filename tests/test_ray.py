"""The Ray Tune executor of sweeps (resnet_exp/executors.py): its options, then real Ray: a sweep
under `mlflow run` with executor=ray that a local sweep of the same grid then skips, and a sweep on
a two-node cluster simulated on this machine (ray.cluster_utils.Cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import REPO, ray_driver_here, resumable_epoch, subprocess_env
from resnet_exp import schema as S
from resnet_exp.cli import main
from resnet_exp.config import TrainConfig
from resnet_exp.errors import ConfigError
from resnet_exp.grid import SweepGrid, sweep_id
from test_sweep import TINY, assert_analysis, children, sweep_args, sweeps

# 2 configurations x 2 seeds, the smallest grid that ranks two configurations over seeds
GRID = {"freeze_blocks": "4", "blocks": "1,1,1,1;1,1,2,1", "seeds": "2"}


# --- options ----------------------------------------------------------------------------------


def test_trial_resources_parse_cpu_and_fractional_gpu():
    assert SweepGrid(trial_resources="cpu=2,gpu=0.25").parsed("trial_resources") == {"cpu": 2.0, "gpu": 0.25}
    assert SweepGrid(trial_resources=" gpu=1 ").parsed("trial_resources") == {"gpu": 1.0}
    assert SweepGrid().parsed("trial_resources") == {}  # auto: the executor decides
    assert SweepGrid(max_concurrent_trials="0").parsed("max_concurrent_trials") == 0


@pytest.mark.parametrize("changes, words", [
    ({"executor": "dask"}, ["executor='dask'", "local, ray"]),
    ({"trial_resources": "cpu=2,tpu=1"}, ["trial_resources='cpu=2,tpu=1'", "'tpu=1'", "cpu, gpu"]),
    ({"trial_resources": "cpu=0"}, ["'cpu=0'", "positive numbers"]),
    ({"trial_resources": "gpu=half"}, ["'gpu=half'", "cpu=2,gpu=0.25"]),
    ({"trial_resources": "cpu=1,cpu=2"}, ["'cpu=2'"]),
    ({"trial_resources": ""}, ["trial_resources=''"]),
    ({"max_concurrent_trials": "-1"}, ["max_concurrent_trials='-1'", ">= 0"]),
    ({"max_failures": "two"}, ["max_failures='two'", ">= 0"]),
    ({"ray_address": "head node:6379"}, ["ray_address='head node:6379'", "'auto'"]),
])
def test_bad_executor_options_are_named_with_what_is_accepted(changes, words):
    with pytest.raises(ConfigError) as err:
        SweepGrid(**changes)
    for word in words:
        assert word in str(err.value)


def test_executor_options_change_neither_the_sweep_nor_its_children():
    base = TrainConfig(data="demo")
    local = SweepGrid(**GRID).expand(base)
    ray = SweepGrid(**GRID, executor="ray", ray_address="auto", trial_resources="cpu=2,gpu=0.5",
                    max_concurrent_trials="3", max_failures="5").expand(base)
    assert [(c.config_hash, c.seed) for c in ray] == [(c.config_hash, c.seed) for c in local]
    assert sweep_id(ray) == sweep_id(local)


def test_a_trials_cpus_cap_the_cores_a_training_uses(monkeypatch):
    from resnet_exp.hardware import CPUS_VARIABLE, resolve_runtime, usable_cores

    monkeypatch.setenv(CPUS_VARIABLE, "1")  # what a trial with cpu=1 sets
    assert usable_cores() == 1 and resolve_runtime(TrainConfig(precision="32-true")).torch_threads == 1
    monkeypatch.setenv(CPUS_VARIABLE, "10000")
    assert usable_cores() < 10000  # a cap, never more than the machine gives


def test_a_bad_trial_resource_stops_the_sweep_before_any_run(tmp_path, data_dir, tracking_uri):
    result = CliRunner().invoke(main, ["sweep", *TINY, "--data-dir", str(data_dir), "--executor", "ray",
                                       "--trial-resources", "cpu=1,gpu=-1"])
    assert result.exit_code != 0 and "'gpu=-1'" in result.output and "Traceback" not in result.output
    assert sweeps(MlflowClient(tracking_uri)) == []


# --- real Ray ---------------------------------------------------------------------------------


def test_only_the_trial_module_imports_ray_at_import_time():
    """`import resnet_exp.sweep` (and everything a local sweep loads) stays Ray-free: Ray is
    imported inside the Ray executor's functions, and at module level only by ray_trial.py,
    which runs in Ray's workers."""
    import ast

    eager = []
    for path in sorted((REPO / "resnet_exp").glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only, not inside functions
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == "ray" or name.startswith("ray.") for name in names):
                eager.append(path.name)
    assert sorted(set(eager)) == ["ray_trial.py"]


@pytest.mark.slow
def test_a_ray_sweep_under_mlflow_run_then_a_local_sweep_skips_its_cells(tmp_path, data_dir, tracking_uri):
    # the same training parameters as TINY, which the local sweep below uses: the same cells
    params = {"executor": "ray", "data": "demo", "weights": "none", "image_size": "32", "batch_size": "16",
              "max_epochs": "2", "limit_batches": "3", **GRID, "trial_resources": "cpu=1",
              "data_dir": str(data_dir), "output_dir": str(tmp_path / "results")}
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", "sweep", "--env-manager", "local",
           "--experiment-name", "ray-sweeps"]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=subprocess_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    client = MlflowClient(tracking_uri)
    [parent] = sweeps(client)
    runs = children(client, parent.info.run_id)
    assert sorted(r.info.run_name for r in runs) == ["r10-b1111-f4-s0", "r10-b1111-f4-s1",
                                                     "r12-b1121-f4-s0", "r12-b1121-f4-s1"]
    assert {r.info.status for r in runs} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert all(r.data.tags[S.TAG_RAY_NODE_ID] and r.data.tags[S.TAG_RAY_TRIAL_DIR] for r in runs)
    assert {r.data.params["resolved/torch_threads"] for r in runs} == {"1"}, "threads follow the trial's CPUs"
    assert {r.data.params[S.OUTPUT_DIR] for r in runs} == {str(tmp_path / "results")}
    for run in runs:  # every epoch once in MLflow, and each epoch's val_loss and val_acc in Tune
        assert [m.step for m in client.get_metric_history(run.info.run_id, S.VAL_LOSS)] == [0, 1]
        reported = [json.loads(line) for line in
                    (Path(run.data.tags[S.TAG_RAY_TRIAL_DIR]) / "result.json").read_text().splitlines()]
        epochs = [r for r in reported if S.VAL_LOSS in r]
        assert [r["epoch"] for r in epochs] == [0, 1] and all(S.VAL_ACC in r for r in epochs)

    aliases = client.get_registered_model("resnet-demo").aliases
    assert {"champion", "best-b1111-f4", "best-b1121-f4"} <= set(aliases)

    # The same grid with the local executor: the same parent, every cell already finished. In
    # this process: what is checked is which cells a local sweep finds FINISHED in the store, and
    # a fresh process would only add its imports (~15 s of CPU); the sweep's own process is the
    # one `mlflow run` started above.
    local = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *[f"--{k.replace('_', '-')}={v}"
                                                                      for k, v in GRID.items()],
                                                "--experiment-name", "ray-sweeps"))
    assert local.exit_code == 0 and "0 trained, 4 skipped" in local.output, local.output[-3000:]
    assert parent.info.run_id in local.output and len(sweeps(client)) == 1

    analysis = CliRunner().invoke(main, ["analyze", "--sweep-run-id", parent.info.run_id,
                                         "--output-dir", str(tmp_path / "results")])
    assert analysis.exit_code == 0, analysis.output
    assert_analysis(tmp_path / "results" / "demo" / "analysis", {"b1111-f4", "b1121-f4"}, n_runs=2)


@pytest.mark.slow
def test_a_sweep_on_a_two_node_cluster_runs_trials_on_both_nodes(tmp_path, data_dir, tracking_uri):
    """The sweeps' driver is this process (click's CliRunner): what is checked is where Ray puts
    the trials, in worker processes on the cluster's nodes, and a driver process of its own
    would only add its imports (~15 s of CPU each). A driver in a process of its own is the
    `mlflow run` sweep above and the killed worker's sweep below."""
    from ray.cluster_utils import Cluster

    with ray_driver_here():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        try:
            cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            grid = ["--freeze-blocks", "4", "--blocks", "1,1,1,1", "--seeds", "2", "--max-epochs", "1",
                    "--registered-model-name", "none", "--executor", "ray", "--ray-address", cluster.address]
            # a trial no node can hold would wait for ever in Tune: refused before any run
            too_big = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *grid, "--trial-resources", "cpu=2"))
            assert too_big.exit_code != 0 and "trial_resources=cpu=2" in too_big.stderr, too_big.output[-3000:]
            assert "cpu=1 gpu=0, cpu=1 gpu=0" in too_big.stderr and "Traceback" not in too_big.output
            assert sweeps(MlflowClient(tracking_uri)) == []
            result = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *grid, "--trial-resources", "cpu=1"))
            assert result.exit_code == 0 and "2 trained" in result.output, result.output[-3000:]
            nodes = {node.node_id for node in cluster.list_all_nodes()}
        finally:
            cluster.shutdown()
    runs = children(MlflowClient(tracking_uri))
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    used = {r.data.tags[S.TAG_RAY_NODE_ID] for r in runs}
    assert used == nodes and len(used) == 2, "one trial on each node of 1 CPU"


@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_is_retried_and_resumes_its_child_run(tmp_path, data_dir, tracking_uri):
    """The sweep's driver is a process of its own here: with this process as the driver, a later
    in-process Ray sweep of the session (test_tracking_server's) saw its trials' actors cancelled
    before they started."""
    import signal
    import time

    db = Path(tracking_uri.removeprefix("sqlite:///"))
    command = [sys.executable, "-m", "resnet_exp", *sweep_args(data_dir, tmp_path, "--freeze-blocks", "3", "--seeds", "1",
                                                               "--max-epochs", "3", "--registered-model-name", "none",
                                                               "--executor", "ray", "--max-failures", "1")]
    sweep = subprocess.Popen(command, env=subprocess_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline, worker = time.monotonic() + 300, None
        while worker is None and time.monotonic() < deadline and sweep.poll() is None:
            found = resumable_epoch(db, 1)  # the child has stored epoch 1 and saved it
            worker = int(found[1][S.TAG_PROCESS].split()[1]) if found else None
            time.sleep(0.1)
        assert worker is not None and worker != sweep.pid, "the child trains in a Ray worker"
        os.kill(worker, signal.SIGKILL)
        out, err = sweep.communicate(timeout=300)
    finally:
        sweep.kill()
    assert sweep.returncode == 0 and "1 trained" in out, err[-3000:]
    [child] = children(MlflowClient(tracking_uri))  # the retry resumed it: no second run
    assert child.info.status == "FINISHED" and child.data.tags[S.TAG_RESUMED].startswith("epoch 2 from ")
    assert int(child.data.tags[S.TAG_PROCESS].split()[1]) not in (worker, sweep.pid), "in a new worker"
    history = MlflowClient(tracking_uri).get_metric_history(child.info.run_id, S.VAL_LOSS)
    assert sorted(m.step for m in history) == [0, 1, 2]
