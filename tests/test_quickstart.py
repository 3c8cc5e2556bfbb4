"""The README's quickstart, run as printed (only shrunk by extra -P parameters), then
`resnet-exp analyze --data demo` as the README says next: the analysis finds and ranks that run.

    pytest tests/test_quickstart.py
"""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import REPO, new_store, subprocess_env
from resnet_exp import schema as S
from resnet_exp.cli import main

# Smaller and faster, without changing what the line chooses (data, weights, depth, epochs, size):
# a few batches, fp32 without the bf16 measurement, and the session's generated demo data.
SHRINK = {"limit_batches": "2", "batch_size": "16", "precision": "32-true"}


def quickstart_line() -> list[str]:
    """The README's `mlflow run` line of the quickstart, as words, without its comment."""
    [line] = [
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("mlflow run . ")
    ]
    return shlex.split(line, comments=True)


def test_the_quickstart_line_names_the_experiment_analyze_reads():
    words = quickstart_line()
    assert words[words.index("--experiment-name") + 1] == "resnet-exp-demo"
    assert "data=demo" in words


@pytest.mark.slow
def test_the_readmes_quickstart_run_is_found_by_analyze(tmp_path, data_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default: ./mlflow.db
    new_store(tmp_path / "mlflow.db")  # an empty store, without MLflow's 4-9 s of migrations
    words = quickstart_line()
    assert re.fullmatch(r"mlflow run \.", " ".join(words[:3]))
    extra = {**SHRINK, "data_dir": str(data_dir)}
    command = ["mlflow", "run", str(REPO), *words[3:]]
    command += [text for name, value in extra.items() for text in ("-P", f"{name}={value}")]
    env = subprocess_env()
    env.pop("MLFLOW_TRACKING_URI", None)
    trained = subprocess.run(
        command, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-3000:]

    monkeypatch.chdir(tmp_path)
    analysed = CliRunner().invoke(main, ["analyze", "--data", "demo"])
    assert analysed.exit_code == 0, analysed.output
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("resnet-exp-demo")
    runs = client.search_runs([experiment.experiment_id])
    [training] = [r for r in runs if r.data.tags.get(S.TAG_KIND) == S.KIND_TRAIN]
    [analysis] = [r for r in runs if r.data.tags.get(S.TAG_KIND) == S.KIND_ANALYSIS]
    assert training.info.status == "FINISHED" and training.info.run_name == "r18-b2222-f0-s42"
    ranking = (tmp_path / "results" / "demo" / "analysis" / S.RANKING_FILE).read_text()
    assert "b2222-f0" in ranking, ranking
