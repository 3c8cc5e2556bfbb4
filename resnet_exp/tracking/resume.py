"""Resume a stopped training in its own MLflow run, from its last.ckpt: which run (`resume`:
auto, never or a run id), whether the process that trained it is gone (a heartbeat), and which
metric steps it already has. MLflow and psutil only, no torch: sweeps use it to clean up too.

A RUNNING run is dead when the process named by its `process` tag (host, pid, start time) no
longer runs on this host, or, on another host, when its `heartbeat` tag is older than STALE_S.
KILLED and FAILED runs are stopped by definition. See docs/resume.md.

    resnet-exp train --data demo --weights none --image-size 32 --max-epochs 5   # kill -9 it,
    resnet-exp train --data demo --weights none --image-size 32 --max-epochs 5   # then again
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus

from resnet_exp import schema as S
from resnet_exp.config import AUTO, NEVER, TrainConfig
from resnet_exp.errors import ConfigError
from resnet_exp.tracking.store import search_all, tracking_uri

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0  # how often a training writes its heartbeat tag (one small write)
# Another host's run counts as dead after this long without a heartbeat: five missed beats, so
# a tracking server that is down for a minute or two does not make a live run look dead.
STALE_S = 5 * HEARTBEAT_S
LAST_CHECKPOINT = "last.ckpt"  # the latest epoch, resumable (train.py writes it after every epoch)
RUNNING, FINISHED, KILLED = (
    RunStatus.to_string(s) for s in (RunStatus.RUNNING, RunStatus.FINISHED, RunStatus.KILLED)
)
SYSTEM_PREFIX = "system/"  # MLflow's system metrics resume their own step count


@dataclass(frozen=True)
class ResumePoint:
    """A stopped run to continue: its last checkpoint, and the latest step of each metric it
    already stored (the loggers drop anything at or before it, so no epoch is logged twice)."""

    run_id: str
    checkpoint: Path
    stored_steps: dict[str, int] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return self.checkpoint.parent


# --- is the process that trains a run still there? ------------------------------------------------


def process_tag() -> str:
    """'<host> <pid> <start time>' of this process: with the start time, a reused pid is not
    mistaken for the process that trained the run."""
    return f"{socket.gethostname()} {os.getpid()} {psutil.Process().create_time():.2f}"


def is_alive(run: Run, now: float | None = None) -> bool:
    """Whether the process training a RUNNING run still runs (see the module docstring)."""
    if run.info.status != RUNNING:
        return False
    host, pid, started = (run.data.tags.get(S.TAG_PROCESS, "").split() + ["", "", ""])[:3]
    if host == socket.gethostname() and pid.isdigit():
        try:
            return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1.0
        except (psutil.Error, ValueError):
            return False
    beat = run.data.tags.get(S.TAG_HEARTBEAT)
    last = float(beat) if beat else run.info.start_time / 1000
    return (now if now is not None else time.time()) - last < STALE_S


@contextmanager
def heartbeat(client: MlflowClient, run_id: str, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Name this process on the run and refresh its heartbeat every `every` seconds until the
    block ends. A failed write is retried at the next beat: the server may be down a while."""
    client.set_tag(run_id, S.TAG_PROCESS, process_tag())
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                client.set_tag(run_id, S.TAG_HEARTBEAT, f"{time.time():.0f}")
            except Exception:  # noqa: BLE001 - never let bookkeeping end a training
                log.debug("heartbeat of run %s not written", run_id, exc_info=True)
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


# --- which run to resume ---------------------------------------------------------------------------


def checkpoint_of(run: Run) -> Path | None:
    """The run's last.ckpt, if this machine sees it (a cluster needs a shared output_dir)."""
    folder = run.data.tags.get(S.TAG_CHECKPOINT_DIR)
    path = Path(folder) / LAST_CHECKPOINT if folder else None
    return path if path is not None and path.is_file() else None


def plan(
    config: TrainConfig,
    experiment_id: str | None,
    parent_run_id: str | None = None,
    launcher_run_id: str | None = None,
) -> ResumePoint | None:
    """The run this training continues, or None for a new run. `auto` takes the latest stopped
    run of the same config hash and seed (under the same sweep parent, or outside any sweep)
    that has a last.ckpt; a run id must be such a run in `experiment_id`, else a ConfigError
    says why not. Both are decided here, before any data loads, and change nothing stored."""
    if config.resume == NEVER:
        return None
    client = MlflowClient(tracking_uri())
    if config.resume != AUTO:
        return _point(client, _chosen(client, config, experiment_id))
    if experiment_id is None:
        return None
    candidates = [
        run
        for run in _same_cell(client, experiment_id, config)
        if run.info.run_id != launcher_run_id
        and run.info.status != FINISHED
        and run.data.tags.get(S.MLFLOW_PARENT_RUN_ID) == parent_run_id
        and not is_alive(run)
        and checkpoint_of(run)
    ]
    if not candidates:
        return None
    latest = max(candidates, key=lambda run: run.info.start_time)
    log.info(
        "resuming run %s (%s, %s) from %s",
        latest.info.run_id,
        config.run_name,
        latest.info.status,
        checkpoint_of(latest),
    )
    return _point(client, latest)


def _same_cell(client: MlflowClient, experiment_id: str, config: TrainConfig) -> Iterator[Run]:
    return search_all(
        client,
        experiment_id,
        f"tags.{S.TAG_CONFIG_HASH} = '{config.config_hash}' and "
        f"params.{S.SEED} = '{config.seed}' and "
        f"tags.{S.TAG_KIND} = '{S.KIND_TRAIN}'",
    )


