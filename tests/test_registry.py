"""The model registry end to end: two trainings into one SQLite store become two versions with
tags and aliases; the champion loads in a fresh process, serves over HTTP from a real
`mlflow models serve`, and predicts through `resnet-exp predict`, always as the checkpoint does."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from conftest import new_store, subprocess_env, tiny_config
from resnet_exp import schema as S
from resnet_exp.config import TrainConfig
from resnet_exp.errors import ConfigError, DataError
from resnet_exp.model.inference import ImageClassifier
from resnet_exp.model.predict import SOME_UNREADABLE_EXIT, predict_files
from resnet_exp.schema import CHAMPION
from resnet_exp.tracking.registry import move_alias

MODEL = "resnet-demo"


# --- alias rules, on a real registry with hand-made versions ------------------------------------


def make_versions(tmp_path: Path, accuracies: list[float], label: str = "b2222-f2") -> MlflowClient:
    client = MlflowClient(new_store(tmp_path / "registry.db"))
    client.create_registered_model(MODEL)
    for acc in accuracies:
        client.create_model_version(
            MODEL, str(tmp_path), tags={S.VAL_ACC: str(acc), "depth_label": label}
        )
    return client


def all_versions(client: MlflowClient):
    return client.search_model_versions(f"name = '{MODEL}'")


def test_champion_goes_to_the_best_val_acc(tmp_path):
    client = make_versions(tmp_path, [0.5, 0.8, 0.7])
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == "2"
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"


def test_champion_moves_only_to_a_better_version(tmp_path):
    client = make_versions(tmp_path, [0.6])
    move_alias(client, MODEL, CHAMPION, all_versions(client))
    client.create_model_version(MODEL, str(tmp_path), tags={S.VAL_ACC: "0.6"})  # a tie
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == "1"
    client.create_model_version(MODEL, str(tmp_path), tags={S.VAL_ACC: "0.4"})  # worse
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == "1"
    client.create_model_version(MODEL, str(tmp_path), tags={S.VAL_ACC: "0.61"})  # better
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == "4"


def test_versions_without_val_acc_never_become_champion(tmp_path):
    client = make_versions(tmp_path, [])
    client.create_model_version(MODEL, str(tmp_path), tags={})
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) is None
    assert not client.get_registered_model(MODEL).aliases


def add_version(client: MlflowClient, tmp_path: Path, val_acc: float, **setting: str) -> str:
    tags = {S.VAL_ACC: str(val_acc), S.TAG_DATA: "demo", S.IMAGE_SIZE: "64", S.WEIGHTS: "none"}
    return str(client.create_model_version(MODEL, str(tmp_path), tags={**tags, **setting}).version)


def test_a_version_of_another_image_size_or_weights_never_takes_champion_unasked(tmp_path):
    """The study's champion stays when a better-scoring quick run at 32 px, or one from ImageNet
    weights, is registered; a better version of the study's own setting still takes it."""
    client = make_versions(tmp_path, [])
    study = add_version(client, tmp_path, 0.6)
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == study
    add_version(client, tmp_path, 0.9, image_size="32")
    add_version(client, tmp_path, 0.95, weights="imagenet")
    add_version(client, tmp_path, 0.99, data="other/folder")
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == study
    better = add_version(client, tmp_path, 0.7)
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == better


def test_champion_pointed_by_hand_at_another_setting_competes_there(tmp_path):
    """Asking for it: the user points champion at a version of another setting (the UI or
    MlflowClient.set_registered_model_alias); later versions of that setting compete with it,
    and the old setting no longer does."""
    client = make_versions(tmp_path, [])
    add_version(client, tmp_path, 0.6)
    move_alias(client, MODEL, CHAMPION, all_versions(client))
    chosen = add_version(client, tmp_path, 0.5, image_size="128")
    client.set_registered_model_alias(MODEL, CHAMPION, chosen)
    add_version(client, tmp_path, 0.8)  # the old setting, better, but not asked for
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == chosen
    better = add_version(client, tmp_path, 0.55, image_size="128")
    assert move_alias(client, MODEL, CHAMPION, all_versions(client)) == better


