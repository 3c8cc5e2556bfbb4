"""The network: a torchvision ResNet of BasicBlocks or Bottlenecks with any block counts, built
from a NetSpec, partly pretrained, with its first stages frozen. Plain `nn.Module` work; no
Lightning here.

    python -c "from resnet_exp.model.network import build_resnet; from resnet_exp.model.netspec import NetSpec; \
print(build_resnet(NetSpec('bottleneck', (1, 1, 1, 1), ('a', 'b'), 64, 2)))"
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    ResNet101_Weights,
    ResNet152_Weights,
    WeightsEnum,
)
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from resnet_exp.config import IMAGENET, NO_WEIGHTS
from resnet_exp.errors import OfflineError, WeightsError
from resnet_exp.model.netspec import NUM_STAGES, NetSpec, check_block
from resnet_exp.offline import offline_options, reachable
from resnet_exp.schema import BASIC, BOTTLENECK

BLOCK_CLASSES = {BASIC: BasicBlock, BOTTLENECK: Bottleneck}


class Pretrained(NamedTuple):
    block: str
    blocks: tuple[int, ...]
    weights: WeightsEnum


# The ImageNet networks torchvision ships, smallest first within each block type. Each is at
# least as deep as the previous one in every stage, so block i of stage s exists in the deeper
# network if it exists in any.
PRETRAINED = {
    "resnet18": Pretrained(BASIC, (2, 2, 2, 2), ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": Pretrained(BASIC, (3, 4, 6, 3), ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": Pretrained(BOTTLENECK, (3, 4, 6, 3), ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": Pretrained(BOTTLENECK, (3, 4, 23, 3), ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": Pretrained(BOTTLENECK, (3, 8, 36, 3), ResNet152_Weights.IMAGENET1K_V1),
}
STEM = ("conv1", "bn1")
DOWNLOAD_TIMEOUT_S = 60  # per socket operation; torchvision's download has none of its own


class StagedResNet(ResNet):
    """torchvision's ResNet whose frozen stages stay in eval mode whatever `.train()` is called
    on: their BatchNorm running statistics must not move, and Lightning (or a user) may call
    `.train()` on the whole model at any time."""

    def __init__(self, block: str, blocks: tuple[int, ...], num_classes: int):
        super().__init__(BLOCK_CLASSES[check_block(block)], list(blocks), num_classes=num_classes)
        self.block = block
        self.blocks = tuple(blocks)
        self.frozen_stages = 0

    def frozen_modules(self) -> list[nn.Module]:
        names = [*STEM, *(f"layer{i}" for i in range(1, self.frozen_stages + 1))]
        return [getattr(self, name) for name in names] if self.frozen_stages else []

    def train(self, mode: bool = True) -> StagedResNet:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: stem and layer1..layerk (k = frozen_stages >= 1). Its output for an
        image never changes during training, which is what the feature cache relies on."""
        if not self.frozen_stages:
            raise ValueError(
                "prefix() needs frozen_stages >= 1: with nothing frozen there is no prefix"
            )
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.frozen_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_after_prefix(self, features: torch.Tensor) -> torch.Tensor:
        """The trainable part, from what `prefix` returned to the logits:
        `forward_after_prefix(prefix(x))` computes exactly what `forward(x)` does."""
        for i in range(self.frozen_stages + 1, NUM_STAGES + 1):
            features = getattr(self, f"layer{i}")(features)
        return self.fc(torch.flatten(self.avgpool(features), 1))


def freeze_blocks(model: StagedResNet, k: int) -> StagedResNet:
    """Freeze the stem and stages layer1..layerk: no gradients, eval mode for good. k=0 trains all."""
    if not 0 <= k <= NUM_STAGES:
        raise ValueError(f"freeze_blocks={k}: expected 0..{NUM_STAGES}")
    model.frozen_stages = k
    for module in model.frozen_modules():
        module.requires_grad_(False)
    model.train(model.training)
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --- initial weights -----------------------------------------------------------------------------


@dataclass
class InitialWeights:
    """A backbone state_dict to start from, or none; `name` says where it came from."""

    name: str  # 'none', a torchvision network ('resnet18', 'resnet50', ...) or a file name
    state_dict: dict[str, torch.Tensor] | None = None
    report: dict[str, str] = field(default_factory=dict)  # filled by build_resnet


