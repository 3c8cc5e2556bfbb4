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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
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

log = logging.getLogger(__name__)

PYFUNC_FILE = Path(__file__).parents[1] / "model" / "pyfunc_model.py"
# What the pyfunc imports (directly or through resnet_exp.model.inference/images/model). MLflow's
# requirement inference misses torch and pillow for models from code, so the list is explicit.
REQUIREMENTS = ("mlflow", "torch", "torchvision", "pillow", "numpy", "pandas", "safetensors")

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


def log_model(checkpoint: str | Path, example_image: bytes, best_epoch: int) -> str:
    """Log the checkpoint to the active run as an MLflow Model; returns its model URI.

    MLflow links the run's metrics at `step` to the logged model, and the UI's model page
    shows them: at the best epoch they are that checkpoint's (test_* included, which training
    logs at that step); the default step 0 would show the first epoch's."""
    classifier = ImageClassifier.from_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory(prefix="resnet-exp-model-") as tmp:
        folder = Path(tmp)
        artifacts = classifier.save(folder)
        interrupt_point("model_log")
        info = mlflow.pyfunc.log_model(
            name=S.MODEL_ARTIFACT,
            step=best_epoch,
            python_model=str(PYFUNC_FILE),
            artifacts=artifacts,
            code_paths=[str(_package_source(folder))],
            pip_requirements=pip_requirements(),
            signature=SIGNATURE,
            input_example=pd.DataFrame({IMAGE_COLUMN: [example_image]}),
            model_config=RequestBudget().to_config(),
        )
    record_digests(info.model_id)
    return info.model_uri


def register(
    model_uri: str, config: TrainConfig, tags: dict[str, str], description: str
) -> RegisteredVersion:
    """Make the logged model a new version of `config.model_name`, tag and describe it, and
    move the aliases."""
    name = config.model_name
    client = MlflowClient()
    digest = MlflowClient().get_logged_model(model_id(model_uri)).tags.get(S.TAG_MODEL_DIGEST)
    if digest:  # the version carries the logged model's record of its files (digests.py)
        tags = {**tags, S.TAG_MODEL_DIGEST: digest}
    version = mlflow.register_model(model_uri, name, tags=tags)
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
    points at now (ties keep the current one); returns the version the alias ends on."""
    scored = [v for v in candidates if _val_acc(v) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda v: (_val_acc(v), -int(v.version)))  # a tie goes to the oldest
    current = _version_by_alias(client, name, alias)
    if (
        current is not None
        and _val_acc(current) is not None
        and _val_acc(current) >= _val_acc(best)
    ):
        return str(current.version)
    client.set_registered_model_alias(name, alias, best.version)
    return str(best.version)  # the registry returns int or str versions, depending on the call


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
    bar = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
    previous = bar.get_raw()
    bar.set("false")
    try:
        return Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(folder)))
    finally:
        if previous is None:
            bar.unset()
        else:
            bar.set(previous)


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
