"""End to end: the real entry points (`mlflow run`, the CLI) against a temporary SQLite store,
then read back what MLflow, TensorBoard and the checkpoint folder hold.

A training stopped from outside is tested elsewhere: SIGINT (Ctrl-C) sent to a training process
in its training loop by tests/test_resources.py (exit 130, one line, KILLED, every printed epoch
stored); SIGTERM at every point a training or a sweep can be stopped, the training loop included,
by tests/test_interrupts.py (real signals, the CLI in this process: another training process
would add only its ~15 s of imports)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import REPO, make_image_folder, mlflow_run_command, subprocess_env
from resnet_exp import schema as S
from resnet_exp.config import TrainConfig
from resnet_exp.hardware import precision_for_speedup
from resnet_exp.tracking import timing

pytestmark = pytest.mark.slow


def mlflow_run(tmp_path: Path, data_dir: Path, *params: str, timeout: int = 300):
    """`mlflow run` of the main entry point; `params` as 'name=value'."""
    given = dict(p.split("=", 1) for p in params)
    cmd = mlflow_run_command(
        "e2e", {"data_dir": data_dir, "output_dir": tmp_path / "results", **given}
    )
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=subprocess_env(), cwd=tmp_path
    )


def cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    cmd = [
        sys.executable,
        "-m",
        "resnet_exp",
        "train",
        "--output-dir",
        str(tmp_path / "results"),
        *args,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=env or subprocess_env(), cwd=tmp_path
    )


def all_runs(uri: str):
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(ids) if ids else []


def steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_mlflow_run_trains_one_tracked_run(tmp_path, data_dir, tracking_uri):
    # ResNet10: precision=auto measures bf16 for this network first, and every checkpoint and the
    # logged model are half ResNet18's size; the MLproject's `blocks` parameter goes through too
    given = dict(
        data="demo",
        weights="none",
        freeze_blocks="2",
        blocks="1,1,1,1",
        max_epochs="2",
        image_size="32",
        limit_batches="4",
        batch_size="16",
    )
    result = mlflow_run(tmp_path, data_dir, *(f"{k}={v}" for k, v in given.items()))
    assert result.returncode == 0, result.stderr[-3000:]

    client, runs = all_runs(tracking_uri)
    assert len(runs) == 1, "mlflow run and the training must share one run"
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "r10-b1111-f2-s42"
    assert client.get_experiment(run.info.experiment_id).name == "e2e"
    params = run.data.params
    assert params["freeze_blocks"] == "2" and params["blocks"] == "1,1,1,1"
    assert params["learning_rate"] == "3e-5" and params["weights"] == "none"
    # precision=auto: the run's own measurement decides (a loaded machine can tip it either way)
    speedup = float(params["resolved/bf16_speedup"])
    assert params["resolved/precision"] == precision_for_speedup(speedup)
    assert int(params["trainable_params"]) < int(params["total_params"])
    assert run.data.tags["depth_config"] == "b1111-f2" and len(run.data.tags["config_hash"]) == 12

    for key in (
        S.VAL_ACC,
        S.VAL_LOSS,
        S.TRAIN_LOSS,
        S.TRAIN_ACC,
    ):
        assert steps(client, run.info.run_id, key) == [0, 1], key
    # 4 batches per epoch: no per-step series; timings are a table
    assert not steps(client, run.info.run_id, S.TRAIN_LOSS + S.STEP_SUFFIX)
    assert len(timing.epoch_times(run.info.run_id)) == 2
    assert 0.0 <= run.data.metrics[S.TEST_ACC] <= 1.0 and S.TEST_LOSS in run.data.metrics

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "class_names.json"} <= artifacts
    [version] = client.search_model_versions("name = 'resnet-demo'")  # registered_model_name=auto
    assert version.run_id == run.info.run_id
    assert str(client.get_model_version_by_alias("resnet-demo", "champion").version) == str(
        version.version
    )
    classes = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "class_names.json", str(tmp_path))
        ).read_text()
    )
    assert len(classes) == 10
    contexts = {
        t.value for i in run.inputs.dataset_inputs for t in i.tags if t.key == "mlflow.data.context"
    }
    assert contexts == {"training", "validation", "testing"}

    logs = list((tmp_path / "results" / "demo" / "logs").rglob("events.out.tfevents.*"))
    assert logs, "TensorBoard event files missing"
    best = Path(run.data.tags[S.TAG_BEST_CHECKPOINT])
    # A finished run keeps one checkpoint: the best, as weights only (the resumable last.ckpt,
    # with the optimizer's state, is removed once the model is registered)
    assert [p.name for p in best.parent.iterdir()] == [best.name]
    assert "optimizer_states" not in torch.load(best, map_location="cpu", weights_only=True)
    assert_frozen_batchnorm_untouched(best)
    assert_same_params_on_every_path(tmp_path, data_dir, tracking_uri, run, given)


def assert_same_params_on_every_path(tmp_path, data_dir, tracking_uri, launched, given):
    """`resnet-exp train` and a sweep's child log the same param names as the `mlflow run` run
    `launched`, and the values the user gave (precision=auto, not the precision a sweep
    resolves for its children); what ran is under resolved/. A Ray trial trains its child
    through the same run_child and ParentRun (ray_trial.py replaces only the child tags)."""
    from resnet_exp.sweep.grid import SweepGrid
    from resnet_exp.sweep.run import run_sweep
    from resnet_exp.training.train import train

    folders = {"data_dir": str(data_dir), "output_dir": str(tmp_path / "results")}
    config = TrainConfig.from_text({**given, **folders, "registered_model_name": "none"})
    direct = train(config.replace(experiment_name="e2e"))
    grid = SweepGrid(freeze_blocks=given["freeze_blocks"], blocks=given["blocks"], seeds="1")
    sweep = run_sweep(grid, config)

    client, runs = all_runs(tracking_uri)
    by_path = {
        "mlflow run": launched,
        "train": client.get_run(direct.run_id),
        "sweep child": next(
            r for r in runs if r.data.tags.get(S.MLFLOW_PARENT_RUN_ID) == sweep.parent_run_id
        ),
    }
    keys = {path: set(run.data.params) for path, run in by_path.items()}
    assert keys["train"] == keys["mlflow run"] == keys["sweep child"], keys
    for path, run in by_path.items():
        params = run.data.params
        assert params[S.PRECISION] == "auto" and params[S.RESUME] == "auto", path
        assert params[S.RESOLVED_PRECISION] in ("32-true", "bf16-mixed"), path
        assert S.RESOLVED_BF16_SPEEDUP in params, path
        assert all(config.same_value(k, v) for k, v in params.items() if k in given), path


def assert_frozen_batchnorm_untouched(checkpoint: Path) -> None:
    """With random init, a BatchNorm that never ran in train mode still has mean 0, var 1."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for prefix, frozen in (
        ("model.bn1.", True),
        ("model.layer2.0.bn1.", True),
        ("model.layer3.0.bn1.", False),
    ):
        untouched = (
            torch.all(state[prefix + "running_mean"] == 0)
            and torch.all(state[prefix + "running_var"] == 1)
            and state[prefix + "num_batches_tracked"] == 0
        )
        assert bool(untouched) == frozen, prefix


