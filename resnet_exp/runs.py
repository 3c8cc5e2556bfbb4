"""MLflow runs of every kind (training, sweep parent, analysis): where they are stored and how
one is opened, described and closed. MLflow only, no torch or Lightning, so that analysis stays
light.

The MLflow variables are read here and nowhere else: MLFLOW_TRACKING_URI (else MLflow's
default, sqlite:///mlflow.db in the working directory) and MLFLOW_RUN_ID, which `mlflow run`
sets for the run it created.

    python -c "from resnet_exp.runs import tracking_uri; print(tracking_uri())"
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from resnet_exp import schema as S

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, else MLflow's embedded default: mlflow.db in the working directory.

    Read from the environment each time, not from mlflow.get_tracking_uri(): Lightning's
    MLFlowLogger pins MLflow's process-wide URI, which would send a later run in the same
    process to an earlier run's store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def project_run_id() -> str | None:
    """The run `mlflow run` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def claim_project_run_id() -> str | None:
    """The run `mlflow run` created, taken out of the environment: mlflow.start_run() without a
    run id joins MLFLOW_RUN_ID, which must not happen to a sweep's children."""
    return os.environ.pop("MLFLOW_RUN_ID", None) or None


def git_tags() -> dict[str, str]:
    """The commit the code came from, and whether tracked files had changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    try:
        return {S.TAG_GIT_COMMIT: git("rev-parse", "HEAD"),
                S.TAG_GIT_DIRTY: str(bool(git("status", "--porcelain", "--untracked-files=no"))).lower()}
    except (OSError, subprocess.SubprocessError):
        return {}  # not a git checkout (an installed wheel): nothing to record
