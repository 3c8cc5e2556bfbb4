"""What a study compared besides depth, read from its runs' params: the initial weights, the
dataset's classes and its test images, in words; and the initialisation as a line that no
comparison crosses (the same network from ImageNet and from random weights is two series).

    python -c "from analysis.study import describe_weights; print(describe_weights('none'))"
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from analysis import columns as C
from resnet_exp.config import IMAGENET, NO_WEIGHTS
from resnet_exp.config import describe_weights as config_describe_weights

UNKNOWN = "?"  # a param the run did not record (runs from before it was logged)
SERIES = [C.NETWORK, C.WEIGHTS]  # what one line of a plot, or one dial of the answer, holds fixed


def describe_weights(weights: str) -> str:
    """The `weights` param in words: 'imagenet', 'none', a state_dict file, or unrecorded."""
    return (
        "an unrecorded initialisation" if weights == UNKNOWN else config_describe_weights(weights)
    )


def _known(values: pd.Series) -> list[int]:
    return sorted({int(v) for v in values.dropna()})


def _count(values: list[int], unit: str) -> str:
    """'3 classes', 'from 28 to 30 test images' or 'an unrecorded number of classes'."""
    if not values:
        return f"an unrecorded number of {unit}"
    if len(values) == 1:
        return f"{values[0]:,} {unit}"
    return f"from {values[0]:,} to {values[-1]:,} {unit} (runs differ)"


@dataclass(frozen=True)
class Study:
    dataset: str  # the slug, e.g. 'demo'
    runs_by_weights: dict[str, int]  # `weights` value -> runs, most runs first
    num_classes: list[int]  # distinct recorded values
    test_sizes: list[int]

    @property
    def mixed_weights(self) -> bool:
        return len(self.runs_by_weights) > 1

    @property
    def chance(self) -> float | None:
        """Accuracy of guessing among the classes; None when the class count is unknown or varies."""
        return 1 / self.num_classes[0] if len(self.num_classes) == 1 else None

    def frozen_stages_clause(self) -> str:
        """How the frozen stages got their weights, for the study's question; empty when runs
        differ (the report says so) or did not record it."""
        if self.mixed_weights:
            return ""
        weights = next(iter(self.runs_by_weights))
        return {
            IMAGENET: " when transferred from ImageNet",
            NO_WEIGHTS: " at their random initial weights",
            UNKNOWN: "",
        }.get(weights, f" at the weights loaded from {weights}")

    def description(self) -> str:
        """One or two sentences: the initialisation(s), the dataset, its classes and test images."""
        data = (
            f"on {self.dataset}, {_count(self.num_classes, 'classes')}, "
            f"{_count(self.test_sizes, 'test images')} per run"
        )
        if not self.mixed_weights:
            return f"Initialisation: {describe_weights(next(iter(self.runs_by_weights)))}; {data}."
        mix = "; ".join(
            f"{describe_weights(w)} in {n} runs" for w, n in self.runs_by_weights.items()
        )
        return (
            f"The runs mix initialisations: {mix}. Configurations that differ in initialisation "
            "differ in more than depth, so plots and sentences keep them apart "
            f"(`{C.WEIGHTS}` column); {data}."
        )


def study_of(runs: pd.DataFrame, dataset: str) -> Study:
    """The study behind the per-run table (analysis.runs.RunTable.runs)."""
    counts = runs[C.WEIGHTS].astype(str).value_counts()
    by_weights = {w: int(counts[w]) for w in sorted(counts.index, key=lambda w: (-counts[w], w))}
    return Study(dataset, by_weights, _known(runs[C.NUM_CLASSES]), _known(runs[C.TEST_SIZE]))


def weights_note(ranking: pd.DataFrame, weights: str) -> str:
    """' (weights=none)' where the ranking mixes initialisations, else nothing."""
    return f" ({C.WEIGHTS}={weights})" if ranking[C.WEIGHTS].nunique() > 1 else ""


def series_name(ranking: pd.DataFrame, network: str, weights: str) -> str:
    """'basic 2,2,2,2', or 'basic 2,2,2,2 (weights=none)' where the ranking mixes initialisations."""
    return network + weights_note(ranking, weights)