def test_bad_input_under_mlflow_run_fails_fast_and_leaves_no_running_run(
    tmp_path, data_dir, tracking_uri
):
    """One bad value under `mlflow run`: every bad value takes the same path from there (the
    MLproject command passes it as text to `resnet-exp train`, whose config check refuses it
    before any run of ours opens), so the others are checked through the CLI below, and every
    value's message in tests/test_config.py; a case here costs two interpreters."""
    start = time.monotonic()
    result = mlflow_run(tmp_path, data_dir, "data=demo", "freeze_blocks=7")
    assert result.returncode != 0
    assert time.monotonic() - start < 60
    for word in ["freeze_blocks=7", "0..4"]:
        assert word in result.stderr
    assert "Traceback" not in result.stderr
    _, runs = all_runs(tracking_uri)
    assert runs and all(r.info.status == "FAILED" for r in runs)


@pytest.mark.parametrize(
    "param, words",
    [
        ("freeze_blocks=7", ["freeze_blocks=7", "0..4"]),
        ("blocks=2,2,2", ["blocks='2,2,2'", "4 positive integers"]),
        ("weights=nonsense", ["weights='nonsense'", "'imagenet', 'none'"]),
    ],
)
def test_bad_input_as_mlflow_run_passes_it_fails_with_one_line_and_no_run(
    tmp_path, data_dir, tracking_uri, param, words
):
    """What `mlflow run -P <param>` runs, minus the two interpreters: MLproject's command line
    for the entry point, each parameter as the text given, through the CLI in this process."""
    import shlex

    import yaml
    from click.testing import CliRunner

    from resnet_exp.cli import main

    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    values = {name: spec["default"] for name, spec in entry["parameters"].items()}
    values.update(data="demo", data_dir=str(data_dir), output_dir=str(tmp_path / "results"))
    name, value = param.split("=", 1)
    values[name] = value
    argv = shlex.split(entry["command"].format(**{k: shlex.quote(v) for k, v in values.items()}))
    assert argv[:4] == ["python", "-m", "resnet_exp", "train"]
    result = CliRunner().invoke(main, argv[3:])
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit)  # no traceback
    for word in words:
        assert word in result.stderr
    assert all_runs(tracking_uri)[1] == []  # refused before any run opens: nothing left RUNNING


