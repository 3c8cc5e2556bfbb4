"""A tracking server that cannot be reached, or that refuses this client, as one line.

MLflow's HTTP client retries a request for about 4 minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
default 7, backoff factor 2), then raises an MlflowException while handling the `requests`
error (ConnectionError, Timeout, or RetryError for too many 5xx answers), so that error, with
its request and URL, is in the chain; later writes (closing the run) fail the same way, each
chained to the last. A server that refuses us answers 401 or 403, which the MlflowException
carries as its error code. The CLI and the run scope both ask `tracking_failure` what went
wrong and say it once, naming the tracking URI and what could not be written or read. See
docs/tracking-server.md.

    MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 MLFLOW_TRACKING_URI=http://127.0.0.1:9 resnet-exp train --data demo
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlparse

from resnet_exp.compat import rest_endpoint_of_status_error

UNREACHABLE, UNAUTHENTICATED, FORBIDDEN = "unreachable", "unauthenticated", "forbidden"
DOCS = "docs/tracking-server.md"

# What a REST endpoint does, in the user's words (the endpoint follows in parentheses).
_ACTIONS = {
    "runs/log-batch": "log metrics, params or tags",
    "runs/log-metric": "log a metric",
    "runs/log-parameter": "log a param",
    "runs/set-tag": "set a tag",
    "runs/log-inputs": "log the dataset inputs",
    "runs/create": "create a run",
    "runs/update": "update the run's status",
    "runs/get": "read a run",
    "runs/search": "search runs",
    "experiments/get-by-name": "look up the experiment",
    "experiments/get": "read the experiment",
    "experiments/create": "create the experiment",
    "experiments/search": "list experiments",
    "metrics/get-history": "read a metric's history",
    "registered-models": "register the model",
    "model-versions": "register the model",
    "logged-models": "log the model",
    "artifacts": "store or read artifacts",
}
# A REST path of MLflow's API -> the endpoint's short name: /api/2.0/mlflow/runs/log-batch ->
# runs/log-batch, /api/2.0/mlflow-artifacts/artifacts/<path> -> artifacts/...
_ENDPOINT = re.compile(r"/2\.0/(?:mlflow/)?(?:mlflow-)?([a-z-]+)(?:/([a-z][a-z-]*))?")
_REFUSED = {401: UNAUTHENTICATED, 403: FORBIDDEN}  # HTTP status -> kind


@dataclass(frozen=True)
class TrackingFailure:
    """What failed: `kind` (UNREACHABLE, UNAUTHENTICATED, FORBIDDEN) and the REST endpoint."""

    kind: str
    endpoint: str | None  # None where MLflow does not say which
    error: BaseException  # the first failure in the chain: the one that says what was lost

    @property
    def action(self) -> str:
        if self.endpoint is None:
            return "reach it"
        head = self.endpoint.split("/")[0]
        return _ACTIONS.get(self.endpoint) or _ACTIONS.get(head) or f"call {self.endpoint}"

    def message(self, uri: str, run_id: str | None = None, left_running: bool = False) -> str:
        """One line naming the server, what could not be done (for run `run_id`, if one was
        open) and what to do about it."""
        what = f"could not {self.action}" + (f" ({self.endpoint})" if self.endpoint else "")
        if run_id and left_running:
            what += (
                f" of run {run_id}, which stays RUNNING there (the server could not be "
                "told); the same command, run again, resumes it"
            )
        elif run_id:
            what += f" of run {run_id} (now marked FAILED)"
        if self.kind == UNREACHABLE:
            return (
                f"tracking server {uri} unreachable after {retry_budget()}: {what}. Start the "
                f"server or point MLFLOW_TRACKING_URI at it (see {DOCS})"
            )
        from mlflow.environment_variables import MLFLOW_TRACKING_USERNAME

        user = MLFLOW_TRACKING_USERNAME.get()  # the user name only: the password is never shown
        if self.kind == UNAUTHENTICATED:
            who = f"user {user!r} and its password" if user else "no credentials"
            return (
                f"tracking server {uri} refused {who} (HTTP 401): {what}. Set "
                f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server "
                f"(see {DOCS})"
            )
        return (
            f"tracking server {uri} denied user {user!r} (HTTP 403): {what}. Ask its admin for "
            f"EDIT on the experiment (see {DOCS})"
        )


class TrackingLost(Exception):
    """The tracking server failed or refused us while run `run_id` was open (the innermost one:
    a sweep's child rather than its parent). `left_running`: the run could not even be closed
    there, and stays RUNNING."""

    def __init__(self, failure: TrackingFailure, run_id: str) -> None:
        super().__init__(str(failure.error))
        self.failure = failure
        self.run_id = run_id
        self.left_running = False

    def message(self, uri: str) -> str:
        return self.failure.message(uri, self.run_id, self.left_running)


def retry_budget() -> str:
    """MLflow's retry budget as set now, e.g. '7 retries (about 4 min)'."""
    from mlflow.environment_variables import (
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    )

    retries, factor = (
        MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(),
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get(),
    )
    # urllib3 waits 0 s before the first retry, then factor * 2**(n-1) s, at most 120 s each
    seconds = sum(min(120, factor * 2 ** (n - 1)) for n in range(2, retries + 1))
    if not retries:
        return "1 attempt (no retries)"
    return f"{retries} {'retry' if retries == 1 else 'retries'} ({seconds} s of backoff)"


def _chain(error: BaseException) -> list[BaseException]:
    """The error and every error it was raised from or during, outermost first; `raise ... from
    None` ends the chain, as it ends the traceback (the error already says what happened)."""
    seen: list[BaseException] = []
    while error is not None and not any(error is e for e in seen):
        seen.append(error)
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return seen


def _classify(error: BaseException) -> TrackingFailure | None:
    """One error of a chain, by its type: a `requests` error that means the server could not be
    reached (retries spent), an HTTP 401/403 answer, or None for anything else."""
    from mlflow.exceptions import MlflowException
    from requests import exceptions as http

    if isinstance(error, http.HTTPError):  # artifact transfers raise the answer's own error
        status = error.response.status_code if error.response is not None else None
        kind = _REFUSED.get(status)
        return TrackingFailure(kind, _endpoint(_url(error)), error) if kind else None
    unreachable = (http.ConnectionError, http.Timeout, http.RetryError, http.ChunkedEncodingError)
    if isinstance(error, unreachable):  # retries spent, or none allowed
        return TrackingFailure(UNREACHABLE, _endpoint(_url(error)), error)
    if isinstance(error, MlflowException) and error.get_http_status_code() in _REFUSED:
        return TrackingFailure(
            _REFUSED[error.get_http_status_code()],
            _endpoint(rest_endpoint_of_status_error(error)),
            error,
        )
    return None


def _url(error: BaseException) -> str | None:
    request = getattr(error, "request", None)  # a `requests` error's PreparedRequest
    return getattr(request, "url", None)


def _endpoint(url: str | None) -> str | None:
    """The short name of the MLflow REST endpoint a URL or path calls, e.g. 'runs/create'."""
    match = _ENDPOINT.search(urlparse(url).path) if url else None
    return "/".join(g for g in match.groups() if g) if match else None


def tracking_failure(error: BaseException) -> TrackingFailure | None:
    """The first tracking-server failure in `error`'s chain, or None if there is none."""
    if isinstance(error, TrackingLost):
        return error.failure
    failures = [f for f in map(_classify, _chain(error)) if f is not None]
    return failures[-1] if failures else None


@contextmanager
def one_attempt() -> Iterator[None]:
    """Requests without retries and with a short timeout, for the last writes of a run whose
    server already failed: MLflow reads both settings at each request."""
    saved = {
        k: os.environ.get(k)
        for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    }
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


PROBE_TIMEOUT_S = 10.0  # seconds to connect to a tracking server, and again for its answer


def check_tracking_server() -> None:
    """Two requests to a tracking server (an http(s) tracking URI) before any work: its health
    endpoint, bounded in time, so that a wrong address fails in seconds instead of after MLflow's
    retry budget (about 4 minutes); then one MLflow call, so that a wrong password fails before
    the data is prepared."""
    import requests
    from mlflow import MlflowClient

    from resnet_exp.errors import ServerUnreachable
    from resnet_exp.tracking.store import tracking_uri

    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(f"{uri.rstrip('/')}/health", timeout=(PROBE_TIMEOUT_S, PROBE_TIMEOUT_S))
    except requests.RequestException as err:
        why = "no answer" if isinstance(err, requests.Timeout) else "connection refused or failed"
        raise ServerUnreachable(
            f"tracking server {uri} unreachable ({why} within {PROBE_TIMEOUT_S:.0f} s): nothing was "
            f"done. Start the server or point MLFLOW_TRACKING_URI at it (see {DOCS})"
        ) from None
    MlflowClient(uri).search_experiments(max_results=1)
