"""Resources and their errors: group-readable shared folders, empty class folders, bad weights
files, disk errors before the run, atomic checkpoints, phase times and precision by evidence."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from conftest import cli_options, make_image_folder
from resnet_exp import schema as S
from resnet_exp.config import TrainConfig
from resnet_exp.errors import DataError, WeightsError

# --- the small things ------------------------------------------------------------------------


def test_an_empty_class_folder_is_named(tmp_path):
    make_image_folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'c'} holds no image files"):
        from resnet_exp.data.splits import load_splits

        load_splits(TrainConfig(data=str(tmp_path), weights="none", image_size=32))


def test_an_empty_class_folder_inside_a_split_is_named(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 4, "b": 4})
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match="train/c holds no image files"):
        from resnet_exp.data.splits import load_splits

        load_splits(TrainConfig(data=str(tmp_path), weights="none", image_size=32))


def test_a_text_file_as_weights_says_what_was_expected(tmp_path):
    from resnet_exp.model.network import load_initial_weights

    garbage = tmp_path / "weights.pt"
    garbage.write_text("random text, not a tensor in sight\n" * 10)
    with pytest.raises(WeightsError, match="expected a PyTorch state_dict saved with torch.save"):
        load_initial_weights(str(garbage), S.BASIC, (2, 2, 2, 2))


LAPTOP = 8e9  # bytes free: what the memory check compares with, fixed so the tests agree everywhere


@pytest.mark.parametrize(
    "options, words",
    [
        (["--block", "bottleneck", "--blocks", "99,99,99,99"], ["blocks=99,99,99,99", "589,"]),
        (["--image-size", "8192"], ["image_size=8192", "batch_size=32"]),
        (["--image-size", "100000"], ["image_size=100000", "32..8192"]),
    ],
)
def test_a_network_or_batch_too_big_for_memory_is_refused_in_one_line_before_any_data(
    tmp_path, tracking_uri, monkeypatch, options, words
):
    import time

    from click.testing import CliRunner

    import resnet_exp.training.train  # noqa: F401  (imported before the clock starts)
    from resnet_exp import hardware
    from resnet_exp.cli import main

    monkeypatch.setattr(hardware, "memory_for_training", lambda: (LAPTOP, "this machine has"))
    data = tmp_path / "data"
    start = time.perf_counter()
    result = CliRunner().invoke(
        main, ["train", "--data", "demo", "--data-dir", str(data), *options]
    )
    took = time.perf_counter() - start
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code != 0 and len(errors) == 1 and "Traceback" not in result.output
    assert all(word in errors[0] for word in words), result.output
    if "32..8192" not in errors[0]:  # refused by the memory check, with the estimate and memory
        assert "GB of memory" in errors[0] and "this machine has 8.0 GB free" in errors[0]
    assert not data.exists() and took < 1.0, took  # nothing generated, loaded or measured


@pytest.mark.parametrize(
    "changes",
    [
        {},  # ResNet18 at 224 px, batch 32: the defaults
        {"freeze_blocks": 0},
        {"block": "bottleneck", "blocks": (3, 4, 23, 3)},  # ResNet101, as the README trains it
        {"block": "bottleneck", "blocks": (3, 4, 23, 3), "freeze_blocks": 0},
        {"image_size": 32, "batch_size": 16},  # the tests' shrunk runs
    ],
)
def test_the_documented_configurations_fit_a_laptop(monkeypatch, changes):
    from resnet_exp import hardware

    monkeypatch.setattr(hardware, "memory_for_training", lambda: (LAPTOP, "this machine has"))
    hardware.check_memory(TrainConfig(data="demo", **changes))


def test_atomic_folders_follow_the_umask(tmp_path):
    from resnet_exp.atomic import build_atomically

    def write(folder):
        (folder / "sub").mkdir()
        (folder / "sub" / "file.bin").write_bytes(b"x")

    previous = os.umask(0o022)
    try:
        assert build_atomically(tmp_path / "shared", write)
    finally:
        os.umask(previous)
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode)
        for p in (
            tmp_path / "shared",
            tmp_path / "shared" / "sub",
            tmp_path / "shared" / "sub" / "file.bin",
        )
    }
    assert modes == {"shared": 0o755, "sub": 0o755, "file.bin": 0o644}


# --- disk errors before the run, and checkpoints that are complete or absent --------------------


def unwritable_folder(tmp_path):
    """A folder nobody can create: its parent is a regular file (chmod does not stop root)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "sub"


