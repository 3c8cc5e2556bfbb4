"""Shared pieces of the benchmarks: a folder of realistic JPEGs, the compute-only rate on random
tensors, a real project training (`resnet_exp.training.train.train`, MLflow and all) and the seed-style
baseline, all measured in the calling process with the same threads.

The seed-style baseline is what a first training script does: a per-sample DataLoader that
decodes, resizes and normalises every image with PIL in every epoch, frozen stages frozen by
`requires_grad=False` only (the model stays in train mode, so they still run forward and move
their BatchNorm statistics), NCHW tensors, and fp32 unless told otherwise (the seed code ran
fp32 on every CPU).

    python benchmarks/train_throughput.py --help
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from resnet_exp import schema as S
from resnet_exp.atomic import build_atomically
from resnet_exp.config import TrainConfig
from resnet_exp.data.demo import CLASSES, render_shape
from resnet_exp.data.splits import ImageSplit, load_splits
from resnet_exp.hardware import Runtime, apply_runtime, autocast, resolve_runtime
from resnet_exp.model.classifier import adamw
from resnet_exp.model.network import build_resnet
from resnet_exp.tracking import timing

JPEG_QUALITY = 90
# Lightning's per-run banners (model summary, "fit stopped") would bury the tables.
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
WARMUP_STEPS = 2  # allocator and kernel selection, not timed


# --- inputs -----------------------------------------------------------------------------------


# The folder of generated JPEGs every benchmark reuses between runs.
work_dir_option = click.option(
    "--work-dir",
    default="data/benchmarks",
    show_default=True,
    type=click.Path(path_type=Path),
    help="where the JPEG folder is kept between runs",
)


def jpeg_folder(work_dir: Path, per_class: int, size: int, classes: int = len(CLASSES)) -> Path:
    """An image folder of `classes` x `per_class` JPEGs of `size` px (the demo's shapes, drawn
    at a photo-like size so that decoding costs what it costs for real data). Made once."""
    root = work_dir / f"jpegs-{classes}x{per_class}-{size}px"

    def write(folder: Path) -> None:
        rng = np.random.default_rng(0)
        for label in CLASSES[:classes]:
            (folder / label).mkdir()
            for i in range(per_class):
                render_shape(label, rng, size).save(
                    folder / label / f"{label}_{i:04d}.jpg", quality=JPEG_QUALITY
                )

    build_atomically(root, write)
    return root


@contextmanager
def scratch_space() -> Iterator[Path]:
    """A temporary folder for the store, checkpoints and an MLflow store of this benchmark
    only: a store left by an earlier invocation would hide the cost of building it."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="resnet-exp-bench-") as folder:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder}/mlflow.db"
        MlflowClient().search_experiments()  # create the database now: a real one exists already
        try:
            yield Path(folder)
        finally:
            os.environ.pop("MLFLOW_TRACKING_URI")
            if previous is not None:
                os.environ["MLFLOW_TRACKING_URI"] = previous


def bench_config(folder: Path, scratch: Path, **changes) -> TrainConfig:
    """The benchmarks' training config: `folder`'s images, random init, seed 0, and everything
    the run writes (store, checkpoints) under `scratch`."""
    values = dict(
        data=str(folder),
        data_dir=str(scratch / "data"),
        output_dir=str(scratch / "results"),
        weights="none",
        seed=0,
        experiment_name="benchmark",
    )
    return TrainConfig(**{**values, **changes})


def steady(rates: list[float]) -> float:
    """Mean images/s of the epochs after the first (the first pays for warm-up)."""
    later = rates[1:] or rates
    return sum(later) / len(later)


# --- compute only -----------------------------------------------------------------------------


@dataclass
class Bench:
    """A model of the config on the device, in the project's precision and memory format, with
    a random batch and the AdamW over its trainable parameters."""

    runtime: Runtime
    device: torch.device
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    optimizer: torch.optim.Optimizer


