"""Where an analysis ends up: a local folder swapped in whole (never half-written, an older
analysis replaced), and the same files as artifacts of an MLflow run of kind 'analysis'.

    python -c "from pathlib import Path; from analysis.output import replace_folder; print(replace_folder(Path('/tmp/a'), lambda d: (d / 'x').write_text('1')))"
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from resnet_exp import tracking


def replace_folder(target: Path, write: Callable[[Path], None]) -> Path:
    """Build `target` by calling `write(staging_folder)` in a hidden sibling, then swap it in.

    resnet_exp.atomic.build_atomically only creates a missing folder; an analysis replaces the
    previous one. Between the two renames `target` is briefly absent, never half-written; an
    error in `write` leaves the previous analysis as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-new-", dir=target.parent))
    retired = target.parent / f".{target.name}-old-{staging.name.rsplit('-', 1)[-1]}"
    try:
        write(staging)
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target


def record_run(experiment_id: str, run_name: str, tags: dict[str, str], params: dict[str, str],
               metrics: dict[str, float], folder: Path) -> str:
    """Log the analysis into the run `mlflow run -e analyze` created, else into a new run of the
    analysed experiment; the folder's files become the run's artifacts. Returns the run id."""
    client, run_id = MlflowClient(tracking.tracking_uri()), tracking.project_run_id()
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    try:
        # `mlflow run` logged its parameters already, and MLflow refuses to log a param twice
        existing, now_ms = client.get_run(run_id).data.params, int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params.items() if k not in existing],
                         tags=[RunTag(k, v) for k, v in tags.items()])
        client.log_artifacts(run_id, str(folder))
    except BaseException:
        if not tracking.project_run_id():  # `mlflow run` closes its own run
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    if not tracking.project_run_id():
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
