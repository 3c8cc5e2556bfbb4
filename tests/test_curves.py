"""What a training run's charts show: the loggers' rules (per-step values, the learning rate,
readable numbers) and the timing tables, against a real SQLite tracking store.

    pytest tests/test_curves.py -q
"""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

from conftest import tiny_config
from resnet_exp import schema as S
from resnet_exp.tracking import timing
from resnet_exp.tracking.store import tracking_uri as current_uri
from resnet_exp.tracking.training_run import make_loggers


@pytest.fixture
def run_id(tracking_uri: str) -> str:
    client = MlflowClient(tracking_uri)
    return client.create_run(client.create_experiment("curves")).info.run_id


def mlflow_logger(tmp_path, run_id: str, step_curves: bool = True, stored=None):
    config = tiny_config(tmp_path / "data", tmp_path / "results", learning_rate=3e-5)
    return make_loggers(config, run_id, stored, step_curves=step_curves)[0]


def series(run_id: str, key: str) -> list[tuple[int, float]]:
    history = MlflowClient(current_uri()).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def epoch(logger, index: int, global_step: int, lr: float, loss: float = 2.3100564479827881):
    """What Lightning hands the loggers at the end of an epoch: per-step values first."""
    logger.log_metrics({f"{S.TRAIN_LOSS}{S.STEP_SUFFIX}": loss}, step=global_step)
    logger.log_metrics(
        {f"{S.TRAIN_LOSS}{S.EPOCH_SUFFIX}": loss, S.LR: lr, "epoch": float(index)},
        step=global_step,
    )


def test_one_value_per_epoch_is_no_step_curve_and_a_constant_rate_is_no_curve(tmp_path, run_id):
    logger = mlflow_logger(tmp_path, run_id, step_curves=False)
    for e in range(3):
        epoch(logger, e, 20 * e + 19, 3e-5)
    keys = set(MlflowClient(current_uri()).get_run(run_id).data.metrics)
    assert keys == {S.TRAIN_LOSS}, keys  # neither train_loss_step nor a flat lr
    assert series(run_id, S.TRAIN_LOSS) == [(0, 2.31006), (1, 2.31006), (2, 2.31006)]


def test_several_values_per_epoch_keep_their_step_curve(tmp_path, run_id):
    logger = mlflow_logger(tmp_path, run_id, step_curves=True)
    epoch(logger, 0, 49, 3e-5)
    assert series(run_id, f"{S.TRAIN_LOSS}{S.STEP_SUFFIX}") == [(49, 2.31006)]


def test_the_rate_appears_when_the_schedule_moves_it_with_the_epochs_before(tmp_path, run_id):
    logger = mlflow_logger(tmp_path, run_id, step_curves=False)
    for e, lr in enumerate([3e-5, 3e-5, 3e-5, 1.5e-5, 1.5e-5]):
        epoch(logger, e, 10 * e + 9, lr)
    assert series(run_id, S.LR) == [(0, 3e-5), (1, 3e-5), (2, 3e-5), (3, 1.5e-5), (4, 1.5e-5)]


def test_a_resumed_run_fills_in_no_rate_twice(tmp_path, run_id):
    first = mlflow_logger(tmp_path, run_id, step_curves=False)
    for e, lr in enumerate([3e-5, 1.5e-5, 1.5e-5]):
        epoch(first, e, e, lr)
    # the resumed process restarts epoch 2; its logger knows what the run stored
    resumed = mlflow_logger(tmp_path, run_id, step_curves=False, stored={S.LR: 2})
    epoch(resumed, 2, 2, 1.5e-5)
    epoch(resumed, 3, 3, 7.5e-6)
    assert series(run_id, S.LR) == [(0, 3e-5), (1, 1.5e-5), (2, 1.5e-5), (3, 7.5e-6)]


@pytest.mark.parametrize(
    ("value", "shown"),
    [(2.3100564479827881, 2.31006), (0.3125, 0.3125), (1 / 3, 0.333333), (3e-5, 3e-5)],
)
def test_numbers_keep_six_significant_digits(value, shown):
    assert S.readable(value) == shown and repr(S.readable(value)) == repr(shown)
    assert S.recorded(S.VAL_LOSS, value) == shown


def test_accuracies_stay_exact_fractions():
    for name in (S.VAL_ACC, f"{S.TRAIN_ACC}{S.STEP_SUFFIX}", f"{S.TEST_ACC}{S.EPOCH_SUFFIX}"):
        assert S.recorded(name, 1 / 3) == 1 / 3


def test_timing_tables_read_back_rounded_and_old_runs_read_from_metrics(tmp_path, run_id):
    rows = [timing.epoch_row(0, 0.81381839, 123.456), timing.epoch_row(1, 0.7, None)]
    timing.log_epoch_times(run_id, rows)
    timing.log_phase_times(run_id, {S.IMAGE_STORE_TIME: 0.00015953900003751187, S.RUN_TIME: 2})
    assert timing.epoch_times(run_id) == [0.814, 0.7]
    through = timing.epoch_times(run_id, S.TRAIN_THROUGHPUT)
    assert through[0] == 123.5 and math.isnan(through[1])
    assert timing.phase_times(run_id) == {S.IMAGE_STORE_TIME: 0.0, S.RUN_TIME: 2.0}

    client = MlflowClient(current_uri())
    old = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    for step, seconds in enumerate([1.5, 1.25]):
        client.log_metric(old, S.EPOCH_TIME, seconds, step=step)
    assert timing.epoch_times(old) == [1.5, 1.25] and timing.phase_times(old) == {}
