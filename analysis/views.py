"""A saved view of the MLflow UI that opens a study on its learning curves: the experiment's chart
view, filtered to the study's training runs, grouped by `depth_config` (mean of the seeds with
their range), with val_acc, val_loss, train_acc and train_loss first and the test results as bars
after them.

MLflow 3.17 builds its default chart view by sorting metric names, and puts `best_epoch` and
`test_*` before `train_*`; no server setting changes that. A saved view is how the UI keeps an
arrangement for everyone: the experiment tag `mlflow.sharedViewState.<key>` (what its own
"Views > Save as new view" writes), listed in the experiment's Views menu and opened by the link
`#/experiments/<id>/runs?viewStateShareKey=<key>`. A UI without saved views ignores the tag.

    resnet-exp analyze --data demo      # then in the UI: the experiment, Views, "Learning curves: ..."
"""

from __future__ import annotations

import base64
import json
import re
import time
import zlib

from mlflow import MlflowClient

from analysis.runs import Selection
from resnet_exp import schema as S
from resnet_exp.tracking.store import tracking_uri

VIEW_TAG = "mlflow.sharedViewState."  # the UI's prefix for saved views
KEY_PREFIX = "resnet-exp-curves-"  # ours among them
KEEP = 10  # our views kept per experiment (newest first); the UI allows 40 in all
CURVES = (S.VAL_ACC, S.VAL_LOSS, S.TRAIN_ACC, S.TRAIN_LOSS)  # per epoch, in this order
RESULTS = (S.TEST_ACC, S.TEST_LOSS, S.TEST_ECE, S.BEST_EPOCH)  # one value a run: bars
MODEL_SECTION, SYSTEM_SECTION = "Model metrics", "System metrics"  # the UI's section names
COLUMNS = [  # the runs table beside the charts
    "attributes.`Models`",
    *(f"params.`{name}`" for name in (S.FREEZE_BLOCKS, S.BLOCKS, S.SEED)),
    *(f"metrics.`{name}`" for name in (S.TEST_ACC, S.VAL_ACC, S.BEST_EPOCH)),
]


def study_view(selection: Selection) -> tuple[str, str]:
    """Save the view of the analysed runs (one sweep's, or every training run on the dataset);
    returns its name and link."""
    train = f"tags.{S.TAG_KIND} = '{S.KIND_TRAIN}'"
    if selection.sweep_id:
        scope = selection.sweep_id
        search = f"tags.{S.TAG_SWEEP_ID} = '{scope}' and {train}"
        name = f"Learning curves: {selection.sweep_run_name}"
    else:
        scope = selection.dataset
        search = f"tags.{S.TAG_DATASET} = '{scope}' and {train}"
        name = f"Learning curves: {scope}"
    client = MlflowClient(tracking_uri())
    return name, save_curves_view(client, selection.experiment_id, scope, name, search)


def view_key(scope: str) -> str:
    """The view's key for a sweep id or a dataset slug: the same study gets the same view."""
    return KEY_PREFIX + re.sub(r"[^A-Za-z0-9_-]", "-", scope)


def view_link(experiment_id: str, key: str) -> str:
    """The view's address, relative to the UI's page (its router lives in the fragment), on the
    chart view and the UI's Model training side (a description's link opens a new tab, which
    would otherwise show the GenAI side's menu)."""
    return (
        f"#/experiments/{experiment_id}/runs?viewStateShareKey={key}"
        "&compareRunsMode=CHART&workflowType=machine_learning"
    )


def save_curves_view(
    client: MlflowClient, experiment_id: str, scope: str, name: str, search: str
) -> str:
    """Write (or rewrite) the view of `scope`'s runs, those matching `search` (the runs view's
    filter syntax); drop our oldest views beyond KEEP. Returns its link."""
    key, now = view_key(scope), int(time.time() * 1000)
    tags = client.get_experiment(experiment_id).tags
    state = base64.b64encode(zlib.compress(json.dumps(view_state(search)).encode())).decode()
    value = {
        "name": name,
        "createdAt": saved_at(tags.get(VIEW_TAG + key), "createdAt") or now,
        "updatedAt": now,
        "state": f"deflate;{state}",
    }
    client.set_experiment_tag(experiment_id, VIEW_TAG + key, json.dumps(value))
    others = [k for k in tags if k.startswith(VIEW_TAG + KEY_PREFIX) and k != VIEW_TAG + key]
    others.sort(key=lambda k: saved_at(tags[k], "updatedAt"), reverse=True)
    for old in others[KEEP - 1 :]:
        client.delete_experiment_tag(experiment_id, old)
    return view_link(experiment_id, key)


def saved_at(value: str | None, field: str) -> int:
    """A saved view's time (ms since the epoch), 0 where there is none to read."""
    try:
        return int(json.loads(value or "{}").get(field, 0))
    except (ValueError, TypeError, AttributeError):
        return 0


def view_state(search: str) -> dict:
    """The runs view's state as the UI saves it: filter, columns, grouping and charts. Charts the
    UI would add for other metrics go after these (the section counts as reordered)."""
    model, system = "resnet-exp-model-metrics", "resnet-exp-system-metrics"
    charts = [line_chart(key, model) for key in CURVES]
    charts += [bar_chart(key, model) for key in RESULTS]
    charts.append(line_chart(S.LR, model))
    # the parent's result, which its description states: no chart of one bar among the groups
    charts.append({**bar_chart(S.LEADER_ACC, model), "deleted": True})
    return {
        "searchFilter": search,
        "orderByKey": f"metrics.`{S.TEST_ACC}`",
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": COLUMNS,
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [
            section(model, MODEL_SECTION, reordered=True),
            section(system, SYSTEM_SECTION, reordered=False),
        ],
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": S.TAG_DEPTH}],
        },
        "globalLineChartConfig": {
            "xAxisKey": "step",
            "lineSmoothness": 0,
            "selectedXAxisMetricKey": "",
        },
    }


def line_chart(key: str, section_id: str) -> dict:
    """A metric per epoch (step)."""
    return {
        **card(key, section_id, "LINE"),
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def bar_chart(key: str, section_id: str) -> dict:
    """A run's (a group's mean) value. Not marked generated: the UI turns a generated bar chart
    into a line chart once a metric has values at several steps, as test_acc has across runs."""
    return {**card(key, section_id, "BAR"), "isGenerated": False}


def card(key: str, section_id: str, kind: str) -> dict:
    return {
        "uuid": f"resnet-exp-{key}",
        "type": kind,
        "runsCountToCompare": 100,
        "metricSectionId": section_id,
        "deleted": False,
        "isGenerated": True,
        "displayName": key,
        "metricKey": key,
    }


def section(uuid: str, name: str, reordered: bool) -> dict:
    return {
        "uuid": uuid,
        "name": name,
        "display": True,
        "isReordered": reordered,
        "deleted": False,
        "isGenerated": True,
    }
