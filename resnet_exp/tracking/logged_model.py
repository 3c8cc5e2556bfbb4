"""The MLflow Model a training logs: its best checkpoint as a "models from code" pyfunc
(pyfunc_model.py), named for the run, linked to the best epoch's learning metrics and the test
results, with the sha256 of each of its files; and the verified download that loads it.

Its artifact holds source code, safetensors weights and JSON, never a pickle. The `resnet_exp`
package travels with it as code, so it loads where only the pip requirements below are
installed. Registering it and moving the aliases: registry.py.

    python -c "import mlflow; print(mlflow.search_logged_models(output_format='list')[:1])"
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from contextlib import suppress
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.dataset import Dataset
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import (
    Array,
    ColSpec,
    Object,
    ParamSchema,
    ParamSpec,
    Property,
    Schema,
)
from PIL import Image

import resnet_exp
from resnet_exp import schema as S
from resnet_exp.model.budget import RequestBudget
from resnet_exp.model.digests import verify_model_files, write_digests
from resnet_exp.model.inference import IMAGE_COLUMN, ImageClassifier
from resnet_exp.signals import interrupt_point
from resnet_exp.tracking.store import quiet_downloads

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).parents[1] / "model" / "pyfunc_model.py"
# What the pyfunc imports (directly or through resnet_exp.model.inference/images/model). MLflow's
# requirement inference misses torch and pillow for models from code, so the list is explicit.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "pillow", "numpy", "pandas", "safetensors")
SCRATCH_PREFIX = "resnet-exp-model-"  # the model's files while they are written and uploaded

SIGNATURE = ModelSignature(
    # No input schema: MLflow then passes the request's columns through as they came (base64
    # text over HTTP, bytes from Python) and the model checks them, naming each bad image by its
    # position. With a "binary" column MLflow decoded base64 itself, leniently and with an error
    # that named no image; with any column schema it refused or emptied requests before the
    # model saw them (`dataframe_records: []` refused, a misnamed column dropped) and echoed the
    # request in its error. The input is described in the registered model's description.
    inputs=None,
    outputs=Schema(
        [
            ColSpec("string", "label"),
            ColSpec("long", "label_id"),
            ColSpec("double", "probability"),
            ColSpec(
                Array(Object([Property("label", "string"), Property("probability", "double")])),
                "top5",
            ),
        ]
    ),
    # A request may ask for a shorter time budget than the model's (budget.py), never a longer one.
    params=ParamSchema([ParamSpec("request_seconds", "double", None)]),
)


def log_model(
    checkpoint: str | Path,
    example_image: bytes,
    best_epoch: int,
    name: str,
    description: str,
    test_dataset: Dataset | None = None,
) -> str:
    """Log the checkpoint to the active run as an MLflow Model called `name` (the run's name),
    with `description`; returns its model URI.

    The model is linked to the run at `best_epoch` and to that epoch's train/val metrics and the
    test metrics (tied to `test_dataset`), never to `system/*` samples: `log_model(step=...)`
    would link every metric of that step, system samples included. An earlier attempt of the
    run (a resumed training) that died while logging left a PENDING or FAILED model: it is
    deleted; one that finished logging is the model, as is. The files are written in a folder
    beside the checkpoint, so that a killed attempt leaves nothing in the temp folder and the
    next attempt removes what it left."""
    client = MlflowClient()
    run = mlflow.active_run()
    earlier = _earlier_model(client, run.info.experiment_id, run.info.run_id)
    if earlier is not None:
        return f"models:/{earlier.model_id}"
    model = mlflow.initialize_logged_model(
        name=name,
        source_run_id=run.info.run_id,
        tags={S.MLFLOW_NOTE: description},
        params=client.get_run(run.info.run_id).data.params,
    )
    try:
        link_metrics(client, run.info.run_id, model.model_id, best_epoch, test_dataset)
        _log_model_files(client, model, checkpoint, example_image)
        record_digests(model.model_id)
        # the run lists the model once its files are there: a dead attempt's stays off the list
        client.log_outputs(run.info.run_id, [LoggedModelOutput(model.model_id, step=best_epoch)])
    except BaseException:
        # An interrupt or error: FAILED at once (MLflow's own log_model leaves a PENDING model
        # on Ctrl-C or SIGTERM); a kill leaves it PENDING, and the resume deletes it.
        with suppress(Exception):
            client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return f"models:/{model.model_id}"


def _log_model_files(
    client: MlflowClient, model: LoggedModel, checkpoint: str | Path, example_image: bytes
) -> None:
    """Write the pyfunc model's files (beside the checkpoint) and upload them to `model`."""
    classifier = ImageClassifier.from_checkpoint(checkpoint)
    parent = Path(checkpoint).parent
    for stale in parent.glob(f"{SCRATCH_PREFIX}*"):  # a killed attempt's files
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX, dir=parent) as tmp:
        folder = Path(tmp)
        artifacts = classifier.save(folder)
        interrupt_point("model_log")  # a PENDING logged model and a folder of files exist
        mlflow.pyfunc.save_model(
            path=str(folder / "model"),
            python_model=str(PYFUNC_FILE),
            artifacts=artifacts,
            code_paths=[str(_package_source(folder))],
            pip_requirements=pip_requirements(),
            signature=SIGNATURE,
            input_example=pd.DataFrame({IMAGE_COLUMN: [example_image]}),
            model_config=RequestBudget().to_config(),
            # what MLflow's log_model writes into MLmodel: where the model lives and its run
            mlflow_model=Model(
                artifact_path=model.artifact_location,
                model_uuid=model.model_id,
                run_id=model.source_run_id,
                model_id=model.model_id,
            ),
        )
        client.log_model_artifacts(model.model_id, str(folder / "model"))


