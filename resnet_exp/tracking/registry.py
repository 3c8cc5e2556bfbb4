"""The model registry: a logged model (logged_model.py) becomes a registered version, tagged
so that versions compare without opening their runs, and the `champion` / `best-<depth>`
aliases move to the best version by val_acc, within one setting.

    python -c "import mlflow; print(mlflow.MlflowClient().get_model_version_by_alias('resnet-demo', 'champion'))"
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from resnet_exp import schema as S
from resnet_exp.config import TrainConfig
from resnet_exp.model.inference import IMAGE_COLUMN
from resnet_exp.signals import interrupt_point
from resnet_exp.tracking.logged_model import model_id

log = logging.getLogger(__name__)

# Versions compete for an alias only within one setting (same_setting): a quick run at another
# image size, or from other weights, must not replace the study's champion unasked.
SETTING_TAGS = (S.TAG_DATA, S.IMAGE_SIZE, S.WEIGHTS)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    aliases: tuple[str, ...]  # the aliases that point at this version after the update

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


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
