"""The runs page's saved view of a study (analysis/views.py), read back from a real SQLite store
as the UI reads it. docs/screenshots.py shows it in the UI itself (docs/mlflow-ui.md)."""

from __future__ import annotations

import json

from mlflow import MlflowClient

from analysis import views
from conftest import saved_view
from resnet_exp import schema as S

VIEW_TAG = "mlflow.sharedViewState."


def training_run(client: MlflowClient, experiment: str, sweep: str, depth: str) -> str:
    tags = {S.TAG_KIND: S.KIND_TRAIN, S.TAG_SWEEP_ID: sweep, S.TAG_DEPTH: depth}
    run = client.create_run(experiment, tags=tags)
    for epoch, acc in enumerate((0.2, 0.4)):
        client.log_metric(run.info.run_id, S.VAL_ACC, acc, step=epoch)
    client.log_metric(run.info.run_id, S.TEST_ACC, 0.4, step=1)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_a_study_view_opens_on_the_learning_curves_of_its_runs(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("views")
    mine = {training_run(client, experiment, "s1", d) for d in ("b1111-f0", "b1111-f4")}
    training_run(client, experiment, "s2", "b1111-f0")  # another sweep's
    client.create_run(experiment, tags={S.TAG_KIND: S.KIND_SWEEP, S.TAG_SWEEP_ID: "s1"})
    search = f"tags.{S.TAG_SWEEP_ID} = 's1' and tags.{S.TAG_KIND} = '{S.KIND_TRAIN}'"

    link = views.save_curves_view(client, experiment, "s1", "Learning curves: sweep-x", search)

    key = "resnet-exp-curves-s1"
    assert link == (
        f"#/experiments/{experiment}/runs?viewStateShareKey={key}&compareRunsMode=CHART"
        "&workflowType=machine_learning"
    )
    name, state = saved_view(client, experiment, key)
    assert name == "Learning curves: sweep-x"
    assert {r.info.run_id for r in client.search_runs([experiment], state["searchFilter"])} == mine
    charts = [c for c in state["compareRunCharts"] if not c["deleted"]]
    assert [(c["metricKey"], c["type"]) for c in charts[:5]] == [
        (S.VAL_ACC, "LINE"),
        (S.VAL_LOSS, "LINE"),
        (S.TRAIN_ACC, "LINE"),
        (S.TRAIN_LOSS, "LINE"),
        (S.TEST_ACC, "BAR"),
    ]
    # a generated bar chart becomes a line chart once test_acc has values at several steps
    assert not any(c["isGenerated"] for c in charts if c["type"] == "BAR")
    # the UI appends charts for other metrics after these only in a section marked reordered
    [model] = [s for s in state["compareRunSections"] if s["name"] == "Model metrics"]
    assert model["isReordered"] and {c["metricSectionId"] for c in charts} == {model["uuid"]}
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": S.TAG_DEPTH}]


def test_rewriting_a_view_keeps_its_creation_and_only_our_newest_views_are_kept(tracking_uri):
    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("views")
    theirs = {"name": "mine", "createdAt": 1, "updatedAt": 1, "state": "{}"}
    client.set_experiment_tag(experiment, f"{VIEW_TAG}abc", json.dumps(theirs))
    client.set_experiment_tag(experiment, f"{VIEW_TAG}resnet-exp-curves-broken", "not json")
    for n in range(views.KEEP + 2):  # older than anything saved now
        old = {"name": f"old {n}", "createdAt": n, "updatedAt": 1000 + n, "state": "{}"}
        client.set_experiment_tag(
            experiment, f"{VIEW_TAG}resnet-exp-curves-old{n}", json.dumps(old)
        )
    client.set_experiment_tag(
        experiment, f"{VIEW_TAG}resnet-exp-curves-s1", json.dumps({**old, "createdAt": 7})
    )

    views.save_curves_view(client, experiment, "s1", "Learning curves: s1", "")

    tags = client.get_experiment(experiment).tags
    ours = sorted(k[len(VIEW_TAG) :] for k in tags if k.startswith(f"{VIEW_TAG}resnet-exp-"))
    newest = [f"resnet-exp-curves-old{n}" for n in range(views.KEEP + 2)][-(views.KEEP - 1) :]
    assert ours == sorted(["resnet-exp-curves-s1", *newest])
    assert f"{VIEW_TAG}abc" in tags  # a user's own view is never touched
    rewritten = json.loads(tags[f"{VIEW_TAG}resnet-exp-curves-s1"])
    assert rewritten["createdAt"] == 7 and rewritten["updatedAt"] > 10**12
