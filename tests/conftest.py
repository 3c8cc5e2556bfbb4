"""Shared test setup: an offline, isolated environment and tiny real inputs on disk.

Nothing here touches the network: RESNET_EXP_OFFLINE and HF_HUB_OFFLINE make every Hub or
weights lookup fail fast, and the caches (datasets, torchvision) point into a temporary folder.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import struct
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import event
from sqlalchemy.engine import Engine

REPO = Path(__file__).resolve().parents[1]
_SANDBOX = Path(tempfile.mkdtemp(prefix="resnet-exp-tests-"))

# Set at import time: `datasets` reads its cache location when first imported, which happens
# while test modules are collected, before any fixture runs.
os.environ.update(
    {
        "RESNET_EXP_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(_SANDBOX / "hf-datasets"),
        "TORCH_HOME": str(_SANDBOX / "torch"),
        "RESNET_EXP_CACHE_DIR": str(_SANDBOX / "resnet-exp-cache"),  # the precision measurements
        "MLFLOW_TRACKING_URI": f"sqlite:///{_SANDBOX / 'stray-runs.db'}",  # never the cwd's mlflow.db
    }
)
os.environ.pop("MLFLOW_RUN_ID", None)


@event.listens_for(Engine, "connect")
def _no_fsync_for_test_stores(connection, _record) -> None:
    """Test stores are thrown away, so SQLite need not wait for the disk after each commit: this
    makes logging through MLflow in this process about 40% faster (30 runs: 5.2-5.9 s -> 3.3 s)."""
    if type(connection).__module__ == "sqlite3":
        connection.execute("PRAGMA synchronous = OFF")


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test from its own folder: a SQLite store puts artifacts under `./mlruns` of the
    working directory, which must never be the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Tests compute on tiny tensors (4 images of 32 px), where a second torch thread buys
    nothing, and on a busy 2-core machine its barriers cost 3-8x per forward, backward and
    optimizer step (measured with ResNet34). A training under test still sets its own threads
    (hardware.apply_runtime), as in production; the next test starts again from one."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """A data_dir holding the generated demo dataset, shared by every test."""
    from resnet_exp.data.demo import ensure_demo_dataset

    folder = _SANDBOX / "data"
    ensure_demo_dataset(folder)
    return folder


_EMPTY_STORE = _SANDBOX / "empty-store" / "mlflow.db"


def new_store(path: Path) -> str:
    """Put an empty SQLite tracking store at `path` and return its URI.

    Creating MLflow's tables runs its schema migrations: 4-9 s per store on 2 cores. They run
    once per session into a template, and each store is a copy of it (milliseconds). The
    template's Default experiment is deleted, so MLflow recreates it when a copy is first
    opened, with its artifacts under `./mlruns` of that moment's working directory, as for a
    store made from scratch."""
    if not _EMPTY_STORE.exists():
        from mlflow import MlflowClient

        _EMPTY_STORE.parent.mkdir(parents=True, exist_ok=True)
        building = _EMPTY_STORE.with_name("building.db")
        MlflowClient(f"sqlite:///{building}").search_experiments()  # creates the tables
        with sqlite3.connect(building) as db:
            db.execute("DELETE FROM experiments WHERE experiment_id = 0")
        building.rename(_EMPTY_STORE)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_EMPTY_STORE, path)
    return f"sqlite:///{path}"


def mlflow_table(client, run_id: str, path: str, folder: Path):
    """A JSON artifact that the UI shows as a table (listed in the run's mlflow.loggedArtifacts
    tag), read as a DataFrame. Not MlflowClient.load_table: it searches the runs through the
    fluent API, i.e. the process's tracking URI, not the client's."""
    import json

    import pandas as pd

    listed = json.loads(client.get_run(run_id).data.tags.get("mlflow.loggedArtifacts", "[]"))
    assert {"path": path, "type": "table"} in listed, listed
    folder.mkdir(parents=True, exist_ok=True)
    return pd.read_json(client.download_artifacts(run_id, path, str(folder)), orient="split")


def saved_view(client, experiment_id: str, key: str) -> tuple[str, dict]:
    """A saved view of the UI's runs page (the experiment tag its Views menu lists): its name and
    its state, decoded as the UI decodes it ('deflate;' + base64 of zlib-compressed JSON)."""
    import base64
    import json

    value = json.loads(client.get_experiment(experiment_id).tags[f"mlflow.sharedViewState.{key}"])
    kind, _, data = value["state"].partition(";")
    assert kind == "deflate", value
    return value["name"], json.loads(zlib.decompress(base64.b64decode(data)))


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite tracking store for this test, also seen by subprocesses."""
    uri = new_store(tmp_path / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def tiny_config(data_dir: Path, output_dir: Path, **changes):
    """The shrunk configuration the training tests share: 32 px, random init, few batches, fp32
    (precision=auto would measure bf16 against fp32 for each new network and size, 8-30 s of CPU
    each under load: tests/test_resources.py and the `mlflow run` test cover auto)."""
    from resnet_exp.config import TrainConfig

    values = dict(
        data="demo",
        data_dir=str(data_dir),
        output_dir=str(output_dir),
        weights="none",
        image_size=32,
        batch_size=16,
        max_epochs=2,
        limit_batches=4,
        freeze_blocks=2,
        precision="32-true",
    )
    return TrainConfig(**{**values, **changes})


def save_image(
    path: Path, mode: str = "RGB", size: int = 24, seed: int = 0, fmt: str | None = None
) -> Path:
    """Write a real image file of the given PIL mode with random content."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65536, (size, size), dtype=np.uint16))  # I;16
    elif mode == "CMYK":
        image = rgb.convert("CMYK")
    elif mode == "P":
        image = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        image = rgb.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt)
    return path


def make_image_folder(root: Path, classes: dict[str, int], suffix: str = ".png") -> Path:
    """root/<class>/<class>_<i><suffix> with `n` random RGB images per class."""
    for c, (name, n) in enumerate(classes.items()):
        for i in range(n):
            save_image(root / name / f"{name}_{i:03d}{suffix}", seed=100 * c + i)
    return root


def bomb(path: Path) -> Path:
    """A 1 x 1 PNG whose header claims 30000 x 30000 pixels (900 million): PIL refuses it from
    the header alone, so nothing bigger is ever written or decoded."""
    buffer = io.BytesIO()
    Image.new("1", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())  # 8-byte signature, then IHDR: length, type, data, CRC
    data[16:24] = struct.pack(">II", 30000, 30000)  # IHDR's width and height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # its CRC over type + data
    path.write_bytes(bytes(data))
    return path


def cli_options(**values: object) -> list[str]:
    """Command-line options from keywords: cli_options(image_size=32) == ['--image-size', '32']."""
    return [
        text
        for name, value in values.items()
        for text in (f"--{name.replace('_', '-')}", str(value))
    ]


def mlflow_run_command(
    experiment: str, params: Mapping[str, object], entry: str = "main"
) -> list[str]:
    """`mlflow run` of this project's `entry` point in this environment, into `experiment`,
    with each param as `-P name=value` (run it with subprocess_env())."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO),
        "-e",
        entry,
        "--env-manager",
        "local",
        "--experiment-name",
        experiment,
    ]
    for name, value in params.items():
        cmd += ["-P", f"{name}={value}"]
    return cmd


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment, with this interpreter's bin folder first on PATH so that
    `mlflow run` starts the project with the same Python."""
    env = dict(os.environ)
    # mlflow.set_experiment() exports MLFLOW_EXPERIMENT_ID process-wide; an earlier in-process
    # test would hand it to `mlflow run`, which refuses it next to --experiment-name.
    env.pop("MLFLOW_EXPERIMENT_ID", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def offline_failure(call, *args) -> str:
    """Run `call(*args)`, which must raise OfflineError within 30 s naming the offline options;
    return the message for further checks."""
    import time

    from resnet_exp.errors import OfflineError

    start = time.monotonic()
    with pytest.raises(OfflineError) as err:
        call(*args)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert "unreachable" in message and "data=demo" in message and "weights=none" in message
    return message


def resumable_epoch(db: Path, epoch: int, exclude: str = "") -> tuple[str, dict[str, str]] | None:
    """(run id, tags) of a run other than `exclude` that has both stored epoch `epoch` (its
    train_loss is the epoch's last metric) and saved it in its last.ckpt, else None. Lightning
    saves the checkpoint after the epoch's metrics are stored (ModelCheckpoint runs after the
    other callbacks), so a test that kills a training "after epoch N" waits for both."""
    import torch

    from resnet_exp import schema as S
    from resnet_exp.tracking.resume import LAST_CHECKPOINT

    with sqlite3.connect(db) as connection:
        found = connection.execute(
            "SELECT DISTINCT m.run_uuid FROM metrics m JOIN tags t ON t.run_uuid = m.run_uuid "
            "WHERE m.key = ? AND m.step = ? AND t.key = ? AND m.run_uuid != ?",
            (S.TRAIN_LOSS, epoch, S.TAG_CHECKPOINT_DIR, exclude),
        ).fetchall()
        for (run_id,) in found:
            tags = dict(
                connection.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,))
            )
            try:  # mmap: reads the small pickle, not the tensors
                saved = torch.load(
                    Path(tags[S.TAG_CHECKPOINT_DIR]) / LAST_CHECKPOINT,
                    map_location="cpu",
                    weights_only=True,
                    mmap=True,
                )["epoch"]
            except (OSError, RuntimeError, EOFError):
                continue  # not written yet
            if saved >= epoch:
                return run_id, tags
    return None


class Meanwhile(threading.Thread):
    """`action(done)` in a thread while the test's thread runs a command in this process (a
    training, a sweep's driver) and then calls `join`, which sets `done` and raises again what
    the action raised (pytest.fail included)."""

    def __init__(self, action: Callable[[threading.Event], None]) -> None:
        super().__init__(daemon=True)
        self.action, self.done, self.error = action, threading.Event(), None

    def run(self) -> None:
        try:
            self.action(self.done)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test's thread by join
            self.error = err

    def join(self, timeout: float | None = 300) -> None:
        self.done.set()
        super().join(timeout)
        assert not self.is_alive(), "the test's background action did not end"
        if self.error is not None:
            raise self.error


@contextmanager
def ray_driver_here() -> Iterator[None]:
    """This process as a Ray driver (or the host of a ray.cluster_utils.Cluster) for the block:
    what Ray and the Ray executor change process-wide is put back afterwards: environment
    variables (RAY_AUTH_MODE, the trials' settings), sys.excepthook, and the SIGTERM and SIGINT
    handlers (a Cluster's head node installs its own SIGTERM handler, which made every later
    SIGTERM test of the session exit 1)."""
    import signal

    environment, excepthook = dict(os.environ), sys.excepthook
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environment)
        sys.excepthook = excepthook
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@dataclass(frozen=True)
class Trainings:
    """Two real trainings (tiny_config, seeds 1 and 2) registered into one store."""

    uri: str
    work: Path  # their working folder: the store, ./mlruns and results/
    configs: list
    results: list  # resnet_exp.training.train.TrainResult, in seed order
    wall_s: list[float]  # each train() call's wall time


@pytest.fixture(scope="session")
def two_trainings(tmp_path_factory, data_dir) -> Trainings:
    """Train twice (seeds 1 and 2) into one store, once per session: tests/test_registry.py
    checks the two versions, aliases, model and serving; tests that only read one finished run
    (its phases, its diagnostics) read the first instead of training again (~9 s of CPU each).
    Nothing may write to this store."""
    import time

    from resnet_exp.training.train import train

    work = tmp_path_factory.mktemp("two-trainings")
    uri = new_store(work / "mlflow.db")
    configs = [tiny_config(data_dir, work / "results", seed=seed) for seed in (1, 2)]
    results, wall = [], []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        # seconds; MLflow's default is 10
        patch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
        patch.chdir(work)
        for config in configs:
            start = time.perf_counter()
            results.append(train(config))
            wall.append(time.perf_counter() - start)
    return Trainings(uri, work, configs, results, wall)


@contextmanager
def http_answering(status: int, body: bytes = b"refused") -> Iterator[str]:
    """A local HTTP server that answers every request with `status` and a plain-text body, as a
    tracking server behind an auth proxy or a failing gateway does; yields its URL."""
    import http.server
    import socketserver

    class Answer(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))  # the request, read whole
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args) -> None:
            pass

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Answer) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
