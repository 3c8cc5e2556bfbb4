"""Data: image folders of every kind, bad files and folders, the stratified split, offline Hub."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import bomb, make_image_folder, offline_failure, save_image
from resnet_exp.config import TrainConfig
from resnet_exp.data.demo import CLASSES, IMAGES_PER_CLASS
from resnet_exp.data.images import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, to_rgb
from resnet_exp.data.splits import (
    SPLITS,
    ImageSplit,
    _drop_unlabelled_splits,
    _encode_labels,
    _find_columns,
    decode_image,
    load_splits,
    stratified_split,
)
from resnet_exp.errors import DataError


def folder_config(path, **changes) -> TrainConfig:
    return TrainConfig(data=str(path), weights="none", image_size=32, **changes)


def test_demo_dataset_is_real_files_in_an_image_folder(data_dir):
    splits = load_splits(TrainConfig(data="demo", data_dir=str(data_dir)))
    assert splits.source == "demo" and splits.class_names == CLASSES
    assert (
        len(CLASSES) >= 8 and sum(splits.sizes().values()) == len(CLASSES) * IMAGES_PER_CLASS >= 400
    )
    files = list((data_dir / "demo-v1").glob("*/*"))
    assert {f.suffix for f in files} == {".png", ".jpg"}
    assert splits.carved == ("test", "validation")


def test_demo_generation_is_deterministic(tmp_path, data_dir):
    from resnet_exp.data.demo import ensure_demo_dataset

    again = ensure_demo_dataset(tmp_path)
    for name in ("circle/circle_000.png", "star/star_001.jpg", "ring/ring_079.jpg"):
        assert (again / name).read_bytes() == (data_dir / "demo-v1" / name).read_bytes()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "I", "F"])
def test_every_image_mode_becomes_normalised_rgb(tmp_path, mode):
    fmt = "TIFF" if mode in ("CMYK", "F", "I") else "PNG"
    path = save_image(tmp_path / f"x.{fmt.lower()}", mode=mode, fmt=fmt)
    image = decode_image({"path": str(path), "bytes": None}, str(path))
    assert image.mode == "RGB" and image.size == (24, 24)


def test_pixels_are_normalised_with_imagenet_statistics():
    white = image_to_tensor(Image.new("RGB", (10, 10), (255, 255, 255)), 32)
    expected = [(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)]
    assert white.shape == (3, 32, 32)
    assert torch.allclose(white[:, 0, 0], torch.tensor(expected))


def test_sixteen_bit_grey_is_rescaled_not_clipped():
    grey = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert grey.mode == "I;16"
    assert to_rgb(grey).getpixel((0, 0)) == (127, 127, 127)
    transparent = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert to_rgb(transparent).getpixel((0, 0)) == (255, 255, 255)


def test_a_folder_of_mixed_modes_loads_and_decodes(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        for i, mode in enumerate(
            ["L", "LA", "P", "RGBA", "CMYK", "I;16", "RGB", "RGB", "RGB", "RGB"]
        ):
            fmt = "TIFF" if mode == "CMYK" else "PNG"
            save_image(
                tmp_path / name / f"{name}_{i}.{fmt.lower()}", mode=mode, seed=10 * c + i, fmt=fmt
            )
    splits = load_splits(folder_config(tmp_path, val_fraction=0.2, test_fraction=0.2))
    assert splits.class_names == ("cat", "dog") and splits.sizes() == {
        "train": 12,
        "validation": 4,
        "test": 4,
    }
    for name in ("train", "validation", "test"):
        data = ImageSplit(splits, name, 32)
        for i in range(len(data)):
            x, y = data[i]
            assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1)


def test_split_subfolders_are_used_as_given(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 4, "b": 4})
    make_image_folder(tmp_path / "validation", {"a": 2, "b": 2})
    make_image_folder(tmp_path / "test", {"a": 1, "b": 1})
    splits = load_splits(folder_config(tmp_path))
    assert splits.sizes() == {"train": 8, "validation": 4, "test": 2} and splits.carved == ()


def test_a_missing_validation_split_is_carved_from_train(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 10, "b": 10})
    make_image_folder(tmp_path / "test", {"a": 2, "b": 2})
    splits = load_splits(folder_config(tmp_path, val_fraction=0.2))
    assert splits.carved == ("validation",)
    assert splits.sizes() == {"train": 16, "validation": 4, "test": 4}


def test_an_empty_split_is_an_error(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_image_folder(tmp_path / "test", {"a": 2, "b": 2})
    with pytest.raises(DataError, match="validation split .* is empty"):
        load_splits(folder_config(tmp_path, val_fraction=0.1))  # round(2 * 0.1) = 0 per class


def test_a_corrupt_file_is_named_before_training(tmp_path):
    make_image_folder(tmp_path, {"a": 5, "b": 5})
    bad = tmp_path / "b" / "b_broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="b_broken.png"):
        load_splits(folder_config(tmp_path))


def test_a_truncated_file_is_named_when_decoded(tmp_path):
    make_image_folder(tmp_path, {"a": 10, "b": 10}, suffix=".jpg")
    victim = tmp_path / "a" / "a_000.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: data.index(b"\xff\xda") + 40])  # whole header, truncated pixel data
    splits = load_splits(folder_config(tmp_path))  # the header check passes ...
    with pytest.raises(DataError, match="a_000.jpg"):  # ... decoding names the file
        for name in ("train", "validation", "test"):
            data = ImageSplit(splits, name, 32)
            [data[i] for i in range(len(data))]


def test_a_decompression_bomb_is_named_with_the_limit_when_decoded(tmp_path):
    data = bomb(tmp_path / "huge.png").read_bytes()
    with pytest.raises(
        DataError, match=r"row 3 .* claims 900,000,000 pixels, over the limit of [\d,]+ pixels"
    ):
        decode_image({"bytes": data, "path": None}, "row 3 of the train split")  # as from the Hub


def test_a_decompression_bomb_in_a_folder_stops_train_in_one_line(tmp_path, tracking_uri):
    from click.testing import CliRunner

    from resnet_exp.cli import main

    make_image_folder(tmp_path / "images", {"a": 6, "b": 6})
    huge = bomb(tmp_path / "images" / "a" / "huge.png")
    options = ["--data", str(tmp_path / "images"), "--data-dir", str(tmp_path / "store")]
    options += ["--output-dir", str(tmp_path / "out"), "--weights", "none", "--image-size", "32"]
    result = CliRunner().invoke(main, ["train", *options, "--precision", "32-true"])
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(huge) in errors[0] and "pixels for one image" in errors[0], (
        result.output
    )
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("images.npy"))


def test_one_class_is_an_error(tmp_path):
    make_image_folder(tmp_path, {"only": 6})
    with pytest.raises(DataError, match="at least 2"):
        load_splits(folder_config(tmp_path))


def test_a_folder_without_class_subfolders_is_an_error(tmp_path):
    save_image(tmp_path / "loose.png")
    with pytest.raises(DataError, match="one subfolder per class"):
        load_splits(folder_config(tmp_path))


def test_split_words_in_file_names_are_explained(tmp_path):
    make_image_folder(tmp_path, {"a": 3, "b": 3})
    save_image(tmp_path / "a" / "a_test_9.png")
    with pytest.raises(DataError, match="no train split"):
        load_splits(folder_config(tmp_path))


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    fractions = {"test": 0.1, "validation": 0.2}
    first, again = stratified_split(labels, fractions, 3), stratified_split(labels, fractions, 3)
    other = stratified_split(labels, fractions, 4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])
    everything = np.concatenate(list(first.values()))
    assert len(everything) == len(set(everything)) == len(labels)
    assert np.bincount(labels[first["test"]]).tolist() == [1, 2, 3, 4]
    assert np.bincount(labels[first["validation"]]).tolist() == [2, 4, 6, 8]


@pytest.mark.slow
def test_the_split_follows_the_seed_end_to_end(data_dir):
    one = load_splits(TrainConfig(data="demo", data_dir=str(data_dir), seed=1))
    same = load_splits(TrainConfig(data="demo", data_dir=str(data_dir), seed=1))
    other = load_splits(TrainConfig(data="demo", data_dir=str(data_dir), seed=2))

    def paths(s, n):
        return [r["path"] for r in s.split(n)[s.image_column]]

    assert paths(one, "test") == paths(same, "test") != paths(other, "test")
    assert not set(paths(one, "test")) & set(paths(one, "train"))


def test_a_hub_id_offline_fails_fast_and_names_the_options():
    message = offline_failure(
        load_splits, TrainConfig(data="lucabaggi/animal-wildlife", weights="none")
    )
    assert "lucabaggi/animal-wildlife" in message


def test_each_split_is_an_mlflow_dataset_input_with_its_source_and_digest(tmp_path, monkeypatch):
    """What the run page's Datasets list shows: one input per split, named and sized, whose
    source is the folder's URI (type 'local'), or the Hub id and split (a carved split is part
    of the Hub's train split), and whose digest is the split's."""
    import json
    from types import SimpleNamespace

    import mlflow

    from resnet_exp.tracking.training_run import log_dataset_inputs

    folder = make_image_folder(tmp_path / "pets", {"cat": 6, "dog": 6})
    splits = load_splits(folder_config(folder))
    hub = SimpleNamespace(
        source="hub",
        location="someone/hub-pets",
        carved=("test", "validation"),
        split=splits.split,
        digest=splits.digest,
    )
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        for data in (splits, hub):
            with mlflow.start_run() as run:
                log_dataset_inputs(data)
            inputs = {
                i.dataset.name: i for i in mlflow.get_run(run.info.run_id).inputs.dataset_inputs
            }
            assert sorted(inputs) == [f"{Path(data.location).name}-{n}" for n in sorted(SPLITS)]
            for name in SPLITS:
                given = inputs[f"{Path(data.location).name}-{name}"]
                tags = {t.key: t.value for t in given.tags}
                assert given.dataset.digest == splits.digest(name)
                assert tags["rows"] == str(len(splits.split(name)))
                source = json.loads(given.dataset.source)
                if data is splits:
                    assert given.dataset.source_type == "local" and source == {
                        "uri": folder.as_uri()
                    }
                else:
                    assert given.dataset.source_type == "hugging_face"
                    assert source["path"] == "someone/hub-pets" and source["split"] == (
                        "train" if name in hub.carved else name
                    )
    finally:
        mlflow.set_tracking_uri(previous)


def test_an_unreachable_hub_turns_the_hub_clients_offline_before_they_are_imported():
    """A fresh process as `resnet-exp train` starts, with no offline setting: the probe (here
    answering 'unreachable' without touching the network) sets HF_HUB_OFFLINE and
    HF_DATASETS_OFFLINE before `datasets` is imported, both libraries come up offline, and the
    dataset that is not cached fails at once with the offline options."""
    import json
    import subprocess
    import sys

    from conftest import REPO, subprocess_env

    script = """