@pytest.mark.parametrize(
    "name, model_name", [("auto", "resnet-demo"), ("none", None), ("my-model.v2", "my-model.v2")]
)
def test_registered_model_name(name, model_name):
    assert TrainConfig(data="demo", registered_model_name=name).model_name == model_name


@pytest.mark.parametrize("name", ["a/b", "a:b", "a@champion", "", "-x"])
def test_a_bad_registered_model_name_is_refused(name):
    with pytest.raises(ConfigError, match="registered_model_name=.*expected 'auto', 'none'"):
        TrainConfig(registered_model_name=name)


# --- two real trainings -----------------------------------------------------------------------


def test_the_pip_requirements_pin_this_environments_versions():
    """What the model records as its pip requirements (checked in the logged model below): every
    package the pyfunc imports, pinned to the version installed here, without a local tag such
    as '+cpu' that exists only on the index it came from."""
    from importlib import metadata

    from resnet_exp.tracking.logged_model import REQUIREMENTS, pip_requirements

    pinned = dict(line.split("==") for line in pip_requirements())
    assert list(pinned) == list(REQUIREMENTS)
    for name, version in pinned.items():
        assert version == metadata.version(name).split("+")[0] and "+" not in version, name


@pytest.fixture(scope="module")
def registry(two_trainings):
    """Two trainings (seeds 1 and 2) in one store (conftest.two_trainings, shared by the session);
    returns (uri, client, results, work folder)."""
    t = two_trainings
    return t.uri, MlflowClient(t.uri), t.results, t.work


@pytest.fixture
def images(data_dir) -> list[Path]:
    """Real files of the demo data: PNG and JPEG."""
    folder = data_dir / "demo-v1"
    files = sorted(folder.glob("star/*.png"))[:3] + sorted(folder.glob("circle/*.jpg"))[:3]
    assert {f.suffix for f in files} == {".png", ".jpg"}
    return files


def champion_checkpoint(client: MlflowClient) -> str:
    version = client.get_model_version_by_alias(MODEL, CHAMPION)
    return client.get_run(version.run_id).data.tags[S.TAG_BEST_CHECKPOINT]


def expected_predictions(client: MlflowClient, files: list[Path]):
    classifier = ImageClassifier.from_checkpoint(champion_checkpoint(client))
    return classifier.predict_uploads([f.read_bytes() for f in files])


@pytest.mark.slow
def test_two_trainings_make_two_tagged_versions_and_a_champion(registry):
    uri, client, results, _ = registry
    versions = sorted(
        client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version)
    )
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert [v.run_id for v in versions] == [r.run_id for r in results]
    for version, result in zip(versions, results):
        tags = version.tags
        run_tags = client.get_run(result.run_id).data.tags
        # one name per concept, with one meaning, on runs and versions alike
        for name in (S.TAG_DEPTH, S.TAG_DATASET, S.TAG_CONFIG_HASH, S.TAG_ARCH):
            assert tags[name] == run_tags[name]
        assert (
            tags[S.TAG_DEPTH] == "b2222-f2"
            and tags[S.TAG_DATASET] == "demo"
            and tags[S.TAG_DATA] == "demo"
        )
        assert tags[S.TAG_RUN_ID] == result.run_id and tags[S.BLOCKS] == "2,2,2,2"
        assert tags[S.FREEZE_BLOCKS] == "2" and tags[S.WEIGHTS] == "none"
        assert float(tags[S.TEST_ACC]) == result.metrics[S.TEST_ACC]
        # val_acc is the registered (best val_loss) checkpoint's, read back from the run's history
        history = client.get_metric_history(result.run_id, S.VAL_ACC)
        best_epoch = int(client.get_run(result.run_id).data.metrics[S.BEST_EPOCH])
        assert float(tags[S.VAL_ACC]) == pytest.approx(
            next(m.value for m in history if m.step == best_epoch), abs=1e-6
        )

    accuracies = [float(v.tags[S.VAL_ACC]) for v in versions]
    winner = "1" if accuracies[0] >= accuracies[1] else "2"  # a tie stays with the first
    aliases = client.get_registered_model(MODEL).aliases
    assert str(aliases[CHAMPION]) == winner and str(aliases["best-b2222-f2"]) == winner
    assert results[int(winner) - 1].registered.aliases == (CHAMPION, "best-b2222-f2")


