"""Pull training runs out of MLflow into a tidy table: one row per usable run, the per-epoch
val_acc curves in long format, and the runs left out, counted by reason. Reads through the
tracking API only (search_runs and metric histories), so any tracking URI works.

    python -c "from analysis.config import AnalysisConfig; from analysis.runs import select; \
print(select(AnalysisConfig(data='demo')))"
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException

from analysis import columns as C
from analysis.config import AnalysisConfig
from analysis.study import UNKNOWN
from resnet_exp import schema as S
from resnet_exp.config import AUTO, DEFAULT_DATA, dataset_slug, format_value, parse_blocks
from resnet_exp.errors import ConfigError, DataError
from resnet_exp.tracking.store import project_run_id, search_all, tracking_uri
from resnet_exp.tracking.timing import epoch_times

log = logging.getLogger(__name__)

# Why a training run is left out; every reason is counted in the report.
FAILED, UNFINISHED, OTHER_DATASET, DUPLICATE, INCOMPLETE = (
    "failed",
    "unfinished",
    "other dataset",
    "duplicate",
    "incomplete",
)
EXCLUSION_REASONS = (FAILED, UNFINISHED, OTHER_DATASET, DUPLICATE, INCOMPLETE)
UNFINISHED_STATUSES = {"RUNNING", "SCHEDULED", "KILLED"}


@dataclass(frozen=True)
class Selection:
    """Which runs an analysis reads: an experiment and a dataset, optionally one sweep's grid."""

    experiment_id: str
    experiment_name: str
    dataset: str  # the slug, e.g. 'demo'
    sweep_run_id: str = ""
    sweep_id: str = ""
    grid: frozenset[tuple[str, int]] | None = None  # (config_hash, seed) of the sweep's members
    sweep_run_name: str = ""  # the parent's name, e.g. 'sweep-b2222-f01234-3seeds'


@dataclass(frozen=True)
class RunTable:
    runs: pd.DataFrame  # one row per usable run (columns from analysis.columns)
    curves: pd.DataFrame  # run_id, config_hash, seed, epoch, val_acc, epoch_time_s
    excluded: dict[str, int]  # reason -> count, every reason present
    shared_params: dict[str, dict[str, str]]  # config_hash -> the params of one of its runs


# --- which runs ---------------------------------------------------------------------------------


def select(config: AnalysisConfig) -> Selection:
    """Resolve the experiment (and the sweep), raising a UserError before any work is done."""
    mlflow.set_tracking_uri(tracking_uri())
    if config.sweep_run_id:
        return _sweep_selection(config)
    experiment = MlflowClient().get_experiment_by_name(config.experiment)
    if experiment is None or experiment.lifecycle_stage != "active":
        which = (
            f"experiment_name={config.experiment!r}"
            if config.experiment_name != AUTO
            else f"data={config.data!r} (experiment_name=auto: {config.experiment!r})"
        )
        raise ConfigError(
            f"{which}: no such experiment in {tracking_uri()}. Existing "
            f"experiments: {_experiment_names()}. Pass --experiment-name, or --data "
            "as training was given it"
        )
    return Selection(experiment.experiment_id, experiment.name, config.dataset_slug)


def _experiment_names() -> str:
    names = sorted(e.name for e in MlflowClient().search_experiments())
    return ", ".join(repr(n) for n in names) or "none"


