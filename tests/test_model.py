"""Model: every depth x freeze variant trains only what it should; truncated pretrained init."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnet_exp.config import TrainConfig
from conftest import offline_failure
from resnet_exp.errors import WeightsError
from resnet_exp.model import (
    PRETRAINED, build_resnet, count_parameters, load_initial_weights, pretrained_network,
    torchvision_cache_file,
)

PRESETS = [(1, 1, 1, 1), (2, 2, 2, 2), (3, 4, 6, 3), (1, 2, 1, 3)]  # the last one is custom
NUM_CLASSES = 5


def frozen_prefixes(k: int) -> tuple[str, ...]:
    return ("conv1.", "bn1.", *(f"layer{i}." for i in range(1, k + 1))) if k else ()


@pytest.mark.parametrize("freeze", range(5))
@pytest.mark.parametrize("blocks", PRESETS, ids=lambda b: "b" + "".join(map(str, b)))
def test_a_training_step_moves_only_what_is_not_frozen(blocks, freeze):
    torch.manual_seed(0)
    model = build_resnet(blocks, NUM_CLASSES, freeze).train()
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
            assert p.grad is not None and not torch.equal(p, params[name]), f"trainable {name} did not change"
    for name, b in model.named_buffers():
        if "running" in name:
            same = torch.equal(b, buffers[name])
            assert same if name.startswith(frozen) else not same, f"BatchNorm buffer {name}"
    for name, module in model.named_modules():
        if name and (name + ".").startswith(frozen):
            assert not module.training, f"{name} left eval mode"
    assert model.fc.training


def test_parameter_counts_follow_freezing():
    trainable, total = count_parameters(build_resnet((2, 2, 2, 2), 10, 0))
    assert trainable == total == 11_181_642  # torchvision's resnet18 with a 10-class head
    head_only, _ = count_parameters(build_resnet((2, 2, 2, 2), 10, 4))
    assert head_only == 512 * 10 + 10


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


@pytest.mark.parametrize("blocks, network", [((2, 2, 2, 2), "resnet18"), ((1, 1, 1, 1), "resnet18"),
                                             ((3, 4, 6, 3), "resnet34"), ((3, 2, 2, 2), "resnet34")])
def test_imagenet_weights_are_truncated_from_the_smallest_network_that_has_every_block(
        torch_home, blocks, network):
    state = fake_imagenet_file(network)
    initial = load_initial_weights(TrainConfig(data="demo", blocks=blocks, weights="imagenet"))
    assert initial.name == network == pretrained_network(blocks)
    model = build_resnet(blocks, NUM_CLASSES, 0, initial)
    assert_copied(model, state)
    assert initial.report.pop("fc") == "random"
    assert set(initial.report.values()) == {network}
    assert model.fc.weight.shape == (NUM_CLASSES, 512)


def test_blocks_deeper_than_any_pretrained_network_keep_random_init(torch_home):
    state = fake_imagenet_file("resnet34")
    initial = load_initial_weights(TrainConfig(data="demo", blocks=(1, 2, 3, 4), weights="imagenet"))
    model = build_resnet((1, 2, 3, 4), NUM_CLASSES, 0, initial)
    assert initial.name == "resnet34"
    assert initial.report["layer4.3"] == "random" and initial.report["layer4.2"] == "resnet34"
    assert_copied(model, state)
    assert not torch.equal(model.layer4[3].conv1.weight, model.layer4[2].conv1.weight)


def test_a_state_dict_file_initialises_the_backbone(tmp_path):
    source = build_resnet((2, 2, 2, 2), 3)
    path = tmp_path / "mine.pt"
    # Lightning checkpoints keep the network under 'state_dict' with a 'model.' prefix.
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    initial = load_initial_weights(TrainConfig(data="demo", weights=str(path)))
    model = build_resnet((1, 1, 1, 1), NUM_CLASSES, 2, initial)
    assert initial.name == "mine.pt"
    assert_copied(model, source.state_dict())


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    initial = load_initial_weights(TrainConfig(data="demo", weights=str(path)))
    with pytest.raises(WeightsError, match="do not fit a BasicBlock ResNet"):
        build_resnet((2, 2, 2, 2), NUM_CLASSES, 0, initial)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="not a readable state_dict"):
        load_initial_weights(TrainConfig(data="demo", weights=str(garbage)))


def test_imagenet_weights_offline_fail_fast_with_the_options(torch_home):
    message = offline_failure(load_initial_weights, TrainConfig(data="demo", weights="imagenet"))
    assert str(torchvision_cache_file("resnet18")) in message
    assert PRETRAINED["resnet18"][1].url in message
