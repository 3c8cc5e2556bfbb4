"""Where an analysis ends up: the local folder (written with resnet_exp.atomic.replace_atomically)
and, as artifacts, an MLflow run of kind 'analysis' opened and closed by the run scope that
training and sweeps use too. The run gets report.html, not report.md: MLflow's markdown viewer
shows report.md's plots as text, so one report format (plots inline) is what the UI offers.

    python -c "import inspect, analysis.output as o; print(inspect.signature(o.record_run))"
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric

from resnet_exp import schema as S
from resnet_exp.tracking.claims import iso
from resnet_exp.tracking.runs import mark_tables, run_scope
from resnet_exp.tracking.store import project_run_id, tracking_uri


def mark_started(experiment_id: str) -> None:
    """Note on the experiment when this analysis started: a write, so that a user without EDIT on
    the experiment (a READ user of a shared server, who could not log the analysis run) gets the
    server's 403 before any run is loaded rather than after the analysis ran."""
    stamp = iso(time.time())
    MlflowClient(tracking_uri()).set_experiment_tag(experiment_id, S.TAG_ANALYSIS_STARTED, stamp)


def record_run(
    experiment_id: str,
    run_name: str,
    description: str,
    tags: dict[str, str],
    params: dict[str, str],
    metrics: dict[str, float],
    folder: Path,
) -> str:
    """Log the analysis into the run `mlflow run -e analyze` created, else into a new run of the
    analysed experiment; the folder's files become the run's artifacts. Returns the run id."""
    with run_scope(
        S.KIND_ANALYSIS, run_name, experiment_id=experiment_id, run_id=project_run_id(), tags=tags
    ) as scope:
        scope.describe(description)
        scope.log_params(params)
        now_ms = int(time.time() * 1000)
        scope.client.log_batch(
            scope.run_id, metrics=[Metric(k, float(v), now_ms, 0) for k, v in metrics.items()]
        )
        log_folder(scope.client, scope.run_id, folder)
        mark_tables(scope.client, scope.run_id, [S.RANKING_TABLE])
    return scope.run_id


def log_folder(
    client: MlflowClient, run_id: str, folder: Path, artifact_path: str | None = None
) -> None:
    """The analysis folder's files as the run's artifacts (under `artifact_path`), but report.md,
    which stays in the local folder for terminals and GitHub."""
    for entry in sorted(folder.iterdir()):
        if entry.is_dir():
            sub = f"{artifact_path}/{entry.name}" if artifact_path else entry.name
            client.log_artifacts(run_id, str(entry), sub)
        elif entry.name != S.REPORT_MD:
            client.log_artifact(run_id, str(entry), artifact_path)
