"""Where freezing helps or hurts, class by class: each training run's per-class test accuracy
(its `diagnostics/per_class_accuracy.csv`, resnet_exp/tracking/diagnostics.py), pooled over seeds per
configuration, and per network the classes whose accuracy changes most from one freeze_blocks
level to the next; with a plot.

    python -c "from analysis.classes import TOP_CLASSES; print(TOP_CLASSES)"
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from analysis import columns as C
from analysis.study import SERIES
from resnet_exp import schema as S
from resnet_exp.tracking.store import quiet_downloads

log = logging.getLogger(__name__)
TOP_CLASSES = 5  # classes listed per pair of freeze_blocks levels
CLASS_PLOT = "class_changes.png"  # under plots/, drawn when there are changes to show
CLASS, CORRECT, TOTAL = "class", "correct", "total"  # per_class_accuracy.csv's columns
FREEZE_FROM, FREEZE_TO = "freeze_from", "freeze_to"
ACC_FROM, ACC_TO, CHANGE = "acc_from", "acc_to", "change"
CHANGE_COLUMNS = [C.NETWORK, C.WEIGHTS, FREEZE_FROM, FREEZE_TO, CLASS, ACC_FROM, ACC_TO, CHANGE]


def load_per_class(run_ids: list[str]) -> pd.DataFrame:
    """run_id, class, correct, total for every run that logged its per-class accuracy (runs from
    before the diagnostics have none and are left out)."""
    client, frames = MlflowClient(), []
    with tempfile.TemporaryDirectory() as tmp, quiet_downloads():
        for run_id in run_ids:
            try:
                path = client.download_artifacts(
                    run_id, f"{S.DIAGNOSTICS_FOLDER}/{S.PER_CLASS_FILE}", tmp
                )
            except (MlflowException, OSError):
                continue
            frames.append(pd.read_csv(path)[[CLASS, CORRECT, TOTAL]].assign(**{C.RUN_ID: run_id}))
            Path(path).unlink()
    return (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[C.RUN_ID, CLASS, CORRECT, TOTAL])
    )


def class_changes(
    per_class: pd.DataFrame, runs: pd.DataFrame, top: int = TOP_CLASSES
) -> pd.DataFrame:
    """Per network (and initialisation) and each pair of consecutive freeze_blocks levels it
    has, the `top` classes whose pooled accuracy (correct / total over seeds) changes most."""
    if per_class.empty:
        return pd.DataFrame(columns=CHANGE_COLUMNS)
    joined = per_class.merge(runs[[C.RUN_ID, *SERIES, C.FREEZE_BLOCKS]], on=C.RUN_ID)
    pooled = joined.groupby([*SERIES, C.FREEZE_BLOCKS, CLASS], as_index=False)[
        [CORRECT, TOTAL]
    ].sum()
    pooled = pooled[pooled[TOTAL] > 0].assign(acc=lambda t: t[CORRECT] / t[TOTAL])
    rows = []
    for (network, weights), g in pooled.groupby(SERIES, sort=True):
        levels = sorted(g[C.FREEZE_BLOCKS].unique())
        for lo, hi in zip(levels, levels[1:]):
            a = g[g[C.FREEZE_BLOCKS] == lo].set_index(CLASS)["acc"]
            b = g[g[C.FREEZE_BLOCKS] == hi].set_index(CLASS)["acc"]
            change = (b - a).dropna()
            for name in change.abs().sort_values(ascending=False, kind="stable").index[:top]:
                rows.append(
                    {
                        C.NETWORK: network,
                        C.WEIGHTS: weights,
                        FREEZE_FROM: int(lo),
                        FREEZE_TO: int(hi),
                        CLASS: name,
                        ACC_FROM: a[name],
                        ACC_TO: b[name],
                        CHANGE: change[name],
                    }
                )
    return pd.DataFrame(rows, columns=CHANGE_COLUMNS)


def changes_plot(changes: pd.DataFrame, max_panels: int = 8):
    """One panel per network and pair of freeze levels: the classes' accuracy change as bars."""
    import matplotlib.pyplot as plt

    groups = list(changes.groupby([C.NETWORK, C.WEIGHTS, FREEZE_FROM, FREEZE_TO], sort=True))[
        :max_panels
    ]
    fig, axes = plt.subplots(
        len(groups), 1, figsize=(7, 1.2 + 0.45 * TOP_CLASSES * len(groups)), squeeze=False
    )
    for ax, ((network, weights, lo, hi), g) in zip(axes[:, 0], groups):
        colours = ["tab:green" if c > 0 else "tab:red" for c in g[CHANGE]]
        ax.barh(g[CLASS].astype(str), g[CHANGE], color=colours)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.invert_yaxis()  # the largest change on top
        mixed = f", weights={weights}" if changes[C.WEIGHTS].nunique() > 1 else ""
        ax.set(
            title=f"{network}{mixed}: freeze_blocks {lo} -> {hi}", xlabel="change in class accuracy"
        )
        ax.grid(alpha=0.3, axis="x")
    return fig


def changes_markdown(changes: pd.DataFrame) -> str:
    """The report's section body: one line per network and pair of levels."""
    if changes.empty:
        return (
            "No per-class accuracy to compare: the runs recorded no diagnostics (runs from before "
            "them), or no network was trained at two freeze_blocks levels."
        )
    lines = []
    for (network, weights, lo, hi), g in changes.groupby(
        [C.NETWORK, C.WEIGHTS, FREEZE_FROM, FREEZE_TO], sort=True
    ):
        moved = ", ".join(
            f"{row[CLASS]} {row[ACC_FROM]:.2f} → {row[ACC_TO]:.2f}" for _, row in g.iterrows()
        )
        lines.append(f"- {network} ({C.WEIGHTS}={weights}), freeze_blocks {lo} → {hi}: {moved}")
    return (
        "Per network, the classes whose test accuracy (pooled over seeds) changes most from one "
        "freeze_blocks level to the next; few test images per class make these noisy.\n\n"
        + "\n".join(lines)
        + f"\n\nAll of them: `{S.CLASS_CHANGES_FILE}`."
    )
