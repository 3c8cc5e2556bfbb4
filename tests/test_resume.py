"""Resume into the same run: which stopped run a training continues (resume=auto|never|RUN_ID),
when a RUNNING run counts as dead, a sweep's dead children, and (slow) a `kill -9` training run
again that continues its own run and ends with an uninterrupted run's numbers.

    pytest tests/test_resume.py
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.entities import Param

from conftest import (
    cli_options,
    mlflow_run_command,
    resumable_epoch,
    subprocess_env,
    tiny_config,
)
from resnet_exp import schema as S
from resnet_exp.cli import main
from resnet_exp.errors import ConfigError
from resnet_exp.signals import SIGNAL_AT_ENV, RunInterrupted
from resnet_exp.tracking.resume import (
    LAST_CHECKPOINT,
    STALE_S,
    is_alive,
    plan,
    process_tag,
    reap_dead_children,
)

RUNNING, FINISHED, KILLED = "RUNNING", "FINISHED", "KILLED"


def dead_pid() -> int:
    """A pid that no process has: a child that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def stopped_run(
    client: MlflowClient,
    experiment_id: str,
    config,
    tmp_path: Path,
    *,
    status: str = RUNNING,
    process: str | None = None,
    heartbeat: float | None = None,
    parent: str | None = None,
    checkpoint: bool = True,
) -> str:
    """A training run as a stopped process leaves it: tags, seed param, a last.ckpt on disk."""
    tags = {
        S.TAG_KIND: S.KIND_TRAIN,
        S.TAG_CONFIG_HASH: config.config_hash,
        S.TAG_PROCESS: process or f"{socket.gethostname()} {dead_pid()} 1.00",
    }
    if heartbeat is not None:
        tags[S.TAG_HEARTBEAT] = f"{heartbeat:.0f}"
    if parent:
        tags[S.MLFLOW_PARENT_RUN_ID] = parent
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_param(run_id, S.SEED, str(config.seed))
    folder = tmp_path / "checkpoints" / run_id
    folder.mkdir(parents=True)
    if checkpoint:
        (folder / LAST_CHECKPOINT).write_bytes(b"resumable")
    client.set_tag(run_id, S.TAG_CHECKPOINT_DIR, str(folder))
    client.log_metric(run_id, S.VAL_LOSS, 2.0, step=0)
    client.log_metric(run_id, S.VAL_LOSS, 1.5, step=1)
    if status != RUNNING:
        client.set_terminated(run_id, status)
    return run_id


@pytest.fixture
def store(tracking_uri, tmp_path, data_dir):
    client = MlflowClient(tracking_uri)
    config = tiny_config(data_dir, tmp_path / "results", seed=7)
    return client, client.create_experiment("resume"), config


def test_a_running_run_is_alive_while_its_process_is(store, tmp_path):
    client, experiment_id, config = store
    mine = client.get_run(
        stopped_run(client, experiment_id, config, tmp_path, process=process_tag())
    )
    gone = client.get_run(stopped_run(client, experiment_id, config, tmp_path))
    assert is_alive(mine) and not is_alive(gone)
    # a reused pid: this process's pid with another start time is not the process that trained
    reused = f"{socket.gethostname()} {os.getpid()} {psutil.Process().create_time() - 100:.2f}"
    assert not is_alive(
        client.get_run(stopped_run(client, experiment_id, config, tmp_path, process=reused))
    )
    # another host: alive while its heartbeat is younger than STALE_S
    now = time.time()
    elsewhere = client.get_run(
        stopped_run(
            client, experiment_id, config, tmp_path, process="other-host 1 1.00", heartbeat=now - 10
        )
    )
    # the run's own start is a sign of life too, and comes a few ms after `now`
    last = max(now - 10, elsewhere.info.start_time / 1000)
    assert is_alive(elsewhere, now) and not is_alive(elsewhere, last + STALE_S)
    finished = client.get_run(
        stopped_run(client, experiment_id, config, tmp_path, status=FINISHED, process=process_tag())
    )
    assert not is_alive(finished)


