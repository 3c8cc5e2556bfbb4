"""`resnet-exp predict`: label image files with a logged or registered model, through MLflow's
pyfunc loader, exactly as any other client of the model would.

    resnet-exp predict --model models:/resnet-demo@champion data/demo-v1/circle
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from PIL import Image

from resnet_exp.data.images import (
    MAX_REQUEST_PIXELS,
    ImageInputError,
    header_pixels,
    image_from_upload,
)
from resnet_exp.errors import DataError, UserError
from resnet_exp.model.inference import IMAGE_COLUMN

FILE_COLUMN = "file"


def image_files(paths: Iterable[Path]) -> list[Path]:
    """The given files, plus every image file (by extension) under the given folders, sorted."""
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions
            )
            if not found:
                raise DataError(
                    f"{path} holds no image files (looked for {', '.join(sorted(extensions)[:6])}, ...)"
                )
            files.extend(found)
        else:
            files.append(path)
    return files


def predict_files(model_uri: str, files: list[Path]) -> pd.DataFrame:
    """One row per file: file, label, label_id, probability, top5."""
    contents = [_checked_bytes(path) for path in files]  # name a bad file before loading the model
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise UserError(
            f"cannot load model {model_uri!r} from {mlflow.get_tracking_uri()}: {err.message}"
        ) from None
    # One call per group of files under the model's per-request pixel limit.
    tables = [model.predict(pd.DataFrame({IMAGE_COLUMN: group})) for group in _requests(contents)]
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, FILE_COLUMN, [str(path) for path in files])
    return table


def as_text(table: pd.DataFrame) -> str:
    """An aligned table of file, label and probability."""
    rows = [(FILE_COLUMN, "label", "probability")] + [
        (r.file, r.label, f"{r.probability:.4f}") for r in table.itertuples()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{f:<{widths[0]}}  {label:<{widths[1]}}  {p}" for f, label, p in rows)


def as_json(table: pd.DataFrame) -> str:
    return json.dumps(table.to_dict(orient="records"), indent=2)


def _requests(contents: list[bytes]) -> list[list[bytes]]:
    """Consecutive groups of files whose pixels stay within MAX_REQUEST_PIXELS each."""
    groups: list[list[bytes]] = [[]]
    total = 0
    for data in contents:
        pixels = header_pixels(data)
        if groups[-1] and total + pixels > MAX_REQUEST_PIXELS:
            groups.append([])
            total = 0
        groups[-1].append(data)
        total += pixels
    return groups


def _checked_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    try:
        image_from_upload(data)
    except ImageInputError as err:
        raise DataError(f"{path}: {err}") from None
    return data
