"""The uint8 image store: same pixels as decoding on the fly, built once and reused, rebuilt when
the data or image_size change, never left half-written; batch order shared by every input path."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from conftest import REPO, make_image_folder, save_image, subprocess_env
from resnet_exp.config import TrainConfig
from resnet_exp.data.images import normalise
from resnet_exp.data.splits import SPLITS, ImageDataModule, ImageSplit, load_splits
from resnet_exp.data.store import IMAGES, open_image_store
from resnet_exp.errors import DataError
from resnet_exp.hardware import resolve_runtime


def folder_config(root, tmp_path, **changes) -> TrainConfig:
    values = dict(
        data=str(root),
        data_dir=str(tmp_path / "data"),
        weights="none",
        image_size=32,
        val_fraction=0.2,
        test_fraction=0.2,
        batch_size=4,
    )
    return TrainConfig(**{**values, **changes})


def open_store(config: TrainConfig):
    splits = load_splits(config)
    return splits, open_image_store(splits, config)


def test_the_store_holds_what_decoding_on_the_fly_gives(tmp_path):
    root = make_image_folder(tmp_path / "images", {"a": 5, "b": 5}, suffix=".jpg")
    splits, store = open_store(folder_config(root, tmp_path))
    assert store.built == ("train",) and set(store.folders) == {
        "train"
    }  # one source: carved splits share it
    for name in SPLITS:
        stored, reference = store.split(splits, name), ImageSplit(splits, name, 32)
        pixels, labels = stored[list(range(len(stored)))]
        assert pixels.dtype == torch.uint8 and pixels.shape == (len(reference), 3, 32, 32)
        expected = torch.stack([reference[i][0] for i in range(len(reference))])
        assert torch.equal(normalise(pixels), expected), name  # bit for bit
        assert labels.tolist() == [reference[i][1] for i in range(len(reference))]


def test_a_second_run_reuses_the_store_without_decoding(tmp_path):
    root = make_image_folder(tmp_path / "images", {"a": 5, "b": 5})
    config = folder_config(root, tmp_path)
    _, first = open_store(config)
    images = first.folders["train"] / IMAGES
    written = images.stat().st_mtime_ns
    _, again = open_store(config)
    _, other_seed = open_store(config.replace(seed=7))  # another carving of the same source
    assert again.built == other_seed.built == ()
    assert again.folders == other_seed.folders == first.folders
    assert images.stat().st_mtime_ns == written  # nothing rewrote it
    assert sorted(p.name for p in first.root.iterdir()) == [first.folders["train"].name]


def test_other_image_size_or_changed_data_builds_a_new_store(tmp_path):
    root = make_image_folder(tmp_path / "images", {"a": 5, "b": 5})
    config = folder_config(root, tmp_path)
    _, first = open_store(config)
    _, resized = open_store(config.replace(image_size=48))
    assert resized.built == ("train",) and resized.folders != first.folders
    assert np.load(resized.folders["train"] / IMAGES, mmap_mode="r").shape == (10, 48, 48, 3)

    changed = save_image(root / "a" / "a_000.png", seed=999)  # new pixels under the same name
    # (a coarse file-system clock could give the rewrite the old time: make sure it moves)
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    _, rebuilt = open_store(config)
    assert rebuilt.built == ("train",) and rebuilt.folders != first.folders


def test_an_added_file_or_another_source_split_gets_its_own_store(tmp_path):
    """The key covers every file (one added changes it) and the split's name: a folder with its
    own train/ and test/ holds two source splits, which must never share a store folder."""
    root = make_image_folder(tmp_path / "images", {"a": 5, "b": 5})
    config = folder_config(root, tmp_path)
    _, first = open_store(config)
    save_image(root / "b" / "b_new.png", seed=5)
    _, grown = open_store(config)
    assert grown.built == ("train",) and grown.folders["train"] != first.folders["train"]
    assert np.load(grown.folders["train"] / IMAGES, mmap_mode="r").shape[0] == 11

    split_root = tmp_path / "with-splits"
    make_image_folder(split_root / "train", {"a": 5, "b": 5})
    make_image_folder(split_root / "test", {"a": 2, "b": 2})
    splits, store = open_store(folder_config(split_root, tmp_path))
    assert (
        set(store.folders) == {"train", "test"} and store.folders["train"] != store.folders["test"]
    )
    assert splits.keys["train"] != splits.keys["test"]


@pytest.mark.slow  # a fresh interpreter importing torch and Lightning: ~5 s on 2 busy cores
def test_the_store_key_is_the_same_in_another_process(tmp_path):
    """The key is computed from the files, not from anything of this process (a sweep's children,
    Ray trials and later runs find the store by it)."""
    import subprocess
    import sys

    root = make_image_folder(tmp_path / "images", {"a": 5, "b": 5})
    config = folder_config(root, tmp_path)
    here = load_splits(config).keys
    script = (
        "import json, sys; from resnet_exp.config import TrainConfig; "
        "from resnet_exp.data.splits import load_splits; "
        f"print(json.dumps(dict(load_splits(TrainConfig(data={str(root)!r}, weights='none')).keys)))"
    )
    there = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env=subprocess_env(PYTHONPATH=str(REPO)),
    )
    assert json.loads(there.stdout.splitlines()[-1]) == dict(here)


def test_a_bad_image_is_named_and_leaves_no_store_behind(tmp_path):
    root = make_image_folder(tmp_path / "images", {"a": 5, "b": 5}, suffix=".jpg")
    victim = root / "b" / "b_003.jpg"
    data = victim.read_bytes()
    victim.write_bytes(data[: data.index(b"\xff\xda") + 40])  # header intact, pixel data truncated
    config = folder_config(root, tmp_path)
    splits = load_splits(config)
    with pytest.raises(DataError, match="b_003.jpg"):
        open_image_store(splits, config)
    assert list((tmp_path / "data" / "store").iterdir()) == []  # no folder, no staging leftovers


class RowNumbers(torch.utils.data.Dataset):
    """A batch-indexed input like the store or the feature cache, whose batches are row numbers."""

    def __init__(self, labels: torch.Tensor):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(batch), self.labels[batch]


def test_train_batches_come_in_one_seeded_order_whatever_the_input(tmp_path):
    """Every input (image store, feature cache) goes through the same loader, which draws the
    order a shuffled per-sample DataLoader with the same seed draws: same seed, same batches."""
    root = make_image_folder(tmp_path / "images", {"a": 8, "b": 8})
    config = folder_config(root, tmp_path, batch_size=3)
    splits, store = open_store(config)
    images = {name: store.split(splits, name) for name in SPLITS}
    rows_only = {name: RowNumbers(s.labels) for name, s in images.items()}
    runtime = resolve_runtime(config)

    def epochs(inputs, take) -> list[list[int]]:
        loader = ImageDataModule(inputs, config, runtime).train_dataloader()
        return [take(batch).tolist() for _ in range(2) for batch in loader]  # the order moves on

    n = len(images["train"])
    per_sample = torch.utils.data.DataLoader(
        range(n),
        batch_size=3,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    rows = epochs(rows_only, lambda b: b[0])
    assert rows == [b.tolist() for _ in range(2) for b in per_sample] and len(rows) == 2 * (n // 3)
    labels = images["train"].labels
    assert epochs(images, lambda b: b[1]) == [labels[r].tolist() for r in rows]