@pytest.mark.slow
def test_the_logged_model_carries_the_best_epochs_metrics(registry):
    """The UI's model page shows the metrics linked to the logged model: the learning metrics
    of the best checkpoint's epoch, never epoch 0's, and the test results; no system/* sample
    (log_model(step=best_epoch) linked the system samples of that index too). The results are
    stored at step 0, so the UI draws each as a bar, not as a line of one point."""
    uri, client, results, _ = registry
    best_epochs = [int(client.get_run(r.run_id).data.metrics[S.BEST_EPOCH]) for r in results]
    assert max(best_epochs) > 0  # else step 0 (MLflow's default) would pass unnoticed
    for result, best_epoch in zip(results, best_epochs):
        model = client.get_logged_model(result.model_uri.removeprefix("models:/"))
        linked = {m.key: m for m in model.metrics}
        assert {S.VAL_ACC, S.VAL_LOSS, S.TRAIN_ACC, S.TEST_ACC, S.TEST_LOSS} <= set(linked)
        assert not [k for k in linked if k.startswith(S.SYSTEM)], sorted(linked)
        assert S.TRAIN_THROUGHPUT not in linked and S.LR not in linked  # learning metrics only
        assert len(model.metrics) == len(linked)  # one value per metric
        test = {m.key: m for m in model.metrics if m.key.startswith(f"{S.TEST}_")}
        assert {m.step for m in model.metrics if m.key not in test} == {best_epoch}
        assert {m.step for m in test.values()} == {S.RESULT_STEP}
        val_acc = [
            m.value
            for m in client.get_metric_history(result.run_id, S.VAL_ACC)
            if m.step == best_epoch
        ]
        assert linked[S.VAL_ACC].value == val_acc[-1]
        # test_* describe the best epoch's network, which best_epoch names
        [test_acc] = client.get_metric_history(result.run_id, S.TEST_ACC)
        assert test_acc.step == S.RESULT_STEP and linked[S.TEST_ACC].value == test_acc.value
        [stored] = client.get_metric_history(result.run_id, S.BEST_EPOCH)
        assert (stored.step, stored.value) == (S.RESULT_STEP, best_epoch)


@pytest.mark.slow
def test_logged_models_are_named_for_their_run_and_describe_themselves(registry):
    """Each logged model has its run's name (not six models called 'model'), a description,
    and its test metrics tied to the test split, the dataset the run logged as 'testing'."""
    uri, client, results, _ = registry
    for result in results:
        run = client.get_run(result.run_id)
        model = client.get_logged_model(result.model_uri.removeprefix("models:/"))
        assert model.name == run.info.run_name == f"r18-b2222-f2-s{run.data.params[S.SEED]}"
        assert model.source_run_id == result.run_id and str(model.status) == "READY"
        note = model.tags[S.MLFLOW_NOTE]
        assert model.name in note and result.run_id in note and "test_acc" in note
        [testing] = [
            i.dataset
            for i in run.inputs.dataset_inputs
            if {(t.key, t.value) for t in i.tags} >= {("mlflow.data.context", "testing")}
        ]
        tied = {m.key: (m.dataset_name, m.dataset_digest) for m in model.metrics}
        assert {k for k, d in tied.items() if d != (None, None)} == {
            S.TEST_ACC,
            S.TEST_LOSS,
            S.TEST_ECE,
        }
        assert tied[S.TEST_ACC] == (testing.name, testing.digest)
        # the run's own output: this model, at the best epoch
        [output] = run.outputs.model_outputs
        assert output.model_id == model.model_id
        assert output.step == int(run.data.metrics[S.BEST_EPOCH])
        # the run's history holds each step of each metric once, linking added none
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(result.run_id, key)]
            assert len(steps) == len(set(steps)), key


