"""Model: every block type x depth x freeze variant trains only what it should; truncated
pretrained init from the torchvision network of the same block type."""

from __future__ import annotations

import pytest
import torch
import torchvision

from conftest import offline_failure
from resnet_exp.errors import WeightsError
from resnet_exp.model.netspec import NetSpec
from resnet_exp.model.network import (
    PRETRAINED,
    build_resnet,
    count_parameters,
    load_initial_weights,
    pretrained_network,
    torchvision_cache_file,
)
from resnet_exp.schema import BASIC, BOTTLENECK

NUM_CLASSES = 5
SLOW = pytest.mark.slow  # whole ImageNet-sized networks or state_dicts: about a second each
# (block, blocks): basic presets and a custom list; bottleneck kept to two. The deep ones
# (ResNet18 and up) cost up to a second per step on 2 cores: they run in the slow tier.
VARIANTS = [
    (BASIC, (1, 1, 1, 1)),
    (BASIC, (1, 2, 1, 3)),
    (BOTTLENECK, (1, 1, 1, 1)),
    *(
        pytest.param(v, marks=pytest.mark.slow)
        for v in [(BASIC, (2, 2, 2, 2)), (BASIC, (3, 4, 6, 3)), (BOTTLENECK, (3, 4, 6, 3))]
    ),
]


def spec(
    block: str = BASIC,
    blocks: tuple[int, ...] = (2, 2, 2, 2),
    freeze: int = 0,
    num_classes: int = NUM_CLASSES,
) -> NetSpec:
    return NetSpec(block, blocks, tuple(f"c{i}" for i in range(num_classes)), 32, freeze)


def variant_id(variant) -> str:
    return spec(*variant).depth_label.removesuffix("-f0")


def frozen_prefixes(k: int) -> tuple[str, ...]:
    return ("conv1.", "bn1.", *(f"layer{i}." for i in range(1, k + 1))) if k else ()


@pytest.mark.parametrize("freeze", range(5))
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_a_training_step_moves_only_what_is_not_frozen(variant, freeze):
    torch.manual_seed(0)
    model = build_resnet(spec(*variant, freeze)).train()
    frozen = frozen_prefixes(freeze)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers() if "running" in n}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    assert logits.shape == (4, NUM_CLASSES)
    torch.nn.functional.cross_entropy(logits, y).backward()
    optimizer.step()
    model.train()  # what Lightning does each epoch: frozen stages must stay in eval mode

    for name, p in model.named_parameters():
        if name.startswith(frozen):
            assert not p.requires_grad and p.grad is None, name
            assert torch.equal(p, params[name]), f"frozen {name} changed"
        else:
            assert p.grad is not None and not torch.equal(p, params[name]), (
                f"trainable {name} did not change"
            )
    for name, b in model.named_buffers():
        if "running" in name:
            same = torch.equal(b, buffers[name])
            assert same if name.startswith(frozen) else not same, f"BatchNorm buffer {name}"
    for name, module in model.named_modules():
        if name and (name + ".").startswith(frozen):
            assert not module.training, f"{name} left eval mode"
    assert model.fc.training


@SLOW
def test_parameter_counts_follow_freezing():
    trainable, total = count_parameters(build_resnet(spec(num_classes=10)))
    assert trainable == total == 11_181_642  # torchvision's resnet18 with a 10-class head
    head_only, _ = count_parameters(build_resnet(spec(freeze=4, num_classes=10)))
    assert head_only == 512 * 10 + 10
    trainable, total = count_parameters(
        build_resnet(spec(BOTTLENECK, (3, 4, 6, 3), num_classes=10))
    )
    assert trainable == total == 23_528_522  # torchvision's resnet50 with a 10-class head
    head_only, _ = count_parameters(build_resnet(spec(BOTTLENECK, (3, 4, 6, 3), 4, num_classes=10)))
    assert head_only == 2048 * 10 + 10  # Bottleneck stages end 4x wider


def fake_imagenet_file(network: str) -> dict[str, torch.Tensor]:
    """Write a randomly initialised torchvision network where torchvision caches the download."""
    torch.manual_seed(len(network))
    state = getattr(torchvision.models, network)().state_dict()
    # like the real files, which predate BatchNorm's num_batches_tracked buffer
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = torchvision_cache_file(network)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def assert_copied(model, state, skip=("fc.",)):
    target = model.state_dict()
    for key, value in target.items():
        if key in state and not key.startswith(skip):
            assert torch.equal(value, state[key]), key


