"""Frozen-prefix feature cache: with freeze_blocks = k >= 1, the stem and stages 1..k are a fixed
function (no gradients, BatchNorm in eval mode) that returns the same output for the same image
every epoch. Compute it once per image, keep it in memory, and train only stages k+1..4 and the
head on it. There is no random augmentation in this project; any added later must turn this off.

When: `feature_cache=auto` and freeze_blocks >= 1 and the features of all three splits fit the
budget, else the run falls back to feeding images and logs why. Budget: half the memory
available when the run starts (MemAvailable, capped by a container's limit). At 224 px one image
is 64x56x56 values after stage 1, 128x28x28 after stage 2, 256x14x14 after 3, 512x7x7 after 4:
392, 196, 98 and 49 KiB in fp16, so the 5,400 Animals images need 2.2, 1.1, 0.54, 0.27 GB.
Bottleneck stages put out 4x the channels (256 ... 2048), so 4x that; the shape is measured
with a dry run of the network (feature_shape), never assumed.

Why fp16: half the memory of fp32 with a rounding error of at most 2^-11 relative; the frozen
stages end in a ReLU, so the values are small and non-negative (a batch out of fp16's range
turns the cache off). tests/test_features.py checks that a cached run gives the same val_acc
per epoch as an uncached one; the checkpoints hold the whole network either way.

    resnet-exp train --data demo --weights none --freeze-blocks 3 --max-epochs 2 --image-size 64
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace

import torch

from resnet_exp.config import TrainConfig
from resnet_exp.data.store import StoredSplit
from resnet_exp.hardware import Runtime, autocast, available_memory
from resnet_exp.model.classifier import network_input
from resnet_exp.model.network import StagedResNet
from resnet_exp.signals import interrupt_point

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.5  # of the memory available at the start: the rest is for training itself
FP16_MAX = torch.finfo(torch.float16).max  # 65504


@dataclass(frozen=True)
class FeaturePlan:
    """Whether this run trains on cached features, and why (logged with the run)."""

    use: bool
    reason: str
    nbytes: int = 0  # fp16 bytes the features of all splits take
    seconds: float = 0.0  # wall time spent computing them

    @property
    def state(self) -> str:
        return "on" if self.use else "off"


class FeatureSplit(torch.utils.data.Dataset):
    """One split's cached features, a whole batch at a time: (fp16 (B, C, H, W), labels (B,))."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, batch: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[batch], self.labels[batch]


def feature_shape(model: StagedResNet, image_size: int) -> tuple[int, ...]:
    """(C, H, W) of what the frozen prefix returns for one image, from a one-image dry run."""
    weight = model.conv1.weight
    with torch.inference_mode():
        probe = torch.zeros(1, 3, image_size, image_size, device=weight.device, dtype=weight.dtype)
        return tuple(model.prefix(probe).shape[1:])


def plan_features(
    config: TrainConfig, model: StagedResNet, images: int, available: int | None
) -> FeaturePlan:
    """Decide before any work whether `images` images' features can be cached."""
    if config.feature_cache == "off":
        return FeaturePlan(False, "feature_cache=off")
    if config.freeze_blocks == 0:
        return FeaturePlan(False, "freeze_blocks=0: no stage is frozen")
    shape = feature_shape(model, config.image_size)
    need = images * math.prod(shape) * 2  # bytes, fp16
    if available is None:
        return FeaturePlan(False, "the available memory cannot be read", need)
    budget = int(available * MEMORY_FRACTION)
    if need > budget:
        return FeaturePlan(
            False,
            f"features need {need / 1e9:.2f} GB, over the budget of "
            f"{budget / 1e9:.2f} GB (half the available memory)",
            need,
        )
    shape_text = "x".join(map(str, shape))
    return FeaturePlan(
        True,
        f"{images} images x {shape_text} after stage {config.freeze_blocks}, "
        f"{need / 1e6:.0f} MB fp16",
        need,
    )


def compute_features(
    model: StagedResNet, images: StoredSplit, runtime: Runtime, batch_size: int
) -> torch.Tensor | None:
    """The frozen prefix's output for every image of a split, as fp16 on the CPU; None if a
    value does not fit in fp16. Runs in inference mode, in the run's precision, on its device."""
    device = model.conv1.weight.device
    out: torch.Tensor | None = None
    with torch.inference_mode(), autocast(runtime):
        for start in range(0, len(images), batch_size):
            batch = list(range(start, min(start + batch_size, len(images))))
            x = network_input(images[batch][0].to(device), runtime.channels_last)
            features = model.prefix(x).float()
            if not features.abs().max() <= FP16_MAX:  # also catches NaN
                return None
            if out is None:
                out = torch.empty((len(images), *features.shape[1:]), dtype=torch.float16)
            out[batch[0] : batch[-1] + 1] = features.to("cpu", torch.float16)
    return out


def cache_features(
    images: dict[str, StoredSplit], model: StagedResNet, config: TrainConfig, runtime: Runtime
) -> tuple[dict[str, FeatureSplit] | None, FeaturePlan]:
    """Per split, its cached features if the plan allows (else None), and the plan."""
    plan = plan_features(config, model, sum(len(s) for s in images.values()), available_memory())
    if not plan.use:
        log.info("feature cache: off (%s)", plan.reason)
        return None, plan
    start = time.perf_counter()
    model.to(runtime.accelerator)  # where training will run; Lightning keeps it there
    cached = {}
    for name, split in images.items():
        interrupt_point("feature_cache")
        features = compute_features(model, split, runtime, config.batch_size)
        if features is None:
            plan = FeaturePlan(
                False, f"frozen-stage outputs of the {name} split exceed fp16's range"
            )
            log.info("feature cache: off (%s)", plan.reason)
            return None, plan
        cached[name] = FeatureSplit(features, split.labels)
    plan = replace(plan, seconds=time.perf_counter() - start)
    log.info("feature cache: on (%s, computed in %.1f s)", plan.reason, plan.seconds)
    return cached, plan
