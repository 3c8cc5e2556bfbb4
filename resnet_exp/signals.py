"""The process's answer to Ctrl-C and SIGTERM, in one place (standard library only).

Ctrl-C is Python's KeyboardInterrupt; SIGTERM becomes `Terminated` (a SystemExit with status 143)
while a command runs, so that work under way closes its run KILLED and removes its temporary
folders instead of dying mid-write. `interrupts_deferred` holds both signals over a block that
must not be cut in half. `RunInterrupted` tells the CLI which run an interrupt marked KILLED.

    python -c "from resnet_exp.signals import sigterm_raises; import os, signal; \
exec('with sigterm_raises():\\n  os.kill(os.getpid(), signal.SIGTERM)')"; echo $?
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Terminated(SystemExit):
    """SIGTERM, raised where the process was: exits as a process ended by SIGTERM does (143)."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


class RunInterrupted(BaseException):
    """Ctrl-C or SIGTERM stopped the work of run `run_id`, which is now marked KILLED. A
    BaseException, as KeyboardInterrupt is, so that no `except Exception` takes it for a failure;
    the CLI prints one line naming the run and exits as the signal would have (130 or 143)."""

    def __init__(self, run_id: str, signum: int) -> None:
        super().__init__(f"run {run_id} interrupted by {signal.Signals(signum).name}")
        self.run_id = run_id
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupt_signal(error: BaseException) -> int | None:
    """The signal that `error` stands for, or None if it is no interrupt: SIGINT for Ctrl-C
    (KeyboardInterrupt, or the SystemExit(1) Lightning turns it into), SIGTERM for Terminated
    and for the code-less SystemExit Lightning raises on SIGTERM."""
    if isinstance(error, RunInterrupted):
        return error.signum
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(error, SystemExit):
        if isinstance(error.code, int) and error.code > 128:
            return error.code - 128
        return signal.SIGINT if isinstance(error.__context__, KeyboardInterrupt) else signal.SIGTERM
    return None


# Fault injection: RESNET_EXP_SIGNAL_AT=<point> makes the process send itself SIGTERM when it
# reaches that point (<point>:SIGINT sends Ctrl-C's signal instead, <point>:SIGKILL is a
# `kill -9`), so tests can check that an
# interrupt anywhere leaves no RUNNING run and no temporary folder, and is answered at once
# (tests/test_interrupts.py). <point>@<n> signals only where the point is reached with index n:
# `fit@3` at the start of epoch 3, so that a test can stop a training at any epoch. The points,
# in the order a sweep meets them:
SIGNAL_AT_ENV = "RESNET_EXP_SIGNAL_AT"
INTERRUPT_POINTS = (
    "image_store",
    "feature_cache",
    "fit",
    "test",
    "model_log",
    "register",
    "sweep_gap",
)
injected_at: float | None = None  # time.monotonic() of the last injected signal


def interrupt_point(name: str, index: int | None = None) -> None:
    """Mark a point where an interrupt must be handled cleanly (see SIGNAL_AT_ENV); `index`
    tells apart the times a point is reached (the epoch for `fit`)."""
    where, _, signame = os.environ.get(SIGNAL_AT_ENV, "").partition(":")
    point, _, at = where.partition("@")
    if point == name and (not at or at == str(index)):
        global injected_at
        injected_at = time.monotonic()
        os.kill(os.getpid(), signal.Signals[signame or "SIGTERM"])


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then handle them as they would have been.

    What the block does is never cut in half: a SQLite write interrupted midway lost the epoch's
    metrics (whose log line was already printed) and left a broken connection that printed
    sqlite3/sqlalchemy errors. Main thread only (where Python runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    # A handler not set from Python (getsignal gives None) could not be put back: left alone.
    previous = {
        signum: handler
        for signum in (signal.SIGINT, signal.SIGTERM)
        if (handler := signal.getsignal(signum)) is not None
    }
    for signum in previous:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(caught):  # each once, in the order they came
        handler = previous[signum]
        if callable(handler):
            handler(signum, None)  # Python's default raises KeyboardInterrupt, ours Terminated
        elif handler == signal.SIG_DFL:
            signal.raise_signal(signum)  # the process ends as the signal would have ended it


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM as an exception (Terminated) for a whole command, not only while a run is open:
    the work before a run opens (data, image store, feature cache) then removes its temporary
    folders too, and a sweep's parent is closed KILLED between its children."""
    previous = catch_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def catch_sigterm():
    """Make SIGTERM an exception while a run is open (main thread only), so the run is closed
    KILLED instead of left RUNNING; returns the handler to restore, or None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _raise_terminated)
        return previous
    return None  # an enclosing scope (a sweep around its children) already catches it


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt inside the block, then leaves it as `Terminated`.

    For a block that waits in native code which lets only KeyboardInterrupt through (Ray's
    waits in a Tune driver turn any other exception raised by a signal handler into a
    KeyboardInterrupt, or lose it): the block unwinds as it does for Ctrl-C, and the process
    still exits 143, not 130. Main thread only; a no-op where SIGTERM is not ours to handle."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        caught.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except KeyboardInterrupt as err:
        if caught:
            raise Terminated() from err
        raise
    finally:
        if previous is not None:  # None: a handler not set from Python, which cannot be put back
            signal.signal(signal.SIGTERM, previous)