@pytest.mark.parametrize("option", ["output_dir", "data_dir"])
def test_an_unwritable_folder_is_refused_before_any_run_opens(
    tmp_path, data_dir, tracking_uri, option
):
    from mlflow import MlflowClient

    from conftest import tiny_config
    from resnet_exp.errors import DiskError
    from resnet_exp.training.train import train

    bad = unwritable_folder(tmp_path)
    config = tiny_config(data_dir, tmp_path / "results").replace(**{option: str(bad)})
    with pytest.raises(DiskError) as err:
        train(config)
    message = str(err.value)
    assert f"{option}={str(bad)!r} is not a writable folder" in message and "\n" not in message
    client = MlflowClient(tracking_uri)
    assert not [
        r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0555 folder")
def test_a_read_only_folder_is_refused(tmp_path):
    from resnet_exp.disk import check_writable
    from resnet_exp.errors import DiskError

    folder = tmp_path / "ro"
    folder.mkdir(mode=0o555)
    with pytest.raises(DiskError, match="output_dir=.*ro' is not a writable folder"):
        check_writable(folder, "output_dir")


def test_a_folder_that_cannot_be_written_is_named_with_what_to_do_not_the_space(tmp_path):
    """TensorBoard's writer names its files as bytes: the line shows the path, not b'...'."""
    import errno

    from resnet_exp.disk import disk_error

    events = tmp_path / "logs" / "events.out.tfevents.1"
    error = OSError(errno.EROFS, "Read-only file system", os.fsencode(events))
    assert str(disk_error(error, need=10**6)) == (
        f"Read-only file system: {events}: make {events.parent} writable again, then run the "
        "same command"
    )


def test_a_finished_runs_folder_keeps_only_its_best_weights(tmp_path):
    from resnet_exp.training.checkpoints import keep_only

    names = ["epoch01-val_loss2.18.ckpt", "epoch01-val_loss2.18-v1.ckpt", "last.ckpt"]
    names += ["last.ckpt.host-1-0123abcd.tmp", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    best = tmp_path / "epoch01-val_loss2.18-v1.ckpt"
    assert sorted(p.name for p in keep_only(tmp_path, best)) == sorted(
        set(names) - {best.name, "notes.txt"}
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [best.name, "notes.txt"]


def test_a_checkpoint_that_does_not_fit_leaves_no_file_and_names_path_and_size(
    tmp_path, monkeypatch
):
    """A disk that fills while the checkpoint is written (simulated at the flush): the save
    raises one line naming the file and its size, and leaves neither the finished name nor a
    temporary file; the next save works."""
    import errno

    import torch

    from resnet_exp.errors import DiskError
    from resnet_exp.training import checkpoints

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.os, "fsync", full)
    target = tmp_path / "ckpt" / "epoch01.ckpt"
    io = checkpoints.AtomicCheckpointIO()
    with pytest.raises(DiskError, match=r"No space left on device: .*epoch01.ckpt \(needs 4.\d MB"):
        io.save_checkpoint({"w": torch.zeros(1_000_000)}, target)
    assert list(target.parent.iterdir()) == []  # neither the finished name nor the .tmp
    monkeypatch.undo()
    io.save_checkpoint({"w": torch.ones(3)}, target)
    assert io.load_checkpoint(target)["w"].tolist() == [1, 1, 1] and io.seconds > 0


@pytest.mark.parametrize("where", ["serializing", "fsync"])
def test_a_ctrl_c_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch, where):
    """Ctrl-C (or SIGTERM's exception) while a checkpoint is being written, in torch.save or in
    the wait for the disk: the finished name still holds the previous checkpoint, whole, and
    no temporary file is left; without a previous one, there is no file at all."""
    import torch

    from resnet_exp.training import checkpoints

    class InterruptedWhilePickled:
        def __reduce__(self):
            raise KeyboardInterrupt

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    io = checkpoints.AtomicCheckpointIO()
    first, last = tmp_path / "first.ckpt", tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.full((100_000,), 1.0)}, last)
    checkpoint = {"epoch": 2, "w": torch.full((100_000,), 2.0)}
    if where == "fsync":
        monkeypatch.setattr(checkpoints.os, "fsync", interrupted_fsync)
    else:
        checkpoint["late"] = InterruptedWhilePickled()
    for target in (last, first):
        with pytest.raises(KeyboardInterrupt):
            io.save_checkpoint(checkpoint, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 1 and saved["w"].eq(1.0).all()


def test_two_writers_of_one_checkpoint_never_share_a_temporary_file(tmp_path, monkeypatch):
    """Each write gets its own temporary name (host, process id, random part): two processes
    writing one path (a retried worker and one that still runs) cannot write into each other's
    file, nor move a half-written one into place."""
    import os

    from resnet_exp.training import checkpoints

    target = tmp_path / "last.ckpt"
    names = {checkpoints.partial_name(target) for _ in range(2)}
    pid = os.getpid()
    monkeypatch.setattr(checkpoints.os, "getpid", lambda: pid + 1)  # another process
    names.add(checkpoints.partial_name(target))
    assert len(names) == 3 and all(n.parent == tmp_path and n.name.endswith(".tmp") for n in names)
    assert sum(f"-{pid}-" in n.name for n in names) == 2


def test_a_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    """kill -9 during a write leaves its temporary file: the next write of that checkpoint on
    this host removes it, but never the file of a writer still alive, nor another host's."""
    import socket
    import subprocess
    import sys

    import torch

    from resnet_exp.training.checkpoints import AtomicCheckpointIO

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    host, target = socket.gethostname(), tmp_path / "last.ckpt"
    abandoned = tmp_path / f"last.ckpt.{host}-{gone.stdout.strip()}-0123abcd.tmp"
    alive = tmp_path / f"last.ckpt.{host}-{os.getppid()}-0123abcd.tmp"
    elsewhere = tmp_path / f"last.ckpt.not-{host}-{gone.stdout.strip()}-0123abcd.tmp"
    for path in (abandoned, alive, elsewhere):
        path.write_bytes(b"half a checkpoint")
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["last.ckpt", alive.name, elsewhere.name]
    )


