"""The report's four PNG plots, drawn from the ranking table and the per-epoch curves. Epochs
are numbered from 0, as MLflow and TensorBoard number them; accuracy plots show the chance level
(1 / classes) when the runs recorded their class count.

    python -c "import analysis.plots as p; print(p.PLOT_FILES)"
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in `mlflow run`

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import columns as C  # noqa: E402
from analysis.study import SERIES, series_name  # noqa: E402
from resnet_exp import schema as S  # noqa: E402

CURVES, FREEZE, DEPTH, COST = (
    "val_acc_curves.png",
    "test_acc_vs_freeze_blocks.png",
    "test_acc_vs_depth.png",
    "accuracy_vs_cost.png",
)
PLOT_FILES = (CURVES, FREEZE, DEPTH, COST)
DPI = 110


def draw_all(
    ranking: pd.DataFrame, curves: pd.DataFrame, folder: Path, chance: float | None = None
) -> list[Path]:
    """Write every plot under folder/plots (S.PLOTS_FOLDER); returns their paths. `chance`:
    1 / num_classes, or None when unknown (no chance line)."""
    (folder / S.PLOTS_FOLDER).mkdir(parents=True, exist_ok=True)
    drawers = {
        CURVES: lambda ax: curves_plot(ax, ranking, curves, chance),
        FREEZE: lambda ax: accuracy_by(
            ax, ranking, C.FREEZE_BLOCKS, "frozen stages (freeze_blocks)", chance
        ),
        DEPTH: lambda ax: accuracy_by(
            ax,
            ranking,
            C.TRAINABLE_BLOCKS,
            "trainable residual blocks (blocks after the frozen stages)",
            chance,
        ),
    }
    paths = []
    for name, draw in drawers.items():
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw(ax)
        paths.append(save(fig, folder / S.PLOTS_FOLDER / name))
    paths.append(save(cost_plot(ranking, chance), folder / S.PLOTS_FOLDER / COST))
    return paths


def chance_line(ax: plt.Axes, chance: float | None) -> None:
    """A dotted line at the accuracy of guessing: without it, 0.3 on 90 classes looks like failure."""
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", linewidth=1.2, label="chance")


def save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curves_plot(
    ax: plt.Axes, ranking: pd.DataFrame, curves: pd.DataFrame, chance: float | None = None
) -> None:
    """val_acc per epoch (0 = the first), one line per configuration: the mean over seeds with a
    +-1 std band (at each epoch, over the seeds that reached it; early stopping ends some sooner)."""
    for _, row in ranking.iterrows():
        per_epoch = curves[curves[C.CONFIG_HASH] == row[C.CONFIG_HASH]].groupby(C.EPOCH)[C.VAL_ACC]
        mean, std = per_epoch.mean(), per_epoch.std(ddof=1).fillna(0)
        epochs = mean.index  # the step MLflow stored, so the plot and the MLflow UI agree
        (line,) = ax.plot(epochs, mean, marker=".", label=f"{row[C.LABEL]} (n={row[C.N_RUNS]})")
        ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set(
        xlabel="epoch",
        ylabel="validation accuracy",
        title="val_acc per epoch (mean, band: ±1 std over seeds)",
    )
    chance_line(ax, chance)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def accuracy_by(
    ax: plt.Axes, ranking: pd.DataFrame, x: str, xlabel: str, chance: float | None = None
) -> None:
    """Final test_acc mean against `x`, one series per network (and initialisation), 95% CI bars."""
    for (network, weights), series in ranking.sort_values(x).groupby(SERIES, sort=True):
        ax.errorbar(
            series[x],
            series[C.TEST_ACC_MEAN],
            yerr=interval_bars(series),
            marker="o",
            capsize=4,
            label=series_name(ranking, network, weights),
        )
    ax.set(
        xlabel=xlabel, ylabel="test accuracy", title=f"test_acc against {x} (bars: 95% interval)"
    )
    chance_line(ax, chance)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def interval_bars(rows: pd.DataFrame) -> np.ndarray:
    """(2, n) distances from each mean down to and up to its 95% interval (Wilson intervals are
    not symmetric); 0 where a row has none."""
    mean = rows[C.TEST_ACC_MEAN].to_numpy(float)
    below, above = (
        mean - rows[C.TEST_ACC_LO].to_numpy(float),
        rows[C.TEST_ACC_HI].to_numpy(float) - mean,
    )
    return np.nan_to_num(np.vstack([below, above]).clip(min=0))


def cost_plot(ranking: pd.DataFrame, chance: float | None = None) -> plt.Figure:
    """Accuracy against training time and against trainable parameters, each with its front.
    Parameters on a log axis: freezing all 4 stages leaves orders of magnitude fewer (the head
    only) than training them all, which a linear axis squashes against zero."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    panels = [
        (C.TRAIN_TIME_MEAN, C.PARETO_TIME, "total training time (s, mean over seeds)"),
        (C.TRAINABLE_PARAMS, C.PARETO_PARAMS, "trainable parameters"),
    ]
    for ax, (cost, flag, xlabel) in zip(axes, panels):
        ax.errorbar(
            ranking[cost],
            ranking[C.TEST_ACC_MEAN],
            yerr=interval_bars(ranking),
            fmt="o",
            capsize=3,
            alpha=0.7,
            label="configuration",
        )
        front = ranking[ranking[flag]].sort_values(cost)
        ax.step(
            front[cost], front[C.TEST_ACC_MEAN], where="post", color="tab:red", label="Pareto front"
        )
        for _, row in ranking.iterrows():
            if not np.isnan(row[cost]):
                ax.annotate(
                    row[C.LABEL],
                    (row[cost], row[C.TEST_ACC_MEAN]),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax.set(xlabel=xlabel, title=f"accuracy against {xlabel.split(' (')[0]}")
        chance_line(ax, chance)
        ax.grid(alpha=0.3)
    axes[1].set_xscale("log")
    axes[0].set_ylabel("test accuracy (mean, bars: 95% interval)")
    axes[0].legend(fontsize="small")
    return fig
