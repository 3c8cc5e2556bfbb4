"""A sweep's end (resnet_exp/sweep/run.py): no child stays RUNNING under a closed parent, and the
parent is never FINISHED while one of its children still runs somewhere.

    pytest tests/test_sweep_end.py
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from resnet_exp import schema as S
from resnet_exp.cli import main
from resnet_exp.config import TrainConfig
from resnet_exp.sweep.grid import SweepGrid
from resnet_exp.sweep.parents import close_dead_children
from resnet_exp.tracking.resume import process_tag
from test_sweep import sweep_args, sweeps

GRID = {"freeze_blocks": "4", "blocks": "1,1,1,1", "seeds": "1"}


def dead_process_tag() -> str:
    """The process tag of a process of this host that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()} {child.pid} 1.00"


def child_run(client: MlflowClient, experiment_id: str, parent: str, process: str, **tags) -> str:
    """A training run under `parent` as the process named by `process` left it."""
    tags = {
        S.TAG_KIND: S.KIND_TRAIN,
        S.MLFLOW_PARENT_RUN_ID: parent,
        S.TAG_PROCESS: process,
        S.TAG_HEARTBEAT: f"{time.time():.0f}",
        **tags,
    }
    return client.create_run(experiment_id, run_name="r10-b1111-f4-s0", tags=tags).info.run_id


def test_at_its_end_a_sweep_kills_its_dead_children_and_names_the_live_ones(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("sweep-end")
    parent = client.create_run(experiment_id).info.run_id
    dead = child_run(client, experiment_id, parent, dead_process_tag())
    ours = child_run(client, experiment_id, parent, process_tag())  # no training runs here now
    elsewhere = child_run(client, experiment_id, parent, "node-b 4242 1.00")  # fresh heartbeat
    done = child_run(client, experiment_id, parent, dead_process_tag())
    client.set_terminated(done, "FINISHED")
    assert close_dead_children(client, experiment_id, parent) == [f"r10-b1111-f4-s0 ({elsewhere})"]
    status = {r: client.get_run(r).info.status for r in (dead, ours, elsewhere, done)}
    assert status == {dead: "KILLED", ours: "KILLED", elsewhere: "RUNNING", done: "FINISHED"}
    assert "its process is gone" in client.get_run(dead).data.tags[S.TAG_ERROR]


@pytest.mark.slow
def test_a_sweep_whose_cells_finished_is_not_finished_while_a_child_still_runs(
    tmp_path, data_dir, tracking_uri
):
    """Every cell has a FINISHED run, but a child of the parent still RUNNING on another host
    (an attempt that a retry elsewhere superseded, its heartbeat fresh): the sweep used to end
    FINISHED over it; now the parent stays RUNNING and says which child runs."""
    args = sweep_args(
        data_dir, tmp_path, *[f"--{k.replace('_', '-')}={v}" for k, v in GRID.items()]
    )
    args += ["--precision", "32-true"]
    client = MlflowClient(tracking_uri)
    [cell] = SweepGrid(**GRID).expand(
        TrainConfig(
            data="demo", weights="none", image_size=32, batch_size=16, max_epochs=2,
            limit_batches=3, precision="32-true",
        )
    )  # fmt: skip
    experiment_id = client.create_experiment(cell.default_experiment_name)
    finished = child_run(
        client, experiment_id, "elsewhere", dead_process_tag(), config_hash=cell.config_hash
    )
    client.log_param(finished, S.SEED, str(cell.seed))
    client.set_terminated(finished, "FINISHED")
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and "0 trained, 1 skipped" in first.output, first.output
    [parent] = sweeps(client)
    assert parent.info.status == "FINISHED"

    running = child_run(
        client, experiment_id, parent.info.run_id, "node-b 4242 1.00", config_hash=cell.config_hash
    )
    dead = child_run(client, experiment_id, parent.info.run_id, dead_process_tag())
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "RUNNING", "not FINISHED while a child runs"
    note = parent.data.tags[S.MLFLOW_NOTE]
    assert f"Still RUNNING in another process: r10-b1111-f4-s0 ({running})" in note
    assert client.get_run(dead).info.status == "KILLED"
