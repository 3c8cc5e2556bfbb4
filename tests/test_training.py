"""Training in-process: what a direct CLI run records, the checkpoint, and the demo's difficulty."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch
import torchvision
from mlflow import MlflowClient
from torchvision.models.resnet import Bottleneck

from conftest import REPO, tiny_config
from resnet_exp import schema as S
from resnet_exp.data.demo import CLASSES
from resnet_exp.data.splits import ImageSplit, load_splits
from resnet_exp.errors import ConfigError
from resnet_exp.model.classifier import ResNetClassifier
from resnet_exp.model.inference import ImageClassifier, read_spec
from resnet_exp.model.network import torchvision_cache_file
from resnet_exp.tracking import timing
from resnet_exp.training.train import train

pytestmark = pytest.mark.slow


def history_steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def test_a_direct_run_names_its_experiment_and_run_from_the_config(
    tmp_path, data_dir, tracking_uri
):
    config = tiny_config(
        data_dir, tmp_path / "results", blocks=(1, 1, 1, 1), freeze_blocks=1, seed=3
    )
    result = train(config)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert client.get_experiment(run.info.experiment_id).name == "resnet-exp-demo"
    assert run.info.run_name == "r10-b1111-f1-s3" and run.info.status == "FINISHED"
    assert run.data.params["blocks"] == "1,1,1,1" and run.data.params["initial_weights"] == "none"
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode == 0:
        assert run.data.tags["git_commit"] == head.stdout.strip()
    assert run.data.metrics[S.BEST_EPOCH] in (0, 1)
    # The charts: learning curves and test results only (MLflow's chart view puts any prefixed
    # section first and sorts by name); 4 batches per epoch give no step-level curve, and the
    # rate, which never moved in 2 epochs, is the learning_rate param.
    curves = {S.TRAIN_LOSS, S.TRAIN_ACC, S.VAL_LOSS, S.VAL_ACC}
    results = {S.TEST_LOSS, S.TEST_ACC, S.TEST_ECE, S.BEST_EPOCH}
    ours = {k: v for k, v in run.data.metrics.items() if not k.startswith(S.SYSTEM)}
    assert set(ours) == curves | results
    assert all(S.recorded(k, v) == v for k, v in ours.items())  # no float32 noise
    assert [e for e, _ in sorted(history_steps(client, run.info.run_id, S.VAL_LOSS))] == [0, 1]
    assert len(timing.epoch_times(run.info.run_id)) == 2
    assert all(0 < t for t in timing.epoch_times(run.info.run_id, S.TRAIN_THROUGHPUT))
    phases = timing.phase_times(run.info.run_id)
    assert list(phases) == [*S.PHASE_TIMES, S.RUN_TIME] and phases[S.FIT_TIME] > 0

    # The checkpoint alone rebuilds the network, its class names and its frozen stages.
    restored = ResNetClassifier.load_from_checkpoint(result.best_checkpoint, map_location="cpu")
    logged = client.download_artifacts(result.run_id, "class_names.json", str(tmp_path))
    assert restored.class_names == json.loads(Path(logged).read_text()) == list(CLASSES)
    assert restored.model.frozen_stages == 1 and restored.hparams.config_params["seed"] == "3"
    restored.train()
    assert not restored.model.layer1.training and restored.model.layer2.training


def test_the_demo_is_learnable_but_not_trivial(tmp_path, data_dir, tracking_uri):
    """ResNet10 (one block per stage) from scratch at 64 px with the default learning rate:
    clearly above chance (10 classes: 0.10) within 3 epochs, far from perfect after 1. Measured on
    a 2-core EPYC: val_acc 0.125, 0.35, 0.40 in 24 s (ResNet18: 0.20, 0.26, 0.40 in 45 s). In
    tiny_config's fp32, as `auto` picks on most CPUs: `auto` would first measure bf16 at 64 px
    (~15 s of CPU), which is not what this tests."""
    config = tiny_config(
        data_dir,
        tmp_path / "results",
        image_size=64,
        batch_size=32,
        max_epochs=3,
        limit_batches=0,
        freeze_blocks=0,
        blocks=(1, 1, 1, 1),
    )
    result = train(config)
    val_acc = history(MlflowClient(tracking_uri), result.run_id, S.VAL_ACC)
    assert len(val_acc) == 3
    assert val_acc[0] < 0.6, val_acc
    assert max(val_acc) >= 0.25, val_acc


def test_a_stale_run_id_pointing_at_other_params_is_refused(
    tmp_path, data_dir, tracking_uri, monkeypatch
):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment("earlier")  # not an experiment id cached from another test's store
    with mlflow.start_run() as old:
        mlflow.log_params({"freeze_blocks": "4", "learning_rate": "0.00003"})
    monkeypatch.setenv("MLFLOW_RUN_ID", old.info.run_id)
    with pytest.raises(ConfigError, match="already has freeze_blocks='4'"):
        # 3e-5 == 0.00003: no clash
        train(tiny_config(data_dir, tmp_path / "results", freeze_blocks=2))
    assert MlflowClient(tracking_uri).get_run(old.info.run_id).info.status == "FAILED"


def test_a_bottleneck_resnet50_trains_and_every_copy_rebuilds_a_bottleneck_network(
    tmp_path, data_dir, tracking_uri
):
    config = tiny_config(
        data_dir,
        tmp_path / "results",
        block="bottleneck",
        blocks=(3, 4, 6, 3),
        freeze_blocks=3,
        max_epochs=1,
        limit_batches=2,
        seed=0,
    )
    result = train(config)
    client = MlflowClient(tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.run_name == "r50-bn3463-f3-s0" and run.info.status == "FINISHED"
    assert run.data.params["block"] == "bottleneck" and run.data.tags[S.TAG_DEPTH] == "bn3463-f3"
    assert run.data.params[S.TOTAL_PARAMS] == str(23_508_032 + 2048 * len(CLASSES) + len(CLASSES))
    logged = read_spec(client.download_artifacts(result.run_id, S.NETSPEC_FILE, str(tmp_path)))
    assert logged == config.net_spec(CLASSES)

    # The Lightning checkpoint and the weights-only rebuild are the same Bottleneck network.
    trained = ResNetClassifier.load_from_checkpoint(
        result.best_checkpoint, map_location="cpu"
    ).eval()
    rebuilt = ImageClassifier.from_checkpoint(result.best_checkpoint)
    assert rebuilt.spec == trained.spec == logged
    assert isinstance(rebuilt.network.layer1[0], Bottleneck)
    test = ImageSplit(load_splits(config), "test", config.image_size)
    x = torch.stack([test[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.allclose(rebuilt.network.cpu()(x), trained(x), atol=1e-5)

    # So is the logged (and registered) MLflow Model.
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(result.model_uri).unwrap_python_model()
    assert model.classifier.spec == logged and isinstance(
        model.classifier.network.layer4[2], Bottleneck
    )
    assert result.registered is not None and result.registered.aliases == (
        "champion",
        "best-bn3463-f3",
    )


def test_a_bottleneck_network_starts_from_truncated_resnet50_weights(
    tmp_path, data_dir, tracking_uri, monkeypatch
):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = torchvision_cache_file("resnet50")  # where torchvision looks for the download
    assert cached.name == Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet50().state_dict()  # the shapes of the real file
    torch.save(imagenet, cached)
    config = tiny_config(
        data_dir,
        tmp_path / "results",
        block="bottleneck",
        blocks=(2, 2, 2, 2),
        weights="imagenet",
        freeze_blocks=3,
        max_epochs=1,
        limit_batches=2,
        registered_model_name="none",
    )
    result = train(config)
    run = MlflowClient(tracking_uri).get_run(result.run_id)
    assert run.data.params[S.INITIAL_WEIGHTS] == "resnet50"
    state = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    # Frozen and copied: still the file's. Trainable and copied: moved away from it by training.
    for key in (
        "conv1.weight",
        "layer1.0.conv1.weight",
        "layer3.1.conv3.weight",
        "layer3.1.bn3.running_mean",
    ):
        assert torch.equal(state[f"model.{key}"], imagenet[key]), key
    assert not torch.equal(state["model.layer4.1.conv3.weight"], imagenet["layer4.1.conv3.weight"])
