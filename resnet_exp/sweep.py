"""A depth sweep: one parent MLflow run, one nested child run per (configuration, seed), each a
complete training as `resnet-exp train` makes it (metrics, checkpoint, registered model).

Resumable: a child whose config hash and seed already have a FINISHED run in the experiment is
skipped; failed ones are trained again. `--shard i/n` trains every n-th child, so machines
pointed at one tracking server share a sweep; they find (or create) one parent run by the grid's
`sweep_id`. A failing child is recorded FAILED and the sweep goes on.

    resnet-exp sweep --data demo --weights none --image-size 64 --max-epochs 3 --freeze-blocks 2,4 --seeds 2
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
import mlflow
from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus

from resnet_exp import metrics as M
from resnet_exp import registry, tracking
from resnet_exp.config import TrainConfig
from resnet_exp.data import load_splits
from resnet_exp.grid import GRID_FIELDS, SweepGrid, grid_entries, sweep_id
from resnet_exp.hardware import resolve_runtime
from resnet_exp.model import load_initial_weights

log = logging.getLogger(__name__)
TAG_ATTEMPT = "sweep_attempt"  # finds the run of one attempt, if training got as far as opening it
TAG_ERROR = "error"  # why a child failed, on the child run
ERROR_TEXT_LIMIT = 4000  # characters; MLflow tag values are limited to 8,000
TRAINED, SKIPPED, FAILED = "trained", "skipped", "failed"


@dataclass(frozen=True)
class ChildOutcome:
    run_name: str
    seed: int
    config_hash: str
    outcome: str  # TRAINED, SKIPPED (an earlier FINISHED run) or FAILED
    run_id: str
    error: str = ""


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    experiment_id: str
    sweep_id: str
    grid_size: int  # every (configuration, seed) of the grid, all shards together
    outcomes: tuple[ChildOutcome, ...]  # this shard's children, in training order

    def count(self, outcome: str) -> int:
        return sum(o.outcome == outcome for o in self.outcomes)

    @property
    def failed(self) -> list[ChildOutcome]:
        return [o for o in self.outcomes if o.outcome == FAILED]


def run_sweep(grid: SweepGrid, base: TrainConfig) -> SweepResult:
    """Train this shard's part of the grid under one parent run; returns what became of each."""
    configs = grid.expand(base)
    _preflight(configs)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    parent = _open_parent(grid, base, configs)
    outcomes: list[ChildOutcome] = []
    try:
        for config in grid.shard_of(configs):
            outcomes.append(_run_child(config, parent))
    except BaseException:  # Ctrl-C or SIGTERM (a child's own error does not end up here)
        MlflowClient().set_terminated(parent.run_id, RunStatus.to_string(RunStatus.KILLED))
        raise
    result = SweepResult(parent.run_id, parent.experiment_id, parent.child_tags[tracking.TAG_SWEEP_ID],
                         len(configs), tuple(outcomes))
    if base.model_name is not None and result.count(TRAINED):
        registry.refresh_aliases(base.model_name)
    _close_parent(result, grid)
    return result


def _preflight(configs: list[TrainConfig]) -> None:
    """Fail on a bad precision, unusable data or unavailable weights before any run exists,
    instead of once per child. Loads each distinct input once; the children reuse the caches."""
    resolve_runtime(configs[0])
    load_splits(configs[0])
    for blocks in dict.fromkeys(c.blocks for c in configs):
        load_initial_weights(configs[0].weights, configs[0].block, blocks)


def _run_child(config: TrainConfig, parent: tracking.ParentRun) -> ChildOutcome:
    from resnet_exp.train import train  # Lightning and torchvision load only when a child trains

    identity = dict(run_name=config.run_name, seed=config.seed, config_hash=config.config_hash)
    done = _finished_run(parent.experiment_id, config)
    if done:
        log.info("%s: skipped, run %s already FINISHED", config.run_name, done)
        return ChildOutcome(**identity, outcome=SKIPPED, run_id=done)
    attempt = tracking.ParentRun(parent.run_id, parent.experiment_id,
                                 {**parent.child_tags, TAG_ATTEMPT: uuid.uuid4().hex})
    try:
        result = train(config, attempt)
    except Exception as err:  # noqa: BLE001 - any error of one child is recorded, the sweep goes on
        error = f"{type(err).__name__}: {err}"[:ERROR_TEXT_LIMIT]
        log.error("%s failed: %s", config.run_name, error)
        return ChildOutcome(**identity, outcome=FAILED, run_id=_record_failure(config, attempt, error),
                            error=error)
    return ChildOutcome(**identity, outcome=TRAINED, run_id=result.run_id)


def _finished_run(experiment_id: str, config: TrainConfig) -> str | None:
    runs = MlflowClient().search_runs(
        [experiment_id], max_results=1,
        filter_string=(f"tags.{tracking.TAG_CONFIG_HASH} = '{config.config_hash}' and "
                       f"params.seed = '{config.seed}' and attributes.status = 'FINISHED'"))
    return runs[0].info.run_id if runs else None


