"""What makes comparisons paired and what a run records about its test predictions: one seed
gives every configuration the same splits and the same batches (with and without the feature
cache), and a real training run's diagnostics agree exactly with its test_acc.

    pytest tests/test_diagnostics.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from PIL import Image

from conftest import mlflow_table, tiny_config
from resnet_exp import schema as S
from resnet_exp.data.splits import SPLITS, ImageDataModule, load_splits
from resnet_exp.data.store import open_image_store
from resnet_exp.hardware import resolve_runtime
from resnet_exp.model.classifier import ResNetClassifier
from resnet_exp.training.features import cache_features


def batches_seen(config, cache: str) -> dict[str, list[list[int]]]:
    """The labels of every batch each loader serves, two training epochs (the order moves on
    between epochs), through the real DataModule, from images or from cached features."""
    config = config.replace(feature_cache=cache)
    runtime = resolve_runtime(config)
    splits = load_splits(config)
    store = open_image_store(splits, config)
    classifier = ResNetClassifier(config.net_spec(splits.class_names), config.learning_rate)
    images = {name: store.split(splits, name) for name in SPLITS}
    features, plan = cache_features(images, classifier.model, config, runtime)
    assert plan.use == (cache == "auto"), plan.reason
    module = ImageDataModule(images if features is None else features, config, runtime)
    train = module.train_dataloader()
    seen = {f"train-epoch{e}": [b[1].tolist() for b in train] for e in range(2)}
    seen.update(
        {
            name: [b[1].tolist() for b in loader()]
            for name, loader in (
                ("validation", module.val_dataloader),
                ("test", module.test_dataloader),
            )
        }
    )
    seen["rows"] = [splits.rows[name][1].tolist() for name in SPLITS]
    return seen


@pytest.mark.slow
def test_one_seed_gives_every_configuration_the_same_splits_and_batches(tmp_path, data_dir):
    """The analysis pairs runs by seed: that is only right if the seed alone decides the split
    and the data order, whatever the depth, the frozen stages or the input path."""
    reference = batches_seen(tiny_config(data_dir, tmp_path, freeze_blocks=2, seed=5), "off")
    assert reference["train-epoch0"] != reference["train-epoch1"]  # shuffled anew each epoch
    for freeze, blocks, cache in (
        (4, (2, 2, 2, 2), "off"),
        (2, (2, 2, 2, 2), "auto"),
        (4, (1, 1, 1, 1), "auto"),
    ):
        config = tiny_config(data_dir, tmp_path, freeze_blocks=freeze, blocks=blocks, seed=5)
        assert batches_seen(config, cache) == reference, (freeze, blocks, cache)
    other_seed = batches_seen(tiny_config(data_dir, tmp_path, freeze_blocks=2, seed=6), "off")
    assert other_seed["rows"] != reference["rows"]  # another seed carves other splits


@pytest.mark.slow
def test_a_run_logs_diagnostics_that_agree_with_its_test_acc(tmp_path, two_trainings):
    """Read from the session's first tiny training (conftest.two_trainings), not a training of
    its own: every tiny training logs its diagnostics the same way."""
    config, result = two_trainings.configs[0], two_trainings.results[0]
    client = MlflowClient(two_trainings.uri)
    run = client.get_run(result.run_id)
    folder = Path(client.download_artifacts(result.run_id, S.DIAGNOSTICS_FOLDER, str(tmp_path)))
    assert {p.name for p in folder.iterdir()} == {
        S.PREDICTIONS_FILE,
        S.PER_CLASS_FILE,
        S.CONFUSION_FILE,
        S.CONFUSION_PNG,
        S.RELIABILITY_FILE,
        S.RELIABILITY_PNG,
        S.PER_CLASS_TABLE,
        S.PREDICTIONS_TABLE,
    }

    confusion = pd.read_csv(folder / S.CONFUSION_FILE, index_col=0).to_numpy()
    test_acc = run.data.metrics[S.TEST_ACC]
    assert np.trace(confusion) / confusion.sum() == test_acc  # exactly: both are exact fractions
    assert confusion.sum() == config.limit_batches * config.batch_size  # limit_batches test batches

    predictions = pd.read_parquet(folder / S.PREDICTIONS_FILE)
    classes = json.loads(
        Path(
            client.download_artifacts(result.run_id, S.CLASS_NAMES_FILE, str(tmp_path))
        ).read_text()
    )
    assert len(predictions) == confusion.sum()
    assert predictions["image_index"].tolist() == list(range(len(predictions)))
    probabilities = predictions[[f"prob_{c}" for c in classes]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (probabilities.argmax(axis=1) == predictions["predicted_label"]).all()
    assert (predictions["true_label"] == predictions["predicted_label"]).mean() == test_acc

    per_class = pd.read_csv(folder / S.PER_CLASS_FILE)
    assert per_class["class"].tolist() == classes
    assert per_class["correct"].sum() / per_class["total"].sum() == test_acc
    assert (per_class["total"].to_numpy() == confusion.sum(axis=1)).all()

    # the same, as tables the UI previews (a JSON file listed in mlflow.loggedArtifacts), read
    # back as MLflow reads a table
    tables = [f"{S.DIAGNOSTICS_FOLDER}/{n}" for n in (S.PER_CLASS_TABLE, S.PREDICTIONS_TABLE)]
    listed = json.loads(run.data.tags["mlflow.loggedArtifacts"])
    assert [{"path": t, "type": "table"} for t in tables] == listed
    shown_classes, shown = (
        mlflow_table(client, result.run_id, t, tmp_path / "tables") for t in tables
    )
    assert shown_classes["class"].tolist() == classes
    assert shown_classes["correct"].sum() / shown_classes["total"].sum() == test_acc
    assert list(shown.columns) == [
        "image_index",
        "true_class",
        "predicted_class",
        "confidence",
        "correct",
    ]
    assert len(shown) == len(predictions) and shown["correct"].mean() == test_acc
    assert (shown["predicted_class"] == predictions["predicted_class"]).all()
    # four decimals, without float32 noise once written as JSON text
    text = Path(
        client.download_artifacts(result.run_id, tables[1], str(tmp_path / "tables"))
    ).read_text()
    assert all(len(str(c).split(".")[-1]) <= 4 for c in json.loads(text)["data"][0][3:4]), text[
        :300
    ]

    # ECE from the reliability bins (count-weighted |accuracy - confidence|) is torchmetrics' value
    bins = pd.read_csv(folder / S.RELIABILITY_FILE).dropna()
    ece = (bins["images"] * (bins["accuracy"] - bins["confidence"]).abs()).sum() / bins[
        "images"
    ].sum()
    assert run.data.metrics[S.TEST_ECE] == pytest.approx(ece, abs=1e-5)
    [ece_metric] = client.get_metric_history(result.run_id, S.TEST_ECE)
    assert ece_metric.step == S.RESULT_STEP  # a result, next to test_acc: a bar in the UI
    for png in (S.CONFUSION_PNG, S.RELIABILITY_PNG):
        with Image.open(folder / png) as image:
            image.verify()
            assert image.format == "PNG"
