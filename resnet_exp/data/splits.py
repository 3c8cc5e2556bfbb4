"""Data: a Hub dataset, a local image folder or the demo data, as train/validation/test loaders.

Every source goes through `datasets`: a Hub id with `load_dataset(id)`, a folder (and the demo
data) with the `imagefolder` builder. Missing validation/test splits are carved from train by a
stratified split seeded by `seed`; the test split is never used for model selection. Images are
decoded by us (not by `datasets`) so that any PIL mode becomes RGB and a bad file is named.

    python -c "from resnet_exp.config import TrainConfig; from resnet_exp.data.splits import load_splits; \
print(load_splits(TrainConfig(data='demo')).summary())"
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, UnidentifiedImageError

from resnet_exp.compat import pixels_of_bomb_error
from resnet_exp.config import TrainConfig
from resnet_exp.data.demo import ensure_demo_dataset
from resnet_exp.data.images import image_to_tensor, to_rgb
from resnet_exp.errors import DataError
from resnet_exp.hardware import Runtime

if TYPE_CHECKING:  # imported where used: the offline decision comes before `datasets` loads
    import datasets
from resnet_exp.offline import hub_offline_if_unreachable, hub_unavailable

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "training": "train",
    "testing": "test",
}


@dataclass(frozen=True)
class DataSplits:
    """The three splits (undecoded `datasets.Dataset`s) and what travels with the run."""

    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset
    class_names: tuple[str, ...]
    image_column: str
    label_column: str
    source: str  # 'hub', 'folder' or 'demo'
    location: str  # Hub id or absolute folder path
    carved: tuple[str, ...]  # splits made by our stratified split rather than by the source
    # The splits as the data provides them (before carving), and for each of our three splits
    # the source split and row indices it was taken from: the image store is built per source
    # split, so that every seed's carving reuses one store.
    sources: Mapping[str, datasets.Dataset]
    rows: Mapping[str, tuple[str, np.ndarray]]
    # For each source split, a key of its images in row order (source_keys() below): the image
    # store's folder name, and with the rows, each split's digest in MLflow.
    keys: Mapping[str, str]

    def split(self, name: str) -> datasets.Dataset:
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {name: len(self.split(name)) for name in SPLITS}

    def summary(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.sizes().items())
        return f"{self.location}: {len(self.class_names)} classes, {sizes}"

    def digest(self, name: str) -> str:
        """What identifies one of our splits: its source split's key and the rows taken from it
        (16 hex digits). Another seed's carving, or changed data, gives another digest."""
        source, rows = self.rows[name]
        return _hash(self.keys[source], np.asarray(rows, dtype=np.int64).tobytes().hex())


# --- loading -------------------------------------------------------------------------------------


def load_splits(config: TrainConfig) -> DataSplits:
    """Load the configured data and return its three splits; raises DataError / OfflineError."""
    import datasets

    source = config.data_source
    files = None
    if source == "hub":
        location = config.data
        raw = _load_hub(config.data)
    else:
        location = (
            ensure_demo_dataset(config.data_dir)
            if source == "demo"
            else Path(config.data).expanduser()
        ).resolve()
        files = _tree_signature(location)
        raw = _load_folder(location, files)
    raw = datasets.DatasetDict({SPLIT_ALIASES.get(k, k): v for k, v in raw.items()})
    if "train" not in raw:
        raise DataError(f"{location} has splits {sorted(raw)} but no train split")
    keys = source_keys(raw, str(location), files)
    image_column, label_column = _find_columns(raw, location)
    raw = _drop_unlabelled_splits(_encode_labels(raw, label_column), label_column, location)
    class_names = tuple(raw["train"].features[label_column].names)
    if len(class_names) < 2:
        raise DataError(
            f"{location} has {len(class_names)} class ({', '.join(class_names)}): "
            "a classifier needs at least 2"
        )
    sources = {k: v.cast_column(image_column, datasets.Image(decode=False)) for k, v in raw.items()}
    rows, carved = _split_rows(sources, label_column, config)
    splits = {name: sources[source].select(idx) for name, (source, idx) in rows.items()}
    for name, split in splits.items():
        if len(split) == 0:
            raise DataError(
                f"the {name} split of {location} is empty; add images to it, or let the "
                "split be carved from train by removing it (see val_fraction/test_fraction)"
            )
    result = DataSplits(
        **splits,
        class_names=class_names,
        image_column=image_column,
        label_column=label_column,
        source=source,
        location=str(location),
        carved=carved,
        sources=sources,
        rows=rows,
        keys=keys,
    )
    if source != "hub":
        check_image_files(result)
    return result