@pytest.mark.slow
def test_accuracies_are_exact_fractions(registry):
    """Accuracy is correct/total in double precision (no float32 noise such as
    0.42500001192092896), and the learning rate is stored as the number it is."""
    from fractions import Fraction

    uri, client, results, _ = registry
    run = client.get_run(results[0].run_id)
    test_size = int(run.data.params[S.SPLIT_SIZE.format(split="test")])
    for key in (S.TEST_ACC, S.VAL_ACC):
        for m in client.get_metric_history(run.info.run_id, key):
            fraction = Fraction(m.value).limit_denominator(test_size)
            assert float(fraction) == m.value, (key, m.value)
    rates = client.get_metric_history(run.info.run_id, S.LR)  # only once the schedule moved it
    assert {m.value for m in rates} <= {3e-5, 1.5e-5, 7.5e-6}
    assert not rates or min(rates, key=lambda m: m.step).value == 3e-5


@pytest.mark.slow
def test_runs_experiments_and_models_describe_themselves(registry):
    uri, client, results, _ = registry
    run = client.get_run(results[0].run_id)
    note = run.data.tags[S.MLFLOW_NOTE]
    assert (
        "r18 (basic blocks 2,2,2,2 per stage)" in note
        and "first 2 of 4 stages frozen" in note
        and "seed 1" in note
    )
    assert "demo" in note and "random initialisation" in note
    assert (
        f"epoch {int(run.data.metrics[S.BEST_EPOCH])}" in note
        and f"{results[0].metrics[S.TEST_ACC]:.4f}" in note
    )
    assert run.data.tags[S.MLFLOW_SOURCE_NAME] and run.data.tags[S.MLFLOW_USER]
    assert run.data.tags[S.TAG_KIND] == S.KIND_TRAIN and run.info.status == "FINISHED"
    experiment = client.get_experiment(run.info.experiment_id)
    assert "Model training" in experiment.tags[S.MLFLOW_NOTE]
    model = client.get_registered_model(MODEL)
    assert CHAMPION in model.description and "image" in model.description
    version = client.get_model_version(MODEL, results[0].registered.version)
    assert results[0].run_id in version.description and "r18-b2222-f2-s1" in version.description


@pytest.mark.slow
def test_trainings_record_system_metrics(registry):
    uri, client, results, _ = registry
    keys = client.get_run(results[0].run_id).data.metrics
    assert {
        f"{S.SYSTEM}cpu_utilization_percentage",
        f"{S.SYSTEM}system_memory_usage_megabytes",
    } <= set(keys)


@pytest.mark.slow
def test_the_model_artifact_holds_no_pickle(registry, tmp_path):
    uri, client, results, _ = registry
    import mlflow

    mlflow.set_tracking_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(results[0].model_uri, dst_path=str(tmp_path)))
    files = [p for p in local.rglob("*") if p.is_file()]
    suffixes = {p.suffix for p in files if p.name not in ("MLmodel", "registered_model_meta")}
    assert suffixes <= {".py", ".json", ".yaml", ".txt", ".safetensors"}, suffixes
    assert not [p for p in files if p.suffix in (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".pyc")]
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor  # models from code
    # the pinned requirements are recorded as given, nothing added or dropped
    from resnet_exp.tracking.logged_model import pip_requirements

    assert (local / "requirements.txt").read_text().split() == pip_requirements()