def test_auto_takes_the_latest_stopped_run_of_the_same_cell_that_has_a_checkpoint(store, tmp_path):
    client, experiment_id, config = store
    stopped_run(client, experiment_id, config, tmp_path, status=KILLED)  # older
    latest = stopped_run(client, experiment_id, config, tmp_path, status="FAILED")
    stopped_run(client, experiment_id, config, tmp_path, process=process_tag())  # alive: not it
    stopped_run(client, experiment_id, config, tmp_path, checkpoint=False)  # nothing to resume from
    stopped_run(client, experiment_id, config, tmp_path, parent="a" * 32)  # another sweep's child
    stopped_run(client, experiment_id, config.replace(seed=8), tmp_path)  # another seed
    stopped_run(client, experiment_id, config.replace(freeze_blocks=4), tmp_path)  # another config
    point = plan(config, experiment_id)
    assert point.run_id == latest
    assert point.checkpoint.read_bytes() == b"resumable"
    assert point.stored_steps == {S.VAL_LOSS: 1}
    assert plan(config.replace(resume="never"), experiment_id) is None
    assert plan(config, None) is None  # no experiment yet: nothing to resume


def test_a_sweep_child_resumes_only_under_its_own_parent(store, tmp_path):
    client, experiment_id, config = store
    parent = client.create_run(experiment_id).info.run_id
    child = stopped_run(client, experiment_id, config, tmp_path, parent=parent)
    assert plan(config, experiment_id, parent).run_id == child
    assert plan(config, experiment_id) is None  # a standalone training leaves sweep children alone


def test_a_sweep_child_resumes_its_cell_under_any_parent_of_its_sweep(store, tmp_path):
    """A rerun of a sweep through `mlflow run` has a new parent: the cell is found by sweep_id."""
    client, experiment_id, config = store
    old_parent, new_parent = (client.create_run(experiment_id).info.run_id for _ in range(2))
    child = stopped_run(client, experiment_id, config, tmp_path, parent=old_parent)
    client.set_tag(child, S.TAG_SWEEP_ID, "sweep-a")
    other = stopped_run(client, experiment_id, config, tmp_path, parent=old_parent)
    client.set_tag(other, S.TAG_SWEEP_ID, "sweep-b")  # the same cell in another sweep
    assert plan(config, experiment_id, new_parent, sweep_id="sweep-a").run_id == child
    assert plan(config, experiment_id, new_parent, sweep_id="sweep-c") is None
    assert plan(config, experiment_id) is None  # a standalone training leaves them alone


def test_a_sweep_closes_its_earlier_parents_whose_process_is_gone(store):
    from resnet_exp.sweep.parents import close_earlier_parents

    client, experiment_id, _ = store

    def parent(status: str, process: str | None = None) -> str:
        tags = {S.TAG_KIND: S.KIND_SWEEP, S.TAG_SWEEP_ID: "sweep-a"}
        run_id = client.create_run(experiment_id, tags=tags).info.run_id
        client.set_tag(run_id, S.TAG_PROCESS, process or f"{socket.gethostname()} {dead_pid()} 1")
        if status != RUNNING:
            client.set_terminated(run_id, status)
        return run_id

    killed, failed = parent(RUNNING), parent("FAILED")
    live, finished, current = parent(RUNNING, process_tag()), parent(FINISHED), parent(RUNNING)
    closed = close_earlier_parents(client, experiment_id, "sweep-a", current)
    assert sorted(closed) == sorted([killed, failed])
    runs = {r: client.get_run(r) for r in (killed, failed, live, finished, current)}
    assert {r: run.info.status for r, run in runs.items()} == {
        killed: KILLED,
        failed: "FAILED",
        live: RUNNING,  # another shard's parent, still at work
        finished: FINISHED,
        current: RUNNING,
    }
    for run_id in (killed, failed):
        tags = runs[run_id].data.tags
        assert tags[S.TAG_CONTINUED_BY] == current
        assert f"continued by sweep run {current}" in tags[S.MLFLOW_NOTE]
    assert close_earlier_parents(client, experiment_id, "sweep-a", current) == []  # once