def _sweep_selection(config: AnalysisConfig) -> Selection:
    client, run_id = MlflowClient(), config.sweep_run_id
    try:
        parent = client.get_run(run_id)
    except MlflowException:
        raise ConfigError(
            f"sweep_run_id={run_id!r}: no such run in {tracking_uri()}; "
            "expected the parent run id that `resnet-exp sweep` printed"
        ) from None
    kind = parent.data.tags.get(S.TAG_KIND)
    if kind != S.KIND_SWEEP:
        raise ConfigError(
            f"sweep_run_id={run_id!r} is a {kind or 'untagged'} run, not a sweep's "
            f"parent (tag {S.TAG_KIND}={S.KIND_SWEEP}): pass the parent "
            "run id that `resnet-exp sweep` printed, or leave it empty to rank every run"
        )
    try:
        grid = mlflow.artifacts.load_dict(f"runs:/{run_id}/{S.SWEEP_GRID_FILE}")
    except MlflowException:
        raise DataError(
            f"sweep run {run_id} has no {S.SWEEP_GRID_FILE} artifact: it did not "
            "get as far as recording its grid; run the sweep again"
        ) from None
    experiment = client.get_experiment(parent.info.experiment_id)
    dataset = parent.data.tags.get(S.TAG_DATASET) or grid["dataset"]
    _warn_if_overridden(config, experiment.name, dataset)
    members = frozenset((e[S.TAG_CONFIG_HASH], int(e[S.SEED])) for e in grid["grid"])
    return Selection(
        experiment.experiment_id,
        experiment.name,
        dataset,
        run_id,
        parent.data.tags.get(S.TAG_SWEEP_ID, ""),
        members,
        parent.info.run_name,
    )


def _warn_if_overridden(config: AnalysisConfig, experiment: str, dataset: str) -> None:
    if config.experiment_name != AUTO and config.experiment_name != experiment:
        log.warning(
            "experiment_name=%r is ignored: the sweep's runs are in %r",
            config.experiment_name,
            experiment,
        )
    if config.data != DEFAULT_DATA and config.dataset_slug != dataset:
        log.warning("data=%r is ignored: the sweep trained on %r", config.data, dataset)


# --- the runs -------------------------------------------------------------------------------------


def all_runs(experiment_id: str) -> Iterator[Run]:
    """Every active run of the experiment, page by page."""
    return search_all(MlflowClient(), experiment_id)


def is_training_run(run: Run) -> bool:
    """Training runs carry run_kind=train; older ones only a config hash. Sweep parents and
    analyses are something else and are not counted as exclusions."""
    kind = run.data.tags.get(S.TAG_KIND)
    return kind == S.KIND_TRAIN or (kind is None and S.TAG_CONFIG_HASH in run.data.tags)


def _identity(run: Run) -> tuple[str, int]:
    return run.data.tags[S.TAG_CONFIG_HASH], int(run.data.params.get(C.SEED, -1))


def _dataset_of(run: Run) -> str:
    return run.data.tags.get(S.TAG_DATASET) or dataset_slug(run.data.params.get(S.DATA, ""))


def _exclusion(run: Run, selection: Selection) -> str | None:
    """Why this training run cannot be used, or None. Checked in this order: a run of another
    dataset is that first, whatever its status."""
    if _dataset_of(run) != selection.dataset:
        return OTHER_DATASET
    if run.info.status == RunStatus.to_string(RunStatus.FAILED):
        return FAILED
    if run.info.status in UNFINISHED_STATUSES:
        return UNFINISHED
    if S.TEST_ACC not in run.data.metrics or S.VAL_ACC not in run.data.metrics:
        return INCOMPLETE
    return None


def sort_runs(runs: list[Run], selection: Selection) -> tuple[list[Run], dict[str, int]]:
    """The usable runs and the count of the others by reason. Of several complete runs of one
    (config_hash, seed) the latest to end is used: it is the one a re-run meant to produce."""
    excluded: Counter[str] = Counter()
    latest: dict[tuple[str, int], Run] = {}
    for run in runs:
        if not is_training_run(run) or run.info.run_id == project_run_id():
            continue
        if selection.grid is not None and _identity(run) not in selection.grid:
            continue  # another sweep's run, or one trained outside any sweep
        reason = _exclusion(run, selection)
        if reason:
            excluded[reason] += 1
            continue
        key = _identity(run)
        if key in latest:
            excluded[DUPLICATE] += 1
            if (run.info.end_time or 0) <= (latest[key].info.end_time or 0):
                continue
        latest[key] = run
    return list(latest.values()), {reason: excluded[reason] for reason in EXCLUSION_REASONS}


# --- the tidy table ----------------------------------------------------------------------------