@pytest.mark.slow
def test_the_champion_loads_in_a_fresh_process_and_predicts_like_the_checkpoint(registry, images):
    uri, client, _, work = registry
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model('models:/{MODEL}@{CHAMPION}')\n"
        "frame = pd.DataFrame({'image': [open(p, 'rb').read() for p in sys.argv[1:]]})\n"
        "print(model.predict(frame).to_json(orient='records'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *map(str, images)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=work,
        env=subprocess_env(MLFLOW_TRACKING_URI=uri),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    expected = expected_predictions(client, images)
    assert [row["label"] for row in loaded] == list(expected["label"])
    assert [row["probability"] for row in loaded] == pytest.approx(
        list(expected["probability"]), abs=1e-5
    )
    assert all(len(row["top5"]) == 5 for row in loaded)


@pytest.fixture
def predict(registry, monkeypatch):
    """`resnet-exp predict ...` run in this process against the registry's store; returns click's
    result (exit_code, stdout, stderr). A fresh interpreter would add only the imports: loading
    the champion in a new process is proven by
    test_the_champion_loads_in_a_fresh_process_and_predicts_like_the_checkpoint, and
    `python -m resnet_exp` as an entry point by tests/test_end_to_end.py."""
    import mlflow
    from click.testing import CliRunner

    from resnet_exp.cli import main

    uri = registry[0]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # the fluent API's process-wide URI, which an earlier in-process training pinned elsewhere
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield lambda *args: CliRunner().invoke(main, ["predict", *args])
    mlflow.set_tracking_uri(previous)


@pytest.mark.slow
def test_resnet_exp_predict_labels_a_folder(registry, data_dir, predict):
    uri, client, _, work = registry
    folder = data_dir / "demo-v1" / "ring"
    model = ["--model", f"models:/{MODEL}@{CHAMPION}"]
    table = predict(*model, str(folder))
    as_json = predict(*model, "--json", str(folder))
    assert table.exit_code == 0 and as_json.exit_code == 0, (
        table.output[-2000:] + as_json.output[-2000:]
    )
    files = sorted(folder.iterdir())
    rows = json.loads(as_json.stdout)
    assert [row["file"] for row in rows] == [str(f) for f in files]
    expected = expected_predictions(client, files)
    assert [row["label"] for row in rows] == list(expected["label"])
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["file", "label", "probability"] and len(lines) == len(files) + 1
    assert lines[1].split()[:2] == [str(files[0]), expected["label"][0]]


@pytest.mark.slow
def test_resnet_exp_predict_names_a_bad_file_and_an_unknown_model(
    registry, data_dir, tmp_path, predict
):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    result = predict("--model", f"models:/{MODEL}@{CHAMPION}", str(bad))
    assert result.exit_code != 0 and f"{bad}: not an image file" in result.stderr
    good = tmp_path / "good" / "circle.png"
    good.parent.mkdir()
    good.write_bytes(next((data_dir / "demo-v1" / "circle").glob("*.png")).read_bytes())
    result = predict("--model", "models:/no-such-model@champion", str(good.parent))
    assert (
        result.exit_code != 0
        and "cannot load model 'models:/no-such-model@champion'" in result.stderr
    )

    # one unreadable file among readable ones: the others are labelled, it is listed after them
    shutil.copy(bad, good.parent / "notes.png")
    model = ["--model", f"models:/{MODEL}@{CHAMPION}"]
    table, as_json = predict(*model, str(good.parent)), predict(*model, "--json", str(good.parent))
    assert table.exit_code == as_json.exit_code == SOME_UNREADABLE_EXIT, table.output[-2000:]
    lines = table.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith(str(good)) and "Traceback" not in table.output
    listed = table.stderr.splitlines()
    assert listed[0] == "could not read 1 of 2 files (no label for them):" and len(listed) == 2
    assert listed[1].startswith(f"  {good.parent / 'notes.png'}: not an image file")
    rows = json.loads(as_json.stdout)
    assert [r["file"] for r in rows] == [str(good), str(good.parent / "notes.png")]
    assert "label" in rows[0] and rows[1]["error"].startswith("not an image file")


