"""What an analysis reads and where it writes: the only home of its defaults. Light on purpose
(no MLflow, pandas or matplotlib), so the CLI can build its options from it.

    python -c "from analysis.config import AnalysisConfig; print(AnalysisConfig(data='demo').experiment)"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_exp.config import AUTO, DEFAULT_DATA, TrainConfig, dataset_slug, experiment_name_for
from resnet_exp.errors import ConfigError

NO_SWEEP = ""  # sweep_run_id meaning "every training run of the experiment"
ANALYSIS_FOLDER = (
    "analysis"  # <output_dir>/<dataset>/analysis, next to training's checkpoints and logs
)

# Training's defaults, taken from TrainConfig rather than retyped: the analysis looks where
# training wrote.
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _option(default: str, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class AnalysisConfig:
    """The analysis's parameters as command-line text (all four are plain strings)."""

    data: str = _option(
        DEFAULT_DATA,
        "The dataset whose runs are ranked: the same text as training's "
        "--data (only its name matters, e.g. 'demo').",
    )
    experiment_name: str = _option(
        AUTO, "MLflow experiment to read ('auto': resnet-exp-<dataset>, as training uses)."
    )
    sweep_run_id: str = _option(
        NO_SWEEP,
        "A sweep's parent run id: rank only that sweep's grid; the "
        "experiment and dataset then come from the parent run. "
        "Empty: every training run of the experiment.",
    )
    output_dir: str = _option(
        _TRAIN_FIELDS["output_dir"].default,
        "Root of the results: the analysis goes to <output_dir>/<dataset>/analysis.",
    )

    def __post_init__(self) -> None:
        for name in ("data", "experiment_name", "output_dir"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(
                    f"{name} must not be empty (default: {defaults_as_text()[name]!r})"
                )
        object.__setattr__(self, "sweep_run_id", self.sweep_run_id.strip())

    @classmethod
    def from_text(cls, values: Mapping[str, Any]) -> AnalysisConfig:
        """Build from command-line text, e.g. {'data': 'demo', 'sweep_run_id': 'ab12...'}."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: str(v) for k, v in values.items()})

    def to_params(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @property
    def dataset_slug(self) -> str:
        return dataset_slug(self.data)

    @property
    def experiment(self) -> str:
        """The experiment name training would use for this data."""
        return experiment_name_for(self.data, self.experiment_name)

    def output_folder(self, slug: str) -> Path:
        """Where the analysis of dataset `slug` goes (with a sweep, the slug comes from its parent)."""
        return Path(self.output_dir) / slug / ANALYSIS_FOLDER


def defaults_as_text() -> dict[str, str]:
    return {f.name: f.default for f in dataclasses.fields(AnalysisConfig)}


def option_help() -> dict[str, str]:
    return {f.name: f.metadata["help"] for f in dataclasses.fields(AnalysisConfig)}