def test_a_training_that_fails_before_reopening_its_claimed_run_gives_the_claim_back(
    store, tmp_path
):
    from resnet_exp.tracking.resume import held_by, released_on_error

    client, experiment_id, config = store
    run_id = stopped_run(client, experiment_id, config, tmp_path)  # kill -9: RUNNING, pid gone
    point = plan(config, experiment_id)
    assert point.run_id == run_id and held_by(client.get_run(run_id)) is not None
    with pytest.raises(ConfigError), released_on_error(point):
        raise ConfigError("data=nowhere: no such folder")  # e.g. the data, after the claim
    run = client.get_run(run_id)
    assert held_by(run) is None and run.info.status == KILLED  # its process is gone: KILLED
    assert plan(config, experiment_id).run_id == run_id  # the next training resumes it


def test_a_run_recorded_under_the_old_visible_tag_names_still_resumes(store, tmp_path):
    client, experiment_id, config = store
    run_id = stopped_run(client, experiment_id, config, tmp_path)
    tags = client.get_run(run_id).data.tags
    for name in (S.TAG_PROCESS, S.TAG_CHECKPOINT_DIR):
        client.set_tag(run_id, S.LEGACY_HIDDEN_TAGS[name], tags[name])
        client.delete_tag(run_id, name)
    client.set_tag(run_id, S.LEGACY_HIDDEN_TAGS[S.TAG_HEARTBEAT], f"{time.time():.0f}")
    assert plan(config, experiment_id).run_id == run_id


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["no such run"]),
        ("finished", ["already FINISHED"]),
        ("alive", ["still RUNNING", socket.gethostname()]),
        ("no checkpoint", ["no last.ckpt"]),
        ("other seed", ["with seed=8, this training has seed=7", "same parameters"]),
    ],
)
def test_resume_of_a_named_run_says_why_it_cannot(store, tmp_path, case, words):
    client, experiment_id, config = store
    run_id = {
        "missing": lambda: "0" * 32,
        "finished": lambda: stopped_run(client, experiment_id, config, tmp_path, status=FINISHED),
        "alive": lambda: stopped_run(
            client, experiment_id, config, tmp_path, process=process_tag()
        ),
        "no checkpoint": lambda: stopped_run(
            client, experiment_id, config, tmp_path, checkpoint=False
        ),
        "other seed": lambda: stopped_run(client, experiment_id, config.replace(seed=8), tmp_path),
    }[case]()
    with pytest.raises(ConfigError) as err:
        plan(config.replace(resume=run_id), experiment_id)
    assert f"resume={run_id}" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_resume_of_a_run_of_another_configuration_names_each_parameter_that_differs(
    store, tmp_path
):
    client, experiment_id, config = store
    theirs = config.replace(freeze_blocks=4, max_epochs=3, num_workers=1)
    run_id = stopped_run(client, experiment_id, theirs, tmp_path)
    # 3e-05 is the config's 3e-5 in other words: not a difference
    params = {**theirs.to_params(), "learning_rate": "3e-05"}
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items() if k != S.SEED])
    with pytest.raises(ConfigError) as err:
        plan(config.replace(resume=run_id, learning_rate=3e-5), experiment_id)
    assert str(err.value) == (
        f"resume={run_id}: that run was trained with freeze_blocks=4, this training has "
        "freeze_blocks=2 (and max_epochs 3 vs 2): give the same parameters as that run"
    )


def test_resume_of_a_run_in_another_experiment_names_both_and_changes_nothing(store, tmp_path):
    client, experiment_id, config = store
    elsewhere = client.create_experiment("elsewhere")
    run_id = stopped_run(client, elsewhere, config, tmp_path, status=KILLED)
    name = client.get_run(run_id).info.run_name
    for ours, ours_name in [(experiment_id, "resume"), (None, config.default_experiment_name)]:
        with pytest.raises(ConfigError) as err:
            plan(config.replace(resume=run_id), ours)
        assert str(err.value) == (
            f"resume={run_id}: run {name} is in experiment 'elsewhere', this training would "
            f"use experiment '{ours_name}': pass --experiment-name 'elsewhere'"
        )
    assert client.get_run(run_id).info.status == KILLED
    assert plan(config.replace(resume=run_id), elsewhere).run_id == run_id


def test_resume_must_be_auto_never_or_a_run_id(tmp_path, data_dir):
    with pytest.raises(ConfigError, match=r"resume='latest'.*'auto', 'never' or a run id"):
        tiny_config(data_dir, tmp_path, resume="latest")


