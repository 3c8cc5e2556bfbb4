"""resnet_exp/compat.py: each private detail of a library the project still relies on, checked
against the installed library, so that a change there fails here (loudly) rather than as a
worse message or a slower run somewhere else."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from conftest import http_answering, mlflow_table
from resnet_exp.compat import rest_endpoint_of_status_error


@pytest.mark.parametrize("status", [401, 403])
def test_mlflow_still_names_the_endpoint_in_the_text_of_a_refusal(monkeypatch, status):
    """If this fails, MLflow changed the text of verify_rest_response's MlflowException: adapt
    compat._STATUS_ERROR, or use what MLflow now attaches to the exception instead."""
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with http_answering(status) as uri, pytest.raises(MlflowException) as err:
        MlflowClient(uri).create_run("1")
    assert err.value.get_http_status_code() == status
    assert rest_endpoint_of_status_error(err.value) == "/api/2.0/mlflow/runs/create", str(err.value)


def test_a_text_without_the_endpoint_gives_none():
    assert rest_endpoint_of_status_error(RuntimeError("UNAUTHENTICATED: who are you")) is None


def test_pil_still_states_the_claimed_pixels_in_its_bomb_error(tmp_path):
    """If this fails, Pillow changed DecompressionBombError's text: adapt compat._BOMB_PIXELS."""
    from PIL import Image

    from conftest import bomb
    from resnet_exp.compat import pixels_of_bomb_error

    with pytest.raises(Image.DecompressionBombError) as err:
        Image.open(bomb(tmp_path / "huge.png"))
    assert pixels_of_bomb_error(err.value) == 30000 * 30000


def test_a_table_marked_by_hand_is_the_table_mlflow_logs_and_is_replaced_not_doubled(
    tracking_uri, tmp_path
):
    """If this fails, MLflow changed how log_table marks a table for the UI (the tag's name or
    its entries) or the file's layout: adapt compat.logged_tables_tag and the writers."""
    import pandas as pd

    from resnet_exp.compat import LOGGED_ARTIFACTS_TAG
    from resnet_exp.tracking.runs import mark_tables

    client = MlflowClient(tracking_uri)
    experiment = client.create_experiment("tables")
    frame = pd.DataFrame({"rank": [1, 2], "config": ["b1111-f0", "b1111-f4"]})
    logged = client.create_run(experiment).info.run_id
    client.log_table(logged, frame, "t/ranking.json")
    client.log_table(logged, frame, "t/ranking.json")  # appends: the rows twice
    assert len(mlflow_table(client, logged, "t/ranking.json", tmp_path / "logged")) == 4

    ours = client.create_run(experiment).info.run_id
    for _ in range(2):  # logged again, as a resumed run or a sweep analysed again does
        (tmp_path / "ranking.json").write_text(frame.to_json(orient="split", index=False))
        client.log_artifact(ours, str(tmp_path / "ranking.json"), "t")
        mark_tables(client, ours, ["t/ranking.json"])
    assert pd.read_json(tmp_path / "ranking.json", orient="split").equals(frame)
    tags = [client.get_run(r).data.tags[LOGGED_ARTIFACTS_TAG] for r in (logged, ours)]
    assert tags[0] == tags[1]
    assert mlflow_table(client, ours, "t/ranking.json", tmp_path / "ours").equals(frame)
