"""One resumer per run (resnet_exp/tracking/claims.py): when a claim holds and when it is free,
readable times, and (slow) N processes that claim one stopped run at the same instant, of which
exactly one wins, on a SQLite store here and on the PostgreSQL tracking server in
tests/test_tracking_server.py.

    pytest tests/test_claims.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import subprocess_env
from resnet_exp import schema as S
from resnet_exp.tracking.claims import (
    KILLED,
    RUNNING,
    ResumeHeld,
    claim,
    claims,
    heartbeat,
    held_by,
    iso,
    process_tag,
    seconds_of,
)

# A claimer: for each round, waits for the round's go file (so that every claimer has imported
# MLflow and they all claim within a millisecond or two of each other), claims, and writes 'won'
# or its one-line refusal.
CLAIMER = """
import sys, time
from pathlib import Path
from mlflow import MlflowClient
from resnet_exp.tracking.claims import ResumeHeld, claim
client, run_id, folder, me, rounds = MlflowClient(), sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
(folder / f"ready.{me}").touch()
for round in range(rounds):
    while not (folder / f"go.{round}").exists():
        time.sleep(0.001)
    try:
        claim(client, run_id)
        said = "won"
    except ResumeHeld as err:
        said = f"lost: {err}"
    (folder / f"said.{round}.{me}").write_text(said)
"""


def race(
    client: MlflowClient, run_id: str, folder: Path, claimers: int, rounds: int = 2
) -> list[list[tuple[int, str]]]:
    """`claimers` processes claim run `run_id` at once, `rounds` times; between two rounds the
    run is closed KILLED, as the winner's training would close it when interrupted. Returns, per
    round, (pid, what it said) of each claimer."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, run_id, str(folder), str(i), str(rounds)],
            env=subprocess_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(claimers)
    ]
    try:
        outcomes = []
        for round in range(rounds):
            wait_for(folder, "ready.*" if round == 0 else f"said.{round - 1}.*", processes)
            if round:
                client.set_terminated(run_id, KILLED)
            (folder / f"go.{round}").touch()
            wait_for(folder, f"said.{round}.*", processes)
            outcomes.append(
                [
                    (p.pid, (folder / f"said.{round}.{i}").read_text())
                    for i, p in enumerate(processes)
                ]
            )
        return outcomes
    finally:
        for process in processes:
            process.kill()
            process.wait()


def wait_for(folder: Path, pattern: str, processes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 120
    while len(list(folder.glob(pattern))) < len(processes):
        failed = [p.stderr.read() for p in processes if p.poll() is not None]
        assert not failed and time.monotonic() < deadline, failed
        time.sleep(0.01)


def assert_one_winner(client: MlflowClient, run_id: str, results, attempt: int) -> None:
    won = [pid for pid, said in results if said == "won"]
    assert len(won) == 1, results
    claim_text = client.get_run(run_id).data.params[S.RESUME_ATTEMPT.format(n=attempt)]
    assert f"{socket.gethostname()} pid {won[0]} " in claim_text
    for pid, said in results:
        if pid != won[0]:
            # one line naming the run and the process that holds it
            assert said.startswith(f"lost: run {run_id} ") and "\n" not in said, said
            assert f"{socket.gethostname()} pid {won[0]}" in said, said


def race_twice(client: MlflowClient, run_id: str, folder: Path, claimers: int) -> None:
    """Race for a stopped run; then, once the winner's resume has ended, race again: each time
    exactly one claimer resumes it."""
    first, second = race(client, run_id, folder, claimers)
    assert_one_winner(client, run_id, first, attempt=2)
    assert_one_winner(client, run_id, second, attempt=3)
    assert sorted(claims(client.get_run(run_id))) == [2, 3]


def stopped(client: MlflowClient, status: str = KILLED) -> str:
    experiment_id = client.create_experiment(f"claims-{time.monotonic_ns()}")
    run_id = client.create_run(experiment_id, run_name="r10-b1111-f3-s5").info.run_id
    client.set_tag(run_id, S.TAG_PROCESS, f"{socket.gethostname()} {dead_pid()} {iso(1.0)}")
    if status != RUNNING:
        client.set_terminated(run_id, status)
    return run_id


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_claim_holds_until_its_process_closes_the_run(tracking_uri):
    client = MlflowClient(tracking_uri)
    run_id = stopped(client, RUNNING)  # kill -9: RUNNING, its process gone
    assert held_by(client.get_run(run_id)) is None
    claim(client, run_id)
    run = client.get_run(run_id)
    who = held_by(run)
    assert (who.host, who.pid) == (socket.gethostname(), os.getpid())
    assert list(claims(run)) == [2]
    with pytest.raises(ResumeHeld, match=rf"^run {run_id} \(r10-b1111-f3-s5\) is being resumed by"):
        claim(client, run_id)  # even by its own process: one resume at a time
    client.set_terminated(run_id, KILLED)  # the resumed training ended (here: interrupted)
    assert held_by(client.get_run(run_id)) is None
    claim(client, run_id)
    assert list(claims(client.get_run(run_id))) == [2, 3]


def test_a_first_attempt_holds_its_run_while_running_and_its_heartbeat_is_an_iso_time(
    tracking_uri,
):
    client = MlflowClient(tracking_uri)
    run_id = stopped(client, RUNNING)
    with heartbeat(client, run_id, every=60):
        time.sleep(0.2)
        run = client.get_run(run_id)
        assert held_by(run) is not None
        beat = run.data.tags[S.TAG_HEARTBEAT]
        assert beat.endswith("Z") and abs(seconds_of(beat) - time.time()) < 30, beat
        assert run.data.tags[S.TAG_PROCESS] == process_tag()
        with pytest.raises(ResumeHeld, match="is being trained by"):
            claim(client, run_id)
    # bookkeeping out of sight: the MLflow UI lists no tag whose name starts with 'mlflow.'
    assert S.TAG_PROCESS.startswith("mlflow.") and S.TAG_HEARTBEAT.startswith("mlflow.")
    assert seconds_of("1733265600") == 1733265600.0  # older runs' unix times still read


@pytest.mark.slow
def test_claimers_racing_for_one_stopped_run_on_sqlite_leave_exactly_one_resumer(
    tracking_uri, tmp_path
):
    client = MlflowClient(tracking_uri)
    race_twice(client, stopped(client), tmp_path, claimers=4)
