"""Which process trains a run, whether it still runs, and the one atomic step that makes a single
process the resumer of a stopped run. MLflow and psutil only, no torch.

A process names itself on its run (`process`: host, pid, start time) and shows it is alive with a
`heartbeat` every HEARTBEAT_S seconds. On this host a run's process is alive while that pid with
that start time exists; on another host, while its heartbeat is younger than STALE_S.

**The claim.** Tags are last-writer-wins and a status change is no compare-and-swap, but a param
is write-once: the store's primary key (run, key) lets one value in, and MLflow answers a second,
different value with "Changing param values is not allowed". That holds for a SQLite store and
for a tracking server over PostgreSQL alike (the server runs the same SQLAlchemy store, so two
clients race on the database's unique key). To resume a stopped run, a process logs the param
`resume/attempt_<n>` (n = 2 for its first resume) with its own name and reads it back: exactly
one process finds its own value there. The claim holds while that process lives and until it
closes the run (the run's end time passes the claim's); a resumer that fails before it reopens
the run releases it by closing the run again.

    python -c "from resnet_exp.tracking.claims import process_tag; print(process_tag())"
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

import psutil
from mlflow import MlflowClient
from mlflow.entities import Run, RunStatus
from mlflow.exceptions import MlflowException

from resnet_exp import schema as S
from resnet_exp.errors import UserError

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0  # how often a training writes its heartbeat tag (one small write)
# Another host's run counts as dead after this long without a heartbeat: five missed beats, so
# a tracking server that is down for a minute or two does not make a live run look dead.
STALE_S = 5 * HEARTBEAT_S
RUNNING, FINISHED, KILLED = (
    RunStatus.to_string(s) for s in (RunStatus.RUNNING, RunStatus.FINISHED, RunStatus.KILLED)
)
ATTEMPT_KEY = re.compile(re.escape(S.RESUME_ATTEMPT).replace(r"\{n\}", r"(\d+)") + "$")
CLAIM_TEXT = re.compile(r"^(\S+) by (\S+) pid (\d+) \(started (\S+)\)$")


class ResumeHeld(UserError):
    """Another live process trains or resumes the run: names the run and that process."""

    def __init__(self, message: str, run_id: str = "") -> None:  # "": unpickled (Ray)
        super().__init__(message)
        self.run_id = run_id


def iso(seconds: float) -> str:
    """A unix time as UTC ISO 8601 to the millisecond, e.g. 2026-12-03T22:40:03.123Z."""
    text = datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def seconds_of(text: str | None) -> float | None:
    """The unix time of an ISO time, or of a unix time written as a number (older runs)."""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class Holder:
    """A process that trains a run: the one named by its `process` tag, or the one that claimed
    its latest resume (`since`: when)."""

    host: str
    pid: int
    started: float  # the process's start time: a reused pid is not the same process
    since: float | None = None

    def __str__(self) -> str:
        return f"{self.host} pid {self.pid}"

    def alive(self, last_sign: float, now: float) -> bool:
        if self.host == socket.gethostname():
            try:
                return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
            except psutil.Error:
                return False
        return now - last_sign < STALE_S


def this_process() -> Holder:
    return Holder(socket.gethostname(), os.getpid(), psutil.Process().create_time())


def process_tag() -> str:
    """'<host> <pid> <start time>' of this process."""
    me = this_process()
    return f"{me.host} {me.pid} {iso(me.started)}"


def holder(run: Run) -> Holder | None:
    """Who trains the run: its latest resume's claimer, else the process of its `process` tag."""
    attempts = claims(run)
    if attempts:
        found = CLAIM_TEXT.match(attempts[max(attempts)])
        if found:
            since, host, pid, started = found.groups()
            return Holder(host, int(pid), seconds_of(started) or 0.0, seconds_of(since))
    parts = (S.tag(run.data.tags, S.TAG_PROCESS) or "").split()
    if len(parts) == 3 and parts[1].isdigit():
        return Holder(parts[0], int(parts[1]), seconds_of(parts[2]) or 0.0)
    return None


def claims(run: Run) -> dict[int, str]:
    """The run's resume claims: attempt number -> claim text."""
    found = ((ATTEMPT_KEY.match(k), v) for k, v in run.data.params.items())
    return {int(m.group(1)): v for m, v in found if m}


def held_by(run: Run, now: float | None = None) -> Holder | None:
    """The live process that trains or resumes the run, or None when the run is free to resume
    (or FINISHED). A first attempt holds its run while the run is RUNNING; a claimer, from its
    claim until it closes the run again, whatever the status in between."""
    if run.info.status == FINISHED:
        return None
    now = time.time() if now is None else now
    who = holder(run)
    if who is None or who.since is None:
        if run.info.status != RUNNING:
            return None
    elif run.info.end_time and run.info.end_time / 1000 >= who.since:
        return None  # the claimer closed the run after claiming it
    beat = seconds_of(S.tag(run.data.tags, S.TAG_HEARTBEAT))
    last = max(beat or 0.0, (who.since if who else None) or 0.0, run.info.start_time / 1000)
    if who is None:  # no process named yet: a run opened moments ago, or by older code
        return Holder("?", 0, 0.0) if now - last < STALE_S else None
    return who if who.alive(last, now) else None


def is_alive(run: Run, now: float | None = None) -> bool:
    """Whether a process still trains (or resumes) the run."""
    return held_by(run, now) is not None


def claim(client: MlflowClient, run_id: str) -> None:
    """Make this process the only resumer of a stopped run, or raise ResumeHeld naming the run and
    the process that holds it (see the module docstring)."""
    run = client.get_run(run_id)
    who = held_by(run)
    if who is not None:
        raise ResumeHeld(held_message(run, who), run_id)
    key = S.RESUME_ATTEMPT.format(n=max(claims(run), default=1) + 1)
    me = this_process()
    text = f"{iso(time.time())} by {me} (started {iso(me.started)})"
    try:
        client.log_param(run_id, key, text)
    except MlflowException as err:  # another value is there: read below whose
        log.debug("claim %s of run %s: %s", key, run_id, err.message)
    run = client.get_run(run_id)
    if run.data.params.get(key) != text:
        winner = holder(run)
        raise ResumeHeld(held_message(run, winner or Holder("?", 0, 0.0)), run_id)


def held_message(run: Run, who: Holder) -> str:
    what = "resumed" if who.since is not None else "trained"
    since = f" since {iso(who.since)}" if who.since is not None else ""
    return (
        f"run {run.info.run_id} ({run.info.run_name}) is being {what} by process {who}{since}: "
        "one process per run; wait for it to end, or stop that process and run this again"
    )


def release(client: MlflowClient, run_id: str) -> None:
    """Give up a claim before the run was reopened: closing the run again moves its end time
    past the claim (a RUNNING run whose process is gone becomes KILLED; others keep their status)."""
    status = client.get_run(run_id).info.status
    client.set_terminated(run_id, KILLED if status == RUNNING else status)


@contextmanager
def heartbeat(client: MlflowClient, run_id: str, every: float = HEARTBEAT_S) -> Iterator[None]:
    """Name this process on the run and refresh its heartbeat every `every` seconds until the
    block ends. A failed write is retried at the next beat: the server may be down a while."""
    client.set_tag(run_id, S.TAG_PROCESS, process_tag())
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                client.set_tag(run_id, S.TAG_HEARTBEAT, iso(time.time()))
            except Exception:  # noqa: BLE001 - never let bookkeeping end a training
                log.debug("heartbeat of run %s not written", run_id, exc_info=True)
            if stop.wait(every):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