import json, os, sys, time
import resnet_exp.offline as offline
from resnet_exp.errors import OfflineError
probes = []
offline.reachable = lambda url: probes.append(url) or False
start = time.monotonic()
try:
    offline.check_hub_dataset("lucabaggi/animal-wildlife")
except OfflineError as err:
    message = str(err)
import datasets, huggingface_hub.constants
print(json.dumps({"probes": probes, "message": message, "seconds": time.monotonic() - start,
                  "env": [os.environ.get(k) for k in offline.HUB_OFFLINE_VARIABLES],
                  "libraries": [datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE]}))
"""
    env = subprocess_env(PYTHONPATH=str(REPO))
    for name in ("RESNET_EXP_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["probes"] == ["https://huggingface.co"] and seen["env"] == ["1", "1"]
    assert seen["libraries"] == [True, True] and seen["seconds"] < 30
    assert "unreachable" in seen["message"] and "data=demo" in seen["message"]


def test_once_the_hub_clients_are_imported_nothing_is_probed_or_changed(monkeypatch):
    """Their offline mode is read once, at import: setting the variables later would only
    mislead child processes, and a probe would cost a TCP connect for nothing."""
    import datasets  # noqa: F401 - imported, as in a process that already loaded data

    from resnet_exp import offline

    for name in ("RESNET_EXP_OFFLINE", *offline.HUB_OFFLINE_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    probes = []
    monkeypatch.setattr(offline, "reachable", lambda url: probes.append(url) or False)
    offline.hub_offline_if_unreachable()
    assert probes == [] and not any(name in os.environ for name in offline.HUB_OFFLINE_VARIABLES)


def hub_like(labels, feature=None):
    """An in-memory `datasets.Dataset` shaped like a Hub image dataset."""
    import datasets

    data = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (4, 4))] * len(labels), "label": labels}
    )
    data = data.cast_column("image", datasets.Image())
    return data.cast_column("label", feature) if feature else data


def test_plain_integer_labels_keep_their_order_and_agree_across_splits():
    import datasets

    raw = datasets.DatasetDict({"train": hub_like([0, 1, 2, 10, 11]), "test": hub_like([10, 2])})
    assert _find_columns(raw, "x") == ("image", "label")
    encoded = _encode_labels(raw, "label")
    assert encoded["train"].features["label"].names == ["0", "1", "2", "10", "11"]
    assert list(encoded["train"]["label"]) == [0, 1, 2, 3, 4] and list(
        encoded["test"]["label"]
    ) == [3, 2]


def test_string_labels_become_one_class_label():
    import datasets

    raw = datasets.DatasetDict({"train": hub_like(["dog", "cat"]), "test": hub_like(["dog"])})
    encoded = _encode_labels(raw, "label")
    assert encoded["test"].features["label"].names == ["cat", "dog"] and list(
        encoded["test"]["label"]
    ) == [1]


def test_an_unlabelled_test_split_is_replaced_and_bad_labels_are_refused():
    import datasets

    classes = datasets.ClassLabel(names=["a", "b"])
    raw = datasets.DatasetDict(
        {"train": hub_like([0, 1], classes), "test": hub_like([-1, -1], classes)}
    )
    assert set(_drop_unlabelled_splits(raw, "label", "hub")) == {"train"}
    raw["test"] = hub_like([0, -1], classes)
    with pytest.raises(DataError, match="test split of hub has 1 labels outside 0..1"):
        _drop_unlabelled_splits(raw, "label", "hub")


def test_a_folder_is_read_once_per_process_until_its_files_change(tmp_path):
    from resnet_exp.data.splits import _load_folder, _tree_signature

    folder = make_image_folder(tmp_path / "pets", {"cat": 3, "dog": 3})
    first = _load_folder(folder, _tree_signature(folder))
    again = _load_folder(folder, _tree_signature(folder))
    # cached; callers get their own dict
    assert again["train"] is first["train"] and again is not first
    save_image(folder / "dog" / "dog_new.png", seed=99)
    changed = _load_folder(folder, _tree_signature(folder))
    assert changed["train"] is not first["train"] and len(changed["train"]) == 7


def test_a_split_digest_follows_its_rows_and_the_files(tmp_path):
    """The digest MLflow records for each split: the same for the same data and seed, another
    for another carving (seed) or for changed files."""
    import os

    folder = make_image_folder(tmp_path / "pets", {"cat": 6, "dog": 6})

    def digests(**c):
        return {n: load_splits(folder_config(folder, **c)).digest(n) for n in SPLITS}

    first, same, other_seed = digests(seed=1), digests(seed=1), digests(seed=2)
    assert first == same and len(set(first.values())) == 3 and len(first["train"]) == 16
    assert all(first[n] != other_seed[n] for n in SPLITS)
    changed = save_image(folder / "dog" / "dog_000.png", seed=77)  # new pixels under the same name
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    assert all(first[n] != d for n, d in digests(seed=1).items())
