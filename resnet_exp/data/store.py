"""Preprocess once: every image is decoded, converted to RGB and resized a single time into a
uint8 array on disk, which every epoch, run and sweep child then memory-maps.

Layout: `<data_dir>/store/<key>-<image_size>px-v<STORE_VERSION>/images.npy`, one folder per
source split (the split as the data provides it, before validation/test are carved from it, so
runs with other seeds share it), holding an (N, size, size, 3) uint8 array plus a `meta.json`
that says what it was built from. The key is the source split's content key
(`splits.source_keys`: a folder's file paths, sizes and modification times; a Hub dataset's id
and cached revision), and `image_size`: changed data or another size gets a new folder, and
nothing is ever rewritten in place. Folders are written atomically (see atomic.py). Stale
folders are not deleted automatically: `rm -r <data_dir>/store` is always safe.

Reading a batch is one gather from the page cache (32 images of 224 px in well under a
millisecond here, against about 3 ms to decode and resize one JPEG), and normalisation to
float happens in the training step, on the GPU where there is one.

    python -c "from resnet_exp.config import TrainConfig as C; from resnet_exp.data.splits import load_splits; \
from resnet_exp.data.store import open_image_store as o; c = C(data='demo', image_size=64); print(o(load_splits(c), c))"
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from resnet_exp.atomic import build_atomically
from resnet_exp.config import TrainConfig
from resnet_exp.data.images import resize_pixels
from resnet_exp.data.splits import DataSplits, decode_image, describe_row
from resnet_exp.errors import DataError
from resnet_exp.signals import interrupt_point

log = logging.getLogger(__name__)

STORE_VERSION = 1  # bump when decoding or resizing changes, so that no old store is reused
IMAGES, META = "images.npy", "meta.json"
ROWS_PER_READ = 256  # rows fetched from `datasets` at a time while building (bounded memory)


@dataclass(frozen=True)
class ImageStore:
    """The store folders of the source splits a run uses, and what opening them cost."""

    folders: dict[str, Path]  # source split -> its store folder
    built: tuple[str, ...]  # the source splits this call decoded (empty: everything reused)
    seconds: float  # wall time spent building or opening

    def split(self, splits: DataSplits, name: str) -> StoredSplit:
        source, rows = splits.rows[name]
        labels = np.asarray(splits.split(name)[splits.label_column], dtype=np.int64)
        return StoredSplit(self.folders[source] / IMAGES, rows, labels)

    @property
    def root(self) -> Path:
        """The folder that holds the store folders (what the run records)."""
        return next(iter(self.folders.values())).parent


def store_folder(data_dir: str, key: str, image_size: int) -> Path:
    """The folder of one source split's store: `key` is its content key (DataSplits.keys)."""
    return Path(data_dir).expanduser() / "store" / f"{key}-{image_size}px-v{STORE_VERSION}"


def open_image_store(splits: DataSplits, config: TrainConfig) -> ImageStore:
    """Build the store of every source split the run uses unless it exists; raises DataError
    naming an image that does not decode (before any training starts)."""
    start = time.perf_counter()
    folders, built = {}, []
    for source in sorted({source for source, _ in splits.rows.values()}):
        data = splits.sources[source]
        folder = store_folder(config.data_dir, splits.keys[source], config.image_size)
        if not folder.is_dir():
            _check_disk_space(folder.parent, len(data), config.image_size)
        fresh = build_atomically(
            folder, partial(_write, splits=splits, source=source, image_size=config.image_size)
        )
        if fresh:
            built.append(source)
        log.info(
            "image store: %s %s (%d images at %d px)",
            "built" if fresh else "reused",
            folder,
            len(data),
            config.image_size,
        )
        folders[source] = folder
    return ImageStore(folders, tuple(built), time.perf_counter() - start)


def _check_disk_space(parent: Path, images: int, image_size: int) -> None:
    need = images * image_size * image_size * 3  # bytes: uint8 RGB
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if need > free:
        raise DataError(
            f"the image store needs {need / 1e9:.2f} GB in {parent} but only "
            f"{free / 1e9:.2f} GB are free: choose another data_dir or a smaller image_size"
        )


def _write(folder: Path, splits: DataSplits, source: str, image_size: int) -> None:
    data = splits.sources[source].select_columns([splits.image_column])
    images = np.lib.format.open_memmap(
        folder / IMAGES, mode="w+", dtype=np.uint8, shape=(len(data), image_size, image_size, 3)
    )
    interrupt_point("image_store")
    index = 0
    for batch in data.iter(batch_size=ROWS_PER_READ):
        for item in batch[splits.image_column]:
            where = describe_row(item, index, source, splits.location)
            images[index] = resize_pixels(decode_image(item, where), image_size)
            index += 1
    images.flush()
    del images  # close the memory map before the folder is renamed
    meta = {
        "version": STORE_VERSION,
        "location": splits.location,
        "split": source,
        "key": splits.keys[source],
        "image_size": image_size,
        "images": index,
        "layout": "uint8 (N, H, W, RGB)",
    }
    (folder / META).write_text(json.dumps(meta, indent=2))


class StoredSplit(torch.utils.data.Dataset):
    """One split's images from the store, read a whole batch at a time: `dataset[indices]` is
    (uint8 (B, 3, S, S), int64 labels (B,)). The pixels come channels-last in memory (the
    store's HWC layout), which is what the network runs fastest on."""

    def __init__(self, path: Path, rows: np.ndarray, labels: np.ndarray):
        self.path, self.rows, self.labels = path, np.asarray(rows), torch.from_numpy(labels)
        self._images: np.ndarray | None = None

    @property
    def images(self) -> np.ndarray:
        if self._images is None:  # opened lazily, so each DataLoader worker maps its own
            self._images = np.load(self.path, mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        # A pickled np.memmap carries all its data: spawned workers get the path instead.
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(self.images[self.rows[batch]])  # (B, S, S, 3), a copy
        return pixels.permute(0, 3, 1, 2), self.labels[batch]
