"""A sweep's parent run stating its result, once its grid has ended (resnet_exp/sweep/run.py
asks for it): the analysis's files under the parent's `analysis/` artifacts, the ranking among
them as a table the UI previews, the leader's mean test_acc as the metric `leader_test_acc_mean`,
and a first paragraph for the parent's description naming the leader, those tied with it, those
that did not learn, and links to report.html and the table.

    resnet-exp sweep --data demo --weights none --image-size 32 --max-epochs 2 --freeze-blocks 0,4 --seeds 1
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow import MlflowClient

from analysis import columns as C
from analysis import report
from analysis import stats as st
from analysis.output import log_folder
from resnet_exp import schema as S
from resnet_exp.tracking.runs import mark_tables
from resnet_exp.tracking.store import use_tracking_store

NOT_RANKED = "**Result: not ranked.**"  # the paragraph's opening when the analysis could not rank


def roll_up(
    experiment_id: str, parent_run_id: str, ranking: pd.DataFrame, folder: Path, view_link: str
) -> str:
    """Log the analysis folder, its table and the leader's accuracy on the parent; returns the
    paragraph for its description."""
    client = MlflowClient(use_tracking_store())
    log_folder(client, parent_run_id, folder, S.ANALYSIS_FOLDER)
    mark_tables(client, parent_run_id, [f"{S.ANALYSIS_FOLDER}/{S.RANKING_TABLE}"])
    # 4 decimals, as the UI shows it: a test set of 10,000 images resolves no finer
    leader_acc = round(float(ranking[C.TEST_ACC_MEAN].iloc[0]), 4)
    client.log_metric(parent_run_id, S.LEADER_ACC, leader_acc)
    return summary(ranking, experiment_id, parent_run_id, view_link)


def artifact_link(experiment_id: str, run_id: str, path: str) -> str:
    """The UI's address of a run's artifact, relative to the UI's own page: its router lives in
    the URL's fragment, so the link works wherever the UI is served (a relative file link
    would not: it leaves the page)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}/artifacts/{path}"


def summary(ranking: pd.DataFrame, experiment_id: str, run_id: str, view_link: str = "") -> str:
    """'**Result: b2222-f2 leads** with mean test_acc 0.861 (...); tied with it: ... [report]'."""
    leader, tied = ranking.iloc[0], ranking[ranking[C.TIED]].iloc[1:]
    text = f"**Result: {leader[C.LABEL]} leads** with mean test_acc {report.accuracy_text(leader)}"
    if tied.empty:
        text += (
            "; every other configuration is significantly below it"
            if len(ranking) > 1
            else ", the only configuration"
        )
    else:
        each = ", ".join(f"{r[C.LABEL]} ({r[C.TEST_ACC_MEAN]:.3f})" for _, r in tied.iterrows())
        untested = (tied[C.COMPARISON] == st.NO_TEST).all()
        text += f"; tied with it: {each}" + (
            " (a single run of each: no test can tell them apart)" if untested else ""
        )
    targets = [
        (name, artifact_link(experiment_id, run_id, f"{S.ANALYSIS_FOLDER}/{name}"))
        for name in (S.REPORT_HTML, S.RANKING_TABLE)
    ]
    if view_link:
        targets.append(("learning curves by configuration", view_link))
    links = " · ".join(f"[{text}]({href})" for text, href in targets)
    return " ".join(
        part
        for part in (f"{text}.", report.chance_sentence(ranking), f"The analysis: {links}.")
        if part
    )