def _load_folder(root: Path, files: tuple) -> datasets.DatasetDict:
    import datasets

    class_dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not class_dirs:
        raise DataError(
            f"{root} has no subfolders: an image folder needs one subfolder per class "
            "(optionally inside train/, validation/ and test/)"
        )
    _check_no_empty_class_folder(root, class_dirs)
    # A copy: callers may add or drop splits; the datasets themselves are immutable.
    return datasets.DatasetDict(_load_imagefolder(str(root), files))


def _tree_signature(root: Path) -> tuple:
    """Every file's path, size and modification time: equal signatures, equal folders."""
    stats = ((p, p.stat()) for p in root.rglob("*") if p.is_file())
    return tuple(sorted((str(p.relative_to(root)), st.st_size, st.st_mtime_ns) for p, st in stats))


def source_keys(raw: datasets.DatasetDict, location: str, files: tuple | None) -> dict[str, str]:
    """For each source split, a key (16 hex digits) of the images it holds in row order, from
    public facts only, so it is the same in every process and changes when the data does.

    A folder (and the demo data): every file's path, size and modification time (one file
    rewritten, added or removed changes it). A Hub dataset: its id, its row count and features,
    and the files `datasets` cached it in, whose folder names the revision (a new revision is
    downloaded into a new folder). Both add the split's name and the version of `datasets`,
    which decides the order of a folder's rows."""
    import datasets

    keys = {}
    for name, split in raw.items():
        if files is not None:
            facts = {"files": files}
        else:
            facts = {
                "hub": location,
                "rows": split.num_rows,
                "features": split.features.to_dict(),
                "cache_files": [f["filename"] for f in split.cache_files],
            }
        keys[name] = _hash(
            json.dumps(
                {**facts, "split": name, "datasets": datasets.__version__},
                sort_keys=True,
                default=str,
            )
        )
    return keys


