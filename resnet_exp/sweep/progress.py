"""A sweep's progress on the console, under either executor: a line per cell as it starts and
as it ends, numbered in the grid order of this shard, with an estimate of the time left, e.g.

    [3/15] r18-b2222-f2-s1 started
    [3/15] r18-b2222-f2-s1 trained: test_acc 0.4312, 41 s; about 8 min left

The lines go through `logging` (logger resnet_exp.sweep.progress), so `resnet-exp sweep` shows
them among its other messages. Under Ray the driver also reports each trial's state changes
(resnet_exp/sweep/ray_trial.py's TrialProgress).

    resnet-exp sweep --data demo --weights none --image-size 32 --max-epochs 1 --freeze-blocks 3,4 --seeds 1
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from resnet_exp.sweep.cells import SKIPPED, TRAINED, ChildOutcome

log = logging.getLogger(__name__)


def format_seconds(seconds: float) -> str:
    """'41 s', '8 min', '2.5 h': as precise as a person reading a progress line needs."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 100 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def seconds_left(trained_s: Sequence[float], cells_left: int, at_once: int) -> float | None:
    """The mean seconds of the cells trained so far times the cells left, divided by the cells
    that run at once (never more than are left: the last two of four parallel slots take one
    cell's time, not half of it); None before any cell has trained."""
    if not trained_s:
        return None
    if cells_left <= 0:
        return 0.0
    return sum(trained_s) / len(trained_s) * cells_left / max(1, min(at_once, cells_left))


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def cell_label(number: int, total: int, run_name: str) -> str:
    return f"[{number}/{total}] {run_name}"


def ended_text(
    outcome: ChildOutcome,
    test_acc: float | None = None,
    seconds: float | None = None,
    left_s: float | None = None,
) -> str:
    """What follows the cell's label when it ends: trained (test_acc, time), skipped or FAILED,
    then the time left where it is known and some is."""
    if outcome.outcome == TRAINED:
        facts = [
            f"test_acc {test_acc:.4f}" if test_acc is not None else "",
            format_seconds(seconds) if seconds is not None else "",
        ]
        text = "trained" + (": " + ", ".join(f for f in facts if f) if any(facts) else "")
    elif outcome.outcome == SKIPPED:
        text = f"skipped (run {outcome.run_id} already FINISHED)"
    else:
        text = f"FAILED: {first_line(outcome.error)}"
    return text + (f"; about {format_seconds(left_s)} left" if left_s else "")


class SweepProgress:
    """Numbers the cells as executors hand them over and logs their starts and ends. An adaptive
    sweep's added seeds extend the count (their number is known only once they are added)."""

    def __init__(self, at_once: int = 1) -> None:
        self.at_once = at_once  # cells that run at the same time: 1 locally, Ray's slots
        self.names: list[str] = []
        self.ended_count = 0
        self.trained_s: list[float] = []

    def add(self, names: Sequence[str]) -> list[int]:
        """Number the next cells (from 1, in the order given: the shard's grid order)."""
        self.names.extend(names)
        return list(range(len(self.names) - len(names) + 1, len(self.names) + 1))

    def label(self, number: int) -> str:
        return cell_label(number, len(self.names), self.names[number - 1])

    def started(self, number: int, how: str = "") -> None:
        log.info("%s started%s", self.label(number), f" {how}" if how else "")

    def ended(self, number: int, outcome: ChildOutcome) -> None:
        """Log how the cell ended, with a trained cell's test_acc and time."""
        if outcome.outcome == TRAINED and outcome.seconds is not None:
            self.trained_s.append(outcome.seconds)
        self.ended_count += 1
        left = seconds_left(self.trained_s, len(self.names) - self.ended_count, self.at_once)
        text = ended_text(outcome, outcome.test_acc, outcome.seconds, left)
        log.info("%s %s", self.label(number), text)


def slots(nodes: Sequence[dict[str, float]], cpu: float, gpu: float) -> int:
    """How many trials of `cpu` CPUs and `gpu` GPUs the nodes hold at once (each node packs its
    own; a trial never spans nodes)."""

    def fits(have: float, want: float) -> int:
        return math.floor(have / want + 1e-9) if want > 0 else 1 << 30

    return sum(min(fits(n.get("CPU", 0.0), cpu), fits(n.get("GPU", 0.0), gpu)) for n in nodes)
