"""The registered model's MLflow pyfunc, logged as "models from code": MLflow stores this file's
source and runs it on load, so no Python object is ever pickled. `tracking/logged_model.py` logs
it with the weights (safetensors) and the classifier spec as artifacts.

Input: a DataFrame with an `image` column of image files (bytes, or base64 text over HTTP).
Output: one row per image: label, label_id, probability, top5 [{label, probability}, ...].

    python -c "import mlflow; m = mlflow.pyfunc.load_model('models:/resnet-demo@champion'); \
import pandas as pd; print(m.predict(pd.DataFrame({'image': [open('cat.png','rb').read()]})))"
"""

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from resnet_exp.data.images import ImageInputError
from resnet_exp.model.budget import RequestBudget, RequestTimeout
from resnet_exp.model.digests import verify_model_files
from resnet_exp.model.inference import IMAGE_COLUMN, PREDICTION_COLUMNS, ImageClassifier


class RequestError(MlflowException):
    """An error answer whose message stays as written. MLflow's scoring server rewrites the
    message of an MlflowException raised by predict to "Failed to predict data '<the input
    frame>'. Error: ...", which would echo the request's images in the answer and the log."""

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        if not hasattr(self, "_message"):  # set once, by MlflowException.__init__
            self._message = value


class ResNetImageModel(PythonModel):
    def load_context(self, context):
        # The folder the model was loaded from (artifacts/model.safetensors is two levels down):
        # checked against the digests recorded when it was logged before the weights are read.
        verify_model_files(Path(context.artifacts["weights"]).parents[1])
        # Serving (uvicorn started by `mlflow models serve`), MLflow sets its timeout variable.
        timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
        self.budget = RequestBudget.from_config(
            context.model_config, server_timeout=timeout.get() if timeout.is_set() else None
        )
        self.classifier = ImageClassifier.from_files(
            context.artifacts["weights"], context.artifacts["spec"]
        )

    # The logged signature has no input schema (logged_model.py says why), so MLflow hands the
    # request's columns over as they came; `{"inputs": ...}` requests arrive as a dict of arrays.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        # Bad input must become INVALID_PARAMETER_VALUE: the scoring server answers it with
        # HTTP 400 and this message, and goes on serving the next request. A spent time budget
        # is DEADLINE_EXCEEDED: HTTP 504 with the message, and no work left running.
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if len(frame.index) == 0:  # no rows: `dataframe_records: []` has no columns either
            return pd.DataFrame(columns=PREDICTION_COLUMNS)
        if IMAGE_COLUMN not in frame.columns:
            names = [str(name)[:40] for name in frame.columns[:5]]  # not the request's whole
            raise RequestError(
                f"missing column {IMAGE_COLUMN!r} (got {names}): "
                f"expected {IMAGE_COLUMN!r} holding image files as base64 text or bytes",
                error_code=INVALID_PARAMETER_VALUE,
            )
        try:
            return self.classifier.predict_uploads(
                frame[IMAGE_COLUMN].tolist(), self.budget.within(params)
            )
        except ImageInputError as err:
            raise RequestError(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        except RequestTimeout as err:
            raise RequestError(str(err), error_code=DEADLINE_EXCEEDED) from None


mlflow.models.set_model(ResNetImageModel())
