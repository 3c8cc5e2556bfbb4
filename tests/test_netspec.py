"""NetSpec: names derived from the block type, a JSON round trip, older specs still read, and
a bad block type named with what is accepted. Standard library only: no torch in sight."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO
from resnet_exp.errors import ConfigError
from resnet_exp.model.netspec import IMAGENET_MEAN, NetSpec, arch_name, depth_label
from resnet_exp.schema import BASIC, BOTTLENECK


def resnet50(**changes) -> NetSpec:
    values = dict(
        block=BOTTLENECK,
        blocks=(3, 4, 6, 3),
        class_names=("cat", "dog", "eel"),
        image_size=64,
        freeze_blocks=2,
    )
    return NetSpec(**{**values, **changes})


@pytest.mark.parametrize(
    "block, blocks, freeze, arch, label",
    [
        (BASIC, (2, 2, 2, 2), 2, "r18", "b2222-f2"),
        (BASIC, (3, 4, 6, 3), 0, "r34", "b3463-f0"),
        (BASIC, (1, 12, 1, 1), 0, "r32", "b1-12-1-1-f0"),
        (BOTTLENECK, (3, 4, 6, 3), 2, "r50", "bn3463-f2"),
        (BOTTLENECK, (3, 4, 23, 3), 4, "r101", "bn3-4-23-3-f4"),
        (BOTTLENECK, (3, 8, 36, 3), 1, "r152", "bn3-8-36-3-f1"),
    ],
)
def test_arch_name_and_depth_label_follow_the_block_type(block, blocks, freeze, arch, label):
    assert (arch_name(block, blocks), depth_label(block, blocks, freeze)) == (arch, label)
    spec = NetSpec(block, blocks, ("a",), 32, freeze)
    assert (spec.arch_name, spec.depth_label) == (arch, label)


def test_to_dict_is_plain_json_and_reads_back_equal():
    spec = resnet50()
    values = spec.to_dict()
    assert json.loads(json.dumps(values)) == values  # nothing JSON (or weights_only) cannot hold
    assert values["block"] == BOTTLENECK and values["blocks"] == [3, 4, 6, 3]
    assert NetSpec.from_dict(json.loads(json.dumps(values))) == spec
    assert spec.num_classes == 3 and spec.mean == IMAGENET_MEAN


def test_a_spec_written_before_block_types_reads_as_basic_with_nothing_frozen():
    # the classifier.json of models registered before NetSpec
    legacy = {
        "blocks": [2, 2, 2, 2],
        "class_names": ["a", "b"],
        "image_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
    }
    spec = NetSpec.from_dict(legacy)
    assert (spec.block, spec.freeze_blocks, spec.blocks, spec.class_names) == (
        BASIC,
        0,
        (2, 2, 2, 2),
        ("a", "b"),
    )
    assert spec.mean == (0.5, 0.5, 0.5) and spec.depth_label == "b2222-f0"


def test_a_bad_block_type_is_named_with_what_is_accepted():
    with pytest.raises(ConfigError) as err:
        resnet50(block="wide")
    assert "block='wide'" in str(err.value) and "basic, bottleneck" in str(err.value)
    with pytest.raises(ConfigError, match="block='Bottleneck'"):
        NetSpec.from_dict({**resnet50().to_dict(), "block": "Bottleneck"})


@pytest.mark.parametrize(
    "values, words",
    [
        ({"blocks": (3, 4, 6)}, ["blocks=(3, 4, 6)", "4 positive integers"]),
        ({"freeze_blocks": 5}, ["freeze_blocks=5", "0..4"]),
        ({"class_names": ()}, ["class_names"]),
    ],
)
def test_other_bad_values_are_named(values, words):
    with pytest.raises(ConfigError) as err:
        resnet50(**values)
    assert all(word in str(err.value) for word in words)


def test_a_spec_that_cannot_rebuild_the_network_is_refused_by_name():
    values = resnet50().to_dict()
    with pytest.raises(ConfigError, match=r"lacks field\(s\) \['blocks'\]"):
        NetSpec.from_dict({k: v for k, v in values.items() if k != "blocks"})
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['width'\]"):
        NetSpec.from_dict({**values, "width": 2})


def test_netspec_imports_no_torch():
    code = "import sys, resnet_exp.model.netspec; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "False"


def test_counted_parameters_and_activations_match_torchvision():
    import torch
    from torchvision.models import resnet18, resnet50

    from resnet_exp.model.netspec import network_size

    for build, block, blocks in [
        (resnet18, "basic", (2, 2, 2, 2)),
        (resnet50, "bottleneck", (3, 4, 6, 3)),
    ]:
        with torch.device("meta"):  # shapes only: nothing allocated
            network = build(num_classes=7)
        params, values = network_size(block, blocks, 96, num_classes=7)
        assert sum(params) == sum(p.numel() for p in network.parameters())
        convs: list[int] = []
        hooks = [
            m.register_forward_hook(lambda _m, _i, out, seen=convs: seen.append(out.numel()))
            for m in network.modules()
            if isinstance(m, torch.nn.Conv2d)
        ]
        network(torch.empty(1, 3, 96, 96, device="meta"))
        for hook in hooks:
            hook.remove()
        assert sum(values) == sum(convs)
