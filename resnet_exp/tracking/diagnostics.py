"""Per-run diagnostics of the test split, logged after `trainer.test`: every prediction with its
class probabilities, per-class accuracy, the confusion matrix and calibration (expected
calibration error and a reliability diagram). The metrics come from torchmetrics; the module
collects the test epoch's logits (ResNetClassifier.test_outputs).

Everything goes to the run's `diagnostics/` artifact folder (names in schema.py), and
`test_ece` is a metric next to test_acc (a result: schema.RESULT_STEP). Per-class accuracy and the
predictions are also MLflow tables (JSON) that the UI's artifact viewer previews; the parquet
and CSV files beside them are what analysis and pandas read.

    pytest tests/test_diagnostics.py
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from torchmetrics.classification import MulticlassCalibrationError, MulticlassConfusionMatrix

from resnet_exp import schema as S
from resnet_exp.data.splits import DataSplits
from resnet_exp.tracking.runs import mark_tables
from resnet_exp.tracking.store import use_tracking_store
from resnet_exp.tracking.training_run import log_new_metrics

CALIBRATION_BINS = 15  # equal-width confidence bins, the usual choice since Guo et al. (2017)


def test_predictions(
    outputs: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits (N, classes) float32, targets (N,)) of the test epoch, in loader order."""
    logits = torch.cat([o[0] for o in outputs]).float()
    return logits, torch.cat([o[1] for o in outputs]).long()


def diagnostics_tables(logits: torch.Tensor, targets: torch.Tensor, splits: DataSplits) -> dict:
    """The predictions table, the confusion matrix (rows: true class, columns: predicted), the
    per-class accuracy table, the expected calibration error and the reliability bins."""
    names = list(splits.class_names)
    probs = torch.softmax(logits, dim=1)
    predicted = logits.argmax(dim=1)  # as ExactAccuracy decides, so the counts agree with test_acc
    confusion = MulticlassConfusionMatrix(num_classes=len(names))(predicted, targets).numpy()
    ece = float(
        MulticlassCalibrationError(num_classes=len(names), n_bins=CALIBRATION_BINS, norm="l1")(
            probs, targets
        )
    )
    # The loader is sequential over the test split, so row i of the outputs is image i of it.
    source_split, source_rows = splits.rows["test"]
    n = len(targets)
    predictions = pd.DataFrame(
        {
            "image_index": np.arange(n),
            "source_split": source_split,
            "source_row": np.asarray(source_rows)[:n],
            "true_label": targets.numpy(),
            "predicted_label": predicted.numpy(),
            "true_class": [names[i] for i in targets.tolist()],
            "predicted_class": [names[i] for i in predicted.tolist()],
            **{f"prob_{name}": probs[:, i].numpy() for i, name in enumerate(names)},
        }
    )
    correct, total = np.diag(confusion), confusion.sum(axis=1)
    per_class = pd.DataFrame(
        {
            "class": names,
            "label": range(len(names)),
            "correct": correct,
            "total": total,
            "accuracy": np.where(total > 0, correct / np.maximum(total, 1), np.nan),
        }
    )
    return {
        "predictions": predictions,
        "confusion": confusion,
        "per_class": per_class,
        "ece": ece,
        "bins": reliability_bins(probs.max(dim=1).values.numpy(), (predicted == targets).numpy()),
    }


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, bins: int = CALIBRATION_BINS
) -> pd.DataFrame:
    """Per equal-width confidence bin (right-closed, as torchmetrics bins): images, mean
    confidence, accuracy. The count-weighted |accuracy - confidence| is the ECE."""
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        rows.append(
            {
                "lo": edges[b],
                "hi": edges[b + 1],
                "images": int(inside.sum()),
                "confidence": confidence[inside].mean() if inside.any() else np.nan,
                "accuracy": correct[inside].mean() if inside.any() else np.nan,
            }
        )
    return pd.DataFrame(rows)


def draw_confusion(confusion: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(4 + 0.35 * len(names), 30)  # 90 classes stay readable, 2 are not huge
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(confusion, cmap="Blues")
    ax.set(
        xticks=range(len(names)),
        yticks=range(len(names)),
        xlabel="predicted class",
        ylabel="true class",
        title=f"test confusion matrix ({confusion.sum()} images, {np.trace(confusion)} correct)",
    )
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_yticklabels(names, fontsize=7)
    if len(names) <= 20:
        for (i, j), n in np.ndenumerate(confusion):
            if n:
                ax.text(
                    j,
                    i,
                    str(n),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if n > confusion.max() / 2 else "black",
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_reliability(bins: pd.DataFrame, ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    width = bins["hi"] - bins["lo"]
    ax.bar(
        bins["lo"],
        bins["accuracy"].fillna(0),
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy in the bin",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence (top-class probability)",
        ylabel="accuracy",
        title=f"reliability on the test split, ECE {ece:.3f}",
    )
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def preview_tables(tables: dict) -> dict[str, pd.DataFrame]:
    """Per-class accuracy and the predictions as a reader scans them in the UI: class names,
    accuracies to 4 decimals (a test set of 10,000 resolves no finer), the top-class confidence
    instead of one probability column per class."""
    per_class = tables["per_class"][["class", "correct", "total", "accuracy"]]
    per_class = per_class.assign(accuracy=per_class["accuracy"].astype(np.float64).round(4))
    p = tables["predictions"]
    probs = p[[c for c in p.columns if c.startswith("prob_")]].to_numpy()
    predictions = pd.DataFrame(
        {
            "image_index": p["image_index"],
            "true_class": p["true_class"],
            "predicted_class": p["predicted_class"],
            # float64 before rounding: a rounded float32 prints as 0.1066000015 in JSON
            "confidence": probs.max(axis=1).astype(np.float64).round(4),
            "correct": p["true_label"] == p["predicted_label"],
        }
    )
    return {S.PER_CLASS_TABLE: per_class, S.PREDICTIONS_TABLE: predictions}


def log_test_diagnostics(
    outputs: list[tuple[torch.Tensor, torch.Tensor]],
    splits: DataSplits,
    stored_steps: Mapping[str, int] | None = None,
) -> dict:
    """Log the test epoch's diagnostics to the active run; returns the tables (for tests).
    `stored_steps`: a resumed run's latest step per metric; test_ece is logged only if new."""
    logits, targets = test_predictions(outputs)
    tables = diagnostics_tables(logits, targets, splits)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tables["predictions"].to_parquet(folder / S.PREDICTIONS_FILE, index=False)
        tables["per_class"].to_csv(folder / S.PER_CLASS_FILE, index=False)
        names = list(splits.class_names)
        pd.DataFrame(tables["confusion"], index=names, columns=names).to_csv(
            folder / S.CONFUSION_FILE
        )
        tables["bins"].to_csv(folder / S.RELIABILITY_FILE, index=False)
        draw_confusion(tables["confusion"], names, folder / S.CONFUSION_PNG)
        draw_reliability(tables["bins"], tables["ece"], folder / S.RELIABILITY_PNG)
        previews = preview_tables(tables)
        for name, frame in previews.items():  # the JSON layout of MlflowClient.log_table
            frame.to_json(folder / name, orient="split", index=False)
        mlflow.log_artifacts(str(folder), S.DIAGNOSTICS_FOLDER)
    mark_tables(
        MlflowClient(use_tracking_store()),
        mlflow.active_run().info.run_id,
        [f"{S.DIAGNOSTICS_FOLDER}/{name}" for name in previews],
    )
    log_new_metrics({S.TEST_ECE: S.readable(tables["ece"])}, S.RESULT_STEP, stored_steps or {})
    return tables