def test_a_sweep_marks_its_dead_children_killed_unless_it_will_resume_them(store, tmp_path):
    client, experiment_id, config = store
    parent = client.create_run(experiment_id).info.run_id
    resumable = stopped_run(client, experiment_id, config, tmp_path, parent=parent)
    hopeless = stopped_run(
        client, experiment_id, config.replace(seed=8), tmp_path, parent=parent, checkpoint=False
    )
    alive = stopped_run(
        client,
        experiment_id,
        config.replace(seed=9),
        tmp_path,
        parent=parent,
        process=process_tag(),
    )
    superseded = stopped_run(
        client, experiment_id, config.replace(seed=10), tmp_path, parent=parent
    )
    stopped_run(
        client, experiment_id, config.replace(seed=10), tmp_path, parent=parent, status=FINISHED
    )
    assert sorted(reap_dead_children(client, experiment_id, parent)) == sorted(
        [hopeless, superseded]
    )
    status = {
        run_id: client.get_run(run_id).info.status
        for run_id in (resumable, hopeless, alive, superseded)
    }
    assert status == {resumable: RUNNING, hopeless: KILLED, alive: RUNNING, superseded: KILLED}
    assert "no last.ckpt" in client.get_run(hopeless).data.tags[S.TAG_ERROR]


# --- the real thing ----------------------------------------------------------------------------


def metric_rows(db: Path, run_id: str) -> list[tuple[str, int, float]]:
    with sqlite3.connect(db) as connection:
        return connection.execute(
            "SELECT key, step, value FROM metrics WHERE run_uuid = ? AND key NOT LIKE "
            "'system/%' ORDER BY key, step",
            (run_id,),
        ).fetchall()


# The trainings these tests kill: three short epochs of ResNet10 on the demo, no registration,
# fp32 and no loader workers (nothing measured or forked first)
KILLABLE = dict(
    data="demo",
    weights="none",
    image_size=32,
    batch_size=16,
    max_epochs=3,
    limit_batches=3,
    freeze_blocks=3,
    blocks="1,1,1,1",
    precision="32-true",
    num_workers=0,
    registered_model_name="none",
)


def killable(data_dir: Path) -> list[str]:
    """KILLABLE's options, reading the demo from `data_dir`."""
    return cli_options(**KILLABLE, data_dir=data_dir)


