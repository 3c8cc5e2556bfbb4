"""Inference rebuilds the network from a NetSpec alone: from a checkpoint (weights_only), from a
registered model's files, and from the files and checkpoints written before NetSpec existed."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models.resnet import BasicBlock, Bottleneck

from resnet_exp import schema
from resnet_exp.model.classifier import ResNetClassifier
from resnet_exp.model.inference import WEIGHTS_FILE, ImageClassifier
from resnet_exp.model.netspec import NetSpec
from resnet_exp.model.network import build_resnet

CLASSES = ("cat", "dog", "eel")


def logits(classifier: ImageClassifier, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return classifier.network.cpu()(x)


@pytest.mark.parametrize(
    "block, kind", [(schema.BASIC, BasicBlock), (schema.BOTTLENECK, Bottleneck)]
)
def test_a_checkpoint_and_the_saved_files_rebuild_the_same_network(tmp_path, block, kind):
    torch.manual_seed(0)
    spec = NetSpec(block, (1, 2, 1, 1), CLASSES, 32, 2)
    module = ResNetClassifier(spec, 1e-3, {"seed": "0"}).eval()
    path = tmp_path / "best.ckpt"
    # what Lightning's checkpoint holds of the module
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    assert (
        torch.load(path, weights_only=True)["hyper_parameters"][schema.CKPT_NETSPEC]
        == spec.to_dict()
    )

    from_checkpoint = ImageClassifier.from_checkpoint(path)
    artifacts = from_checkpoint.save(tmp_path)
    assert artifacts["spec"].endswith(schema.NETSPEC_FILE)
    from_files = ImageClassifier.from_files(artifacts["weights"], artifacts["spec"])
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = module(x)
    for classifier in (from_checkpoint, from_files):
        assert classifier.spec == spec and isinstance(classifier.network.layer2[1], kind)
        assert torch.allclose(logits(classifier, x), expected, atol=1e-6)


def test_a_checkpoint_written_before_netspec_still_loads(tmp_path):
    torch.manual_seed(0)
    network = build_resnet(NetSpec(schema.BASIC, (1, 1, 1, 1), CLASSES, 48, 1)).eval()
    path = tmp_path / "old.ckpt"
    hparams = {
        "blocks": [1, 1, 1, 1],
        "freeze_blocks": 1,
        "class_names": list(CLASSES),
        "learning_rate": 3e-5,
        "config": {"image_size": "48", "seed": "0"},
    }
    torch.save(
        {
            "hyper_parameters": hparams,
            "state_dict": {f"model.{k}": v for k, v in network.state_dict().items()},
        },
        path,
    )
    classifier = ImageClassifier.from_checkpoint(path)
    assert classifier.spec == NetSpec(schema.BASIC, (1, 1, 1, 1), CLASSES, 48, 1)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(logits(classifier, x), network(x), atol=1e-6)


def test_a_model_registered_before_netspec_reads_its_classifier_json(tmp_path):
    torch.manual_seed(0)
    spec = NetSpec(schema.BASIC, (1, 1, 1, 1), CLASSES, 32)
    saved = ImageClassifier(build_resnet(spec), spec).save(tmp_path)
    # the older model's files: the same weights, the spec as classifier.json without block
    old_spec = tmp_path / schema.LEGACY_NETSPEC_FILE
    old_spec.write_text(
        json.dumps(
            {
                "blocks": [1, 1, 1, 1],
                "class_names": list(CLASSES),
                "image_size": 32,
                "mean": list(spec.mean),
                "std": list(spec.std),
            }
        )
    )
    classifier = ImageClassifier.from_files(tmp_path / WEIGHTS_FILE, old_spec)
    assert classifier.spec == spec
    reference = ImageClassifier.from_files(saved["weights"], saved["spec"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(logits(classifier, x), logits(reference, x))
