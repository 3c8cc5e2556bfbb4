"""Where a run's wall time goes: named phases timed with a context manager and logged as
`time/*` metrics (schema.PHASE_TIMES), so a short run shows its fixed costs (data, checkpoints,
model logging, registration) next to the fit itself.

    python -c "from resnet_exp.phases import Phases; p = Phases(); \
exec('with p.timed(\"time/fit_s\"): pass'); print(p.seconds)"
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from typing import Iterator

# Fault injection: RESNET_EXP_SIGNAL_AT=<point> makes the process send itself SIGTERM when it
# reaches that point, so tests can check that an interrupt anywhere leaves no RUNNING run and
# no temporary folder (tests/test_interrupts.py). The points, in the order a sweep meets them:
SIGNAL_AT_ENV = "RESNET_EXP_SIGNAL_AT"
INTERRUPT_POINTS = ("image_store", "feature_cache", "fit", "test", "model_log", "register", "sweep_gap")


def interrupt_point(name: str) -> None:
    """Mark a point where an interrupt must be handled cleanly (see SIGNAL_AT_ENV)."""
    if os.environ.get(SIGNAL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGTERM)


class Phases:
    """Seconds per phase name; a phase timed twice adds up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def elapsed(self) -> float:
        """Seconds since these phases began to be counted."""
        return time.perf_counter() - self.start
