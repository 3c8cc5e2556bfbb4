"""The network as data: block type, blocks per stage, classes, input size, frozen stages and
input normalisation. A `NetSpec` is stored as-is in each checkpoint and next to the registered
model's weights, and the network is rebuilt from it alone (model.build_resnet).

Standard library only: config, analysis and the served model read it without torch.

    python -c "from resnet_exp.model.netspec import NetSpec; \
print(NetSpec('bottleneck', (3, 4, 6, 3), ('cat', 'dog'), 224, 2).depth_label)"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any

from resnet_exp import schema
from resnet_exp.errors import ConfigError

NUM_STAGES = 4  # residual stages of a torchvision ResNet: layer1..layer4
# The mean and std of ImageNet's RGB channels (0..1 scale) that torchvision's weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Weighted layers per block: BasicBlock is two 3x3 convs; Bottleneck is 1x1, 3x3, 1x1.
LAYERS_PER_BLOCK = {schema.BASIC: 2, schema.BOTTLENECK: 3}
# depth_label's prefix: 'b2222-f2' (basic, as before block types existed), 'bn3463-f2'.
LABEL_PREFIX = {schema.BASIC: "b", schema.BOTTLENECK: "bn"}
# What a spec written before a field existed meant: every network was a BasicBlock ResNet,
# and the old classifier.json had no freeze_blocks (inference does not need it).
LEGACY_DEFAULTS = {schema.BLOCK: schema.BASIC, schema.FREEZE_BLOCKS: 0}


WIDTHS = (64, 128, 256, 512)  # channels of each stage's 3x3 convs (torchvision's ResNet)
EXPANSION = {schema.BASIC: 1, schema.BOTTLENECK: 4}  # a stage's output channels per width


def _half(side: int) -> int:
    """A side after a stride-2 conv or pool padded as torchvision's are: ceil(side / 2)."""
    return (side + 1) // 2


def network_size(
    block: str, blocks: tuple[int, ...], image_size: int, num_classes: int = 0
) -> tuple[list[int], list[int]]:
    """Counted, not built: ([parameters], [conv output values per image]) of the stem and of
    each of the 4 stages, the head's parameters added to the last stage. Matches torchvision:
    ResNet18 with 1000 classes has 11,689,512 parameters, ResNet50 25,557,032."""
    expansion = EXPANSION[check_block(block)]
    side = _half(image_size)  # after the 7x7 stride-2 stem conv
    params, values = [3 * 64 * 49 + 2 * 64], [64 * side * side]  # conv and BatchNorm
    side, inplanes = _half(side), 64  # the max pool
    for stage, (width, count) in enumerate(zip(WIDTHS, blocks)):
        p = v = 0
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            out_side, out = (_half(side) if stride == 2 else side), width * expansion
            convs = (  # (in channels, out channels, kernel side, output side) of each conv
                [(inplanes, width, 3, out_side), (width, width, 3, out_side)]
                if expansion == 1
                else [
                    (inplanes, width, 1, side),
                    (width, width, 3, out_side),
                    (width, out, 1, out_side),
                ]
            )
            if stride != 1 or inplanes != out:
                convs.append((inplanes, out, 1, out_side))  # the downsampling shortcut
            p += sum(i * o * k * k + 2 * o for i, o, k, _ in convs)  # weights and BatchNorm
            v += sum(o * s * s for _, o, _, s in convs)
            side, inplanes = out_side, out
        params.append(p)
        values.append(v)
    params[-1] += inplanes * num_classes + num_classes
    return params, values


def check_block(block: str) -> str:
    """`block` if it is a known block type, else ConfigError naming it and the accepted ones."""
    if block not in schema.BLOCK_TYPES:
        raise ConfigError(
            f"block={block!r} is not valid: expected one of {', '.join(schema.BLOCK_TYPES)} "
            f"({schema.BOTTLENECK} with blocks 3,4,6,3 is ResNet50, 3,4,23,3 ResNet101)"
        )
    return block


def arch_name(block: str, blocks: tuple[int, ...]) -> str:
    """Weighted layers: the stem conv, each block's convs and the fc head ('r18', 'r50', 'r101')."""
    return f"r{LAYERS_PER_BLOCK[check_block(block)] * sum(blocks) + 2}"


def depth_label(block: str, blocks: tuple[int, ...], freeze_blocks: int) -> str:
    """'b2222-f2' (basic 2,2,2,2, two stages frozen), 'bn3463-f2', 'b1-12-1-1-f0' (a count > 9)."""
    sep = "-" if max(blocks) > 9 else ""
    return f"{LABEL_PREFIX[check_block(block)]}{sep.join(str(b) for b in blocks)}-f{freeze_blocks}"


@dataclass(frozen=True)
class NetSpec:
    """Everything besides the weights that rebuilds the network and feeds it images."""

    block: str  # schema.BASIC or schema.BOTTLENECK
    blocks: tuple[int, ...]  # residual blocks per stage, e.g. (2, 2, 2, 2)
    class_names: tuple[str, ...]  # the head's outputs, in order
    image_size: int  # images are resized to image_size x image_size pixels
    freeze_blocks: int = 0  # the stem and the first k stages are frozen (0..4)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        check_block(self.block)
        if len(self.blocks) != NUM_STAGES or not all(
            isinstance(b, int) and b > 0 for b in self.blocks
        ):
            raise ConfigError(f"blocks={self.blocks!r}: expected {NUM_STAGES} positive integers")
        if not 0 <= self.freeze_blocks <= NUM_STAGES:
            raise ConfigError(f"freeze_blocks={self.freeze_blocks!r}: expected 0..{NUM_STAGES}")
        if not self.class_names:
            raise ConfigError("class_names is empty: a classifier needs at least one class")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def arch_name(self) -> str:
        return arch_name(self.block, self.blocks)

    @property
    def depth_label(self) -> str:
        return depth_label(self.block, self.blocks, self.freeze_blocks)

    def to_dict(self) -> dict[str, Any]:
        """Plain str/int/float/list values: JSON, and checkpoints read with weights_only=True."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> NetSpec:
        """Read `to_dict()`'s output, or a spec written before `block`/`freeze_blocks` existed."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"network spec has unknown field(s) {unknown}; known: {sorted(known)}"
            )
        merged = {**LEGACY_DEFAULTS, **values}
        missing = sorted(
            f.name for f in fields(cls) if f.name not in merged and f.default is MISSING
        )
        if missing:
            raise ConfigError(
                f"network spec lacks field(s) {missing}: it cannot rebuild the network"
            )
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})