def bench_model(config: TrainConfig, num_classes: int = len(CLASSES)) -> Bench:
    runtime = resolve_runtime(config)
    apply_runtime(runtime)
    torch.manual_seed(0)
    device = torch.device(runtime.accelerator)
    classes = [f"class{i}" for i in range(num_classes)]  # only their number matters here
    fmt = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = build_resnet(config.net_spec(classes)).to(device).train().to(memory_format=fmt)
    size = config.image_size
    x = torch.randn(config.batch_size, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, num_classes, (config.batch_size,), device=device)
    # the project's
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], config.learning_rate)
    return Bench(runtime, device, model, x, y, optimizer)


def compute_only(config: TrainConfig, steps: int, num_classes: int = len(CLASSES)) -> float:
    """Training images/s on random tensors already on the device: the model, precision and
    memory format the project trains with, no data loading, no caching."""
    b = bench_model(config, num_classes)

    def step() -> None:
        b.optimizer.zero_grad(set_to_none=True)
        with autocast(b.runtime):
            loss = F.cross_entropy(b.model(b.x), b.y)
        loss.backward()
        b.optimizer.step()

    return _timed(step, steps, config.batch_size, b.device)


def compute_bound(
    config: TrainConfig,
    epochs: int,
    sizes: dict[str, int],
    steps: int,
    num_classes: int = len(CLASSES),
) -> float:
    """Seconds of compute a training of `config` cannot avoid, measured on random tensors with
    the project's model, precision and memory format: its trainable stages trained on every
    training image for `epochs`, and evaluated on the validation images each epoch and on the
    test images once, plus one forward pass of its frozen prefix per image (what the feature
    cache does). `sizes` counts the images of 'train', 'validation' and 'test'."""
    b = bench_model(config, num_classes)
    frozen = config.freeze_blocks > 0
    with torch.no_grad(), autocast(b.runtime):  # not inference_mode: these feed autograd
        features = b.model.prefix(b.x).float() if frozen else b.x
    trainable = b.model.forward_after_prefix if frozen else b.model

    def train_step() -> None:
        b.optimizer.zero_grad(set_to_none=True)
        with autocast(b.runtime):
            loss = F.cross_entropy(trainable(features), b.y)
        loss.backward()
        b.optimizer.step()

    @torch.inference_mode()
    def eval_step() -> None:
        with autocast(b.runtime):
            trainable(features)

    @torch.inference_mode()
    def prefix_step() -> None:
        with autocast(b.runtime):
            b.model.prefix(b.x)

    seconds = epochs * sizes["train"] / _timed(train_step, steps, config.batch_size, b.device)
    b.model.eval()
    seconds += (epochs * sizes["validation"] + sizes["test"]) / _timed(
        eval_step, steps, config.batch_size, b.device
    )
    if frozen:
        seconds += sum(sizes.values()) / _timed(prefix_step, steps, config.batch_size, b.device)
    return seconds


def _timed(step, steps: int, batch: int, device: torch.device) -> float:
    for _ in range(WARMUP_STEPS):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --- the project ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectRun:
    images_per_s: list[float]  # train_images_per_s of each epoch (data loading included)
    val_acc: list[float]
    wall_s: float  # the whole train() call: data, store, features, fit, test, MLflow
    store_s: float
    feature_cache_s: float
    feature_cache: str  # 'on' or 'off', as resolved


def project_run(config: TrainConfig) -> ProjectRun:
    """One real training (resnet_exp.training.train.train) and what it recorded in MLflow."""
    from resnet_exp.training.train import train

    start = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - start
    run = MlflowClient().get_run(result.run_id)
    phases = timing.phase_times(result.run_id)
    return ProjectRun(
        timing.epoch_times(result.run_id, S.TRAIN_THROUGHPUT),
        _history(result.run_id, S.VAL_ACC),
        wall,
        phases[S.IMAGE_STORE_TIME],
        phases[S.FEATURE_CACHE_TIME],
        run.data.params["resolved/feature_cache"],
    )