def kill_after_epoch(command: list[str], db: Path, epoch: int, not_run: str = "") -> None:
    """Run `command` and `kill -9` it, with every process it started, once a run other than
    `not_run` has stored `epoch` and saved it in its last.ckpt."""
    # from this test's folder: the experiment this process creates puts its artifacts under
    # ./mlruns, which must never be the checkout
    # a session of its own: `mlflow run` and the command it started die together, as on a
    # machine that fails
    process = subprocess.Popen(
        command,
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while (
            time.monotonic() < deadline
            and process.poll() is None
            and not resumable_epoch(db, epoch, not_run)
        ):
            time.sleep(0.05)
        assert process.poll() is None, "it ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()


@pytest.mark.slow
def test_a_training_killed_after_epoch_1_continues_its_own_run_and_ends_as_an_uninterrupted_one(
    tracking_uri, data_dir, tmp_path, caplog
):
    """Only the killed training needs a process of its own (kill -9 takes it whole). The
    uninterrupted reference and the run again go through the same CLI in this process: each
    starts from what is on disk and in the store (the checkpoint, the run's tags and metrics),
    which no process keeps for it, and a training sets its own torch threads
    (hardware.apply_runtime), so its numbers are a fresh process's; the equality below checks
    exactly that, across the processes. A resume in a fresh process is proven by
    test_ray's killed worker, whose retry resumes the child run in a new Ray worker."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    args = ["train", *killable(data_dir), "--seed", "5"]
    reference_run = CliRunner().invoke(
        main, args + ["--output-dir", str(tmp_path / "reference"), "--resume", "never"]
    )
    assert reference_run.exit_code == 0, reference_run.output[-3000:]
    [reference] = [run_id for (run_id,) in sqlite3.connect(db).execute("SELECT run_uuid FROM runs")]

    command = args + ["--output-dir", str(tmp_path / "results")]
    kill_after_epoch([sys.executable, "-m", "resnet_exp", *command], db, 1, not_run=reference)
    [(run_id, status)] = (
        sqlite3.connect(db)
        .execute("SELECT run_uuid, status FROM runs WHERE run_uuid != ?", (reference,))
        .fetchall()
    )
    assert status == RUNNING  # kill -9: nothing could close it
    assert {step for key, step, _ in metric_rows(db, run_id) if key == S.VAL_LOSS} == {0, 1}

    caplog.set_level(logging.INFO, logger="resnet_exp")
    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0, again.output[-3000:]
    assert f"resuming run {run_id}" in caplog.text and f"run {run_id} finished" in again.output

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == FINISHED and len(client.search_runs([run.info.experiment_id])) == 2
    assert run.data.tags[S.TAG_RESUMED] == "epoch 2 from last.ckpt"
    # local paths are bookkeeping: none in a tag the UI shows
    shown = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    assert not [k for k, v in shown.items() if str(tmp_path) in v], shown
    rows, expected = metric_rows(db, run_id), metric_rows(db, reference)
    keys_steps = [(key, step) for key, step, _ in rows]
    assert len(keys_steps) == len(set(keys_steps)), "a metric stored twice at one step"
    epoch_metrics = {
        S.TRAIN_LOSS,
        S.TRAIN_ACC,
        S.VAL_LOSS,
        S.VAL_ACC,
        S.TEST_ACC,
        S.TEST_LOSS,
        S.LR,
    }
    ours = {(k, s): v for k, s, v in rows if k in epoch_metrics}
    theirs = {(k, s): v for k, s, v in expected if k in epoch_metrics}
    assert sorted(ours) == sorted(theirs)  # every epoch 0..2 once, test at the same best epoch
    # Bit-identical on this CPU (same threads, data order restored from the checkpoint); the
    # stated tolerance leaves room for other BLAS builds.
    assert ours == pytest.approx(theirs, abs=1e-6)
    # FINISHED: the resumable last.ckpt is gone, the best weights stay
    best = Path(run.data.tags[S.TAG_BEST_CHECKPOINT])
    assert list(Path(run.data.tags[S.TAG_CHECKPOINT_DIR]).iterdir()) == [best]


@pytest.mark.slow
def test_a_sweep_killed_during_a_child_resumes_that_child_in_its_own_run(
    tracking_uri, data_dir, tmp_path
):
    """The killed sweep is a process of its own; the sweep run again is the same CLI in this
    process, which starts from the store and the checkpoint alone (see the test above)."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    args = ["sweep", *killable(data_dir), "--seeds", "1", "--output-dir", str(tmp_path / "results")]
    kill_after_epoch([sys.executable, "-m", "resnet_exp", *args], db, 1)
    client = MlflowClient(tracking_uri)
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    [child] = client.search_runs(
        [experiment.experiment_id], f"tags.{S.TAG_KIND} = '{S.KIND_TRAIN}'"
    )

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output[-3000:]
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    assert len(runs) == 2  # the parent and its one child: resumed, not trained again
    resumed = runs[child.info.run_id]
    assert resumed.info.status == FINISHED and resumed.data.tags[S.TAG_RESUMED].startswith(
        "epoch 2 from "
    )
    [parent] = [r for r in runs.values() if r.data.tags[S.TAG_KIND] == S.KIND_SWEEP]
    assert parent.info.status == FINISHED
    steps = [step for key, step, _ in metric_rows(db, child.info.run_id) if key == S.VAL_LOSS]
    assert steps == [0, 1, 2]


@pytest.mark.slow
def test_under_mlflow_run_a_resume_continues_the_stopped_run_and_the_launch_points_to_it(
    tracking_uri, data_dir, tmp_path, monkeypatch
):
    """A run stopped after its last epoch (say during model logging), resumed by a launch that
    `mlflow run` made a run for: no epoch is trained again, the stopped run ends FINISHED with its
    model, and the launch's own run says where the training went."""
    from resnet_exp.training.train import train

    config = tiny_config(data_dir, tmp_path / "results", registered_model_name="none")
    monkeypatch.setenv(SIGNAL_AT_ENV, "model_log")
    with pytest.raises(RunInterrupted) as stopped:
        train(config.replace(resume="never"))
    monkeypatch.delenv(SIGNAL_AT_ENV)
    client = MlflowClient(tracking_uri)
    first = client.get_run(stopped.value.run_id).info
    assert first.status == KILLED
    stored = metric_rows(Path(tracking_uri.removeprefix("sqlite:///")), first.run_id)
    experiment_id = first.experiment_id
    launcher = client.create_run(experiment_id).info.run_id  # what `mlflow run` creates
    monkeypatch.setenv("MLFLOW_RUN_ID", launcher)

    again = train(config)

    assert again.run_id == first.run_id
    run = client.get_run(first.run_id)
    assert (
        run.info.status == FINISHED
        and run.data.tags[S.TAG_RESUMED] == f"epoch {config.max_epochs} from {LAST_CHECKPOINT}"
    )
    epochs = {S.TRAIN_LOSS, S.VAL_LOSS, S.TEST_ACC}
    assert [
        r
        for r in metric_rows(Path(tracking_uri.removeprefix("sqlite:///")), first.run_id)
        if r[0] in epochs
    ] == [r for r in stored if r[0] in epochs]  # nothing trained or tested twice
    pointer = client.get_run(launcher).data.tags
    assert pointer[S.TAG_RESUMED_INTO] == first.run_id and S.TAG_KIND not in pointer


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


@pytest.mark.slow
def test_a_training_stopped_twice_follows_the_schedule_and_stopping_of_an_uninterrupted_one(
    tracking_uri, data_dir, tmp_path, monkeypatch
):
    """Seven epochs at most, in which val_loss never beats epoch 0: ReduceLROnPlateau (patience
    3) halves the rate after epoch 4, and early stopping (patience 5) ends the fit after epoch 5.
    Stopped by SIGTERM at the start of epochs 2 and 4 and run again each time, the training
    continues its run with the same lr, val_loss and train_loss at every epoch as one never
    stopped, to the last bit, and stops at the same epoch. Each finished run keeps only its best
    weights. The CLI runs in this process (see the kill -9 test above for why that is a fresh
    process's numbers)."""
    args = [
        "train",
        *cli_options(
            data="demo",
            data_dir=data_dir,
            weights="none",
            image_size=32,
            batch_size=16,
            max_epochs=7,
            early_stopping_patience=5,
            limit_batches=3,
            freeze_blocks=3,
            feature_cache="off",  # computing it for every image costs more than 3 batches
            blocks="1,1,1,1",
            precision="32-true",
            num_workers=0,
            registered_model_name="none",
            seed=8,
        ),
    ]
    reference = CliRunner().invoke(
        main, args + ["--output-dir", str(tmp_path / "reference"), "--resume", "never"]
    )
    assert reference.exit_code == 0, reference.output[-3000:]
    command = args + ["--output-dir", str(tmp_path / "results")]
    for epoch in (2, 4):
        monkeypatch.setenv(SIGNAL_AT_ENV, f"fit@{epoch}")
        stopped = CliRunner().invoke(main, command)
        assert stopped.exit_code == 128 + signal.SIGTERM, stopped.output[-3000:]
    monkeypatch.delenv(SIGNAL_AT_ENV)
    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0, again.output[-3000:]

    client = MlflowClient(tracking_uri)
    [experiment] = [e for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time"])
    assert [r.info.status for r in runs] == [FINISHED, FINISHED]
    ours, theirs = runs[1].info.run_id, runs[0].info.run_id
    assert runs[1].data.tags[S.TAG_RESUMED].startswith("epoch 4 from ")
    lrs = history(client, theirs, S.LR)
    assert [step for step, _ in lrs] == list(range(6))  # early stopping after epoch 5
    assert lrs[4][1] == 2 * lrs[5][1]  # the scheduler fired
    for key in (S.LR, S.VAL_LOSS, S.TRAIN_LOSS):
        assert history(client, ours, key) == history(client, theirs, key), key
    for run in runs:
        best = Path(client.get_run(run.info.run_id).data.tags[S.TAG_BEST_CHECKPOINT])
        assert list(best.parent.iterdir()) == [best]


def resume_together(command: list[str], env: dict[str, str]) -> list[subprocess.CompletedProcess]:
    """The same `resnet-exp` command started twice at the same instant; both results."""
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def assert_one_resumed_the_other_refused(
    results: list[subprocess.CompletedProcess], run_id: str
) -> None:
    """Exactly one resumer finished the run; the other stopped in one line naming the run and
    the process holding it (host and pid)."""
    won = [r for r in results if r.returncode == 0]
    lost = [r for r in results if r.returncode != 0]
    assert len(won) == 1 and len(lost) == 1, [(r.returncode, r.stderr[-2000:]) for r in results]
    assert f"run {run_id} finished" in won[0].stdout, won[0].stdout[-2000:]
    errors = [line for line in lost[0].stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "Traceback" not in lost[0].stderr, lost[0].stderr[-3000:]
    assert f"run {run_id} " in errors[0] and f"{socket.gethostname()} pid " in errors[0], errors


@pytest.mark.slow
def test_two_resumers_of_a_killed_training_started_together_leave_one_run_trained_once(
    tracking_uri, data_dir, tmp_path
):
    """kill -9 during a training, then the same command twice at once: one resumes the run and
    finishes it, the other refuses in one line; the run holds each epoch once and one model."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    command = [
        sys.executable,
        "-m",
        "resnet_exp",
        "train",
        *killable(data_dir),
        "--seed",
        "6",
        "--output-dir",
        str(tmp_path / "results"),
    ]
    kill_after_epoch(command, db, 0)
    [(run_id,)] = sqlite3.connect(db).execute("SELECT run_uuid FROM runs").fetchall()

    results = resume_together(command, subprocess_env())

    assert_one_resumed_the_other_refused(results, run_id)
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == FINISHED
    assert len(client.search_runs([run.info.experiment_id])) == 1  # no second run of the cell
    keys_steps = [(key, step) for key, step, _ in metric_rows(db, run_id)]
    assert len(keys_steps) == len(set(keys_steps)), "a metric stored twice at one step"
    assert [step for key, step in keys_steps if key == S.VAL_LOSS] == [0, 1, 2]
    assert len(client.search_logged_models([run.info.experiment_id])) == 1
    [claimed] = [v for k, v in run.data.params.items() if k == S.RESUME_ATTEMPT.format(n=2)]
    assert f"{socket.gethostname()} pid " in claimed


@pytest.mark.slow
def test_a_sweep_rerun_through_mlflow_run_continues_its_killed_child_and_closes_the_old_parent(
    tracking_uri, data_dir, tmp_path
):
    """`mlflow run . -e sweep` killed with -9 during a child, then run again: `mlflow run` makes a
    new parent, and the child continues in its own run, found by its cell (sweep id,
    configuration, seed) rather than by its parent; the old parent is closed and says by what."""
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    params = dict(**KILLABLE, data_dir=data_dir, seeds="1", output_dir=tmp_path / "results")
    command = mlflow_run_command("sweep-rerun", params, entry="sweep")
    kill_after_epoch(command, db, 1)
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name("sweep-rerun").experiment_id
    [child] = client.search_runs([experiment_id], f"tags.{S.TAG_KIND} = '{S.KIND_TRAIN}'")
    old_parent = child.data.tags[S.MLFLOW_PARENT_RUN_ID]

    again = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]

    runs = {r.info.run_id: r for r in client.search_runs([experiment_id])}
    trainings = [r for r in runs.values() if r.data.tags.get(S.TAG_KIND) == S.KIND_TRAIN]
    assert [r.info.run_id for r in trainings] == [child.info.run_id]  # continued, not retrained
    resumed = runs[child.info.run_id]
    [new_parent] = [
        r
        for r in runs.values()
        if r.data.tags.get(S.TAG_KIND) == S.KIND_SWEEP and r.info.run_id != old_parent
    ]
    assert resumed.info.status == FINISHED
    assert resumed.data.tags[S.TAG_RESUMED].startswith("epoch 2 from ")
    assert resumed.data.tags[S.MLFLOW_PARENT_RUN_ID] == new_parent.info.run_id
    steps = [step for key, step, _ in metric_rows(db, child.info.run_id) if key == S.VAL_LOSS]
    assert steps == [0, 1, 2]
    assert new_parent.info.status == FINISHED
    closed = runs[old_parent]
    assert closed.info.status == KILLED
    assert closed.data.tags[S.TAG_CONTINUED_BY] == new_parent.info.run_id
    assert f"continued by sweep run {new_parent.info.run_id}" in closed.data.tags[S.MLFLOW_NOTE]
    assert not [r for r in runs.values() if r.info.status == RUNNING]
