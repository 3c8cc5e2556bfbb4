"""A depth sweep: one parent MLflow run, one nested child run per (configuration, seed), each a
complete training as `resnet-exp train` makes it (metrics, checkpoint, registered model).

Resumable: a child whose config hash and seed already have a FINISHED run in the experiment is
skipped; failed ones are trained again. `--shard i/n` trains every n-th child, so machines
pointed at one tracking server share a sweep; they find (or create) one parent run by the grid's
`sweep_id`. A failing child is recorded FAILED and the sweep goes on. With `--seeds auto`,
seeds are then added where the ranking is unresolved (resnet_exp/sweep/adaptive.py). Once no
cell is left to train, the sweep's analysis is logged on the parent, whose description then
opens with the result (analysis/rollup.py).

    resnet-exp sweep --data demo --weights none --image-size 64 --max-epochs 3 --freeze-blocks 2,4 --seeds 2
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from mlflow import MlflowClient
from mlflow.entities import RunStatus

from resnet_exp import schema as S
from resnet_exp.config import RESUME_MODES, TrainConfig, describe_weights
from resnet_exp.data.splits import load_splits
from resnet_exp.disk import check_writable
from resnet_exp.errors import ConfigError, UserError
from resnet_exp.hardware import Runtime, check_memory, resolve_runtime
from resnet_exp.model.network import load_initial_weights
from resnet_exp.sweep.cells import FAILED, SKIPPED, TRAINED, ChildOutcome
from resnet_exp.sweep.executors import LocalExecutor, RayExecutor, open_executor
from resnet_exp.sweep.grid import GRID_FIELDS, SweepGrid, grid_entries, sweep_id
from resnet_exp.sweep.parents import (
    cell_statuses,
    close_dead_children,
    close_earlier_parents,
    parents_of,
)
from resnet_exp.tracking import registry
from resnet_exp.tracking import training_run as tracking
from resnet_exp.tracking.resume import (
    heartbeat,
    reap_dead_children,
)
from resnet_exp.tracking.runs import RunScope, context_tags, run_scope
from resnet_exp.tracking.store import (
    claim_project_run_id,
    ensure_experiment,
    use_tracking_store,
)

log = logging.getLogger(__name__)
CONVERGE_S = 1.0  # seconds a new parent waits for shards that started at the same instant


@dataclass(frozen=True)
class SweepResult:
    parent_run_id: str
    experiment_id: str
    sweep_id: str
    grid_size: int  # every (configuration, seed) of the grid, all shards together
    outcomes: tuple[ChildOutcome, ...]  # this shard's children, in training order
    stop_reason: str = ""  # seeds=auto: why no further seeds were added
    summary: str = ""  # the result paragraph on the parent (markdown), once the grid has ended

    @property
    def added(self) -> list[ChildOutcome]:
        """The children an adaptive sweep added after its first round, each with its reason."""
        return [o for o in self.outcomes if o.reason]

    def count(self, outcome: str) -> int:
        return sum(o.outcome == outcome for o in self.outcomes)

    @property
    def failed(self) -> list[ChildOutcome]:
        return [o for o in self.outcomes if o.outcome == FAILED]


def run_sweep(grid: SweepGrid, base: TrainConfig) -> SweepResult:
    """Train this shard's part of the grid under one parent run; returns what became of each."""
    # The sweep's identity is its grid as given, before this machine resolves precision=auto:
    # shards on other machines share its parent even where they resolve another precision.
    configs = grid.expand(base)
    sid = sweep_id(configs, f"auto:{grid.parsed('max_seeds')}" if grid.adaptive else "")
    configs, runtime = _preflight(configs)
    child_params = _as_given(base, runtime)
    # Out of the environment before Ray's processes inherit it: a child must never join it
    launcher = claim_project_run_id()
    # Ray starts (or is joined) before any run exists
    with open_executor(grid) as executor:
        return _run_under_parent(grid, base, configs, sid, executor, launcher, child_params)


