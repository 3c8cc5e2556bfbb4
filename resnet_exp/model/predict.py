"""`resnet-exp predict`: label image files with a logged or registered model, through MLflow's
pyfunc loader, exactly as any other client of the model would, once its files match the digests
recorded when it was logged (digests.py): an altered model is refused before its code runs.

    resnet-exp predict --model models:/resnet-demo@champion data/demo-v1/circle

A file that is no usable image does not stop the others: each readable file is labelled and the
unreadable ones are listed after the table, with their reason (exit status 3).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.pyfunc import FLAVOR_NAME
from PIL import Image

from resnet_exp.data.images import ImageInputError, header_pixels, image_from_upload
from resnet_exp.errors import DataError, UserError
from resnet_exp.model.budget import RequestBudget
from resnet_exp.model.digests import ModelIntegrityError
from resnet_exp.model.inference import IMAGE_COLUMN

FILE_COLUMN = "file"
# A model's time budget when this command loads it: none, in effect (a day).
LOCAL_REQUEST_SECONDS = 24 * 3600


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
    with tempfile.TemporaryDirectory(prefix="resnet-exp-model-") as folder:
        model = _load_verified(model_uri, Path(folder))
        # One call per group of files within the model's per-request limits.
        groups = _requests(list(contents.values()))
        table = pd.concat(
            [model.predict(pd.DataFrame({IMAGE_COLUMN: group})) for group in groups],
            ignore_index=True,
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


def _load_verified(model_uri: str, folder: Path):
    """The model, downloaded into `folder` and loaded only once its files match the digests
    recorded when it was logged (the registry's record of them for a models:/ URI), so that
    an altered model's code never runs here. UserError in one line naming the altered file."""
    from resnet_exp.tracking.logged_model import verified_copy

    try:
        local = verified_copy(model_uri, folder)
        # A model that records its request budget (budget.py) gets no time limit here: no client
        # waits on the answer, and Ctrl-C stops the command.
        has_budget = bool(Model.load(str(local)).flavors[FLAVOR_NAME].get("config"))
        config = {"request_seconds": LOCAL_REQUEST_SECONDS} if has_budget else None
        return mlflow.pyfunc.load_model(str(local), model_config=config)
    except (MlflowException, ModelIntegrityError) as err:
        why = err.message if isinstance(err, MlflowException) else str(err)
        raise UserError(
            f"cannot load model {model_uri!r} from {mlflow.get_tracking_uri()}: {why}"
        ) from None


def _requests(contents: list[bytes]) -> list[list[bytes]]:
    """Consecutive groups of files within a request's limits on images, bytes and pixels."""
    limits = RequestBudget()
    groups: list[list[bytes]] = [[]]
    size = pixels = 0
    for data in contents:
        more = header_pixels(data)
        if groups[-1] and (
            len(groups[-1]) == limits.max_request_images
            or size + len(data) > limits.max_request_bytes
            or pixels + more > limits.max_request_pixels
        ):
            groups.append([])
            size = pixels = 0
        groups[-1].append(data)
        size, pixels = size + len(data), pixels + more
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
