"""What a sweep leaves its runs as, across attempts: earlier parents of the same sweep closed
and pointing at the one that continues them, dead children marked KILLED at the end, and each
cell's status (FINISHED once any of its runs finished), from which the parent's status follows.

    python -c "import inspect, resnet_exp.sweep.parents as p; print(inspect.signature(p.cell_statuses))"
"""

from __future__ import annotations

import logging

from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus

from resnet_exp import schema as S
from resnet_exp.config import TrainConfig
from resnet_exp.tracking.resume import KILLED, RUNNING, is_alive, process_tag
from resnet_exp.tracking.store import search_all

log = logging.getLogger(__name__)


def close_earlier_parents(
    client: MlflowClient, experiment_id: str, sid: str, parent_run_id: str
) -> list[str]:
    """Close the earlier parent runs of this sweep whose process is gone (a sweep killed, then
    run again through `mlflow run`, which makes a new parent each time): KILLED if they were
    left RUNNING, FAILED ones stay FAILED, and each gets `continued_by` and a description line
    naming this parent, which continues their cells. Live parents (other shards) are left
    alone. Returns the ids closed."""
    closed = []
    for run in parents_of(client, experiment_id, sid):
        if (
            run.info.run_id == parent_run_id
            or run.info.status == RunStatus.to_string(RunStatus.FINISHED)
            or S.TAG_CONTINUED_BY in run.data.tags
            or is_alive(run)
        ):
            continue
        note = run.data.tags.get(S.MLFLOW_NOTE, "")
        client.set_tag(run.info.run_id, S.TAG_CONTINUED_BY, parent_run_id)
        client.set_tag(
            run.info.run_id,
            S.MLFLOW_NOTE,
            f"{note} Stopped ({'its process is gone' if run.info.status == RUNNING else run.info.status}); "
            f"continued by sweep run {parent_run_id}, which resumes its unfinished cells.".strip(),
        )
        if run.info.status == RUNNING:
            client.set_terminated(run.info.run_id, KILLED)
        log.info(
            "sweep run %s (%s) continued by %s", run.info.run_id, run.info.status, parent_run_id
        )
        closed.append(run.info.run_id)
    return closed


def parents_of(client: MlflowClient, experiment_id: str, sid: str) -> list[Run]:
    """Every parent run of sweep `sid`, oldest first."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{S.TAG_SWEEP_ID} = '{sid}' and tags.{S.TAG_KIND} = '{S.KIND_SWEEP}'",
    )
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def close_dead_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[str]:
    """At a sweep's end, mark KILLED each RUNNING child whose process is gone (this process's
    own, or a dead one: the sweep had its chance to resume it), so that no run stays RUNNING for
    ever under a closed parent. Returns 'name (run id)' of the children that still run in
    another live process (another shard's, or a Ray worker whose heartbeat is fresh): while
    they do, the parent is not FINISHED."""
    running = []
    for run in search_all(
        client,
        experiment_id,
        f"tags.`{S.MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' and attributes.status = 'RUNNING'",
    ):
        if run.data.tags.get(S.TAG_PROCESS) != process_tag() and is_alive(run):
            running.append(f"{run.info.run_name} ({run.info.run_id})")
            continue
        why = "marked KILLED by the sweep at its end: its process is gone"
        client.set_tag(run.info.run_id, S.TAG_ERROR, why)
        client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        log.warning("run %s (%s): %s", run.info.run_id, run.info.run_name, why)
    return running


def cell_statuses(
    client: MlflowClient, experiment_id: str, configs: list[TrainConfig]
) -> dict[str, str]:
    """Run name of each (configuration, seed) -> FINISHED if any of its runs finished, else the
    status of its latest run (FAILED, KILLED, RUNNING), or SCHEDULED if it has none yet."""
    wanted = {(c.config_hash, str(c.seed)): c.run_name for c in configs}
    latest: dict[tuple[str, str], Run] = {}
    for run in search_all(client, experiment_id, f"tags.{S.TAG_KIND} = '{S.KIND_TRAIN}'"):
        key = (run.data.tags.get(S.TAG_CONFIG_HASH), run.data.params.get(S.SEED))
        if key in wanted and (key not in latest or _rank(run) > _rank(latest[key])):
            latest[key] = run
    return {
        name: latest[key].info.status if key in latest else RunStatus.to_string(RunStatus.SCHEDULED)
        for key, name in wanted.items()
    }


def _rank(run: Run) -> tuple[bool, int]:
    """A finished run beats any other; otherwise the latest attempt counts."""
    return run.info.status == RunStatus.to_string(RunStatus.FINISHED), run.info.start_time
