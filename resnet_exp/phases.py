"""Where a run's wall time goes: named phases timed with a context manager and written to the
run's `timing/phases.csv` (schema.PHASE_TIMES; tracking/timing.py), so a short run shows its
fixed costs (data, checkpoints, model logging, registration) next to the fit itself.

    python -c "from resnet_exp.phases import Phases; p = Phases(); \
exec('with p.timed(\"fit\"): pass'); print(p.seconds)"
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


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
