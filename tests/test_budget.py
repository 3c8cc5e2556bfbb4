"""What bounds one request to the registered model (images, bytes, pixels, seconds), and the
digests that make an altered model's files refuse to load; in process, on a tiny network. The
same paths through a real `mlflow models serve` and `resnet-exp predict` are in test_registry.py."""

from __future__ import annotations

import json
import time

import pytest

from resnet_exp import schema
from resnet_exp.data.images import ImageInputError
from resnet_exp.model.budget import RequestBudget, RequestTimeout
from resnet_exp.model.digests import ModelIntegrityError, verify_model_files, write_digests
from resnet_exp.model.inference import ImageClassifier
from resnet_exp.model.netspec import NetSpec
from resnet_exp.model.network import build_resnet
from test_images import encoded


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    spec = NetSpec(schema.BASIC, (1, 1, 1, 1), ("cat", "dog"), 32)
    return ImageClassifier(build_resnet(spec), spec)


def test_too_many_images_are_refused_before_any_is_read(classifier):
    # not even base64: the count is refused before the first value is looked at
    with pytest.raises(
        ImageInputError,
        match=r"holds 5 images, over this model's limit of 4 images per request "
        r"\(max_request_images\)",
    ):
        classifier.predict_uploads(["not an image"] * 5, RequestBudget(max_request_images=4))


def test_bytes_and_pixels_per_request_are_bounded(classifier):
    image = encoded()  # a 20 x 20 PNG
    with pytest.raises(ImageInputError, match=r"^image 2 of 3: .*\(max_request_bytes\)"):
        classifier.predict_uploads([image] * 3, RequestBudget(max_request_bytes=len(image) + 1))
    with pytest.raises(ImageInputError, match=r"limit of 799 pixels .*\(max_request_pixels\)"):
        classifier.predict_uploads([image] * 2, RequestBudget(max_request_pixels=799))
    assert len(classifier.predict_uploads([image] * 2, RequestBudget(max_request_pixels=800))) == 2


def test_a_spent_time_budget_stops_the_work_at_the_next_image(classifier):
    image = encoded()
    start = time.monotonic()
    with pytest.raises(
        RequestTimeout, match=r"^image 1 of 64: .*time budget of 1e-06 s \(request_seconds\)"
    ):
        classifier.predict_uploads([image] * 64, RequestBudget(request_seconds=1e-6))
    assert time.monotonic() - start < 1


def test_bad_images_are_named_by_their_position_and_never_quoted(classifier):
    values = [encoded()] * 10
    values[2] = "SECRET!!" * 4
    with pytest.raises(ImageInputError) as err:
        classifier.predict_uploads(values)
    assert str(err.value).startswith("image 3 of 10: not valid base64 (32 characters)")
    assert "SECRET" not in str(err.value)


def test_the_budget_comes_from_the_model_config_and_serving_halves_the_servers_timeout():
    assert RequestBudget.from_config(None) == RequestBudget()
    assert RequestBudget.from_config(RequestBudget().to_config()) == RequestBudget()
    budget = RequestBudget.from_config({"request_seconds": 100, "max_request_images": 8}, 60)
    assert budget.request_seconds == 30 and budget.max_request_images == 8
    # a request may shorten its time, never lengthen it
    assert budget.within({"request_seconds": 5}).request_seconds == 5
    assert budget.within({"request_seconds": 500}).request_seconds == 30
    assert budget.within({"request_seconds": None}) == budget == budget.within(None)


@pytest.mark.parametrize(
    "key, value", [("max_request_images", 0), ("max_request_bytes", 1.5), ("request_seconds", "x")]
)
def test_a_bad_budget_value_is_named(key, value):
    with pytest.raises(ValueError, match=f"model_config {key}={value!r}: expected a positive"):
        RequestBudget.from_config({key: value})


@pytest.fixture
def model_folder(tmp_path):
    root = tmp_path / "model"
    (root / "artifacts").mkdir(parents=True)
    (root / "code" / "pkg").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "pyfunc_model.py").write_text("print('model')\n")
    (root / "code" / "pkg" / "mod.py").write_text("X = 1\n")
    (root / "artifacts" / "model.safetensors").write_bytes(bytes(range(256)))
    return root


def test_unaltered_model_files_pass_and_models_without_digests_load_unchecked(model_folder):
    assert verify_model_files(model_folder) is False  # logged before digests: nothing to check
    digest = write_digests(model_folder)
    recorded = json.loads((model_folder / schema.DIGESTS_FILE).read_text())
    assert sorted(recorded) == [
        "MLmodel",
        "artifacts/model.safetensors",
        "code/pkg/mod.py",
        "pyfunc_model.py",
    ]
    # what Python and MLflow write into a loaded model's folder is not a change
    (model_folder / "code" / "pkg" / "__pycache__").mkdir()
    (model_folder / "code" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"x")
    (model_folder / "registered_model_meta").write_text("model_name: m\n")
    assert verify_model_files(model_folder, digest) is True


@pytest.mark.parametrize(
    "alter, named",
    [
        (lambda root: open(root / "pyfunc_model.py", "a").write("import os\n"), "pyfunc_model.py"),
        (lambda root: (root / "code" / "pkg" / "mod.py").unlink(), "code/pkg/mod.py is missing"),
        (lambda root: (root / "code" / "pkg" / "extra.py").write_text(""), "code/pkg/extra.py"),
        (
            lambda root: (root / "artifacts" / "model.safetensors").write_bytes(bytes(256)),
            "artifacts/model.safetensors does not match",
        ),
    ],
    ids=["appended-line", "removed-file", "added-module", "changed-weights"],
)
def test_an_altered_model_file_is_refused_by_name(model_folder, alter, named):
    write_digests(model_folder)
    alter(model_folder)
    with pytest.raises(ModelIntegrityError, match=f"^model file {named}.*refusing to load it$"):
        verify_model_files(model_folder)


def test_rewritten_digests_are_caught_by_the_registrys_record(model_folder):
    recorded = write_digests(model_folder)
    (model_folder / "artifacts" / "model.safetensors").write_bytes(bytes(256))
    write_digests(model_folder)  # consistent with the altered weights...
    verify_model_files(model_folder)  # ...so the folder alone cannot tell
    with pytest.raises(ModelIntegrityError, match=f"^model file {schema.DIGESTS_FILE} does not"):
        verify_model_files(model_folder, recorded)
    (model_folder / schema.DIGESTS_FILE).unlink()
    with pytest.raises(ModelIntegrityError, match=f"has no {schema.DIGESTS_FILE}"):
        verify_model_files(model_folder, recorded)