def _history(run_id: str, key: str) -> list[float]:
    return [
        m.value
        for m in sorted(MlflowClient().get_metric_history(run_id, key), key=lambda m: m.step)
    ]


# --- the seed-style baseline ------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineRun:
    images_per_s: list[float]  # training images/s of each epoch, loading included
    val_acc: list[float]
    wall_s: float


def seed_style_run(config: TrainConfig, precision: str, validate: bool = True) -> BaselineRun:
    """The seed-style training of `config`: per-sample PIL pipeline, requires_grad-only
    freezing, train mode, NCHW, `precision`; validation each epoch and a test at the end."""
    start = time.perf_counter()
    runtime = resolve_runtime(config.replace(precision=precision))
    apply_runtime(runtime)
    splits = load_splits(config)
    pl.seed_everything(config.seed, verbose=False)
    device = torch.device(runtime.accelerator)
    # freeze_blocks=0 here: this baseline freezes with requires_grad alone, below
    model = (
        build_resnet(config.replace(freeze_blocks=0).net_spec(splits.class_names))
        .to(device)
        .train()
    )
    stages = [getattr(model, f"layer{i}") for i in range(1, config.freeze_blocks + 1)]
    for module in [model.conv1, model.bn1, *stages] if config.freeze_blocks else []:
        module.requires_grad_(False)
    # as the seed-style pipeline had it: the per-tensor AdamW loop, not the project's fused kernel
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate
    )
    train_loader = _loader(splits, "train", config, runtime, shuffle=True)
    rates, val_acc = [], []
    for _ in range(config.max_epochs):
        rates.append(_train_epoch(model, optimizer, train_loader, config.limit_batches, runtime))
        if validate:
            val_acc.append(
                _accuracy(
                    model,
                    _loader(splits, "validation", config, runtime),
                    config.limit_batches,
                    runtime,
                )
            )
    if validate:
        _accuracy(model, _loader(splits, "test", config, runtime), config.limit_batches, runtime)
    return BaselineRun(rates, val_acc, time.perf_counter() - start)


def _loader(splits, name: str, config: TrainConfig, runtime: Runtime, shuffle: bool = False):
    dataset = ImageSplit(splits, name, config.image_size)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(config.seed) if shuffle else None,
        drop_last=shuffle and len(dataset) > config.batch_size,
        num_workers=runtime.num_workers,
    )


def _batches(loader, limit: int):
    for i, batch in enumerate(loader):
        if limit and i >= limit:
            return
        yield batch


def _train_epoch(model, optimizer, loader, limit: int, runtime: Runtime) -> float:
    device = torch.device(runtime.accelerator)
    model.train()
    start, images = time.perf_counter(), 0
    for x, y in _batches(loader, limit):
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast(runtime):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        images += len(y)
    _sync(device)
    return images / (time.perf_counter() - start)


def _accuracy(model, loader, limit: int, runtime: Runtime) -> float:
    device = torch.device(runtime.accelerator)
    model.eval()
    correct = seen = 0
    with torch.no_grad(), autocast(runtime):
        for x, y in _batches(loader, limit):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
            seen += len(y)
    return correct / max(1, seen)


# --- output -----------------------------------------------------------------------------------


def print_table(rows: list[dict[str, object]]) -> None:
    """Rows of equal keys as an aligned text table (floats with 2 decimals)."""
    text = [
        {k: f"{v:.2f}" if isinstance(v, float) else str(v) for k, v in row.items()} for row in rows
    ]
    widths = {k: max(len(k), *(len(r[k]) for r in text)) for k in text[0]}
    print("  ".join(k.rjust(w) for k, w in widths.items()))
    for row in text:
        print("  ".join(row[k].rjust(w) for k, w in widths.items()))
