"""One cell of a sweep (a configuration and a seed) and what one attempt at it does, whichever
executor runs it: skip it if it already has a FINISHED run, else train it as a child of the
sweep's parent run, and record a failure so that the UI and the next sweep see it.

    resnet-exp sweep --data demo --weights none --image-size 32 --max-epochs 1 --freeze-blocks 4 --seeds 1
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus

from resnet_exp import schema as S
from resnet_exp.config import TrainConfig
from resnet_exp.signals import interrupt_point
from resnet_exp.tracking import training_run as tracking
from resnet_exp.tracking.resume import ResumeHeld, finished_run
from resnet_exp.tracking.runs import ERROR_TEXT_LIMIT
from resnet_exp.tracking.server import tracking_failure

log = logging.getLogger(__name__)
TRAINED, SKIPPED, FAILED = "trained", "skipped", "failed"
OUTCOME_KEY = "child_outcome"  # a Ray trial's last result: the ChildOutcome as JSON


@dataclass(frozen=True)
class ChildOutcome:
    run_name: str
    seed: int
    config_hash: str
    outcome: str  # TRAINED, SKIPPED (an earlier FINISHED run) or FAILED
    run_id: str
    error: str = ""
    reason: str = ""  # why an adaptive sweep added this seed (the child's seed_reason tag)
    test_acc: float | None = None  # a trained cell's, for the progress line
    seconds: float | None = None  # a trained cell's whole training call


def run_child(
    config: TrainConfig, parent: tracking.ParentRun, reason: str = "", callbacks: Sequence[Any] = ()
) -> ChildOutcome:
    """One attempt at a cell whose status is not known yet (a Ray trial, perhaps a retry after
    its worker died): skip it if it already has a FINISHED run, else train_cell."""
    return skip_if_finished(config, parent, reason) or train_cell(config, parent, reason, callbacks)


def train_cell(
    config: TrainConfig, parent: tracking.ParentRun, reason: str = "", callbacks: Sequence[Any] = ()
) -> ChildOutcome:
    """Train one cell as a child of `parent`; a failure is recorded and returned, not raised, so
    that the sweep goes on. `callbacks` go to the Trainer."""
    from resnet_exp.training.train import train  # Lightning and torchvision load only here

    interrupt_point("sweep_gap")
    identity = dict(
        run_name=config.run_name, seed=config.seed, config_hash=config.config_hash, reason=reason
    )
    attempt = new_attempt(parent, reason)
    start = time.perf_counter()
    try:
        result = train(config, attempt, callbacks)
    except ResumeHeld as err:  # another live process trains this cell: not a failure of ours
        log.warning("%s: %s", config.run_name, err)
        return ChildOutcome(**identity, outcome=FAILED, run_id=err.run_id, error=str(err))
    except Exception as err:  # noqa: BLE001 - any error of one child is recorded, the sweep goes on
        if tracking_failure(err):  # the server is gone: recording it would wait out the retries
            raise  # again, and every next child would fail the same way
        error = f"{type(err).__name__}: {err}"[:ERROR_TEXT_LIMIT]
        log.debug("%s failed: %s", config.run_name, error)  # progress.py says it
        return ChildOutcome(
            **identity, outcome=FAILED, run_id=record_failure(config, attempt, error), error=error
        )
    return ChildOutcome(
        **identity,
        outcome=TRAINED,
        run_id=result.run_id,
        test_acc=result.metrics.get(S.TEST_ACC),
        seconds=time.perf_counter() - start,
    )


def skip_if_finished(
    config: TrainConfig, parent: tracking.ParentRun, reason: str = ""
) -> ChildOutcome | None:
    """The SKIPPED outcome of a cell that already has a FINISHED run in the experiment (whichever
    executor or shard trained it), else None."""
    done = finished_run(MlflowClient(), parent.experiment_id, config.config_hash, config.seed)
    if not done:
        return None
    log.debug("%s: skipped, run %s already FINISHED", config.run_name, done)  # progress.py says it
    return ChildOutcome(
        config.run_name, config.seed, config.config_hash, SKIPPED, done, reason=reason
    )


def new_attempt(parent: tracking.ParentRun, reason: str = "") -> tracking.ParentRun:
    """The parent as one attempt at a cell sees it: its child tags plus a fresh attempt id (which
    finds the attempt's run again) and, for a seed an adaptive round added, why."""
    why = {S.TAG_SEED_REASON: reason} if reason else {}
    return dataclasses.replace(
        parent, child_tags={**parent.child_tags, **why, S.TAG_SWEEP_ATTEMPT: uuid.uuid4().hex}
    )


def record_failure(config: TrainConfig, attempt: tracking.ParentRun, error: str) -> str:
    """Tag the attempt's FAILED run with the error; if the training failed before opening a
    run, create the FAILED child here, so the UI and the next resume see it."""
    client = MlflowClient()
    found = client.search_runs(
        [attempt.experiment_id],
        max_results=1,
        filter_string=f"tags.`{S.TAG_SWEEP_ATTEMPT}` = '{attempt.child_tags[S.TAG_SWEEP_ATTEMPT]}'",
    )
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {
            S.TAG_KIND: S.KIND_TRAIN,
            **tracking.config_tags(config),
            **attempt.child_tags,
            S.MLFLOW_PARENT_RUN_ID: attempt.run_id,
        }
        run_id = client.create_run(
            attempt.experiment_id, run_name=config.run_name, tags=tags
        ).info.run_id
        params = {**config.to_params(), **attempt.child_params}
        client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    client.set_tag(run_id, S.TAG_ERROR, error)
    client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    return run_id