def test_bad_input_to_the_cli_creates_no_run_at_all(tmp_path, tracking_uri):
    start = time.monotonic()
    result = cli(tmp_path, "--data", "demo", "--freeze-blocks", "7")
    assert result.returncode != 0 and "freeze_blocks=7" in result.stderr
    assert time.monotonic() - start < 15
    assert all_runs(tracking_uri)[1] == []


def test_an_offline_hub_id_fails_fast_with_the_options_and_no_run(tmp_path, tracking_uri):
    # Without HF_HUB_OFFLINE: our own probe must switch `datasets` to offline mode in time. The
    # check comes before Lightning and torchvision are imported (about 15 s of a training
    # process here; 4 s for the whole command with it first).
    env = subprocess_env()
    env.pop("HF_HUB_OFFLINE")
    start = time.monotonic()
    result = cli(tmp_path, "--data", "lucabaggi/animal-wildlife", "--weights", "none", env=env)
    assert result.returncode != 0 and time.monotonic() - start < 12
    assert "unreachable" in result.stderr and "data=demo" in result.stderr
    assert "Traceback" not in result.stderr
    assert all_runs(tracking_uri)[1] == []


def test_a_file_that_does_not_decode_is_named_before_any_run_opens(tmp_path, tracking_uri, capfd):
    """Through the CLI in this process (a fresh interpreter adds only the imports; `python -m
    resnet_exp` itself is run by the tests around this one). capfd also sees what the image
    store's worker processes write to the real stderr."""
    from click.testing import CliRunner

    from resnet_exp.cli import main

    folder = make_image_folder(tmp_path / "pets", {"cat": 12, "dog": 12}, suffix=".jpg")
    victim = folder / "dog" / "dog_005.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: data.index(b"\xff\xda") + 40])  # whole header, truncated pixel data
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--output-dir",
            str(tmp_path / "results"),
            "--data",
            str(folder),
            "--weights",
            "none",
            "--image-size",
            "32",
            "--batch-size",
            "4",
            "--max-epochs",
            "1",
            "--val-fraction",
            "0.2",
            "--test-fraction",
            "0.2",
        ],
    )
    # Decoded once, into the image store, before the run opens: named, and no run left behind.
    assert result.exit_code != 0 and "dog_005.jpg" in result.stderr
    assert isinstance(result.exception, SystemExit), result.exception  # one line, no traceback
    assert "Traceback" not in result.stderr + capfd.readouterr().err, result.stderr[-2000:]
    _, runs = all_runs(tracking_uri)
    assert runs == []
