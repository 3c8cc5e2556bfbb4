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

    python -c "from resnet_exp.compat import rest_endpoint_of_status_error as f; \
print(f(Exception('API request to endpoint /api/2.0/mlflow/runs/create failed with error code 403 != 200')))"
"""

from __future__ import annotations

import re

# MLflow 3.17, mlflow/utils/rest_utils.py verify_rest_response:
#   f"API request to endpoint {endpoint} failed with error code {response.status_code} != ..."
_STATUS_ERROR = re.compile(r"API request to endpoint (\S+) failed with error code \d+ ")


def rest_endpoint_of_status_error(error: BaseException) -> str | None:
    """The REST path (e.g. '/api/2.0/mlflow/runs/create') that answered an HTTP error status,
    from the text of the MlflowException MLflow raised for it; None if the text does not say."""
    match = _STATUS_ERROR.search(str(error))
    return match.group(1) if match else None
