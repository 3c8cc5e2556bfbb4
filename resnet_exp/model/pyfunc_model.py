"""The registered model's MLflow pyfunc, logged as "models from code": MLflow stores this file's
source and runs it on load, so no Python object is ever pickled. `registry.py` logs it with the
weights (safetensors) and the classifier spec as artifacts.

Input: a DataFrame with an `image` column of image files (bytes, or base64 text over HTTP).
Output: one row per image: label, label_id, probability, top5 [{label, probability}, ...].

    python -c "import mlflow; m = mlflow.pyfunc.load_model('models:/resnet-demo@champion'); \
import pandas as pd; print(m.predict(pd.DataFrame({'image': [open('cat.png','rb').read()]})))"
"""

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from resnet_exp.data.images import ImageInputError
from resnet_exp.model.inference import IMAGE_COLUMN, PREDICTION_COLUMNS, ImageClassifier


class ResNetImageModel(PythonModel):
    def load_context(self, context):
        self.classifier = ImageClassifier.from_files(
            context.artifacts["weights"], context.artifacts["spec"]
        )

    # The DataFrame hint tells MLflow to check input against the logged signature (a hint it cannot
    # turn into a schema); `{"inputs": ...}` requests still arrive as a dict of arrays.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        # Bad input must become INVALID_PARAMETER_VALUE: the scoring server answers it with
        # HTTP 400 and this message, and goes on serving the next request.
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if IMAGE_COLUMN not in frame.columns:
            raise MlflowException(
                f"missing column {IMAGE_COLUMN!r} (got {list(frame.columns)}): "
                f"expected {IMAGE_COLUMN!r} holding image files as base64 text or bytes",
                error_code=INVALID_PARAMETER_VALUE,
            )
        if frame.empty:
            return pd.DataFrame(columns=PREDICTION_COLUMNS)
        try:
            return self.classifier.predict_uploads(frame[IMAGE_COLUMN].tolist())
        except ImageInputError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(ResNetImageModel())
