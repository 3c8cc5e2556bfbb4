"""SIGTERM at each point where a training or a sweep can be stopped (image store, feature
cache, fit, test, model logging, registration, between a sweep's children): every run ends
KILLED, none stays RUNNING, no temporary folder is left, and the command has ended within 2 s.
The process signals itself at the point named by RESNET_EXP_SIGNAL_AT (resnet_exp/signals.py);
the CLI runs in this process, so a case costs seconds, not a new interpreter.

    pytest tests/test_interrupts.py
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import cli_options
from resnet_exp import signals
from resnet_exp.cli import main
from resnet_exp.data.demo import demo_root
from resnet_exp.signals import INTERRUPT_POINTS, SIGNAL_AT_ENV

BEFORE_THE_RUN = ("image_store", "feature_cache")  # a training's run is not open yet


@pytest.mark.slow
@pytest.mark.parametrize("point", INTERRUPT_POINTS)
def test_sigterm_at_any_point_leaves_every_run_killed_and_no_temporary_folder(
    point, tmp_path, data_dir, tracking_uri, monkeypatch
):
    scratch = tmp_path / "tmp"  # where tempfile puts the model folder during model logging
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    data = tmp_path / "data"  # its own data_dir: the image store is built (and cut) in this test
    shutil.copytree(demo_root(data_dir), demo_root(data))
    monkeypatch.setenv(SIGNAL_AT_ENV, point)
    common = cli_options(
        data="demo",
        data_dir=data,
        output_dir=tmp_path / "results",
        weights="none",
        image_size=32,
        batch_size=16,
        max_epochs=1,
        limit_batches=2,
        precision="32-true",
        num_workers=0,
    )
    command = (
        ["sweep", "--freeze-blocks", "2,4", "--seeds", "1"]
        if point == "sweep_gap"
        else ["train", "--freeze-blocks", "2"]
    )
    result = CliRunner().invoke(main, command + common)
    answered_in = time.monotonic() - signals.injected_at

    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert answered_in < 2.0, f"SIGTERM at {point} took {answered_in:.1f} s to end the command"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored for whatever comes next
    client = MlflowClient(tracking_uri)
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
    ]
    expected = 0 if point in BEFORE_THE_RUN else 1
    assert len(runs) == expected, [(r.info.run_name, r.info.status) for r in runs]
    assert [r.info.status for r in runs] == ["KILLED"] * expected
    if runs:
        assert "interrupted: run" in result.output and "marked KILLED" in result.output
    # torch keeps a compile cache there by design (torchinductor_<user>); nothing else may stay
    assert [p.name for p in scratch.iterdir() if not p.name.startswith("torchinductor_")] == []
    assert not [p for p in data.rglob(".*") if p.is_dir()], "an unfinished (hidden) store folder"


@pytest.mark.slow
def test_ctrl_c_before_any_run_exits_130_in_one_line(tmp_path, data_dir, tracking_uri, monkeypatch):
    """Not click's 'Aborted!' and exit 1: the status of a process ended by Ctrl-C, and a line
    saying that nothing was recorded."""
    data = tmp_path / "data"
    shutil.copytree(demo_root(data_dir), demo_root(data))
    monkeypatch.setenv(SIGNAL_AT_ENV, "image_store:SIGINT")
    result = CliRunner().invoke(
        main,
        ["train"]
        + cli_options(
            data="demo",
            data_dir=data,
            weights="none",
            image_size=32,
            output_dir=tmp_path / "results",
        ),
    )
    assert result.exit_code == 128 + signal.SIGINT, result.output
    assert (
        result.output.strip().splitlines()[-1]
        == "interrupted before any run was opened: nothing recorded"
    )
    assert "Aborted" not in result.output
    assert not MlflowClient(tracking_uri).search_runs(
        [e.experiment_id for e in MlflowClient(tracking_uri).search_experiments()]
    )


def test_sigterm_through_a_wait_that_lets_only_ctrl_c_through_still_exits_143():
    """Inside `sigterm_as_ctrl_c` (a Tune driver waiting on Ray) SIGTERM unwinds the block as a
    KeyboardInterrupt, which such a wait lets through, then leaves it as Terminated (143); Ctrl-C
    stays Ctrl-C, and the handler from before the block is back afterwards."""
    import os

    before = signal.getsignal(signal.SIGTERM)
    unwound = []
    with pytest.raises(signals.Terminated) as stopped:
        with signals.sigterm_as_ctrl_c():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs before this returns
            except KeyboardInterrupt:  # what Ray's waits re-raise
                unwound.append("ctrl-c")
                raise
    assert unwound == ["ctrl-c"] and stopped.value.code == 143
    with pytest.raises(KeyboardInterrupt):
        with signals.sigterm_as_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is before