def link_metrics(
    client: MlflowClient,
    run_id: str,
    model_id: str,
    step: int,
    test_dataset: Dataset | None = None,
) -> None:
    """Link the run's train_loss, train_acc and val_* values at `step` (epoch values only, not
    Lightning's per-step series) and its test_* results to the logged model, test_* tied to the
    test split's dataset.
    The run's own history is unchanged: MLflow stores a metric it already has only once."""
    metrics = []
    for key in client.get_run(run_id).data.metrics:
        learning = key in S.SPLIT_METRICS[S.TRAIN] or key.startswith((f"{S.VAL}_", f"{S.TEST}_"))
        if not learning or key.endswith(S.STEP_SUFFIX):  # not throughput, not per-step series
            continue
        test = key.startswith(f"{S.TEST}_")
        tied = test and test_dataset is not None
        metrics += [
            Metric(
                m.key,
                m.value,
                m.timestamp,
                m.step,
                model_id=model_id,
                dataset_name=test_dataset.name if tied else None,
                dataset_digest=test_dataset.digest if tied else None,
                run_id=run_id,
            )
            for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
            if test or m.step == step  # a result has one step (RESULT_STEP; older runs: step)
        ][-1:]  # one value per key: the latest, should an epoch have been stored twice
    client.log_batch(run_id, metrics=metrics)


def _earlier_model(client: MlflowClient, experiment_id: str, run_id: str) -> LoggedModel | None:
    """The logged model an earlier attempt of this run finished, if any; the ones it did not
    finish (PENDING: killed; FAILED) are deleted, so that a run has one model."""
    models = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    ready = [m for m in models if m.status == LoggedModelStatus.READY]
    for model in models:
        if model.status != LoggedModelStatus.READY:
            client.delete_logged_model(model.model_id)
            log.info(
                "deleted the %s logged model %s of an earlier attempt", model.status, model.model_id
            )
    return max(ready, key=lambda m: m.creation_timestamp) if ready else None


def example_image(image: Image.Image, size: int) -> bytes:
    """A small JPEG of a real input image: the model's input example, shown in the UI."""
    buffer = io.BytesIO()
    image.convert("RGB").resize((size, size)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def pip_requirements() -> list[str]:
    """The pyfunc's requirements, pinned to this environment's versions (without local tags
    such as '+cpu', which only exist on the index they came from)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def record_digests(logged_model_id: str) -> str:
    """Add digests.json (the sha256 of each of the logged model's files, as stored) to the
    model, and tag the logged model with digests.json's own sha256; returns it. Reads the stored
    files back rather than hashing the local ones: what is checked at load is what was stored."""
    client = MlflowClient()
    with tempfile.TemporaryDirectory(prefix="resnet-exp-digests-") as tmp:
        local = _download(f"models:/{logged_model_id}", Path(tmp))
        digest = write_digests(local)
        client.log_model_artifact(logged_model_id, str(Path(local) / S.DIGESTS_FILE))
    client.set_logged_model_tags(logged_model_id, {S.TAG_MODEL_DIGEST: digest})
    return digest


def recorded_digest(model_uri: str) -> tuple[str, str | None]:
    """(the URI to download, the sha256 of digests.json that the registry recorded for it).
    An alias is resolved to its version first, so that what is checked is what is loaded. URIs
    outside the registry (runs:/, a folder) and models logged before digests have none."""
    if not model_uri.startswith("models:/"):
        return model_uri, None
    ref, client = model_uri.removeprefix("models:/"), MlflowClient()
    if "@" in ref:
        version = client.get_model_version_by_alias(*ref.split("@", 1))
    elif "/" in ref:
        version = client.get_model_version(*ref.rsplit("/", 1))
    else:  # a logged model's id, m-...
        return model_uri, client.get_logged_model(ref).tags.get(S.TAG_MODEL_DIGEST)
    return f"models:/{version.name}/{version.version}", version.tags.get(S.TAG_MODEL_DIGEST)


def verified_copy(model_uri: str, folder: Path) -> Path:
    """Download the model into `folder` and check its files against their digests (and those
    against the registry's record); returns the model's local folder, to load from. Raises
    ModelIntegrityError naming the first altered file, before any of the model's code runs."""
    uri, expected = recorded_digest(model_uri)
    local = _download(uri, folder)
    verify_model_files(local, expected)
    return local


def _download(model_uri: str, folder: Path) -> Path:
    """The model's files, downloaded into `folder` without MLflow's progress bar per file: a
    command's stderr keeps to one line per problem."""
    with quiet_downloads():
        return Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder)))


def model_id(model_uri: str) -> str:
    """The logged model's id in the URI log_model returns ('models:/m-...')."""
    return model_uri.removeprefix("models:/")


def _package_source(folder: Path) -> Path:
    """A copy of the resnet_exp package without bytecode caches, to ship as the model's code."""
    target = folder / "code" / "resnet_exp"
    shutil.copytree(
        Path(resnet_exp.__file__).parent,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return target