def _hash(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def _load_imagefolder(root: str, signature: tuple) -> datasets.DatasetDict:
    """`imagefolder` on `root`, once per process while its files stay the same: each call
    resolves 66 split patterns by walking the whole tree (1.5-2 s for the 800-image demo), which
    every child of a sweep paid again, in the same process, for the same folder."""
    import datasets

    try:
        raw = datasets.load_dataset("imagefolder", data_dir=root)
    except (ValueError, FileNotFoundError) as err:
        raise DataError(f"cannot read {root} as an image folder: {err}") from None
    if "train" not in raw:
        # `imagefolder` also matches split words inside file names: one file named
        # 'x_test_1.jpg' turns a plain class folder into a one-row 'test' split.
        raise DataError(
            f"{root} yielded splits {sorted(raw)} but no train split. Use class "
            "subfolders, optionally inside train/ validation/ test/, and avoid the words "
            "train, test, val, valid, dev as separate parts of file names"
        )
    return raw


def _check_no_empty_class_folder(root: Path, top: list[Path]) -> None:
    """`imagefolder` silently drops a class folder without images, which would train a model
    with one class fewer than the folders show: name it instead."""
    split_words = set(SPLITS) | set(SPLIT_ALIASES)
    splits = [p for p in top if p.name.lower() in split_words]
    class_dirs = (
        [
            c
            for split in splits
            for c in split.iterdir()
            if c.is_dir() and not c.name.startswith(".")
        ]
        if splits
        else top
    )
    extensions = {ext.lower() for ext in Image.registered_extensions()}
    for folder in sorted(class_dirs):
        if not any(f.suffix.lower() in extensions for f in folder.rglob("*") if f.is_file()):
            raise DataError(
                f"class folder {folder} holds no image files: add images to it or "
                "remove it (a class without images cannot be learnt)"
            )


def _load_hub(hub_id: str) -> datasets.DatasetDict:
    import datasets

    hub_offline_if_unreachable()
    try:
        return datasets.load_dataset(hub_id)
    except ConnectionError:
        raise hub_unavailable(hub_id) from None
    except FileNotFoundError as err:  # DatasetNotFoundError is one
        raise DataError(
            f"data={hub_id!r}: no such local folder and no such dataset on the Hub "
            f"({err}). Expected a Hub dataset id, an image-folder path, or "
            "'demo'"
        ) from None
    except ValueError as err:  # e.g. a dataset with several configurations
        raise DataError(f"cannot load Hub dataset {hub_id!r}: {err}") from None


def _find_columns(raw: datasets.DatasetDict, location: object) -> tuple[str, str]:
    import datasets

    features = raw["train"].features
    images = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    if not images:
        raise DataError(f"{location} has no image column (features: {dict(features)})")
    image_column = "image" if "image" in images else images[0]
    labels = [k for k, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if labels:
        return image_column, "label" if "label" in labels else labels[0]
    if "label" in features:
        return image_column, "label"  # plain ints or strings, encoded by _encode_labels
    raise DataError(
        f"{location} has no class labels: an image folder needs at least 2 class "
        "subfolders with images in each; a Hub dataset needs a 'label' column"
    )


def _encode_labels(raw: datasets.DatasetDict, label_column: str) -> datasets.DatasetDict:
    import datasets

    if isinstance(raw["train"].features[label_column], datasets.ClassLabel):
        return raw
    # Plain ints or strings: one ClassLabel over all splits, so ids agree between splits, and
    # ids 0..n-1 in sorted order of the values (ints sort as numbers: 2 before 10).
    values = sorted(
        {v for split in raw.values() for v in split[label_column]}, key=lambda v: (str(type(v)), v)
    )
    if None in values:
        raise DataError(f"the '{label_column}' column has empty values: every image needs a label")
    ids = {v: i for i, v in enumerate(values)}
    feature = datasets.ClassLabel(names=[str(v) for v in values])

    def encode(split: datasets.Dataset) -> datasets.Dataset:
        features = split.features.copy()
        features[label_column] = feature
        return split.map(
            lambda b: {label_column: [ids[v] for v in b[label_column]]},
            batched=True,
            features=features,
        )

    return datasets.DatasetDict({k: encode(v) for k, v in raw.items()})


def _drop_unlabelled_splits(raw: datasets.DatasetDict, label_column: str, location: object):
    """Hub datasets often ship a test split labelled -1 (no labels): treat it as missing, so it
    is carved from train. Labels outside 0..n-1 in part of a split are an error."""
    n = raw["train"].features[label_column].num_classes
    kept = {}
    for name, split in raw.items():
        labels = np.asarray(split[label_column])
        if len(labels) and (labels < 0).all() and name != "train":
            log.warning(
                "the %s split of %s is unlabelled (-1): ignored, carved from train", name, location
            )
            continue
        bad = labels[(labels < 0) | (labels >= n)]
        if len(bad):
            raise DataError(
                f"the {name} split of {location} has {len(bad)} labels outside 0..{n - 1} "
                f"(e.g. {bad[0]}): every image needs one of the {n} classes"
            )
        kept[name] = split
    return type(raw)(kept)


def _split_rows(raw: Mapping[str, datasets.Dataset], label_column: str, config: TrainConfig):
    """For each of our splits: (source split, row indices there). A split the data lacks is
    carved from train; a split it has is used whole."""
    wanted = {"test": config.test_fraction, "validation": config.val_fraction}
    missing = {name: frac for name, frac in wanted.items() if name not in raw}
    rows = {name: (name, np.arange(len(raw[name]))) for name in SPLITS if name in raw}
    if missing:
        labels = np.asarray(raw["train"][label_column])
        parts = stratified_split(labels, missing, config.seed)
        rows.update({name: ("train", idx) for name, idx in parts.items()})
    return rows, tuple(sorted(missing))


def stratified_split(
    labels: np.ndarray, fractions: dict[str, float], seed: int
) -> dict[str, np.ndarray]:
    """Split row indices per class: each named part takes n * fraction (rounded) of every class, in
    the order given; 'train' gets the rest. Deterministic for a seed, and the parts are disjoint."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*fractions, "train"]}
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, fraction in fractions.items():
            take = int(len(rows) * fraction + 0.5)  # round half up (round() halves to even)
            parts[name].append(rows[start : start + take])
            start += take
        parts["train"].append(rows[start:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def check_image_files(splits: DataSplits) -> None:
    """Open the header of every local file before training starts, so a non-image file is named
    now rather than an hour into the run. (A truncated file is named when it is decoded.)"""
    for name in SPLITS:
        for item in splits.split(name)[splits.image_column]:
            path = item.get("path")
            if path and item.get("bytes") is None:
                try:
                    with Image.open(path) as image:
                        image.verify()
                except Image.DecompressionBombError as err:
                    raise too_large(f"image file {path}", err) from None
                except (UnidentifiedImageError, OSError, SyntaxError) as err:
                    raise DataError(f"cannot read image file {path}: {err}") from None


# --- decoding ---------------------------------------------------------------------------------


def decode_image(item: dict, where: str) -> Image.Image:
    """Decode one {'bytes', 'path'} image cell; errors name the file (or row)."""
    try:
        source = io.BytesIO(item["bytes"]) if item.get("bytes") is not None else item["path"]
        image = Image.open(source)
        image.load()
        return to_rgb(image)
    except Image.DecompressionBombError as err:
        raise too_large(f"image {where}", err) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"cannot decode image {where}: {err}") from None


def too_large(what: str, err: Image.DecompressionBombError) -> DataError:
    """PIL's refusal of an image whose header claims more pixels than it will decode (twice
    Image.MAX_IMAGE_PIXELS: 179 million by default, a 13,400 px square) as one line naming it."""
    claimed = pixels_of_bomb_error(err)
    size = f"{claimed:,} pixels, " if claimed else ""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return DataError(
        f"{what} claims {size}over the limit of {limit:,} pixels for one image (a "
        "decompression bomb?): shrink it or remove it from the data"
    )


def describe_row(item: dict, index: int, split: str, location: str) -> str:
    """How an error names one image: its file, else its row."""
    where = f"row {index} of the {split} split of {location}"
    if item.get("path"):
        where = item["path"] if item.get("bytes") is None else f"{item['path']} ({where})"
    return where


class ImageSplit(torch.utils.data.Dataset):
    """One split as (image tensor, label id) pairs, decoded on access: the reference for what
    the image store holds, and the per-sample pipeline the benchmarks compare against."""

    def __init__(self, splits: DataSplits, name: str, image_size: int):
        self.rows = splits.split(name)
        self.name, self.location = name, splits.location
        self.image_column, self.label_column = splits.image_column, splits.label_column
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.rows[index]
        item = row[self.image_column]
        image = decode_image(item, describe_row(item, index, self.name, self.location))
        return image_to_tensor(image, self.image_size), int(row[self.label_column])


class ImageDataModule(pl.LightningDataModule):
    """Loaders over batch-indexed splits (`dataset[indices]` returns a whole batch: the image
    store, or cached features). Every path draws the same batches: the train order comes from
    one sampler seeded by `seed`."""

    def __init__(
        self, inputs: Mapping[str, torch.utils.data.Dataset], config: TrainConfig, runtime: Runtime
    ):
        super().__init__()
        self.inputs, self.config, self.runtime = inputs, config, runtime
        # One generator for the sampler and the loader, as DataLoader(shuffle=True, generator=g)
        # shares it: the same seed gives the same order as a per-sample loader would.
        self.train_order = torch.Generator().manual_seed(config.seed)

    # Lightning keeps these in every checkpoint: a resumed run draws the epochs' orders it would
    # have drawn without the stop (no data augmentation draws from any other generator).
    def state_dict(self) -> dict[str, Any]:
        return {"train_order": self.train_order.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train_order.set_state(state["train_order"])

    def _loader(self, name: str, shuffle: bool) -> torch.utils.data.DataLoader:
        dataset = self.inputs[name]
        generator = self.train_order if shuffle else None
        order = (
            torch.utils.data.RandomSampler(dataset, generator=generator)
            if shuffle
            else torch.utils.data.SequentialSampler(dataset)
        )
        # A last batch of one image breaks BatchNorm in train mode (1x1 maps in layer4 at 32 px).
        batches = torch.utils.data.BatchSampler(
            order,
            self.config.batch_size,
            drop_last=shuffle and len(dataset) > self.config.batch_size,
        )
        workers = self.runtime.num_workers
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=None,  # the dataset returns whole batches
            sampler=batches,
            generator=generator,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.runtime.pin_memory,
        )

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        return self._loader("test", shuffle=False)