def _run_under_parent(
    grid: SweepGrid,
    base: TrainConfig,
    configs: list[TrainConfig],
    sid: str,
    executor: LocalExecutor | RayExecutor,
    launcher: str | None,
    child_params: dict[str, str],
) -> SweepResult:
    parent_id, _ = _open_parent(base, sid, parent_run_name(grid), launcher)
    with (
        run_scope(
            S.KIND_SWEEP,
            parent_run_name(grid),
            run_id=parent_id,
            tags={S.TAG_SWEEP_ID: sid, S.TAG_DATASET: base.dataset_slug},
        ) as scope,
        heartbeat(scope.client, scope.run_id),
    ):  # a later rerun sees whether we live
        _describe_parent(scope, grid, base, configs, sid)
        close_earlier_parents(scope.client, scope.experiment_id, sid, scope.run_id)
        # Children left RUNNING by a killed earlier attempt (under any parent of this sweep):
        # those with a last.ckpt resume when their cell comes (resume=auto); the others can't
        # and are marked KILLED now.
        reap_dead_children(scope.client, scope.experiment_id, scope.run_id, sid)
        parent = tracking.ParentRun(
            scope.run_id, scope.experiment_id, {S.TAG_SWEEP_ID: sid}, child_params
        )
        outcomes = executor.run(grid.shard_of(configs), parent)
        stop = ""
        if grid.adaptive:
            added, stop = _add_seeds(grid, configs, outcomes, parent, executor)
            configs = configs + added
            _record_grid(scope, base, configs, sid)  # analysis selects the added children too
        result = SweepResult(
            scope.run_id, scope.experiment_id, sid, len(configs), tuple(outcomes), stop
        )
        # older dead attempts at cells that have now finished: nothing will resume them
        reap_dead_children(scope.client, scope.experiment_id, scope.run_id, sid)
        if base.model_name is not None and result.count(TRAINED):
            registry.refresh_aliases(base.model_name)
        result = replace(result, summary=_close_parent(scope, result, grid, base, configs))
    return result


def _as_given(base: TrainConfig, runtime: Runtime) -> dict[str, str]:
    """What the children log in place of their configs' resolved precision: the user's value,
    and the sweep's measurement (tracking.ParentRun.child_params)."""
    given = (
        {S.PRECISION: base.to_params()[S.PRECISION]} if base.precision != runtime.precision else {}
    )
    speedup = runtime.to_params().get(S.RESOLVED_BF16_SPEEDUP)
    return {**given, **({S.RESOLVED_BF16_SPEEDUP: speedup} if speedup else {})}


def _preflight(configs: list[TrainConfig]) -> tuple[list[TrainConfig], Runtime]:
    """Fail on a bad precision, unwritable folders, unusable data or unavailable weights before
    any run exists, instead of once per child. Loads each distinct input once; the children
    reuse the caches. Returns the configs with precision resolved once for all cells (runs that
    are compared must agree on it, and a measured `auto` could tip either way per child), and
    the runtime that resolved it."""
    if configs[0].resume not in RESUME_MODES:
        raise ConfigError(
            f"resume={configs[0].resume!r}: a sweep resumes its children by itself; "
            f"expected {' or '.join(RESUME_MODES)} (a run id names one training: "
            "use `resnet-exp train --resume RUN_ID`)"
        )
    check_writable(configs[0].output_dir, S.OUTPUT_DIR)
    check_writable(configs[0].data_dir, S.DATA_DIR)
    for config in configs:  # each network and freeze level, before precision=auto measures one
        check_memory(config)
    runtime = resolve_runtime(configs[0])
    load_splits(configs[0])
    for blocks in dict.fromkeys(c.blocks for c in configs):
        load_initial_weights(configs[0].weights, configs[0].block, blocks)
    return [c.replace(precision=runtime.precision) for c in configs], runtime


