"""Where an analysis ends up: the same files as the local folder (written with
resnet_exp.atomic.replace_atomically), as artifacts of an MLflow run of kind 'analysis', opened
and closed by the run scope that training and sweeps use too.

    python -c "import inspect, analysis.output as o; print(inspect.signature(o.record_run))"
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow.entities import Metric

from resnet_exp import schema as S
from resnet_exp.tracking.runs import run_scope
from resnet_exp.tracking.store import project_run_id


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
        scope.client.log_artifacts(scope.run_id, str(folder))
    return scope.run_id