@pytest.mark.slow
def test_an_altered_model_is_refused_naming_the_file(registry, data_dir, tmp_path, predict):
    """A copy of the champion with a line appended to its pyfunc_model.py is refused by
    `resnet-exp predict` before that line runs; one with a flipped byte in its weights is refused
    by the model's load_context (what `mlflow models serve` runs); one whose digests.json was
    rewritten to match is refused against the registry's record."""
    import mlflow

    from resnet_exp.errors import UserError
    from resnet_exp.model.digests import ModelIntegrityError, write_digests

    uri, client, _, _ = registry
    mlflow.set_tracking_uri(uri)
    champion = client.get_model_version_by_alias(MODEL, CHAMPION)
    assert len(champion.tags[S.TAG_MODEL_DIGEST]) == 64
    image = next((data_dir / "demo-v1" / "ring").glob("*.png"))
    model = Path(
        mlflow.artifacts.download_artifacts(f"models:/{MODEL}@{CHAMPION}", dst_path=str(tmp_path))
    )
    original = (model / "pyfunc_model.py").read_text()
    ran = tmp_path / "ran"
    (model / "pyfunc_model.py").write_text(original + f"open({str(ran)!r}, 'w').close()\n")
    result = predict("--model", str(model), str(image))
    assert result.exit_code == 1 and not ran.exists(), result.output
    assert (
        result.stderr.strip().endswith(
            "model file pyfunc_model.py does not match the sha256 recorded when the model was "
            "logged: the model was altered; refusing to load it"
        )
        and len(result.stderr.strip().splitlines()) == 1
    ), result.stderr

    (model / "pyfunc_model.py").write_text(original)
    weights = model / "artifacts" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        ModelIntegrityError, match="^model file artifacts/model.safetensors does not match"
    ):
        mlflow.pyfunc.load_model(str(model))

    # the same copy with its digests rewritten, registered with the champion's record
    write_digests(model)
    store = new_store(tmp_path / "copy.db")
    copy = MlflowClient(store)
    copy.create_registered_model("copy")
    copy.create_model_version("copy", str(model), tags=champion.tags)
    mlflow.set_tracking_uri(store)
    try:
        with pytest.raises(UserError, match="model file digests.json does not match the sha256"):
            predict_files("models:/copy/1", [image])
    finally:
        mlflow.set_tracking_uri(uri)


def test_predict_with_no_readable_file_names_it_before_loading_any_model(tmp_path):
    notes, broken = tmp_path / "notes.png", tmp_path / "broken.jpg"
    notes.write_text("not an image")
    broken.write_bytes(b"\xff\xd8\xff\xe0 and then nothing")
    with pytest.raises(
        DataError, match=r"no readable image: .*notes.png: not an image file.*and 1 more"
    ):
        predict_files("models:/never-loaded@champion", [notes, broken])


@pytest.mark.slow
def test_registered_model_name_none_logs_the_model_but_registers_nothing(
    tmp_path, data_dir, tracking_uri
):
    from resnet_exp.training.train import train

    config = tiny_config(data_dir, tmp_path / "results", registered_model_name="none")
    result = train(config)
    client = MlflowClient(tracking_uri)
    assert result.registered is None and client.search_registered_models() == []
    import mlflow

    image = next((data_dir / "demo-v1" / "ring").glob("*.png")).read_bytes()
    # MLflow 3: a LoggedModel of the run, named for the run
    model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/{config.run_name}")
    label = model.predict(pd.DataFrame({"image": [image]}))["label"][0]
    expected = ImageClassifier.from_checkpoint(result.best_checkpoint).predict_uploads([image])[
        "label"
    ][0]
    assert label == expected


