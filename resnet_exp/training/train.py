"""One training run, end to end: data, initial weights, Lightning fit + test, MLflow tracking.

Everything that can fail on bad input (config, data, weights) runs before the MLflow run opens,
so a mistake leaves no run behind (under `mlflow run` the run it created ends FAILED). So does
the preparation of the inputs: the image store (decoded once, reused by later runs) and, with
frozen stages, their cached outputs.

    resnet-exp train --data demo --weights none --freeze-blocks 2 --max-epochs 3 --image-size 64
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from resnet_exp import schema as S
from resnet_exp.config import TrainConfig, describe_weights
from resnet_exp.data.splits import SPLITS, DataSplits, ImageDataModule, decode_image, load_splits
from resnet_exp.data.store import ImageStore, open_image_store
from resnet_exp.disk import check_writable, disk_errors_in_one_line
from resnet_exp.hardware import Runtime, apply_runtime, check_memory, resolve_runtime
from resnet_exp.model.classifier import ResNetClassifier
from resnet_exp.model.network import InitialWeights, load_initial_weights
from resnet_exp.phases import Phases
from resnet_exp.signals import interrupt_point
from resnet_exp.tracking import diagnostics, logged_model, registry, resume, timing
from resnet_exp.tracking import training_run as tracking
from resnet_exp.tracking.resume import LAST_CHECKPOINT, ResumePoint
from resnet_exp.tracking.runs import RunScope
from resnet_exp.tracking.store import project_run_id
from resnet_exp.training.callbacks import (
    EpochTimer,
    PlateauStepBeforeCheckpoint,
    StoppedStaysStopped,
)
from resnet_exp.training.checkpoints import AtomicCheckpointIO, keep_only
from resnet_exp.training.features import FeaturePlan, cache_features

log = logging.getLogger(__name__)
# Per-step values every 50 optimizer steps (Lightning's default): step-level curves appear when an
# epoch has at least 100 batches (about 134 on the Animals data at batch 32).
STEP_LOG_INTERVAL = 50


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    best_checkpoint: str
    metrics: dict[str, float]  # final values; val_acc is the best checkpoint's
    model_uri: str  # the MLflow Model logged to the run
    registered: registry.RegisteredVersion | None  # None when registered_model_name is 'none'


def train(
    config: TrainConfig,
    parent: tracking.ParentRun | None = None,
    callbacks: Sequence[pl.Callback] = (),
) -> TrainResult:
    """Train, test with the best checkpoint, and record everything in one MLflow run (a child
    of `parent` when a sweep runs it). `callbacks` join the Trainer's own (a Ray trial's report
    of each epoch to Tune)."""
    phases = Phases()
    check_memory(config)  # before the precision measurement, which trains the network too
    check_writable(config.output_dir, S.OUTPUT_DIR)  # a folder we cannot write fails now, not
    check_writable(config.data_dir, S.DATA_DIR)  # in the run (demo, store, checkpoints, logs)
    point = resume.plan(
        config,
        tracking.resume_experiment_id(config, parent),
        parent.run_id if parent else None,
        None if parent else project_run_id(),
        sweep_id=parent.child_tags.get(S.TAG_SWEEP_ID) if parent else None,
    )
    with resume.released_on_error(point):  # the claim on a stopped run, if this fails first
        with phases.timed(S.PRECISION_TIME):
            runtime = resolve_runtime(config)
        apply_runtime(runtime)
        with phases.timed(S.DATA_TIME):
            splits = load_splits(config)
        store = open_image_store(splits, config)
        initial = load_initial_weights(config.weights, config.block, config.blocks)
        pl.seed_everything(config.seed, workers=True, verbose=False)
        # the network, built and checkpointed from this alone
        spec = config.net_spec(splits.class_names)
        classifier = ResNetClassifier(spec, config.learning_rate, config.to_params(), initial)
        inputs, plan = _prepare_inputs(classifier, splits, store, config, runtime)
        datamodule = ImageDataModule(inputs, config, runtime)
        given = parent.child_params if parent else {}
    with tracking.training_run(config, parent, point) as scope:
        run_id = scope.run_id
        stored = point.stored_steps if point else {}  # what an earlier attempt already logged
        folder = point.folder if point else tracking.checkpoint_dir(config, run_id).resolve()
        scope.set_tags({S.TAG_CHECKPOINT_DIR: str(folder)})  # where a resume finds last.ckpt
        if point:
            scope.set_tags({S.TAG_RESUMED: _resumed_note(point)})
        tracking.log_json(spec.to_dict(), S.NETSPEC_FILE)
        facts = _log_run_facts(scope, config, runtime, splits, initial, classifier, given)
        scope.describe(tracking.describe_training(config, facts))
        _log_input_path(scope, store, plan)
        phases.add(S.IMAGE_STORE_TIME, store.seconds)
        phases.add(S.FEATURE_CACHE_TIME, plan.seconds)
        trainer = _build_trainer(
            config, runtime, run_id, len(splits.train), folder, point, callbacks
        )
        checkpoint_io = trainer.strategy.checkpoint_io
        # checkpoints and TensorBoard logs: a folder turned read-only or full is one line
        with _known_warnings_silenced(), disk_errors_in_one_line():
            with phases.timed(S.FIT_TIME):
                trainer.fit(classifier, datamodule=datamodule, ckpt_path=point and point.checkpoint)
            phases.add(S.FIT_TIME, -checkpoint_io.seconds)  # counted apart, as checkpoint_s
            phases.add(S.CHECKPOINT_TIME, checkpoint_io.seconds)
            # The test split is touched once, with the checkpoint chosen on val_loss (last.ckpt
            # only if val_loss never became a finite number).
            best_cb, last_cb = trainer.checkpoint_callbacks[:2]
            best = best_cb.best_model_path or last_cb.best_model_path
            best_epoch = torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"]
            with phases.timed(S.TEST_TIME):
                interrupt_point("test")
                trainer.test(classifier, datamodule=datamodule, ckpt_path=best, verbose=False)
            diagnostics.log_test_diagnostics(classifier.test_outputs, splits, stored)
        tracking.log_new_metrics({S.BEST_EPOCH: best_epoch}, S.RESULT_STEP, stored)
        scope.set_tags({S.TAG_BEST_CHECKPOINT: str(Path(best).resolve())})
        metrics = {k: S.recorded(k, v) for k, v in trainer.callback_metrics.items()}
        # The registered model is the best checkpoint, so its val_acc is the one of that epoch.
        metrics[S.VAL_ACC] = tracking.metric_at_step(run_id, S.VAL_ACC, best_epoch)
        model_uri, version = _publish_model(
            config, run_id, best, best_epoch, splits, metrics, phases
        )
        times = {name: phases.seconds.get(name, 0.0) for name in S.PHASE_TIMES}
        timing.log_phase_times(run_id, {**times, S.RUN_TIME: phases.elapsed()})
        scope.describe(
            tracking.describe_training(
                config,
                facts,
                tracking.Outcome(
                    best_epoch,
                    trainer.current_epoch,
                    metrics.get(S.VAL_ACC),
                    metrics.get(S.TEST_ACC),
                    version.uri if version else model_uri,
                ),
            )
        )
    # FINISHED, its model logged (and registered): nothing resumes it, so only the best weights
    # stay (ResNet18's last.ckpt: 112 MB beside 45 MB of weights; docs/resources.md).
    keep_only(folder, Path(best))
    return TrainResult(run_id, best, metrics, model_uri, version)


def _resumed_note(point: ResumePoint) -> str:
    """'epoch 2 from last.ckpt': where the latest resume went on (the folder is a hidden tag)."""
    epoch = torch.load(point.checkpoint, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    return f"epoch {epoch + 1} from {Path(point.checkpoint).name}"


def _publish_model(
    config: TrainConfig,
    run_id: str,
    checkpoint: str,
    best_epoch: int,
    splits: DataSplits,
    metrics: dict[str, float],
    phases: Phases,
) -> tuple[str, registry.RegisteredVersion | None]:
    """Log the best checkpoint as an MLflow Model of this run and register it (unless 'none')."""
    accuracy = ", ".join(
        f"{name} {metrics[name]:.4f}" for name in (S.VAL_ACC, S.TEST_ACC) if name in metrics
    )
    description = (
        f"{config.run_name}: the best checkpoint (epoch {best_epoch}) of training run "
        f"{run_id}; {accuracy}. Trained on {config.data} from {describe_weights(config.weights)}."
    )
    with phases.timed(S.MODEL_LOG_TIME):
        first_test_image = decode_image(splits.test[0][splits.image_column], "the input example")
        model_uri = logged_model.log_model(
            checkpoint,
            logged_model.example_image(first_test_image, config.image_size),
            best_epoch,
            config.run_name,
            description,
            tracking.split_dataset(splits, "test"),
        )
    phases.add(S.REGISTER_TIME, 0.0)
    if config.model_name is None:
        return model_uri, None
    tags = registry.version_tags(config, run_id, metrics)
    with phases.timed(S.REGISTER_TIME):
        return model_uri, registry.register(model_uri, config, tags, description)


def _prepare_inputs(
    classifier: ResNetClassifier,
    splits: DataSplits,
    store: ImageStore,
    config: TrainConfig,
    runtime: Runtime,
) -> tuple[dict, FeaturePlan]:
    """What the loaders serve: the stored images, or the frozen stages' cached outputs."""
    if runtime.channels_last:
        classifier.use_channels_last()
    images = {name: store.split(splits, name) for name in SPLITS}
    features, plan = cache_features(images, classifier.model, config, runtime)
    classifier.input_is_features = features is not None
    return (images if features is None else features), plan