def pretrained_network(block: str, blocks: tuple[int, ...]) -> str:
    """The smallest ImageNet network of this block type covering every stage of `blocks`, else
    the deepest one (its blocks are truncated into ours and deeper positions keep their random
    init)."""
    candidates = [name for name, p in PRETRAINED.items() if p.block == check_block(block)]
    for name in candidates:
        if all(b <= d for b, d in zip(blocks, PRETRAINED[name].blocks)):
            return name
    return candidates[-1]


def torchvision_cache_file(network: str) -> Path:
    url = PRETRAINED[network].weights.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def load_initial_weights(weights: str, block: str, blocks: tuple[int, ...]) -> InitialWeights:
    """Resolve `weights` ('imagenet', 'none' or a file) for a `block` network with `blocks` to a
    state_dict before training starts (may download ImageNet weights)."""
    if weights == NO_WEIGHTS:
        return InitialWeights(NO_WEIGHTS)
    if weights != IMAGENET:
        path = Path(weights).expanduser()
        return InitialWeights(path.name, _read_state_dict(path))
    network = pretrained_network(block, blocks)
    cached = torchvision_cache_file(network)
    if cached.is_file():
        return InitialWeights(network, _read_state_dict(cached))
    imagenet = PRETRAINED[network].weights
    if not reachable(imagenet.url):
        raise OfflineError(
            f"cannot download the ImageNet weights of {network} from {imagenet.url}: "
            f"the network is unreachable and {cached} does not exist.\n"
            f"{offline_options(str(cached))}"
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return InitialWeights(network, imagenet.get_state_dict(progress=True, check_hash=True))
    finally:
        socket.setdefaulttimeout(previous)


EXPECTED_WEIGHTS = (
    "expected a PyTorch state_dict saved with torch.save (a dict of tensors) "
    "or a Lightning checkpoint"
)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except Exception as err:  # torch raises many types for a bad file
        # e.g. "pop from empty list" for a text file: say what the file should have been
        raise WeightsError(
            f"weights={str(path)!r} is not a readable state_dict file ({err}): {EXPECTED_WEIGHTS}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights={str(path)!r} does not hold a state_dict: {EXPECTED_WEIGHTS}")
    return {k.removeprefix("model."): v for k, v in state.items()}


def _copy_backbone(model: StagedResNet, initial: InitialWeights) -> dict[str, str]:
    """Copy every backbone tensor whose name and shape match; report each block's source."""
    target = model.state_dict()
    source = initial.state_dict or {}
    wrong = [
        k
        for k, v in source.items()
        if k in target and not k.startswith("fc.") and v.shape != target[k].shape
    ]
    if wrong:
        kind = BLOCK_CLASSES[model.block].__name__  # 'BasicBlock' or 'Bottleneck'
        raise WeightsError(
            f"weights {initial.name!r} do not fit a {kind} ResNet: "
            f"{len(wrong)} tensors have other shapes, e.g. {wrong[0]} "
            f"{tuple(source[wrong[0]].shape)} vs {tuple(target[wrong[0]].shape)}"
        )
    copied = {k for k in target if k in source and not k.startswith("fc.")}
    if source and not copied:
        raise WeightsError(
            f"weights {initial.name!r} share no tensor names with a torchvision ResNet"
        )
    model.load_state_dict({**target, **{k: source[k] for k in copied}})
    report = {}
    for unit in [
        *STEM,
        *(f"layer{s + 1}.{b}" for s in range(NUM_STAGES) for b in range(model.blocks[s])),
    ]:
        # torchvision's ImageNet files predate BatchNorm's num_batches_tracked buffer
        keys = [
            k for k in target if k.startswith(unit + ".") and not k.endswith("num_batches_tracked")
        ]
        report[unit] = initial.name if keys and all(k in copied for k in keys) else "random"
    report["fc"] = "random"  # the head always starts fresh for this dataset's classes
    return report


def build_resnet(spec: NetSpec, initial: InitialWeights | None = None) -> StagedResNet:
    """The network of `spec` (block type, blocks per stage, a head for its classes), initial
    weights copied where they fit (truncation), and its first `freeze_blocks` stages frozen."""
    model = StagedResNet(spec.block, spec.blocks, spec.num_classes)
    initial = initial or InitialWeights(NO_WEIGHTS)
    initial.report = _copy_backbone(model, initial)
    return freeze_blocks(model, spec.freeze_blocks)
