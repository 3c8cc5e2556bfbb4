"""A training killed (-9) while its model is being logged, then run again: the run continues and
ends with each metric step once, one logged model (the dead attempt's PENDING one deleted), one
registered version, and no folder of model files left anywhere.

    pytest tests/test_logged_models.py
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import cli_options, subprocess_env
from resnet_exp import schema as S
from resnet_exp.cli import main
from resnet_exp.signals import SIGNAL_AT_ENV
from resnet_exp.tracking.logged_model import SCRATCH_PREFIX

MODEL = "resnet-demo"


def leftovers(folder: Path) -> list[str]:
    """What stays in a temp folder, but torch's compile cache (torchinductor_<user>, by design)."""
    return [p.name for p in folder.iterdir() if not p.name.startswith("torchinductor_")]


@pytest.mark.slow
def test_a_kill_during_model_logging_then_resume_leaves_one_model_and_no_duplicates(
    tmp_path, data_dir, tracking_uri, monkeypatch
):
    scratch = tmp_path / "tmp"  # the temp folder of both attempts
    scratch.mkdir()
    command = ["train"] + cli_options(
        data="demo",
        data_dir=data_dir,
        output_dir=tmp_path / "results",
        weights="none",
        blocks="1,1,1,1",
        image_size=32,
        batch_size=16,
        max_epochs=1,
        limit_batches=2,
        precision="32-true",
    )
    env = subprocess_env(**{SIGNAL_AT_ENV: "model_log:SIGKILL", "TMPDIR": str(scratch)})
    killed = subprocess.run(
        [sys.executable, "-m", "resnet_exp", *command],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    [experiment] = [e for e in client.search_experiments() if e.name == "resnet-exp-demo"]
    [run] = client.search_runs([experiment.experiment_id])
    [pending] = client.search_logged_models([experiment.experiment_id])
    assert str(pending.status) == "PENDING" and pending.source_run_id == run.info.run_id
    folder = Path(run.data.tags[S.TAG_CHECKPOINT_DIR])
    assert list(folder.glob(f"{SCRATCH_PREFIX}*")), "the kill came before the model's files"

    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    resumed = CliRunner().invoke(main, command)  # resume=auto: the same run continues
    assert resumed.exit_code == 0, resumed.output

    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    [model] = client.search_logged_models([experiment.experiment_id])
    assert str(model.status) == "READY" and model.source_run_id == run.info.run_id
    assert model.model_id != pending.model_id
    assert [o.model_id for o in run.outputs.model_outputs] == [model.model_id]
    [version] = client.search_model_versions(f"name = '{MODEL}'")
    assert version.run_id == run.info.run_id
    for key in run.data.metrics:
        if not key.startswith(S.SYSTEM):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(steps) == len(set(steps)), (key, steps)
    assert not list(folder.glob(f"{SCRATCH_PREFIX}*"))
    assert leftovers(scratch) == []
