"""Training in-process: what a direct CLI run records, the checkpoint, and the demo's difficulty."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import REPO, tiny_config
from resnet_exp import schema as S
from resnet_exp.demo import CLASSES
from resnet_exp.errors import ConfigError
from resnet_exp.module import ResNetClassifier
from resnet_exp.train import train

pytestmark = pytest.mark.slow


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_direct_run_names_its_experiment_and_run_from_the_config(tmp_path, data_dir, tracking_uri):
    config = tiny_config(data_dir, tmp_path / "results", blocks=(1, 1, 1, 1), freeze_blocks=1, seed=3)
    result = train(config)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "resnet-exp-demo"
    assert run.info.run_name == "r10-b1111-f1-s3" and run.info.status == "FINISHED"
    assert run.data.params["blocks"] == "1,1,1,1" and run.data.params["initial_weights"] == "none"
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert run.data.tags["git_commit"] == head.stdout.strip()
    assert run.data.metrics[S.BEST_EPOCH] in (0, 1)
    assert 0 < run.data.metrics[S.TRAIN_THROUGHPUT] and 0 < run.data.metrics[S.EPOCH_TIME]

    # The checkpoint alone rebuilds the network, its class names and its frozen stages.
    restored = ResNetClassifier.load_from_checkpoint(result.best_checkpoint, map_location="cpu")
    logged = client.download_artifacts(result.run_id, "class_names.json", str(tmp_path))
    assert restored.class_names == json.loads(Path(logged).read_text()) == list(CLASSES)
    assert restored.model.frozen_stages == 1 and restored.hparams.config["seed"] == "3"
    restored.train()
    assert not restored.model.layer1.training and restored.model.layer2.training


def test_the_demo_is_learnable_but_not_trivial(tmp_path, data_dir, tracking_uri):
    """ResNet18 from scratch at 64 px with the default learning rate: clearly above chance
    (10 classes: 0.10) within 3 epochs, far from perfect after 1."""
    config = tiny_config(data_dir, tmp_path / "results", image_size=64, batch_size=32, max_epochs=3,
                         limit_batches=0, freeze_blocks=0)
    result = train(config)
    val_acc = history(MlflowClient(tracking_uri), result.run_id, S.VAL_ACC)
    assert len(val_acc) == 3
    assert val_acc[0] < 0.6, val_acc
    assert max(val_acc) >= 0.25, val_acc


def test_a_stale_run_id_pointing_at_other_params_is_refused(tmp_path, data_dir, tracking_uri, monkeypatch):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("earlier")  # not an experiment id cached from another test's store
    with mlflow.start_run() as old:
        mlflow.log_params({"freeze_blocks": "4", "learning_rate": "0.00003"})
    monkeypatch.setenv("MLFLOW_RUN_ID", old.info.run_id)
    with pytest.raises(ConfigError, match="already has freeze_blocks='4'"):
        train(tiny_config(data_dir, tmp_path / "results", freeze_blocks=2))  # 3e-5 == 0.00003: no clash
    assert MlflowClient(tracking_uri).get_run(old.info.run_id).info.status == "FAILED"
