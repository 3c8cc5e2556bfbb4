"""Resume a stopped training in its own MLflow run, from its last.ckpt: which run (`resume`:
auto, never or a run id), and which metric steps it already has; one process per run (the
claim and the liveness of a run's process are in claims.py). MLflow and psutil only, no torch:
sweeps use it to clean up too.

The earlier attempts of a cell (a configuration and a seed) are found by the cell, not by the
process that started them: a standalone training's among the runs outside any sweep, a sweep
child's among every run of that sweep (its `sweep_id`), whichever parent run, machine or
`mlflow run` launched them. See docs/resume.md.

    resnet-exp train --data demo --weights none --image-size 32 --max-epochs 5   # kill -9 it,
    resnet-exp train --data demo --weights none --image-size 32 --max-epochs 5   # then again
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run

from resnet_exp import schema as S
from resnet_exp.config import AUTO, NEVER, TrainConfig
from resnet_exp.errors import ConfigError
from resnet_exp.tracking.claims import (  # noqa: F401 - callers and tests import them from here
    FINISHED,
    HEARTBEAT_S,
    KILLED,
    RUNNING,
    STALE_S,
    ResumeHeld,
    claim,
    heartbeat,
    held_by,
    held_message,
    is_alive,
    process_tag,
    release,
    seconds_of,
)
from resnet_exp.tracking.store import search_all, tracking_uri

log = logging.getLogger(__name__)
LAST_CHECKPOINT = "last.ckpt"  # the latest epoch, resumable (train.py writes it after every epoch)
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


# --- which run to resume ---------------------------------------------------------------------------


def checkpoint_of(run: Run) -> Path | None:
    """The run's last.ckpt, if this machine sees it (a cluster needs a shared output_dir)."""
    folder = S.tag(run.data.tags, S.TAG_CHECKPOINT_DIR)
    path = Path(folder) / LAST_CHECKPOINT if folder else None
    return path if path is not None and path.is_file() else None


def plan(
    config: TrainConfig,
    experiment_id: str | None,
    parent_run_id: str | None = None,
    launcher_run_id: str | None = None,
    sweep_id: str | None = None,
) -> ResumePoint | None:
    """The run this training continues, or None for a new run. `auto` takes the latest stopped
    attempt at the same cell (stopped_attempt); a run id must be such a run in `experiment_id`,
    else a ConfigError says why not. Both are decided here, before any data loads; the one
    write is the claim that makes this process the run's only resumer (claims.claim: another
    process that wants the same run gets ResumeHeld). A training that then fails before it
    reopens the run gives the claim back (released_on_error)."""
    if config.resume == NEVER:
        return None
    client = MlflowClient(tracking_uri())
    if config.resume != AUTO:
        run = _chosen(client, config, experiment_id)
    elif experiment_id is None:
        return None
    else:
        run = stopped_attempt(
            client, config, experiment_id, sweep_id, parent_run_id, exclude=launcher_run_id
        )
        if run is None:
            return None
    claim(client, run.info.run_id)
    log.info(
        "resuming run %s (%s, %s) from %s",
        run.info.run_id,
        config.run_name,
        run.info.status,
        checkpoint_of(run),
    )
    return _point(client, run)


def stopped_attempt(
    client: MlflowClient,
    config: TrainConfig,
    experiment_id: str,
    sweep_id: str | None = None,
    parent_run_id: str | None = None,
    exclude: str | None = None,
) -> Run | None:
    """The latest earlier attempt at this cell (config hash and seed) that can continue: not
    FINISHED, its process gone, a last.ckpt on this machine. A sweep child's attempts are the
    runs of the same `sweep_id` (or, without one, of `parent_run_id`) under any parent; a
    standalone training's, the runs outside any sweep. An attempt that another live process is
    resuming raises ResumeHeld: two resumers never share a run, and a second must not train the
    cell again beside it. `exclude`: the run `mlflow run` made for this launch."""
    runs = [
        run
        for run in _same_cell(client, experiment_id, config)
        if run.info.run_id != exclude
        and run.info.status != FINISHED
        and _same_sweep(run, sweep_id, parent_run_id)
    ]
    free = []
    for run in runs:
        who = held_by(run)
        if who is not None and who.since is not None:
            raise ResumeHeld(held_message(run, who), run.info.run_id)
        if who is None and checkpoint_of(run):
            free.append(run)
    return max(free, key=lambda run: run.info.start_time, default=None)


def _same_sweep(run: Run, sweep_id: str | None, parent_run_id: str | None) -> bool:
    tags = run.data.tags
    if sweep_id is None and parent_run_id is None:
        return S.MLFLOW_PARENT_RUN_ID not in tags and S.TAG_SWEEP_ID not in tags
    return (sweep_id is not None and tags.get(S.TAG_SWEEP_ID) == sweep_id) or (
        parent_run_id is not None and tags.get(S.MLFLOW_PARENT_RUN_ID) == parent_run_id
    )


@contextmanager
def released_on_error(point: ResumePoint | None) -> Iterator[None]:
    """Give the claim on `point`'s run back if the block fails: what a training does between its
    claim and reopening the run (data, weights, caches)."""
    try:
        yield
    except BaseException:
        if point is not None:
            release(MlflowClient(tracking_uri()), point.run_id)
        raise


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
    who = held_by(run)
    if who is not None and who.since is not None:
        raise ResumeHeld(f"resume={run_id}: {held_message(run, who)}", run_id)
    if who is not None:
        beat = seconds_of(S.tag(tags, S.TAG_HEARTBEAT)) or run.info.start_time / 1000
        raise ConfigError(
            f"resume={run_id}: that run is still RUNNING in process {who} "
            f"(last heartbeat {time.time() - beat:.0f} s ago)"
        )
    if checkpoint_of(run) is None:
        raise ConfigError(
            f"resume={run_id}: no last.ckpt in {S.tag(tags, S.TAG_CHECKPOINT_DIR) or '(no checkpoint_dir tag)'}"
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


def reap_dead_children(
    client: MlflowClient, experiment_id: str, parent_run_id: str, sweep_id: str | None = None
) -> list[str]:
    """Mark KILLED the RUNNING children of a sweep (of any of its parent runs, with `sweep_id`)
    whose process is gone and that will not be resumed: no last.ckpt here, or their cell has
    finished in another run. Returns their ids."""
    reaped = []
    which = (
        f"tags.{S.TAG_SWEEP_ID} = '{sweep_id}'"
        if sweep_id
        else f"tags.`{S.MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    )
    running = search_all(
        client,
        experiment_id,
        f"{which} and tags.{S.TAG_KIND} = '{S.KIND_TRAIN}' and attributes.status = '{RUNNING}'",
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
