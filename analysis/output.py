"""Where an analysis ends up: the same files as the local folder (written with
resnet_exp.atomic.replace_atomically), as artifacts of an MLflow run of kind 'analysis'.

    python -c "import inspect, analysis.output as o; print(inspect.signature(o.record_run))"
"""

from __future__ import annotations

import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag

from resnet_exp.runs import project_run_id, tracking_uri


def record_run(experiment_id: str, run_name: str, tags: dict[str, str], params: dict[str, str],
               metrics: dict[str, float], folder: Path) -> str:
    """Log the analysis into the run `mlflow run -e analyze` created, else into a new run of the
    analysed experiment; the folder's files become the run's artifacts. Returns the run id."""
    client, run_id = MlflowClient(tracking_uri()), project_run_id()
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
        if not project_run_id():  # `mlflow run` closes its own run
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    if not project_run_id():
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id
