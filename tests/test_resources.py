"""Resources and their errors: group-readable shared folders, empty class folders, bad weights
files, disk errors before the run, atomic checkpoints, phase times and precision by evidence."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import make_image_folder
from resnet_exp.config import TrainConfig
from resnet_exp.errors import DataError, WeightsError


# --- the small things ------------------------------------------------------------------------


def test_an_empty_class_folder_is_named(tmp_path):
    make_image_folder(tmp_path, {"a": 4, "b": 4})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match=f"class folder {tmp_path / 'c'} holds no image files"):
        from resnet_exp.data import load_splits
        load_splits(TrainConfig(data=str(tmp_path), weights="none", image_size=32))


def test_an_empty_class_folder_inside_a_split_is_named(tmp_path):
    make_image_folder(tmp_path / "train", {"a": 4, "b": 4})
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match="train/c holds no image files"):
        from resnet_exp.data import load_splits
        load_splits(TrainConfig(data=str(tmp_path), weights="none", image_size=32))


def test_a_text_file_as_weights_says_what_was_expected(tmp_path):
    from resnet_exp.model import load_initial_weights

    garbage = tmp_path / "weights.pt"
    garbage.write_text("random text, not a tensor in sight\n" * 10)
    with pytest.raises(WeightsError, match="expected a PyTorch state_dict saved with torch.save"):
        load_initial_weights(TrainConfig(data="demo", weights=str(garbage)))


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
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in
             (tmp_path / "shared", tmp_path / "shared" / "sub", tmp_path / "shared" / "sub" / "file.bin")}
    assert modes == {"shared": 0o755, "sub": 0o755, "file.bin": 0o644}
