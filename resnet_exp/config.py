"""Training configuration: the one home of every default, and validation before any work starts.

Names are the user's words everywhere: the MLproject parameter, the click option
(`--freeze-blocks`), this dataclass field and the MLflow param are all `freeze_blocks`.

    python -c "from resnet_exp.config import TrainConfig; print(TrainConfig().run_name)"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_exp import schema
from resnet_exp.errors import ConfigError
from resnet_exp.model.netspec import NUM_STAGES, NetSpec, arch_name, check_block, depth_label

# The 90-class Animals data on the Hugging Face Hub: parquet with an `image` column and a
# ClassLabel `label`, train/test splits (5,400 images), so it loads without custom code.
DEFAULT_DATA = "lucabaggi/animal-wildlife"
AUTO = "auto"  # "decide from the data or the machine" for num_workers, precision, experiment_name
DEMO_DATA = "demo"
PRECISIONS = (AUTO, "32-true", "16-mixed", "bf16-mixed")
FEATURE_CACHE_MODES = (AUTO, "off")  # auto: use it when it applies and fits (see features.py)
IMAGENET, NO_WEIGHTS = "imagenet", "none"  # the two `weights` values that are not a file
NO_REGISTRATION = "none"  # registered_model_name that logs the model but registers nothing
# Registered-model names end up in `models:/<name>@<alias>` URIs, so no '/', ':' or '@'.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,199}$")
MIN_IMAGE_SIZE = 32  # ResNet downsamples by 32; smaller inputs collapse layer4 to nothing useful
# A served model refuses images over 40 megapixels (a 6,324 px square: data/images.py), so a
# larger input only upsamples every image it could be given; and one 8192 px image already
# keeps over 13 GB of ResNet18 activations in training (hardware.check_memory).
MAX_IMAGE_SIZE = 8192
NEVER = "never"
RESUME_MODES = (AUTO, NEVER)  # or a run id: continue that run
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


# --- parsing of command-line text -------------------------------------------------------------


def _parse_int(name: str, text: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not an integer") from None


def _parse_float(name: str, text: str) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a number") from None


def parse_blocks(text: str | tuple[int, ...], name: str = "blocks") -> tuple[int, ...]:
    """'2,2,2,2' -> (2, 2, 2, 2): residual blocks per stage."""
    if isinstance(text, tuple):
        return text
    parts = [p.strip() for p in str(text).replace(" ", "").split(",")]
    if len(parts) != NUM_STAGES or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"{name}={text!r} is not valid: expected {NUM_STAGES} positive integers separated by "
            "commas, one per residual stage, e.g. 1,1,1,1 or 2,2,2,2 (ResNet18) or 3,4,6,3 (ResNet34, "
            "or ResNet50 with block=bottleneck)"
        )
    return tuple(int(p) for p in parts)


def _shell_unquoted(text: str) -> str:
    """ "'/my data'" -> '/my data': one shell word without its quoting; other text unchanged."""
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    return words[0] if len(words) == 1 else text


def _parse_optional_int(name: str, text: str) -> int | None:
    return None if str(text).strip() == AUTO else _parse_int(name, text)


def format_value(value: Any) -> str:
    """The command-line text of a value: 3e-5, 2,2,2,2, auto (None)."""
    if value is None:
        return AUTO
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        # repr() is the shortest text that reads back as the same float; '3e-05' -> '3e-5'
        # so that a directly called CLI logs the same text as `mlflow run` does.
        text = repr(value).removesuffix(".0")
        return re.sub(r"e([+-])0*(\d)", r"e\1\2", text).replace("e+", "e")
    return str(value)


def _option(
    default: Any,
    help: str,
    parse: Callable[[str, str], Any] | None = None,
    affects_result: bool = True,
    logged: bool = True,
) -> Any:
    return field(
        default=default,
        metadata={"help": help, "parse": parse, "affects_result": affects_result, "logged": logged},
    )


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; built from CLI text with `from_text`."""

    data: str = _option(
        DEFAULT_DATA, "Hub dataset id, local image-folder path, or 'demo' (offline)."
    )
    freeze_blocks: int = _option(
        3, "Freeze the stem and the first k of the 4 residual stages (0..4).", _parse_int
    )
    # An execution choice, like num_workers: both ways give the same result within the
    # tolerance that tests/test_features.py checks, so it stays out of config_hash.
    feature_cache: str = _option(
        AUTO,
        "'auto': with freeze_blocks >= 1, compute the frozen stages' "
        "outputs once and train the rest on them, if they fit in "
        "memory; 'off': run the frozen stages every step.",
        affects_result=False,
    )
    block: str = _option(
        schema.BASIC,
        "Residual block type: 'basic' (2,2,2,2 = ResNet18, 3,4,6,3 = "
        "ResNet34) or 'bottleneck' (3,4,6,3 = ResNet50, 3,4,23,3 = "
        "ResNet101).",
    )
    blocks: tuple[int, ...] = _option(
        (2, 2, 2, 2),
        "Residual blocks per stage, 4 positive integers.",
        lambda n, t: parse_blocks(t, n),
    )
    weights: str = _option(IMAGENET, "'imagenet', 'none' (random init) or a state_dict file path.")
    batch_size: int = _option(32, "Images per batch.", _parse_int)
    learning_rate: float = _option(3e-5, "AdamW learning rate.", _parse_float)
    max_epochs: int = _option(
        30, "Upper bound on epochs (early stopping may end sooner).", _parse_int
    )
    image_size: int = _option(
        224, "Images are resized to image_size x image_size pixels.", _parse_int
    )
    early_stopping_patience: int = _option(
        10, "Epochs without val_loss improvement before stopping.", _parse_int
    )
    seed: int = _option(
        42, "Seeds everything, including the train/validation/test split.", _parse_int
    )
    val_fraction: float = _option(
        0.1,
        "Share of each class held out for validation when the data has no validation split.",
        _parse_float,
    )
    test_fraction: float = _option(
        0.1, "Share of each class held out for test when the data has no test split.", _parse_float
    )
    limit_batches: int = _option(
        0, "Cap on batches per epoch for each split, for quick runs (0: all).", _parse_int
    )
    num_workers: int | None = _option(
        None,
        "DataLoader worker processes ('auto': 0 on small CPUs, "
        "so workers never compete with training threads).",
        _parse_optional_int,
        affects_result=False,
    )
    precision: str = _option(
        AUTO,
        "'auto' (bf16/fp16 mixed on CUDA; on a CPU bf16 mixed where "
        "a short measurement finds it faster, else fp32; cached, see "
        "docs/resources.md), 32-true, 16-mixed or bf16-mixed.",
    )
    experiment_name: str = _option(
        AUTO,
        "MLflow experiment when the CLI is called directly "
        "('auto': resnet-exp-<dataset>); `mlflow run` uses its own.",
        affects_result=False,
    )
    registered_model_name: str = _option(
        AUTO,
        "Registered model that the best checkpoint becomes a "
        "version of ('auto': resnet-<dataset>; 'none': log the "
        "model to the run only).",
        affects_result=False,
    )
    data_dir: str = _option(
        "data",
        "Where the demo dataset is generated and the preprocessed "
        "image store is kept (<data_dir>/store).",
        affects_result=False,
    )
    output_dir: str = _option(
        "results",
        "Root of checkpoints and TensorBoard logs (<output_dir>/<dataset>/...).",
        affects_result=False,
    )
    # How this launch starts, not what the run is: logged as given by the run's first attempt
    # (`mlflow run` logs every MLproject parameter, so every path does), never compared.
    resume: str = _option(
        AUTO,
        "'auto': continue a stopped run of the same configuration and "
        "seed from its last.ckpt, in that run (docs/resume.md); 'never': "
        "always a new run; or the id of the run to continue.",
        affects_result=False,
    )

    def __post_init__(self) -> None:
        _validate(self)

    # --- construction -----------------------------------------------------------------------

    @classmethod
    def from_text(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from command-line text, e.g. {'freeze_blocks': '2', 'blocks': '1,1,1,1'}."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
        parsed = {}
        for name, text in values.items():
            parse = known[name].metadata["parse"]
            parsed[name] = parse(name, text) if parse and isinstance(text, str) else text
        return cls(**parsed)

    def same_value(self, name: str, text: str) -> bool:
        """Whether command-line `text` means this config's value of `name` ('3e-5' == 3e-05).
        `mlflow run` logs a value that needed shell quoting as the quoted text ("'/my data'").
        A name that is not a config field is not this config's to judge: True; nor is
        experiment_name, since where a run lives is its experiment, not this text (`mlflow run
        --experiment-name X` logs the param's default, 'auto', for a run it puts in X); nor is
        resume, how the run's first attempt was launched (a later one may name the run)."""
        if name not in self.__dataclass_fields__ or name in ("experiment_name", schema.RESUME):
            return True
        parse = self.__dataclass_fields__[name].metadata["parse"]
        for candidate in dict.fromkeys((text, _shell_unquoted(text))):
            try:
                if (parse(name, candidate) if parse else candidate) == getattr(self, name):
                    return True
            except ConfigError:
                pass
        return False

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # --- derived names ----------------------------------------------------------------------

    def to_params(self) -> dict[str, str]:
        """Flat MLflow params with the user's names and command-line text."""
        return {
            f.name: format_value(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata["logged"]
        }

    @property
    def dataset_slug(self) -> str:
        return dataset_slug(self.data)

    @property
    def data_source(self) -> str:
        """'demo', 'folder' (a local image folder) or 'hub' (a Hugging Face dataset id)."""
        if self.data == DEMO_DATA:
            return "demo"
        return "folder" if Path(self.data).expanduser().is_dir() else "hub"

    @property
    def arch_name(self) -> str:
        """'r18' for basic 2,2,2,2; 'r50' for bottleneck 3,4,6,3 (see netspec.arch_name)."""
        return arch_name(self.block, self.blocks)

    @property
    def depth_label(self) -> str:
        """Readable depth configuration, e.g. 'b2222-f2' (basic 2,2,2,2, two stages frozen) or
        'bn3463-f2' (bottleneck 3,4,6,3)."""
        return depth_label(self.block, self.blocks, self.freeze_blocks)

    def net_spec(self, class_names: tuple[str, ...] | list[str]) -> NetSpec:
        """The network this config trains on data with `class_names`."""
        return NetSpec(
            self.block, self.blocks, tuple(class_names), self.image_size, self.freeze_blocks
        )

    @property
    def run_name(self) -> str:
        return f"{self.arch_name}-{self.depth_label}-s{self.seed}"

    @property
    def config_hash(self) -> str:
        """Hash of everything that decides the result except the seed: runs that differ only
        by seed share it, so sweeps and analysis group seeds of one configuration by it."""
        result_fields = {
            f.name: format_value(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata["affects_result"] and f.name != "seed"
        }
        # `block` arrived after the first runs: leaving it out while it is 'basic' keeps every
        # earlier configuration's hash, so resumed sweeps and analysis still find their runs.
        if self.block == schema.BASIC:
            del result_fields["block"]
        text = json.dumps(result_fields, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def model_name(self) -> str | None:
        """The registered model's name, or None when registration is off."""
        if self.registered_model_name == NO_REGISTRATION:
            return None
        if self.registered_model_name == AUTO:
            return f"resnet-{self.dataset_slug}"
        return self.registered_model_name

    @property
    def default_experiment_name(self) -> str:
        return experiment_name_for(self.data, self.experiment_name)


def defaults_as_text() -> dict[str, str]:
    """Every parameter's default as command-line text, in declaration order."""
    return {f.name: format_value(f.default) for f in dataclasses.fields(TrainConfig)}


def option_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}


def experiment_name_for(data: str, experiment_name: str = AUTO) -> str:
    """The MLflow experiment of a dataset's runs: 'auto' means resnet-exp-<dataset>. Analysis
    uses it too, without a TrainConfig (whose `data` must exist on this machine)."""
    return experiment_name if experiment_name != AUTO else f"resnet-exp-{dataset_slug(data)}"


def describe_weights(weights: str) -> str:
    """The `weights` value in words, for run descriptions and reports."""
    if weights == IMAGENET:
        return "ImageNet weights (transfer)"
    if weights == NO_WEIGHTS:
        return "random initialisation (no transfer: frozen stages are random features)"
    return f"weights from {weights}"


def dataset_slug(data: str) -> str:
    """'lucabaggi/animal-wildlife' -> 'animal-wildlife'; '/data/pets/' -> 'pets'; 'demo' -> 'demo'."""
    name = Path(str(data).rstrip("/\\")).name or "data"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "data"


def looks_like_path(data: str) -> bool:
    return (
        data.startswith(("/", "./", "../", "~", "\\"))
        or data in (".", "..")
        or not HUB_ID.match(data)
    )


# --- validation ------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate(c: TrainConfig) -> None:
    _validate_data(c.data)
    _check(
        isinstance(c.freeze_blocks, int) and 0 <= c.freeze_blocks <= NUM_STAGES,
        f"freeze_blocks={c.freeze_blocks!r} is out of range: expected an integer 0..{NUM_STAGES} "
        f"(0 trains everything; k freezes the stem and the first k of the {NUM_STAGES} stages)",
    )
    check_block(c.block)
    parse_blocks(format_value(c.blocks))  # re-check a tuple given directly, not via from_text
    _check(
        c.weights in (IMAGENET, NO_WEIGHTS) or Path(c.weights).expanduser().is_file(),
        f"weights={c.weights!r} is not valid: expected '{IMAGENET}', '{NO_WEIGHTS}' (random init) "
        "or the path of an existing state_dict file"
        + (" (no such file)" if looks_like_path(c.weights) or "." in c.weights else ""),
    )
    for name in ("batch_size", "max_epochs", "early_stopping_patience"):
        value = getattr(c, name)
        _check(isinstance(value, int) and value >= 1, f"{name}={value!r}: expected an integer >= 1")
    _check(
        isinstance(c.image_size, int) and MIN_IMAGE_SIZE <= c.image_size <= MAX_IMAGE_SIZE,
        f"image_size={c.image_size!r}: expected an integer {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE} "
        "(ResNet downsamples its input 32x; a served model takes images of up to 40 megapixels)",
    )
    _check(
        math.isfinite(c.learning_rate) and c.learning_rate > 0,
        f"learning_rate={c.learning_rate!r}: expected a positive number such as 3e-5",
    )
    _check(isinstance(c.seed, int) and c.seed >= 0, f"seed={c.seed!r}: expected an integer >= 0")
    for name in ("val_fraction", "test_fraction"):
        value = getattr(c, name)
        _check(0 < value < 1, f"{name}={value!r}: expected a fraction strictly between 0 and 1")
    _check(
        c.val_fraction + c.test_fraction < 1,
        f"val_fraction + test_fraction = {c.val_fraction + c.test_fraction:g}: "
        "expected less than 1 so that images remain for training",
    )
    _check(
        isinstance(c.limit_batches, int) and c.limit_batches >= 0,
        f"limit_batches={c.limit_batches!r}: expected an integer >= 0 (0 means no cap)",
    )
    _check(
        c.num_workers is None or (isinstance(c.num_workers, int) and c.num_workers >= 0),
        f"num_workers={c.num_workers!r}: expected 'auto' or an integer >= 0",
    )
    _check(
        c.feature_cache in FEATURE_CACHE_MODES,
        f"feature_cache={c.feature_cache!r} is not valid: expected one of {', '.join(FEATURE_CACHE_MODES)}",
    )
    _check(
        c.precision in PRECISIONS,
        f"precision={c.precision!r} is not valid: expected one of {', '.join(PRECISIONS)}",
    )
    _check(
        c.registered_model_name in (AUTO, NO_REGISTRATION)
        or bool(MODEL_NAME.match(c.registered_model_name)),
        f"registered_model_name={c.registered_model_name!r} is not valid: expected '{AUTO}', "
        f"'{NO_REGISTRATION}' or a name of letters, digits, '_', '-' and '.' (no '/', ':' or '@')",
    )
    for name in ("experiment_name", "data_dir", "output_dir"):
        _check(bool(str(getattr(c, name)).strip()), f"{name} must not be empty")
    _check(
        c.resume in RESUME_MODES or bool(RUN_ID.match(c.resume)),
        f"resume={c.resume!r} is not valid: expected '{AUTO}', '{NEVER}' or a run id "
        "(32 hexadecimal characters, as `mlflow runs list` shows them)",
    )


def _validate_data(data: str) -> None:
    _check(
        bool(data and data.strip()),
        "data must not be empty: expected a Hub dataset id "
        "(owner/name), a local image-folder path, or 'demo'",
    )
    if data == DEMO_DATA:
        return
    path = Path(data).expanduser()
    if path.exists():
        _check(
            path.is_dir(),
            f"data={data!r} is a file: expected an image folder (one subfolder "
            "per class), a Hub dataset id, or 'demo'",
        )
        return
    _check(
        not looks_like_path(data),
        f"data={data!r}: no such folder. Expected a local image-folder path that exists, "
        "a Hub dataset id (owner/name), or 'demo'",
    )
