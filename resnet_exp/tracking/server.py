"""A tracking server that cannot be reached, or that refuses this client, as one line.

MLflow's HTTP client retries a request for about 4 minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
default 7, backoff factor 2), then raises an MlflowException whose text is a urllib3 retry
report; later writes (closing the run) fail the same way, each chained to the last. The CLI and
the run scope both ask `tracking_failure` what went wrong and say it once, naming the tracking
URI and what could not be written or read. See docs/tracking-server.md.

    MLFLOW_HTTP_REQUEST_MAX_RETRIES=0 MLFLOW_TRACKING_URI=http://127.0.0.1:9 resnet-exp train --data demo
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

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
_RETRIES_SPENT = re.compile(r"API request to \S+ failed with (timeout )?exception")
_ENDPOINT = re.compile(r"/2\.0/(?:mlflow/)?(?:mlflow-)?([a-z-]+)(?:/([a-z][a-z-]*))?")


@dataclass(frozen=True)
class TrackingFailure:
    """What failed: `kind` (UNREACHABLE, UNAUTHENTICATED, FORBIDDEN) and the REST endpoint."""

    kind: str
    endpoint: str
    error: BaseException  # the first failure in the chain: the one that says what was lost

    @property
    def action(self) -> str:
        head = self.endpoint.split("/")[0]
        return _ACTIONS.get(self.endpoint) or _ACTIONS.get(head) or f"call {self.endpoint}"

    def message(self, uri: str, run_id: str | None = None, left_running: bool = False) -> str:
        """One line naming the server, what could not be done (for run `run_id`, if one was
        open) and what to do about it."""
        what = f"could not {self.action} ({self.endpoint})"
        if run_id and left_running:
            what += (f" of run {run_id}, which stays RUNNING there (the server could not be "
                     "told); the same command, run again, resumes it")
        elif run_id:
            what += f" of run {run_id} (now marked FAILED)"
        if self.kind == UNREACHABLE:
            return (f"tracking server {uri} unreachable after {retry_budget()}: {what}. Start the "
                    f"server or point MLFLOW_TRACKING_URI at it (see {DOCS})")
        from mlflow.environment_variables import MLFLOW_TRACKING_USERNAME

        user = MLFLOW_TRACKING_USERNAME.get()  # the user name only: the password is never shown
        if self.kind == UNAUTHENTICATED:
            who = f"user {user!r} and its password" if user else "no credentials"
            return (f"tracking server {uri} refused {who} (HTTP 401): {what}. Set "
                    f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server "
                    f"(see {DOCS})")
        return (f"tracking server {uri} denied user {user!r} (HTTP 403): {what}. Ask its admin for "
                f"EDIT on the experiment (see {DOCS})")


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
    from mlflow.environment_variables import (MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR,
                                              MLFLOW_HTTP_REQUEST_MAX_RETRIES)

    retries, factor = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get(), MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR.get()
    # urllib3 waits 0 s before the first retry, then factor * 2**(n-1) s, at most 120 s each
    seconds = sum(min(120, factor * 2 ** (n - 1)) for n in range(2, retries + 1))
    if not retries:
        return "1 attempt (no retries)"
    return f"{retries} {'retry' if retries == 1 else 'retries'} ({seconds} s of backoff)"


def _chain(error: BaseException) -> list[BaseException]:
    """The error and every error it was raised from or during, outermost first."""
    seen: list[BaseException] = []
    while error is not None and not any(error is e for e in seen):
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _classify(error: BaseException) -> TrackingFailure | None:
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout

    text = str(error)
    match = _ENDPOINT.search(text)
    endpoint = "/".join(g for g in match.groups() if g) if match else "?"
    if isinstance(error, (RequestsConnectionError, Timeout)):
        return TrackingFailure(UNREACHABLE, endpoint, error)
    if not isinstance(error, MlflowException):
        return None
    if _RETRIES_SPENT.match(text):
        return TrackingFailure(UNREACHABLE, endpoint, error)  # retries spent (or none allowed)
    if error.error_code == "UNAUTHENTICATED" or "error code 401 " in text:
        return TrackingFailure(UNAUTHENTICATED, endpoint, error)
    if error.error_code == "PERMISSION_DENIED" or "error code 403 " in text:
        return TrackingFailure(FORBIDDEN, endpoint, error)
    return None


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
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_server() -> None:
    """One request to a tracking server (an http(s) tracking URI) before any work, so that a wrong
    password or a wrong address fails in seconds, not after the data is prepared."""
    from mlflow import MlflowClient

    from resnet_exp.tracking.store import tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        MlflowClient(uri).search_experiments(max_results=1)