def history(run_id: str, key: str) -> list[float]:
    """An epoch metric's values in epoch order (step = epoch); a step logged twice keeps the later
    value, as a resumed epoch replaces the interrupted one."""
    by_step = {}
    for m in sorted(
        MlflowClient().get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
    ):
        by_step[m.step] = m.value
    return [by_step[s] for s in sorted(by_step)]


def _blocks_text(text: str) -> str:
    """'2, 2,2,2' (as typed into `mlflow run -P`) -> '2,2,2,2', so one blocks list is one series."""
    try:
        return format_value(parse_blocks(text))
    except ConfigError:
        return text


def run_row(run: Run) -> dict:
    """One row of the per-run table (analysis.columns) from a usable training run."""
    params, tags = run.data.params, run.data.tags
    # runs recorded before the `block` param existed all used BasicBlock
    block, blocks = params.get(C.BLOCK, S.BASIC), _blocks_text(params.get(C.BLOCKS, UNKNOWN))
    return {
        C.RUN_ID: run.info.run_id,
        C.RUN_NAME: run.info.run_name,
        C.CONFIG_HASH: tags[S.TAG_CONFIG_HASH],
        C.BLOCK: block,
        C.BLOCKS: blocks,
        C.NETWORK: f"{block} {blocks}",
        C.FREEZE_BLOCKS: int(params.get(C.FREEZE_BLOCKS, -1)),
        C.DEPTH_LABEL: S.tag(tags, S.TAG_DEPTH, UNKNOWN),
        C.SEED: _identity(run)[1],
        C.WEIGHTS: params.get(C.WEIGHTS, UNKNOWN),
        C.NUM_CLASSES: float(params.get(C.NUM_CLASSES, "nan")),
        C.TEST_SIZE: float(params.get(C.TEST_SIZE, "nan")),
        C.TRAINABLE_PARAMS: float(params.get(C.TRAINABLE_PARAMS, "nan")),
        C.TEST_ACC: run.data.metrics[S.TEST_ACC],
        C.END_TIME: run.info.end_time,
    }


def _curve_rows(row: dict) -> list[dict]:
    val_acc, epoch_time = history(row[C.RUN_ID], S.VAL_ACC), epoch_times(row[C.RUN_ID])
    epoch_time += [float("nan")] * (len(val_acc) - len(epoch_time))  # a run without timings
    return [
        {
            C.RUN_ID: row[C.RUN_ID],
            C.CONFIG_HASH: row[C.CONFIG_HASH],
            C.SEED: row[C.SEED],
            C.EPOCH: epoch,
            C.VAL_ACC: acc,
            C.EPOCH_TIME: seconds,
        }
        for epoch, (acc, seconds) in enumerate(zip(val_acc, epoch_time))
    ]


def load_runs(selection: Selection) -> RunTable:
    """Read the selection's runs and their curves (val_acc's history and the epochs table of
    each usable run)."""
    usable, excluded = sort_runs(list(all_runs(selection.experiment_id)), selection)
    if not usable:
        raise DataError(
            f"no usable training runs of dataset {selection.dataset!r} in experiment "
            f"{selection.experiment_name!r}{_scope(selection)}: excluded "
            f"{describe_exclusions(excluded)}. Train some (resnet-exp train / sweep) or "
            "check --data and --experiment-name"
        )
    rows = [run_row(run) for run in usable]
    curves = [c for row in rows for c in _curve_rows(row)]
    shared = {r.data.tags[S.TAG_CONFIG_HASH]: dict(r.data.params) for r in usable}
    return RunTable(pd.DataFrame(rows), pd.DataFrame(curves), excluded, shared)


def _scope(selection: Selection) -> str:
    return f" (sweep run {selection.sweep_run_id})" if selection.sweep_run_id else ""


def describe_exclusions(excluded: dict[str, int]) -> str:
    """'2 failed, 1 duplicate' or 'none'."""
    return ", ".join(f"{n} {reason}" for reason, n in excluded.items() if n) or "none"