def test_checkpoints_land_in_order_and_a_removed_one_stays_removed(tmp_path):
    """The last of several saves to one name is what stays, and a removal (ModelCheckpoint
    removes the previous best) is final: no late rename brings the file back."""
    import torch

    from resnet_exp.training.checkpoints import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    for epoch in range(3):
        io.save_checkpoint({"epoch": epoch, "w": torch.full((500_000,), float(epoch))}, last)
    io.save_checkpoint({"w": torch.zeros(500_000)}, best)
    io.remove_checkpoint(best)
    io.teardown()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    assert torch.load(last, weights_only=True)["epoch"] == 2


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 4 MB filesystem (tmpfs; needs root, skipped where mounting is refused)."""
    import subprocess

    folder = tmp_path / "tiny-disk"
    folder.mkdir()
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True
        ).returncode
        == 0
    )
    if not mounted:
        pytest.skip("cannot mount a tmpfs here")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_gives_one_line_and_no_truncated_checkpoint(tiny_disk):
    import torch

    from resnet_exp.errors import DiskError
    from resnet_exp.training.checkpoints import AtomicCheckpointIO

    target = tiny_disk / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    with pytest.raises(DiskError) as err:
        io.save_checkpoint({"w": torch.zeros(2_000_000)}, target)  # 8 MB
    message = str(err.value)
    assert message.startswith("No space left on device: ") and str(target) in message
    assert "needs 8.0 MB" in message and "MB free there" in message and "\n" not in message
    assert list(target.parent.iterdir()) == []


@pytest.mark.slow
def test_the_cli_reports_a_full_disk_in_one_line(
    tiny_disk, data_dir, tmp_path, tracking_uri, capfd
):
    """A real training whose output_dir fills up: one line naming the checkpoint and its size,
    no traceback, a FAILED run, and no file that looks finished. The CLI in this process: it
    ends in SystemExit (what the interpreter turns into the exit status, with nothing printed
    after the line), and a process of its own would add only its imports."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from resnet_exp.cli import main

    result = CliRunner().invoke(
        main,
        ["train"]
        + cli_options(
            data="demo",
            data_dir=str(data_dir),
            output_dir=str(tiny_disk),
            weights="none",
            image_size="32",
            max_epochs="1",
            limit_batches="2",
            freeze_blocks="4",
            registered_model_name="none",
        ),
    )
    assert result.exit_code != 0 and isinstance(result.exception, SystemExit), result.exception
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("Error: No space left on device: ") and ".ckpt" in last and "needs" in last
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + capfd.readouterr().err
    assert not list(tiny_disk.rglob("*.ckpt")) and not list(tiny_disk.rglob("*.tmp"))
    client = MlflowClient(tracking_uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 100 MiB filesystem (tmpfs; needs root, skipped where mounting is refused), and a
    function that remounts it with other options ("ro", "rw", "size=300m"): a disk that fills
    up, is made larger, turns read-only (even for root) and writable again."""
    import subprocess

    folder = tmp_path / "small-disk"
    folder.mkdir()

    def remount(option: str) -> None:
        for _ in range(100):  # EBUSY while a file is open for writing: a moment later it is not
            done = subprocess.run(
                ["mount", "-o", f"remount,{option}", str(folder)], capture_output=True
            )
            if done.returncode == 0:
                return
            time.sleep(0.02)
        raise AssertionError(f"remount,{option} failed: {done.stderr.decode()}")

    mount = ["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(folder)]
    if subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield folder, remount
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.slow
def test_a_disk_that_fills_then_turns_read_only_fails_in_one_line_and_leaves_one_best_file(
    small_disk, data_dir, tmp_path, tracking_uri, monkeypatch
):
    """Three attempts of one training on a real small disk. 1: the disk fills while last.ckpt
    of epoch 1 is written, after that epoch's better best file (20 MB) was written; the disk is
    then made larger. 2: the resume writes epoch 1's best file again beside the stale one, and
    the folder turns read-only during epoch 2: one line naming the folder and what to do, no
    thread traceback (TensorBoard's writer meets it first), the run FAILED with that line. 3:
    writable again, the same command finishes the run, which keeps one file: its best weights."""
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from conftest import Meanwhile, resumable_epoch
    from resnet_exp.cli import main

    disk, remount = small_disk
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    # best file 19.7 MB, last.ckpt 49.1 MB: 100 MiB holds epoch 1's new best beside epoch 0's
    # files (88.5 MB) but not a second last.ckpt while the first is replaced (118 MB)
    command = ["train"] + cli_options(
        data="demo",
        data_dir=data_dir,
        output_dir=disk,
        weights="none",
        image_size=32,
        batch_size=16,
        max_epochs=4,
        limit_batches=2,
        freeze_blocks=3,
        feature_cache="off",
        blocks="1,1,1,1",
        learning_rate=1e-3,  # val_loss 2.2181, then 2.1851 at epoch 1: a new best file
        precision="32-true",
        num_workers=0,
        registered_model_name="none",
    )
    thread_errors = []  # what Python would print as "Exception in thread ..."
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)

    full = CliRunner().invoke(main, command)
    assert full.exit_code == 1, full.output[-3000:]
    assert "No space left on device: " in full.output and "last.ckpt (needs 49" in full.output
    [folder] = (disk / "demo" / "checkpoints").iterdir()
    [stale] = folder.glob("epoch01-*.ckpt")  # the failed attempt's best file

    remount("size=300m")

    def read_only_after_epoch_1(done: threading.Event) -> None:
        while not done.is_set() and not resumable_epoch(db, 1):
            time.sleep(0.05)
        remount("ro")

    watcher = Meanwhile(read_only_after_epoch_1)
    watcher.start()
    read_only = CliRunner().invoke(main, command)
    watcher.join()
    assert read_only.exit_code == 1, read_only.output[-3000:]
    [line] = [x for x in read_only.output.splitlines() if x.startswith("Error: ")]
    assert line.startswith("Error: Read-only file system: " + str(disk)), line
    assert line.endswith("writable again, then run the same command") and "b'" not in line
    assert "Traceback" not in read_only.output and thread_errors == []
    client = MlflowClient(tracking_uri)
    [run] = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FAILED"
    assert run.data.tags[S.TAG_ERROR] == "DiskError: " + line.removeprefix("Error: ")

    remount("rw")
    finished = CliRunner().invoke(main, command)
    assert finished.exit_code == 0, finished.output[-3000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert list(folder.iterdir()) == [Path(run.data.tags[S.TAG_BEST_CHECKPOINT])] != [stale]


# --- phases ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_records_every_phase_and_they_add_up_to_its_wall_time(two_trainings, monkeypatch):
    """Read from the session's first tiny training (conftest.two_trainings: train() as here,
    its wall time taken around the call), not a training of its own."""
    from mlflow import MlflowClient

    from resnet_exp import schema as S
    from resnet_exp.tracking import timing

    monkeypatch.setenv("MLFLOW_TRACKING_URI", two_trainings.uri)  # where timing reads
    result, wall = two_trainings.results[0], two_trainings.wall_s[0]
    assert not set(MlflowClient(two_trainings.uri).get_run(result.run_id).data.metrics) & {
        *S.PHASE_TIMES,
        S.RUN_TIME,
    }  # a table, not charts
    metrics = timing.phase_times(result.run_id)
    missing = [name for name in (*S.PHASE_TIMES, S.RUN_TIME) if name not in metrics]
    assert not missing
    assert all(metrics[name] >= 0 for name in S.PHASE_TIMES)
    assert (
        metrics[S.FIT_TIME] > 0 and metrics[S.CHECKPOINT_TIME] > 0 and metrics[S.REGISTER_TIME] > 0
    )
    assert sum(metrics[name] for name in S.PHASE_TIMES) <= metrics[S.RUN_TIME] <= wall
    folder = __import__("pathlib").Path(result.best_checkpoint).parent
    assert list(folder.glob("*.ckpt")) and not list(folder.glob("*.tmp"))


# --- precision by evidence ---------------------------------------------------------------------


def cpu_only():
    import torch

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("precision is measured on CPUs only")


def small_config(**changes) -> TrainConfig:
    values = dict(data="demo", blocks=(1, 1, 1, 1), image_size=32, batch_size=4)
    return TrainConfig(**{**values, **changes})


@pytest.mark.slow  # a real measurement of fp32 and bf16 training steps
def test_auto_precision_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    import json
    import time

    from resnet_exp import hardware

    cpu_only()
    monkeypatch.setenv("RESNET_EXP_CACHE_DIR", str(tmp_path / "cache"))
    measured = []
    real = hardware.measure_bf16_speedup
    monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda *a: measured.append(a) or real(*a))
    first = hardware.resolve_runtime(small_config())
    start = time.perf_counter()
    second = hardware.resolve_runtime(small_config())
    assert time.perf_counter() - start < 0.5 and len(measured) == 1
    assert (
        first == second and first.precision in ("bf16-mixed", "32-true") and first.bf16_speedup > 0
    )
    assert first.precision == hardware.precision_for_speedup(first.bf16_speedup)
    cache = json.loads((tmp_path / "cache" / "precision.json").read_text())
    key = hardware.precision_key(small_config(), first.torch_threads)
    assert cache[key] == {"precision": first.precision, "bf16_speedup": first.bf16_speedup}
    assert hardware.cpu_model() in key and "32px" in key and "1,1,1,1" in key
    params = first.to_params()
    assert params["resolved/precision"] == first.precision
    assert params["resolved/bf16_speedup"] == str(first.bf16_speedup)
    hardware.resolve_runtime(small_config(image_size=64))  # another size is measured anew
    assert len(measured) == 2


@pytest.mark.parametrize("precision, speedup", [("bf16-mixed", 1.56), ("32-true", 0.04)])
def test_a_cached_decision_is_honoured_without_measuring(tmp_path, monkeypatch, precision, speedup):
    import json

    from resnet_exp import hardware

    cpu_only()
    monkeypatch.setenv("RESNET_EXP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda *a: pytest.fail("measured"))
    threads = hardware.resolve_runtime(small_config(precision="32-true")).torch_threads
    key = hardware.precision_key(small_config(), threads)
    (tmp_path / "precision.json").write_text(
        json.dumps({key: {"precision": precision, "bf16_speedup": speedup}})
    )
    runtime = hardware.resolve_runtime(small_config())
    assert (runtime.precision, runtime.bf16_speedup) == (precision, speedup)


def test_an_explicit_precision_is_not_measured(tmp_path, monkeypatch):
    from resnet_exp import hardware

    monkeypatch.setenv("RESNET_EXP_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(hardware, "measure_bf16_speedup", lambda *a: pytest.fail("measured"))
    for precision in ("32-true", "bf16-mixed"):
        runtime = hardware.resolve_runtime(small_config(precision=precision))
        assert runtime.precision == precision and runtime.bf16_speedup is None
        assert "resolved/bf16_speedup" not in runtime.to_params()
    assert not (tmp_path / "precision.json").exists()


def test_a_sweep_resolves_precision_once_for_every_cell(monkeypatch, data_dir, tmp_path):
    from resnet_exp import hardware
    from resnet_exp.sweep import run as sweep
    from resnet_exp.sweep.grid import SweepGrid

    calls = []
    monkeypatch.setattr(
        sweep,
        "resolve_runtime",
        lambda c: calls.append(c) or hardware.Runtime("cpu", "bf16-mixed", 0, 1, False, True, 1.5),
    )
    monkeypatch.setattr(sweep, "load_initial_weights", lambda *args: None)
    grid = SweepGrid(freeze_blocks="1,2", blocks="1,1,1,1", seeds="2")
    base = TrainConfig(
        data="demo", data_dir=str(data_dir), output_dir=str(tmp_path), weights="none", image_size=32
    )
    configs, runtime = sweep._preflight(grid.expand(base))
    assert len(calls) == 1 and len(configs) == 4
    assert {c.precision for c in configs} == {"bf16-mixed"}
    # ... while the children's params say what the user gave, and what the sweep measured
    assert sweep._as_given(base, runtime) == {"precision": "auto", "resolved/bf16_speedup": "1.5"}
    assert sweep._as_given(base.replace(precision="bf16-mixed"), runtime) == {
        "resolved/bf16_speedup": "1.5"
    }


# --- Ctrl-C ------------------------------------------------------------------------------------


def test_a_ctrl_c_waits_for_the_store_write_to_finish():
    import signal

    from resnet_exp.signals import interrupts_deferred

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, (
        "an earlier test left SIGINT changed"
    )
    done = []
    with pytest.raises(KeyboardInterrupt):
        with interrupts_deferred():
            # to this thread: its handler runs before the next line
            signal.raise_signal(signal.SIGINT)
            done.append("the write finished")
    assert done == ["the write finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.slow
def test_ctrl_c_ends_the_process_in_2_s_with_one_line_and_keeps_the_epochs_it_showed(
    data_dir, tmp_path, tracking_uri
):
    import re
    import signal
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    from conftest import subprocess_env

    command = [
        sys.executable,
        "-m",
        "resnet_exp",
        "train",
        *cli_options(
            data="demo",
            data_dir=str(data_dir),
            output_dir=str(tmp_path / "results"),
            weights="none",
            image_size="32",
            max_epochs="200",
            early_stopping_patience="200",
            limit_batches="2",
            freeze_blocks="2",
            registered_model_name="none",
            precision="32-true",
        ),
    ]
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=subprocess_env()
        )
        deadline = time.monotonic() + 400
        while "epoch 1:" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        process.wait(timeout=120)
        answered_in = time.monotonic() - sent
    text = log.read_text()
    assert process.returncode == 130, text[-3000:]
    assert answered_in < 2.0, f"the process ended {answered_in:.1f} s after Ctrl-C"
    after = text[text.index("epoch 1:") :].strip().splitlines()
    # What a run prints as it ends anyway (MLflow's system-metrics monitor stopping) is not noise
    lines = [line for line in after[1:] if " INFO " not in f" {line}"]
    assert len(lines) == 1 and re.fullmatch(
        r"interrupted: run [0-9a-f]{32} marked KILLED", lines[0]
    ), text[-3000:]
    assert "Traceback" not in text and "ProgrammingError" not in text
    run_id = lines[0].split()[2]
    client = MlflowClient(tracking_uri)
    assert client.get_run(run_id).info.status == "KILLED"
    shown = {int(m) for m in re.findall(r"epoch (\d+): train_loss", text)}
    stored = {m.step for m in client.get_metric_history(run_id, "train_loss")}
    assert shown <= stored  # every epoch whose line was printed has its train metrics stored
