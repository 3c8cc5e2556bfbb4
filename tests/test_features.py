"""The frozen-prefix feature cache: the split network computes what the whole one does, `auto`
falls back for a stated reason, and a cached run gives the same metrics as an uncached one
with the same seed, and a checkpoint that is the whole network.

Tolerance: val_acc per epoch within VAL_ACC_TOLERANCE (one image of the 64 the tiny runs
validate on), val_loss within 1% relative. Measured differences are smaller: identical under
bf16-mixed (bf16 values are exact in fp16), at most one validation image in 80 at 64 px, 3
epochs and fp32 (see docs/performance.md)."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from conftest import tiny_config
from resnet_exp import schema as S
from resnet_exp.config import TrainConfig
from resnet_exp.data.splits import ImageSplit, load_splits
from resnet_exp.model.classifier import ResNetClassifier
from resnet_exp.model.netspec import NetSpec
from resnet_exp.model.network import build_resnet
from resnet_exp.schema import BASIC, BOTTLENECK
from resnet_exp.tracking import timing
from resnet_exp.training.features import plan_features

VAL_ACC_TOLERANCE = 1 / 64 + 1e-9


def spec(block: str, blocks: tuple[int, ...], freeze: int, num_classes: int = 5) -> NetSpec:
    return NetSpec(block, blocks, tuple(map(str, range(num_classes))), 64, freeze)


@pytest.mark.parametrize("freeze", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "block, blocks",
    [(BASIC, (1, 1, 1, 1)), (BASIC, (1, 2, 1, 3)), (BOTTLENECK, (1, 2, 1, 1))],
    ids=lambda v: v if isinstance(v, str) else "".join(map(str, v)),
)
def test_prefix_then_the_rest_is_the_whole_network(block, blocks, freeze):
    torch.manual_seed(0)
    model = build_resnet(spec(block, blocks, freeze)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.forward_after_prefix(model.prefix(x)), model(x))


def test_nothing_frozen_has_no_prefix():
    with pytest.raises(ValueError, match="frozen_stages >= 1"):
        build_resnet(spec(BASIC, (1, 1, 1, 1), 0)).prefix(torch.zeros(1, 3, 32, 32))


def test_the_plan_measures_bottleneck_features_four_times_wider():
    config = TrainConfig(
        data="demo", weights="none", freeze_blocks=1, image_size=64, block=BOTTLENECK
    )
    model = build_resnet(spec(BOTTLENECK, (1, 1, 1, 1), 1))
    plan = plan_features(config, model, 100, available=10**12)
    assert (
        plan.use
        and plan.nbytes == 100 * 256 * 16 * 16 * 2
        and "256x16x16 after stage 1" in plan.reason
    )


def test_auto_uses_the_cache_only_when_it_applies_and_fits():
    model = build_resnet(spec(BASIC, (2, 2, 2, 2), 1, 90))
    config = TrainConfig(data="demo", weights="none", freeze_blocks=1, image_size=224)
    need = 5400 * 64 * 56 * 56 * 2  # bytes: 64x56x56 fp16 values per image after stage 1
    plan = plan_features(config, model, 5400, available=3 * need)
    assert plan.use and plan.nbytes == need and "64x56x56 after stage 1" in plan.reason
    over = plan_features(config, model, 5400, available=need)
    assert (
        not over.use
        and "over the budget" in over.reason
        and "half the available memory" in over.reason
    )
    assert not plan_features(config, model, 5400, available=None).use
    off = plan_features(config.replace(feature_cache="off"), model, 5400, available=3 * need)
    assert (off.use, off.reason) == (False, "feature_cache=off")
    unfrozen = plan_features(
        config.replace(freeze_blocks=0),
        build_resnet(spec(BASIC, (2, 2, 2, 2), 0, 90)),
        5400,
        3 * need,
    )
    assert not unfrozen.use and "freeze_blocks=0" in unfrozen.reason


def history(client: MlflowClient, run_id: str, key: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.mark.slow
def test_a_cached_run_matches_an_uncached_one_and_checkpoints_the_whole_network(
    tmp_path, data_dir, tracking_uri
):
    from resnet_exp.training.train import train

    config = tiny_config(data_dir, tmp_path / "results", freeze_blocks=2)
    cached, uncached = train(config), train(config.replace(feature_cache="off"))
    client = MlflowClient(tracking_uri)
    runs = {
        name: client.get_run(r.run_id) for name, r in (("cached", cached), ("uncached", uncached))
    }
    assert runs["cached"].data.params["resolved/feature_cache"] == "on"
    assert runs["uncached"].data.params["resolved/feature_cache"] == "off"
    assert runs["uncached"].data.tags["feature_cache_reason"] == "feature_cache=off"
    store_of = {name: run.data.tags[S.TAG_IMAGE_STORE] for name, run in runs.items()}
    assert store_of["cached"] == store_of["uncached"]
    assert timing.phase_times(cached.run_id)[S.FEATURE_CACHE_TIME] > 0
    acc = [history(client, r.run_id, S.VAL_ACC) for r in (cached, uncached)]
    loss = [history(client, r.run_id, S.VAL_LOSS) for r in (cached, uncached)]
    assert len(acc[0]) == len(acc[1]) == 2
    assert all(abs(a - b) <= VAL_ACC_TOLERANCE for a, b in zip(*acc)), acc
    assert loss[0] == pytest.approx(loss[1], rel=0.01)

    # The checkpoint is the whole network (frozen stages included), fed raw images like any other.
    restored = ResNetClassifier.load_from_checkpoint(
        cached.best_checkpoint, map_location="cpu"
    ).eval()
    fresh = ResNetClassifier(config.net_spec(restored.class_names), 1e-3)
    assert restored.state_dict().keys() == fresh.state_dict().keys()
    splits = load_splits(config)
    test = ImageSplit(splits, "test", config.image_size)
    shown = config.limit_batches * config.batch_size  # what trainer.test saw
    x = torch.stack([test[i][0] for i in range(shown)])
    y = torch.tensor([test[i][1] for i in range(shown)])
    with torch.no_grad():
        whole = restored(x)
        as_trained = restored.model.forward_after_prefix(restored.model.prefix(x).half().float())
    assert torch.allclose(whole, as_trained, atol=1e-2)
    accuracy = float((whole.argmax(1) == y).float().mean())
    assert abs(accuracy - runs["cached"].data.metrics[S.TEST_ACC]) <= 1 / shown + 1e-9