def _record_failure(config: TrainConfig, attempt: tracking.ParentRun, error: str) -> str:
    """Tag the attempt's FAILED run with the error; if the training failed before opening a
    run, create the FAILED child here, so the UI and the next resume see it."""
    client = MlflowClient()
    found = client.search_runs([attempt.experiment_id], max_results=1,
                               filter_string=f"tags.{TAG_ATTEMPT} = '{attempt.child_tags[TAG_ATTEMPT]}'")
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {**tracking.config_tags(config), **attempt.child_tags, "mlflow.parentRunId": attempt.run_id}
        run_id = client.create_run(attempt.experiment_id, run_name=config.run_name, tags=tags).info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in config.to_params().items()])
    client.set_tag(run_id, TAG_ERROR, error)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    return run_id


# --- the parent run ------------------------------------------------------------------------------


def _open_parent(grid: SweepGrid, base: TrainConfig, configs: list[TrainConfig]) -> tracking.ParentRun:
    """The sweep's run: under `mlflow run -e sweep` the one it created, else the experiment's run
    of the same grid (an earlier attempt or another shard), else a new one."""
    client, sid = MlflowClient(), sweep_id(configs)
    run_id = tracking.claim_project_run_id()
    if run_id:
        experiment_id = client.get_run(run_id).info.experiment_id
        tracking.warn_if_experiment_name_ignored(base)
    else:
        experiment_id = mlflow.set_experiment(base.default_experiment_name).experiment_id
        earlier = client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"],
                                     filter_string=f"tags.{tracking.TAG_SWEEP_ID} = '{sid}' and "
                                                   f"tags.{tracking.TAG_KIND} = '{tracking.KIND_SWEEP}'")
        if earlier:
            run_id = earlier[0].info.run_id
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        else:
            run_id = client.create_run(experiment_id, run_name=parent_run_name(grid)).info.run_id
    _describe_parent(client, run_id, grid, base, configs, sid)
    return tracking.ParentRun(run_id, experiment_id, {tracking.TAG_SWEEP_ID: sid})


def parent_run_name(grid: SweepGrid) -> str:
    """e.g. 'sweep-b2222-f01234-3seeds': reads as the grid in the run list."""
    blocks = "+".join("b" + "".join(map(str, b)) for b in grid.parsed("blocks"))
    freeze = "".join(map(str, grid.parsed("freeze_blocks")))
    return f"sweep-{blocks}-f{freeze}-{len(grid.parsed('seeds'))}seeds"


def _describe_parent(client: MlflowClient, run_id: str, grid: SweepGrid, base: TrainConfig,
                     configs: list[TrainConfig], sid: str) -> None:
    """Tags to filter by, the grid as params and as sweep.json (which analysis selects runs by)."""
    configurations = len(configs) // len(grid.parsed("seeds"))
    note = (f"Depth sweep: {configurations} configurations x {len(grid.parsed('seeds'))} seeds on "
            f"{base.data}. Children are the nested runs; rank them with "
            f"`resnet-exp analyze --sweep-run-id {run_id}`.")
    tags = {tracking.TAG_KIND: tracking.KIND_SWEEP, tracking.TAG_SWEEP_ID: sid,
            tracking.TAG_DATASET: base.dataset_slug, "mlflow.note.content": note, **tracking.git_tags()}
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    grid_params = {name: getattr(grid, name) for name in ("freeze_blocks", "blocks", "seeds")}
    shared = {k: v for k, v in base.to_params().items() if k not in GRID_FIELDS}
    _log_new_params(client, run_id, {**grid_params, **shared})
    client.log_dict(run_id, {"sweep_id": sid, "dataset": base.dataset_slug, "data": base.data,
                             "grid": grid_entries(configs)}, tracking.SWEEP_GRID_FILE)


def _log_new_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Params the parent lacks. Shards may differ in execution-only params (num_workers,
    output_dir), and MLflow refuses to change a logged value: the first shard's stays."""
    existing = client.get_run(run_id).data.params
    new = [Param(k, v) for k, v in params.items() if k not in existing]
    if new:
        client.log_batch(run_id, params=new)


def _close_parent(result: SweepResult, grid: SweepGrid) -> None:
    """This shard's outcome as metrics (step = shard index) and a JSON summary; FAILED if any
    child failed, so the run list shows which sweeps need another go."""
    client = MlflowClient()
    index, count = grid.parsed("shard")
    for key, outcome in ((M.SWEEP_TRAINED, TRAINED), (M.SWEEP_SKIPPED, SKIPPED), (M.SWEEP_FAILED, FAILED)):
        client.log_metric(result.parent_run_id, key, result.count(outcome), step=index)
    client.log_dict(result.parent_run_id, {"shard": f"{index}/{count}", "children": [
        vars(o) for o in result.outcomes]}, f"shards/shard-{index}-of-{count}.json")
    status = RunStatus.FAILED if result.failed else RunStatus.FINISHED
    client.set_terminated(result.parent_run_id, RunStatus.to_string(status))