def _add_seeds(
    grid: SweepGrid,
    configs: list[TrainConfig],
    outcomes: list[ChildOutcome],
    parent: tracking.ParentRun,
    executor: LocalExecutor | RayExecutor,
) -> tuple[list[TrainConfig], str]:
    """seeds=auto: the rounds after the first (resnet_exp/sweep/adaptive.py); appends their outcomes."""
    from resnet_exp.sweep.adaptive import add_seeds

    def train_child(config: TrainConfig, reason: str) -> tuple[str, bool]:
        outcomes.extend(executor.run([config], parent, [reason]))
        return outcomes[-1].run_id, outcomes[-1].outcome != FAILED

    return add_seeds(configs, [o.run_id for o in outcomes], grid.parsed("max_seeds"), train_child)


# --- the parent run ------------------------------------------------------------------------------


def _open_parent(
    base: TrainConfig, sid: str, run_name: str, launcher: str | None = None
) -> tuple[str, str]:
    """(run id, experiment id) of the sweep's run: under `mlflow run -e sweep` the one it
    created (`launcher`), else the experiment's run of the same grid (an earlier attempt or
    another shard), else a new one."""
    client = MlflowClient(use_tracking_store())
    if launcher:
        tracking.warn_if_experiment_name_ignored(base)
        return launcher, client.get_run(launcher).info.experiment_id
    experiment_id = ensure_experiment(
        client, base.default_experiment_name, tracking.experiment_note(base.dataset_slug)
    )
    earlier = parents_of(client, experiment_id, sid)
    if earlier:
        return earlier[0].info.run_id, experiment_id
    tags = {**context_tags(), S.TAG_KIND: S.KIND_SWEEP, S.TAG_SWEEP_ID: sid}
    created = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    # Search-then-create is not atomic: shards started at the same instant can each create a
    # parent. Once every such creation is done (they follow their search within milliseconds),
    # all of them see the same parents and converge on the first by (start time, run id); each
    # other one is deleted by the shard that created it, before any child exists under it.
    time.sleep(CONVERGE_S)
    first = parents_of(client, experiment_id, sid)[0].info.run_id
    if first != created:
        client.delete_run(created)
    return first, experiment_id


def parent_run_name(grid: SweepGrid) -> str:
    """e.g. 'sweep-b2222-f01234-3seeds': reads as the grid in the run list."""
    blocks = "+".join("b" + "".join(map(str, b)) for b in grid.parsed("blocks"))
    freeze = "".join(map(str, grid.parsed(S.FREEZE_BLOCKS)))
    seeds = (
        f"auto{len(grid.parsed('seeds'))}to{grid.parsed('max_seeds')}"
        if grid.adaptive
        else len(grid.parsed("seeds"))
    )
    return f"sweep-{blocks}-f{freeze}-{seeds}seeds"


def _describe_parent(
    scope: RunScope, grid: SweepGrid, base: TrainConfig, configs: list[TrainConfig], sid: str
) -> None:
    """The description, the grid as params and as sweep.json (which analysis selects runs by).
    Shards may differ in execution-only params (num_workers, output_dir): the first one's stay."""
    scope.describe(_parent_note(grid, base, configs, scope.run_id))
    names = (S.FREEZE_BLOCKS, S.BLOCKS, "seeds", *(["max_seeds"] if grid.adaptive else []))
    grid_params = {name: getattr(grid, name) for name in names}
    shared = {k: v for k, v in base.to_params().items() if k not in GRID_FIELDS}
    scope.log_params({**grid_params, **shared})
    _record_grid(scope, base, configs, sid)


def _record_grid(scope: RunScope, base: TrainConfig, configs: list[TrainConfig], sid: str) -> None:
    scope.client.log_dict(
        scope.run_id,
        {
            "sweep_id": sid,
            "dataset": base.dataset_slug,
            "data": base.data,
            "grid": grid_entries(configs),
        },
        S.SWEEP_GRID_FILE,
    )


