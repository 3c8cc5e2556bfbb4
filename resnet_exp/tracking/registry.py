"""The model registry: the best checkpoint becomes an MLflow Model, a registered version, and
the `champion` / `best-<depth>` aliases move to the best version by val_acc.

The model is a "models from code" pyfunc (pyfunc_model.py): its artifact holds source code,
safetensors weights and JSON, never a pickle. The `resnet_exp` package travels with it as code, so
it loads where only the pip requirements below are installed.

    python -c "import mlflow; print(mlflow.MlflowClient().get_model_version_by_alias('resnet-demo', 'champion'))"
"""

from __future__ import annotations

import io
import logging
import shutil
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.dataset import Dataset
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
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
from resnet_exp.config import TrainConfig
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
# Versions compete for an alias only within one setting (same_setting): a quick run at another
# image size, or from other weights, must not replace the study's champion unasked.
SETTING_TAGS = (S.TAG_DATA, S.IMAGE_SIZE, S.WEIGHTS)
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


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    aliases: tuple[str, ...]  # the aliases that point at this version after the update

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


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


def register(
    model_uri: str, config: TrainConfig, tags: dict[str, str], description: str
) -> RegisteredVersion:
    """Make the logged model a new version of `config.model_name`, tag and describe it, and
    move the aliases."""
    name = config.model_name
    client = MlflowClient()
    digest = client.get_logged_model(model_id(model_uri)).tags.get(S.TAG_MODEL_DIGEST)
    if digest:  # the version carries the logged model's record of its files (digests.py)
        tags = {**tags, S.TAG_MODEL_DIGEST: digest}
    # An earlier attempt of this run (resumed) may have registered its model already: one
    # version per run.
    earlier = client.search_model_versions(f"name = '{name}' and run_id = '{tags[S.TAG_RUN_ID]}'")
    version = earlier[0] if earlier else mlflow.register_model(model_uri, name, tags=tags)
    interrupt_point("register")  # a version exists, its aliases are not moved yet
    client.update_model_version(name, version.version, description=description)
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=model_description(config))
    placed = refresh_aliases(name, depth_labels=[config.depth_label])
    aliases = tuple(alias for alias, v in placed.items() if v == str(version.version))
    log.info(
        "registered %s version %s%s",
        name,
        version.version,
        f" ({', '.join(aliases)})" if aliases else "",
    )
    return RegisteredVersion(name, str(version.version), aliases)


def model_description(config: TrainConfig) -> str:
    return (
        f"ResNet image classifiers trained on {config.data} by resnet-exp, one version per "
        f"training run. Alias `{S.CHAMPION}` is the version with the best val_acc; "
        f"`{S.depth_alias('<depth>')}` the best of one depth configuration (e.g. "
        f"{S.depth_alias(config.depth_label)}). Input: a DataFrame with an `{IMAGE_COLUMN}` "
        "column of image files (bytes, or base64 over HTTP); output: label, probability, top 5."
    )


def refresh_aliases(name: str, depth_labels: list[str] | None = None) -> dict[str, str | None]:
    """Recompute `champion` and the `best-<depth>` aliases (of `depth_labels`, default: every
    depth with a version) from all versions; returns alias -> version it points at.

    Each registration calls this; a sweep calls it once more at its end, because two trainings
    registering at the same moment (shards on one server) can each decide on a stale list."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    depth_of = {v.version: S.tag(v.tags, S.TAG_DEPTH) for v in versions}
    if depth_labels is None:
        depth_labels = sorted({d for d in depth_of.values() if d})
    placed = {S.CHAMPION: move_alias(client, name, S.CHAMPION, versions)}
    for label in depth_labels:
        candidates = [v for v in versions if depth_of[v.version] == label]
        placed[S.depth_alias(label)] = move_alias(client, name, S.depth_alias(label), candidates)
    return placed


def move_alias(
    client: MlflowClient, name: str, alias: str, candidates: list[ModelVersion]
) -> str | None:
    """Point `alias` at the candidate with the best val_acc tag if it beats the version the alias
    points at now (ties keep the current one); returns the version the alias ends on. Only
    candidates trained in the current version's setting (same_setting) compete: a version of
    another image size or weights takes the alias only if someone points the alias at it."""
    current = _version_by_alias(client, name, alias)
    if current is not None:
        candidates = [v for v in candidates if same_setting(v, current)]
    scored = [v for v in candidates if _val_acc(v) is not None]
    if not scored:
        return None if current is None else str(current.version)
    best = max(scored, key=lambda v: (_val_acc(v), -int(v.version)))  # a tie goes to the oldest
    if (
        current is not None
        and _val_acc(current) is not None
        and _val_acc(current) >= _val_acc(best)
    ):
        return str(current.version)
    client.set_registered_model_alias(name, alias, best.version)
    return str(best.version)  # the registry returns int or str versions, depending on the call


def same_setting(a: ModelVersion, b: ModelVersion) -> bool:
    """Whether two versions were trained on the same data, at the same image size, from the
    same initial weights: only then are their val_acc a fair contest. A tag that either lacks
    (versions registered before these tags existed, hand-made ones) does not separate them."""
    return all(
        a.tags.get(key) is None or b.tags.get(key) is None or a.tags[key] == b.tags[key]
        for key in SETTING_TAGS
    )


def version_tags(config: TrainConfig, run_id: str, metrics: dict[str, float]) -> dict[str, str]:
    """Tags that make a version findable and comparable in the UI without opening its run:
    the same names, with the same meanings, as on the run."""
    params = config.to_params()
    return {
        S.TAG_RUN_ID: run_id,
        S.TAG_DATASET: config.dataset_slug,
        S.TAG_DATA: config.data,
        S.TAG_DEPTH: config.depth_label,
        S.TAG_ARCH: config.arch_name,
        S.TAG_CONFIG_HASH: config.config_hash,
        **{
            name: params[name]
            for name in (S.BLOCK, S.BLOCKS, S.FREEZE_BLOCKS, S.WEIGHTS, S.SEED, S.IMAGE_SIZE)
        },
        **{name: repr(metrics[name]) for name in (S.VAL_ACC, S.TEST_ACC) if name in metrics},
    }


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


def _version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:  # no such alias yet
        return None


def _val_acc(version: ModelVersion) -> float | None:
    try:
        return float(version.tags[S.VAL_ACC])
    except (KeyError, ValueError):
        return None