# --- a real model server ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, payload: object, timeout: float = 60) -> tuple[int, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(registry):
    uri, _, _, work = registry
    port = free_port()
    log = open(work / "serve.log", "w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            f"models:/{MODEL}@{CHAMPION}",
            "--env-manager",
            "local",
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
        ],
        cwd=work,
        env=subprocess_env(MLFLOW_TRACKING_URI=uri),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, (work / "serve.log").read_text()[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail("mlflow models serve did not answer /ping within 120 s")
    yield port, process
    process.terminate()
    process.wait(timeout=30)
    log.close()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.mark.slow
def test_the_server_labels_png_and_jpeg_like_the_checkpoint(registry, server, images):
    _, client, _, _ = registry
    port, _ = server
    expected = expected_predictions(client, images)
    for payload in (
        {"dataframe_split": {"columns": ["image"], "data": [[b64(p)] for p in images]}},
        {"dataframe_records": [{"image": b64(p)} for p in images]},
        {"inputs": {"image": [b64(p) for p in images]}},
    ):
        status, body = post(port, payload)
        assert status == 200, body
        rows = body["predictions"]
        assert [row["label"] for row in rows] == list(expected["label"])
        assert [row["probability"] for row in rows] == pytest.approx(
            list(expected["probability"]), abs=1e-5
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    "payload, message",
    [
        ({"dataframe_split": {"columns": ["image"], "data": [["not base64!!"]]}}, "base64"),
        (
            {"dataframe_records": [{"image": base64.b64encode(b"plain text").decode()}]},
            "not an image file",
        ),
        ({"dataframe_records": [{"image": ""}]}, "empty image"),
        ({"dataframe_records": [{"picture": "aGVsbG8="}]}, "missing column 'image'"),
        (b"{not json", ""),
    ],
    ids=["not-base64", "not-an-image", "empty", "missing-column", "malformed-json"],
)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, images, payload, message):
    port, process = server
    status, body = post(port, payload)
    assert 400 <= status < 500 and message in body.get("message", ""), (status, body)
    status, body = post(port, {"dataframe_records": [{"image": b64(images[0])}]})
    assert status == 200 and process.poll() is None


@pytest.mark.slow
def test_the_server_refuses_a_decompression_bomb(server, images):
    from test_images import png_claiming

    port, _ = server
    payload = {
        "dataframe_records": [
            {"image": b64(images[0])},
            {"image": base64.b64encode(png_claiming(30000, 30000)).decode()},
        ]
    }
    status, body = post(port, payload)
    assert status == 400 and "image 2 of 2:" in body["message"] and "limit" in body["message"]


SECRET = "SECRETSECRET"  # marks request data that an error answer must not quote


@pytest.mark.slow
def test_serving_errors_name_the_image_and_never_quote_the_request(server, images):
    port, _ = server
    data = [[b64(images[i % len(images)])] for i in range(10)]
    data[2] = [f"{SECRET}!!"]
    status, body = post(port, {"dataframe_split": {"columns": ["image"], "data": data}})
    assert status == 400 and body["message"].startswith("image 3 of 10: not valid base64"), body
    for payload in (
        {"dataframe_split": {"columns": ["image"], "data": data}},
        {
            "dataframe_records": [
                {"image": b64(images[0])},
                {"image": base64.b64encode(SECRET.encode()).decode()},
            ]
        },
        {"dataframe_records": [{"picture": SECRET}]},
        {"inputs": {"image": [SECRET * 100]}},
    ):
        status, body = post(port, payload)
        assert (
            status == 400
            and SECRET not in json.dumps(body)
            and "Failed to predict" not in json.dumps(body)
        ), body
    # no rows is no predictions, however the request says it
    for payload in (
        {"dataframe_records": []},
        {"dataframe_split": {"columns": ["image"], "data": []}},
        {"inputs": {"image": []}},
    ):
        assert post(port, payload) == (200, {"predictions": []}), payload


