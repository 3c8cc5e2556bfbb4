"""`resnet-exp predict`: label image files with a logged or registered model, through MLflow's
pyfunc loader, exactly as any other client of the model would.

    resnet-exp predict --model models:/resnet-demo@champion data/demo-v1/circle

A file that is no usable image does not stop the others: each readable file is labelled and the
unreadable ones are listed after the table, with their reason (exit status 3).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
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


# The exit status when some files were labelled and others could not be read (listed on stderr,
# and in --json as rows with an "error"); a run where no file could be read exits 1.
SOME_UNREADABLE_EXIT = 3


@dataclass(frozen=True)
class Predictions:
    files: list[Path]  # every file asked about, in order
    table: pd.DataFrame  # one row per readable file: file, label, label_id, probability, top5
    unreadable: dict[Path, str]  # each file that is no usable image, and why


def predict_files(model_uri: str, files: list[Path]) -> Predictions:
    """Label every readable file; the others are kept with their reason. DataError if none is
    readable (before the model loads)."""
    contents: dict[Path, bytes] = {}
    unreadable: dict[Path, str] = {}
    for path in files:
        try:
            contents[path] = _checked_bytes(path)
        except DataError as err:
            unreadable[path] = str(err).removeprefix(f"{path}: ")
    if not contents:
        first, why = next(iter(unreadable.items()))
        more = f" (and {len(files) - 1} more unreadable files)" if len(files) > 1 else ""
        raise DataError(f"no readable image: {first}: {why}{more}")
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as err:
        raise UserError(
            f"cannot load model {model_uri!r} from {mlflow.get_tracking_uri()}: {err.message}"
        ) from None
    # One call per group of files under the model's per-request pixel limit.
    groups = _requests(list(contents.values()))
    table = pd.concat(
        [model.predict(pd.DataFrame({IMAGE_COLUMN: group})) for group in groups], ignore_index=True
    )
    table.insert(0, FILE_COLUMN, [str(path) for path in contents])
    return Predictions(files, table, unreadable)


def as_text(found: Predictions) -> str:
    """An aligned table of file, label and probability of the readable files."""
    rows = [(FILE_COLUMN, "label", "probability")] + [
        (r.file, r.label, f"{r.probability:.4f}") for r in found.table.itertuples()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{f:<{widths[0]}}  {label:<{widths[1]}}  {p}" for f, label, p in rows)


def unreadable_text(found: Predictions) -> str:
    """'could not read 2 of 12 files (no label for them):' and a line per file with its reason."""
    lines = [
        f"could not read {len(found.unreadable)} of {len(found.files)} files (no label for them):"
    ]
    return "\n".join(lines + [f"  {path}: {why}" for path, why in found.unreadable.items()])


def as_json(found: Predictions) -> str:
    """A row per file, in order: its prediction, or {"file", "error"} for an unreadable one."""
    labelled = iter(found.table.to_dict(orient="records"))
    rows = [
        {FILE_COLUMN: str(path), "error": found.unreadable[path]}
        if path in found.unreadable
        else next(labelled)
        for path in found.files
    ]
    return json.dumps(rows, indent=2)


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
    try:
        data = path.read_bytes()
    except OSError as err:  # e.g. no permission to read it
        raise DataError(f"{path}: {err.strerror or err}") from None
    try:
        image_from_upload(data)
    except ImageInputError as err:
        raise DataError(f"{path}: {err}") from None
    return data