def _parent_note(
    grid: SweepGrid, base: TrainConfig, configs: list[TrainConfig], run_id: str
) -> str:
    seeds = len(grid.parsed("seeds"))
    extra = (
        f", then one seed at a time to the configurations still tied with the leader, up to "
        f"{grid.parsed('max_seeds')} seeds"
        if grid.adaptive
        else ""
    )
    return (
        f"Depth sweep: {len(configs) // seeds} configurations (blocks {grid.blocks}; freeze_blocks "
        f"{grid.freeze_blocks}) x {seeds} seeds{extra} on {base.data}, from {describe_weights(base.weights)}. "
        f"Children are the nested runs; rank them with `resnet-exp analyze --sweep-run-id {run_id}`."
    )


def _close_parent(
    scope: RunScope,
    result: SweepResult,
    grid: SweepGrid,
    base: TrainConfig,
    configs: list[TrainConfig],
) -> str:
    """This shard's outcome as a JSON summary (its counts included) and the description, which
    opens with the sweep's result once no cell is left to train (counts are no metrics: a chart
    per count would come before the children's learning curves). The parent's status comes from
    every cell of the grid, not from whichever shard ends last: FAILED if a cell's latest attempt
    failed, FINISHED once every cell has finished, and still RUNNING while other shards have
    cells to train."""
    index, count = grid.parsed("shard")
    counts = {
        key: result.count(outcome)
        for key, outcome in (
            (S.SWEEP_TRAINED, TRAINED),
            (S.SWEEP_SKIPPED, SKIPPED),
            (S.SWEEP_FAILED, FAILED),
        )
    }
    scope.client.log_dict(
        scope.run_id,
        {"shard": f"{index}/{count}", **counts, "children": [vars(o) for o in result.outcomes]},
        f"{S.SHARDS_FOLDER}/shard-{index}-of-{count}.json",
    )
    running = close_dead_children(scope.client, scope.experiment_id, scope.run_id)
    cells = cell_statuses(scope.client, scope.experiment_id, configs)
    failed = sorted(
        name for name, status in cells.items() if status == RunStatus.to_string(RunStatus.FAILED)
    )
    waiting = sum(status != RunStatus.to_string(RunStatus.FINISHED) for status in cells.values())
    summary = (
        f"Shard {index}/{count}: {counts[S.SWEEP_TRAINED]} trained, {counts[S.SWEEP_SKIPPED]} "
        f"skipped (already finished), {counts[S.SWEEP_FAILED]} failed. Grid: "
        f"{len(cells) - waiting} of {len(cells)} cells finished."
    )
    if grid.adaptive:
        summary += " " + adaptive_summary(result)
    if running:
        summary += f" Still RUNNING in another process: {', '.join(running)}."
    # a cell another shard still trains, or has yet to start
    untrained = (RunStatus.to_string(RunStatus.RUNNING), RunStatus.to_string(RunStatus.SCHEDULED))
    ended = not running and not any(status in untrained for status in cells.values())
    result_paragraph = state_result(scope.run_id, base) if ended else ""
    scope.describe(f"{result_paragraph}\n\n{scope.note} {summary}".lstrip())
    if failed:
        scope.fail(f"{len(failed)} of {len(cells)} cells failed: {', '.join(failed)}")
    elif waiting or running:
        scope.leave_running()
    return result_paragraph


def state_result(parent_run_id: str, base: TrainConfig) -> str:
    """The sweep's analysis, logged on its parent; returns the paragraph that states the result,
    or why there is none (no finished child: every cell failed)."""
    from analysis import AnalysisConfig, analyze  # pandas, scipy, matplotlib: once, at the end

    config = AnalysisConfig(data=base.data, sweep_run_id=parent_run_id, output_dir=base.output_dir)
    try:
        return analyze(config, on_parent=True).summary
    except UserError as err:
        from analysis.rollup import NOT_RANKED

        return f"{NOT_RANKED} {err}"


def adaptive_summary(result: SweepResult) -> str:
    """'Added seeds: r10-b1111-f4-s3 (round 1: tied with ...); ... Stopped: resolved: ...'."""
    added = "; ".join(f"{o.run_name} ({o.reason})" for o in result.added) or "none"
    return f"Added seeds: {added}. Stopped: {result.stop_reason}."
