"""A tracking server that cannot be reached or refuses us, as resnet_exp/tracking/server.py sees
it: real MLflow client calls against a closed port and against a local server answering 401,
403 or 503, classified from the errors' types (the `requests` error and its URL, the
MlflowException's HTTP status), never from their text, except the endpoint of a refusal
(resnet_exp/compat.py)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from conftest import http_answering
from resnet_exp.tracking.server import FORBIDDEN, UNAUTHENTICATED, UNREACHABLE, tracking_failure


@pytest.fixture(autouse=True)
def _no_retry_waits(monkeypatch):
    """MLflow reads both at each request: one retry, without backoff."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")


def failure_of(call):
    with pytest.raises(Exception) as err:
        call()
    return tracking_failure(err.value)


def closed_port() -> str:
    from servers import free_port

    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.parametrize("retries", ["0", "1"])
def test_a_closed_port_is_unreachable_and_names_the_endpoint(monkeypatch, retries):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", retries)
    uri = closed_port()
    failure = failure_of(lambda: MlflowClient(uri).search_experiments(max_results=1))
    assert failure.kind == UNREACHABLE and failure.endpoint == "experiments/search"
    message = failure.message(uri)
    assert message.startswith(f"tracking server {uri} unreachable after ")
    assert "could not list experiments (experiments/search)" in message


def test_a_gateway_that_keeps_failing_is_unreachable_once_the_retries_are_spent():
    with http_answering(503) as uri:
        failure = failure_of(lambda: MlflowClient(uri).log_metric("0" * 32, "m", 1.0))
    assert failure.kind == UNREACHABLE and failure.endpoint == "runs/log-metric"


@pytest.mark.parametrize(
    "status, kind, words",
    [
        (401, UNAUTHENTICATED, ["refused no credentials (HTTP 401)", "MLFLOW_TRACKING_PASSWORD"]),
        (403, FORBIDDEN, ["(HTTP 403)", "EDIT on the experiment"]),
    ],
)
def test_a_refusal_is_told_by_its_http_status(monkeypatch, status, kind, words):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    with http_answering(status) as uri:
        failure = failure_of(lambda: MlflowClient(uri).create_run("1"))
    assert failure.kind == kind and failure.endpoint == "runs/create"
    message = failure.message(uri)
    assert "could not create a run (runs/create)" in message and all(w in message for w in words)


def test_other_answers_and_errors_are_not_tracking_failures():
    """A server that answers 400 or 404 was reached and accepted us: the error is its own, and an
    MlflowException without a `requests` error under it says nothing typed about the network."""
    from mlflow.exceptions import MlflowException

    for status in (404, 400):
        with http_answering(status) as uri:
            assert failure_of(lambda: MlflowClient(uri).create_run("1")) is None
    assert (
        tracking_failure(
            MlflowException(
                "API request to http://x/api/2.0/mlflow/runs/create "
                "failed with exception nothing typed"
            )
        )
        is None
    )
    assert tracking_failure(ValueError("error code 401 ")) is None


def test_the_first_failure_of_a_chain_is_the_one_reported():
    """Closing a run after the server went away fails again, raised while handling the first
    failure: the first one (what was lost) is reported, the same object each time asked."""
    uri = closed_port()
    client = MlflowClient(uri)
    try:
        try:
            client.log_metric("0" * 32, "m", 1.0)
        except Exception:  # noqa: BLE001 - as the run scope closes a run after any failure
            client.set_terminated("0" * 32, "FAILED")
    except Exception as err:  # noqa: BLE001 - the chain is what is tested
        last = err
    failure = tracking_failure(last)
    assert failure.endpoint == "runs/log-metric" and tracking_failure(last).error is failure.error