def _chosen(client: MlflowClient, config: TrainConfig, experiment_id: str | None) -> Run:
    """resume=<run id>: that run, if it can continue this config; else a ConfigError."""
    run_id = config.resume
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - MLflow raises its own error types for a missing run
        raise ConfigError(f"resume={run_id}: no such run in {tracking_uri()}") from None
    tags, params = run.data.tags, run.data.params
    if tags.get(S.TAG_KIND) != S.KIND_TRAIN:
        raise ConfigError(
            f"resume={run_id}: that run is a {tags.get(S.TAG_KIND, 'non-resnet-exp')} run, "
            "not a training"
        )
    if (tags.get(S.TAG_CONFIG_HASH), params.get(S.SEED)) != (config.config_hash, str(config.seed)):
        raise ConfigError(f"resume={run_id}: {_differences(run, config)}")
    if run.info.status == FINISHED:
        raise ConfigError(f"resume={run_id}: that run already FINISHED; nothing to resume")
    if is_alive(run):
        raise ConfigError(
            f"resume={run_id}: that run is still RUNNING in process "
            f"{tags.get(S.TAG_PROCESS, '?')} (last heartbeat "
            f"{time.time() - float(tags.get(S.TAG_HEARTBEAT) or 0):.0f} s ago)"
        )
    if checkpoint_of(run) is None:
        raise ConfigError(
            f"resume={run_id}: no last.ckpt in {tags.get(S.TAG_CHECKPOINT_DIR, '(no checkpoint_dir tag)')}"
            " on this machine: it stopped before its first epoch ended, or its "
            "output_dir is not shared with this machine"
        )
    if run.info.experiment_id != experiment_id:
        # Reopened from another experiment, the run would fail later on its experiment_name
        # param, after the data loaded, and end FAILED: refuse while nothing has changed.
        theirs = client.get_experiment(run.info.experiment_id).name
        ours = (
            client.get_experiment(experiment_id).name
            if experiment_id is not None
            else config.default_experiment_name
        )
        raise ConfigError(
            f"resume={run_id}: run {run.info.run_name or run_id} is in experiment '{theirs}', "
            f"this training would use experiment '{ours}': pass --experiment-name '{theirs}'"
        )
    return run


def _differences(run: Run, config: TrainConfig) -> str:
    """Why a run of another configuration or seed cannot continue this one, naming each
    parameter that differs with both values, read from the run's params."""
    params = run.data.params
    differ = [
        (name, params[name], ours)
        for name, ours in config.to_params().items()
        if config.__dataclass_fields__[name].metadata["affects_result"]
        and name in params
        and not config.same_value(name, params[name])
    ]
    if not differ:  # its params were not logged: only the tags tell
        return (
            f"that run was trained with config_hash {run.data.tags.get(S.TAG_CONFIG_HASH)} "
            f"and seed {params.get(S.SEED)}, this training has config_hash {config.config_hash} "
            f"and seed {config.seed}: give the same parameters as that run"
        )
    (name, theirs, ours), more = differ[0], differ[1:]
    rest = f" (and {', '.join(f'{n} {t} vs {o}' for n, t, o in more)})" if more else ""
    return (
        f"that run was trained with {name}={theirs}, this training has {name}={ours}{rest}: "
        "give the same parameters as that run"
    )


def _point(client: MlflowClient, run: Run) -> ResumePoint:
    steps = {
        key: max(m.step for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
        if not key.startswith(SYSTEM_PREFIX)
    }
    return ResumePoint(run.info.run_id, checkpoint_of(run), steps)


# --- a sweep's stale children ------------------------------------------------------------------------


def reap_dead_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[str]:
    """Mark KILLED the RUNNING children of a sweep whose process is gone and that will not be
    resumed: no last.ckpt here, or their cell has finished in another run. Returns their ids."""
    reaped = []
    running = search_all(
        client,
        experiment_id,
        f"tags.`{S.MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = '{RUNNING}'",
    )
    for run in running:
        if is_alive(run):
            continue
        checkpoint = checkpoint_of(run)
        if checkpoint and not finished_run(
            client, experiment_id, run.data.tags.get(S.TAG_CONFIG_HASH), run.data.params.get(S.SEED)
        ):
            continue  # the sweep resumes it
        why = "its process is gone" + (
            "" if checkpoint else " and it has no last.ckpt to resume from"
        )
        client.set_tag(run.info.run_id, S.TAG_ERROR, f"marked KILLED by the sweep: {why}")
        client.set_terminated(run.info.run_id, KILLED)
        log.warning("run %s (%s): %s; marked KILLED", run.info.run_id, run.info.run_name, why)
        reaped.append(run.info.run_id)
    return reaped


def finished_run(
    client: MlflowClient, experiment_id: str, config_hash: str | None, seed: str | int | None
) -> str | None:
    """The id of a FINISHED run of this (configuration, seed) cell, if the experiment has one."""
    runs = client.search_runs(
        [experiment_id],
        max_results=1,
        filter_string=(
            f"tags.{S.TAG_CONFIG_HASH} = '{config_hash}' and params.{S.SEED} = '{seed}' and "
            f"attributes.status = '{FINISHED}'"
        ),
    )
    return runs[0].info.run_id if runs else None
