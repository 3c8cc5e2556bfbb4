"""The one place where the project leans on what a library does not promise (standard library
only). Each item says what it relies on, why nothing public gives it, and what it is worth; a
test in tests/test_compat.py fails the day the library changes it. docs/design.md ("Private
library APIs") lists what was removed instead, and why.

Kept:
- `rest_endpoint_of_status_error`: the REST endpoint that answered 401 or 403, read from the
  text of MLflow's MlflowException ("API request to endpoint /api/2.0/mlflow/runs/create failed
  with error code 401 != 200. ..."). MLflow raises that exception without the response or the
  URL attached (mlflow/utils/rest_utils.py, verify_rest_response), so the text is the only place
  the endpoint appears. The status itself is typed (`get_http_status_code()`), so only the
  message's "could not create a run (runs/create)" part depends on it; without a match the
  message still names the server, the status and the fix. Worth: a user refused by a server
  learns which call was refused (EDIT is needed to create runs, READ to list them). No time is
  involved, so no speed measurement applies.
- `ray_worker_priority`: `RAY_worker_niceness`, a setting of Ray's raylet that Ray documents
  nowhere. Ray starts its workers at nice 15, so a trial gives its cores away to any other busy
  process, which the local executor's training never does. Worth: with one other busy process on
  2 cores, a 2-CPU trial trained 13-17 images/s at nice 15 against 41-50 at nice 0 (2.5-3x).
  tests/test_ray.py checks that a trial's worker runs at nice 0.
- `logged_tables_tag`: the run tag `mlflow.loggedArtifacts`, a JSON list of
  `{"path": ..., "type": "table"}` that `MlflowClient.log_table` sets and that makes the UI's
  artifact viewer show a JSON file as a table ("View as table") instead of as JSON text.
  `log_table` itself appends its rows to a file of the same name already in the run, so a resumed
  run or a sweep analysed again would show every row twice; the project writes the file itself
  (pandas `to_json(orient="split")`, as log_table does), uploads it in place, and sets the tag.
  Nothing public sets the tag alone. Worth: a table that is replaced, never doubled. No time is
  involved. tests/test_compat.py compares the tag with the one log_table sets.
- `pixels_of_bomb_error`: the pixel count in the text of PIL's DecompressionBombError, which
  carries no attribute for it; without a match the message leaves the count out.

    python -c "from resnet_exp.compat import rest_endpoint_of_status_error as f; \
print(f(Exception('API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200')))"
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

# MLflow 3.17, mlflow/utils/rest_utils.py verify_rest_response:
#   f"API request to endpoint {endpoint} failed with error code {response.status_code} != ..."
_STATUS_ERROR = re.compile(r"API request to endpoint (\S+) failed with error code \d+ ")


# MLflow 3.17, mlflow/utils/mlflow_tags.py MLFLOW_LOGGED_ARTIFACTS; mlflow/tracking/client.py log_table
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"


def logged_tables_tag(current: str | None, paths: Iterable[str]) -> str:
    """The new value of the run's `mlflow.loggedArtifacts` tag (`current`: its value, or None)
    once the artifacts `paths` (JSON in split orient) are marked as tables, each listed once."""
    listed = json.loads(current or "[]")
    for path in paths:
        entry = {"path": path, "type": "table"}
        if entry not in listed:
            listed.append(entry)
    return json.dumps(listed)


def ray_worker_priority(environ: Mapping[str, str]) -> dict[str, str]:
    """Ray's workers at normal priority, unless the user chose a niceness: for the environment
    Ray's processes start with, where the sweep starts Ray itself (a cluster's nodes take it from
    their own `ray start`)."""
    return {"RAY_worker_niceness": environ.get("RAY_worker_niceness", "0")}


# Pillow, PIL/Image.py _decompression_bomb_check: f"Image size ({pixels} pixels) exceeds limit ..."
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def pixels_of_bomb_error(error: BaseException) -> int | None:
    """The pixel count an image's header claimed, from the text of PIL's DecompressionBombError
    (raised before the image object exists, so nothing else holds it); None if the text does not
    say. Worth: the one-line error names how large the image claims to be."""
    match = _BOMB_PIXELS.search(str(error))
    return int(match.group(1)) if match else None


def rest_endpoint_of_status_error(error: BaseException) -> str | None:
    """The REST path (e.g. '/api/2.0/mlflow/runs/create') that answered an HTTP error status,
    from the text of the MlflowException MLflow raised for it; None if the text does not say."""
    match = _STATUS_ERROR.search(str(error))
    return match.group(1) if match else None
