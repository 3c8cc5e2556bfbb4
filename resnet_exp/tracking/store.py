"""Where runs are stored, and the runs and experiments found there. The MLflow variables are
read here and nowhere else: MLFLOW_TRACKING_URI (else MLflow's default, sqlite:///mlflow.db in the
working directory) and MLFLOW_RUN_ID, which `mlflow run` sets for the run it created.

    python -c "from resnet_exp.tracking.store import tracking_uri; print(tracking_uri())"
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

from resnet_exp import schema as S

PAGE_SIZE = 1000  # runs per search_runs page


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else MLflow's embedded default: mlflow.db in the working directory.

    Read from the environment each time, not from mlflow.get_tracking_uri(): Lightning's
    MLFlowLogger pins MLflow's process-wide URI, which would send a later run in the same
    process to an earlier run's store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def browse_hint(uri: str) -> str:
    """How to look at the runs stored at `uri`: a tracking server serves its own UI, while
    `mlflow ui --backend-store-uri http://...` fails ("unsupported URI for model registry"); a
    local store needs `mlflow ui`. A user name or password in the URI is left out."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        return (
            f"open {parts._replace(netloc=parts.netloc.rpartition('@')[2]).geturl()} in a browser"
        )
    return f"mlflow ui --backend-store-uri {uri}"


def project_run_id() -> str | None:
    """The run `mlflow run` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def claim_project_run_id() -> str | None:
    """The run `mlflow run` created, taken out of the environment: mlflow.start_run() without a
    run id joins MLFLOW_RUN_ID, which must not happen to a sweep's children."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


@contextmanager
def quiet_downloads() -> Iterator[None]:
    """MLflow's progress bar per downloaded file off for the block (MLflow reads the variable at
    each download): a sweep's analysis downloads a small table per run, and a command's stderr
    keeps to one line per problem."""
    bar = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    previous = bar.get_raw()
    bar.set("false")
    try:
        yield
    finally:
        if previous is None:
            bar.unset()
        else:
            bar.set(previous)


def search_all(client: MlflowClient, experiment_id: str, filter_string: str = "") -> Iterator[Run]:
    """Every active run of the experiment that matches `filter_string`, page by page."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string, max_results=PAGE_SIZE, page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def use_tracking_store() -> str:
    """Point MLflow's fluent API at the tracking URI (see tracking_uri) and return it."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(client: MlflowClient, name: str, note: str = "") -> str:
    """The id of experiment `name`, created if missing; gives it `note` as description if it
    has none (the UI shows it at the top of the experiment)."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    if note and not (experiment and experiment.tags.get(S.MLFLOW_NOTE)):
        client.set_experiment_tag(experiment_id, S.MLFLOW_NOTE, note)
    return experiment_id