def _log_input_path(scope: RunScope, store: ImageStore, plan: FeaturePlan) -> None:
    """Which input path the run took, so that runs stay comparable (docs/tracking.md)."""
    scope.log_params({S.RESOLVED_FEATURE_CACHE: plan.state})
    scope.set_tags({S.TAG_IMAGE_STORE: str(store.root), S.TAG_FEATURE_CACHE_REASON: plan.reason})


@contextmanager
def _known_warnings_silenced() -> Iterator[None]:
    with warnings.catch_warnings():
        # Frozen stages are in eval mode on purpose (their BatchNorm statistics must not move).
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        # pytorch-lightning 2.6 calls a torch 2.14 API it has not caught up with; harmless.
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        # Our loaders come from a DataModule and the module's on_after_batch_transfer normalises
        # them: exactly the combination this warning describes.
        warnings.filterwarnings("ignore", message=r"You have overridden `on_after_batch_transfer`")
        # The model summary's size estimate assumes fp32 weights, which they are under bf16-mixed.
        warnings.filterwarnings(
            "ignore", message=r"Precision bf16-mixed is not supported by the model summary"
        )
        yield


def _log_run_facts(
    scope: RunScope,
    config: TrainConfig,
    runtime: Runtime,
    splits: DataSplits,
    initial: InitialWeights,
    classifier: ResNetClassifier,
    given: Mapping[str, str],
) -> dict[str, str]:
    """The config, the runtime and facts about the data and the network, as params and as
    config.json; returns the facts. `given` replaces params that a sweep resolved for its
    children (ParentRun.child_params): the params are the user's values on every path."""
    trainable, total = classifier.parameter_counts()
    facts = {
        S.NUM_CLASSES: str(len(splits.class_names)),
        **{S.SPLIT_SIZE.format(split=name): str(n) for name, n in splits.sizes().items()},
        S.INITIAL_WEIGHTS: initial.name,
        S.TRAINABLE_PARAMS: str(trainable),
        S.TOTAL_PARAMS: str(total),
    }
    params = {**config.to_params(), **runtime.to_params(), **facts, **given}
    scope.log_params(
        params, same=lambda k, text: given.get(k) == text or config.same_value(k, text)
    )
    tracking.log_json(
        {
            "config": config.to_params(),
            "runtime": runtime.to_params(),
            **facts,
            S.TAG_CONFIG_HASH: config.config_hash,
            "data": {
                "source": splits.source,
                "location": splits.location,
                "carved_splits": list(splits.carved),
                "sizes": splits.sizes(),
            },
            "initial_weights_by_block": initial.report,
        },
        S.CONFIG_FILE,
    )
    tracking.log_json(list(splits.class_names), S.CLASS_NAMES_FILE)
    tracking.log_dataset_inputs(splits)
    log.info(
        "%s | %s | %d of %d parameters trainable",
        config.run_name,
        splits.summary(),
        trainable,
        total,
    )
    return facts


