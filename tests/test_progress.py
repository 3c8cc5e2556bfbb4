"""A sweep's progress lines (resnet_exp/sweep/progress.py) as pure functions: the time left, how a
cell's end reads, the numbering, and how many Ray trials run at once. The lines of real sweeps
are checked where those sweeps run: tests/test_sweep.py (local) and tests/test_ray.py (Ray)."""

from __future__ import annotations

import logging

from resnet_exp.sweep import progress as P
from resnet_exp.sweep.cells import FAILED, SKIPPED, TRAINED, ChildOutcome


def outcome(name: str, how: str, run_id: str = "", error: str = "", **trained) -> ChildOutcome:
    return ChildOutcome(name, 0, "0123abcd", how, run_id, error, **trained)


def test_time_left_is_the_mean_trained_time_times_the_cells_left_over_those_at_once():
    assert P.seconds_left([], 5, 1) is None  # nothing trained yet: no estimate
    assert P.seconds_left([40, 50], 3, 1) == 135
    assert P.seconds_left([40, 50], 4, 2) == 90
    assert P.seconds_left([30], 2, 4) == 30  # two cells on four slots take one cell's time
    assert P.seconds_left([30], 0, 1) == 0


def test_seconds_read_as_a_person_says_them():
    assert [P.format_seconds(s) for s in (0.4, 41.2, 99, 480, 3000, 7000)] == [
        "0 s",
        "41 s",
        "99 s",
        "8 min",
        "50 min",
        "1.9 h",
    ]


def test_a_cells_end_says_how_it_ended_and_what_is_left():
    trained = outcome("r18-b2222-f2-s1", TRAINED, "abc123")
    assert (
        P.ended_text(trained, 0.43124, 41.2, 480)
        == "trained: test_acc 0.4312, 41 s; about 8 min left"
    )
    assert P.ended_text(trained, None, 41.2) == "trained: 41 s"  # the last cell: nothing left
    assert (
        P.ended_text(outcome("x", SKIPPED, "abc123"), left_s=30)
        == "skipped (run abc123 already FINISHED); about 30 s left"
    )
    failed = outcome("x", FAILED, "def456", error="\nOSError: [Errno 28] No space left\n  File ...")
    assert P.ended_text(failed) == "FAILED: OSError: [Errno 28] No space left"


def test_cells_are_numbered_in_order_and_added_seeds_extend_the_count(caplog):
    caplog.set_level(logging.INFO, logger=P.log.name)
    progress = P.SweepProgress(at_once=2)
    assert progress.add(["a", "b", "c"]) == [1, 2, 3]
    progress.started(2)
    progress.ended(2, outcome("b", TRAINED, "run-b", test_acc=0.5, seconds=60.0))
    progress.ended(1, outcome("a", SKIPPED, "run-a"))
    assert progress.add(["d"]) == [4]  # seeds=auto adds a cell
    progress.started(4, "(ray trial t_00003)")
    assert caplog.messages == [
        "[2/3] b started",
        "[2/3] b trained: test_acc 0.5000, 60 s; about 60 s left",  # 60 s x 2 left / 2 at once
        "[1/3] a skipped (run run-a already FINISHED); about 60 s left",
        "[4/4] d started (ray trial t_00003)",
    ]


def test_ray_slots_pack_trials_on_each_node():
    nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 2.0}]
    assert P.slots(nodes, 2, 0) == 5
    assert P.slots(nodes, 1, 0.25) == 4  # four quarter GPUs on the first node, none on the second
    assert P.slots(nodes, 3, 0) == 2
    assert P.slots([{"CPU": 1.0}], 0.1, 0) == 10  # 1 / 0.1 in floating point is 9.999...