def cpu_seconds(process: subprocess.Popen) -> float:
    """CPU time (user + system) of the server process and all its children so far."""
    import psutil

    root = psutil.Process(process.pid)
    total = 0.0
    for member in [root, *root.children(recursive=True)]:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def idle_after(process: subprocess.Popen) -> float:
    """CPU seconds the server spends in the second after an answer: about 0 once its work
    stopped (the flood's 100,000 images kept a core busy for minutes after a 504)."""
    before = cpu_seconds(process)
    time.sleep(1)
    return cpu_seconds(process) - before


@pytest.mark.slow
def test_requests_are_bounded_in_time_and_memory_returns_to_idle(server, images):
    """A flood of tiny images (100,000 PNGs of 1 x 1, 9.3 MB of JSON) is refused at once; a
    request that runs out of its time budget is answered 504 by the model and its work stops;
    after rounds of both, resident memory is within 100 MiB of idle."""
    import io

    from PIL import Image

    port, process = server
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    flood = {
        "dataframe_records": [{"image": base64.b64encode(buffer.getvalue()).decode()}] * 100_000
    }
    many = {"dataframe_records": [{"image": b64(p)} for p in images] * 40}  # 240 images
    idle = resident_memory(process)
    for _ in range(2):
        start = time.monotonic()
        status, body = post(port, flood)
        assert status == 400 and "(max_request_images)" in body["message"], body
        assert time.monotonic() - start < 20 and idle_after(process) < 0.15
        status, body = post(port, {**many, "params": {"request_seconds": 0.01}})
        assert status == 504 and "time budget of 0.01 s (request_seconds)" in body["message"], body
        assert idle_after(process) < 0.15
        status, body = post(port, many)
        assert status == 200 and len(body["predictions"]) == 240
    grown = resident_memory(process) - idle
    assert grown < 100 * 2**20, f"resident memory stayed {grown / 2**20:.0f} MiB above idle"


def resident_memory(process: subprocess.Popen) -> int:
    """Resident bytes of the server process and all its children (the scoring workers)."""
    import psutil

    root = psutil.Process(process.pid)
    total = 0
    for member in [root, *root.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.mark.slow
def test_the_servers_memory_stays_bounded_by_huge_images(server):
    """32 valid 6300 x 6300 PNGs (146 kB each; 119 MB each once decoded) are refused from their
    headers with a 400 naming the limit; the most that the limit lets through (10 of them) is
    served with resident memory growing far less than decoding them all at once would take
    (1.2 GB), and memory is back near its idle level afterwards."""
    import io
    import threading

    from resnet_exp.data.images import MAX_REQUEST_PIXELS
    from test_images import big_image

    port, process = server
    buffer = io.BytesIO()
    big_image(6300, 6300).save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    post(port, {"dataframe_records": [{"image": image}]}, timeout=120)  # warm: first-call costs
    idle = resident_memory(process)
    peak, done = [idle], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak.append(resident_memory(process))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        status, body = post(
            port, {"dataframe_split": {"columns": ["image"], "data": [[image]] * 32}}
        )
        assert (
            status == 400
            and f"limit of {MAX_REQUEST_PIXELS:,} pixels per request" in body["message"]
        ), body
        allowed = MAX_REQUEST_PIXELS // (6300 * 6300)
        status, body = post(
            port,
            {"dataframe_split": {"columns": ["image"], "data": [[image]] * allowed}},
            timeout=300,
        )
        assert status == 200 and len(body["predictions"]) == allowed == 10, body
    finally:
        done.set()
        sampler.join()
    growth = max(peak) - idle
    assert growth < 2**30 / 2, (
        f"resident memory grew {growth / 2**20:.0f} MiB over {idle / 2**20:.0f} MiB idle"
    )
    deadline = time.monotonic() + 30
    while resident_memory(process) - idle > 200 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.5)
    after = resident_memory(process) - idle
    assert after < 200 * 2**20, f"resident memory stayed {after / 2**20:.0f} MiB above idle"