def _build_trainer(
    config: TrainConfig,
    runtime: Runtime,
    run_id: str,
    train_rows: int,
    folder: Path,
    point: ResumePoint | None,
    extra: Sequence[pl.Callback] = (),
) -> pl.Trainer:
    # `folder` is explicit: loggers must not decide it; a resumed run keeps its own.
    # Two files per run: the best by val_loss as weights only (what test and the registry
    # read), and one resumable last.ckpt with optimizer, scheduler and callback states. Keeping
    # the top 3 in full took 4 files of 112-135 MB per run, 24 GB for a 45-run study.
    best = ModelCheckpoint(
        dirpath=folder,
        filename="epoch{epoch:02d}-val_loss{val_loss:.4f}",
        auto_insert_metric_name=False,
        monitor=S.MONITOR,
        mode="min",
        save_top_k=1,
        save_weights_only=True,
    )
    # Without a monitor, top-1 is the latest epoch: last.ckpt, overwritten atomically after every
    # epoch. (save_last=True with save_top_k=0 writes it only when fit ends: nothing to resume.)
    last = ModelCheckpoint(
        dirpath=folder,
        filename=LAST_CHECKPOINT.removesuffix(".ckpt"),
        save_top_k=1,
        enable_version_counter=False,
    )
    early_stopping = EarlyStopping(
        monitor=S.MONITOR, mode="min", patience=config.early_stopping_patience
    )
    batches = max(1, train_rows // config.batch_size)
    if config.limit_batches:
        batches = min(batches, config.limit_batches)
    every = min(STEP_LOG_INTERVAL, batches)  # at least once per epoch, even on tiny data
    limit = config.limit_batches or 1.0  # Lightning reads an int as a batch count, 1.0 as "all"
    return pl.Trainer(
        accelerator=runtime.accelerator,
        devices=1,
        precision=runtime.precision,
        benchmark=runtime.accelerator == "cuda",  # cuDNN picks the fastest kernels: sizes are fixed
        max_epochs=config.max_epochs,
        logger=tracking.make_loggers(
            config, run_id, point.stored_steps if point else None, step_curves=batches >= 2 * every
        ),
        callbacks=[
            best,
            last,
            early_stopping,
            PlateauStepBeforeCheckpoint(),
            EpochTimer(run_id, timing.epoch_rows(run_id) if point else None),
            StoppedStaysStopped(),
            *extra,
        ],
        plugins=[AtomicCheckpointIO()],  # no truncated checkpoint under a finished name
        limit_train_batches=limit,
        limit_val_batches=limit,
        limit_test_batches=limit,
        log_every_n_steps=every,
        enable_progress_bar=sys.stderr.isatty(),  # elsewhere EpochTimer logs a line per epoch
        default_root_dir=str(tracking.results_dir(config)),
    )