@pytest.mark.parametrize(
    "block, blocks, network",
    [
        (BASIC, (2, 2, 2, 2), "resnet18"),
        (BASIC, (1, 1, 1, 1), "resnet18"),
        (BASIC, (3, 4, 6, 3), "resnet34"),
        (BASIC, (3, 2, 2, 2), "resnet34"),
        (BASIC, (1, 2, 3, 4), "resnet34"),  # deeper than any: truncated
        (BOTTLENECK, (3, 4, 6, 3), "resnet50"),
        (BOTTLENECK, (1, 1, 1, 1), "resnet50"),
        (BOTTLENECK, (3, 4, 23, 3), "resnet101"),
        (BOTTLENECK, (2, 4, 7, 1), "resnet101"),
        (BOTTLENECK, (3, 8, 36, 3), "resnet152"),
        (BOTTLENECK, (1, 1, 24, 1), "resnet152"),
        (BOTTLENECK, (4, 1, 1, 1), "resnet152"),  # deeper than any: truncated from the deepest
    ],
)
def test_the_source_network_is_the_smallest_of_the_block_type_that_has_every_block(
    block, blocks, network
):
    assert pretrained_network(block, blocks) == network
    assert PRETRAINED[network].block == block


@pytest.mark.parametrize(
    "block, blocks, network",
    [
        (BASIC, (1, 1, 1, 1), "resnet18"),
        pytest.param(BASIC, (2, 2, 2, 2), "resnet18", marks=SLOW),
        pytest.param(BASIC, (3, 4, 6, 3), "resnet34", marks=SLOW),
        pytest.param(BASIC, (3, 2, 2, 2), "resnet34", marks=SLOW),
        pytest.param(BOTTLENECK, (1, 2, 1, 1), "resnet50", marks=SLOW),
    ],
)
def test_imagenet_weights_are_truncated_from_the_smallest_network_that_has_every_block(
    torch_home, block, blocks, network
):
    state = fake_imagenet_file(network)
    initial = load_initial_weights("imagenet", block, blocks)
    assert initial.name == network
    model = build_resnet(spec(block, blocks), initial)
    assert_copied(model, state)
    assert initial.report.pop("fc") == "random"
    assert set(initial.report.values()) == {network}
    assert model.fc.weight.shape == (NUM_CLASSES, 512 if block == BASIC else 2048)


@SLOW
def test_blocks_deeper_than_any_pretrained_network_keep_random_init(torch_home):
    state = fake_imagenet_file("resnet34")
    initial = load_initial_weights("imagenet", BASIC, (1, 2, 3, 4))
    model = build_resnet(spec(BASIC, (1, 2, 3, 4)), initial)
    assert initial.name == "resnet34"
    assert initial.report["layer4.3"] == "random" and initial.report["layer4.2"] == "resnet34"
    assert_copied(model, state)
    assert not torch.equal(model.layer4[3].conv1.weight, model.layer4[2].conv1.weight)


@pytest.mark.parametrize("block", [BASIC, BOTTLENECK])
def test_a_state_dict_file_initialises_the_backbone(tmp_path, block):
    source = build_resnet(spec(block, (2, 2, 2, 2), num_classes=3))
    path = tmp_path / "mine.pt"
    # Lightning checkpoints keep the network under 'state_dict' with a 'model.' prefix.
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    initial = load_initial_weights(str(path), block, (1, 1, 1, 1))
    model = build_resnet(spec(block, (1, 1, 1, 1), 2), initial)
    assert initial.name == "mine.pt"
    assert_copied(model, source.state_dict())


@SLOW
def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    initial = load_initial_weights(str(path), BASIC, (2, 2, 2, 2))
    with pytest.raises(WeightsError, match="do not fit a BasicBlock ResNet"):
        build_resnet(spec(BASIC, (2, 2, 2, 2)), initial)
    path = tmp_path / "resnet18.pt"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    initial = load_initial_weights(str(path), BOTTLENECK, (1, 1, 1, 1))
    with pytest.raises(WeightsError, match="do not fit a Bottleneck ResNet"):
        build_resnet(spec(BOTTLENECK, (1, 1, 1, 1)), initial)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a readable state_dict"):
        load_initial_weights(str(garbage), BASIC, (2, 2, 2, 2))


@pytest.mark.parametrize("block, network", [(BASIC, "resnet18"), (BOTTLENECK, "resnet50")])
def test_imagenet_weights_offline_fail_fast_with_the_options(torch_home, block, network):
    message = offline_failure(load_initial_weights, "imagenet", block, (2, 2, 2, 2))
    assert str(torchvision_cache_file(network)) in message
    assert PRETRAINED[network].weights.url in message
