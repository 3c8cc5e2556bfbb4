"""Where a training run's time goes, as two artifact tables that the UI previews: one row per
epoch (`timing/epochs.csv`: epoch time and training throughput) and one row per phase
(`timing/phases.csv`). Tables rather than metrics: MLflow's chart view would put a `time/`
section before the learning curves and plot a constant as a chart of one bar.

    python -c "from resnet_exp.tracking.timing import epoch_times; help(epoch_times)"
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow import MlflowClient

from resnet_exp import schema as S
from resnet_exp.tracking.store import quiet_downloads, tracking_uri

EPOCH_COLUMNS = (S.EPOCH, S.EPOCH_TIME, S.TRAIN_THROUGHPUT)


def _csv(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def epoch_row(epoch: int, seconds: float, images_per_s: float | None) -> dict[str, object]:
    """One epoch's row: seconds to the millisecond, images/s to a tenth (blank if unmeasured)."""
    rate = "" if images_per_s is None else round(images_per_s, 1)
    return {S.EPOCH: epoch, S.EPOCH_TIME: S.seconds(seconds), S.TRAIN_THROUGHPUT: rate}


def log_epoch_times(run_id: str, rows: Sequence[Mapping[str, object]]) -> None:
    """Write a run's epochs table (the whole table, rewritten as each epoch ends, so a killed
    run keeps the epochs it finished)."""
    MlflowClient(tracking_uri()).log_text(run_id, _csv(rows, EPOCH_COLUMNS), S.EPOCH_TIMES_FILE)


def log_phase_times(run_id: str, phases: Mapping[str, float]) -> None:
    """Write a run's phases table, in seconds to the millisecond."""
    rows = [{S.PHASE: name, S.SECONDS: S.seconds(value)} for name, value in phases.items()]
    table = _csv(rows, (S.PHASE, S.SECONDS))
    MlflowClient(tracking_uri()).log_text(run_id, table, S.PHASE_TIMES_FILE)


def _table(run_id: str, path: str) -> list[dict[str, str]]:
    """A timing table's rows as text; [] if the run has none (older runs, or none written yet)."""
    client = MlflowClient(tracking_uri())
    # listed first: a missing file is an HTTPError from a tracking server, not an MlflowException
    if path not in {f.path for f in client.list_artifacts(run_id, S.TIMING_FOLDER)}:
        return []
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        local = client.download_artifacts(run_id, path, tmp)
        return list(csv.DictReader(io.StringIO(Path(local).read_text())))


def epoch_rows(run_id: str) -> list[dict[str, str]]:
    """The run's epochs table, in epoch order."""
    return sorted(_table(run_id, S.EPOCH_TIMES_FILE), key=lambda r: int(r[S.EPOCH]))


def epoch_times(run_id: str, column: str = S.EPOCH_TIME) -> list[float]:
    """One column of the epochs table in epoch order (NaN where blank). Runs recorded before
    the table existed logged the same numbers as metrics under the column's name (step = epoch)."""
    rows = epoch_rows(run_id)
    if rows:
        return [float(r[column]) if r[column] else float("nan") for r in rows]
    by_step = {}
    history = MlflowClient(tracking_uri()).get_metric_history(run_id, column)
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        by_step[m.step] = m.value  # a resumed epoch's value replaces the interrupted one's
    return [by_step[s] for s in sorted(by_step)]


def phase_times(run_id: str) -> dict[str, float]:
    """The run's phases table: seconds per phase name (schema.PHASE_TIMES and RUN_TIME)."""
    return {r[S.PHASE]: float(r[S.SECONDS]) for r in _table(run_id, S.PHASE_TIMES_FILE)}
