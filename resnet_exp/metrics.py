"""Metric names: the one place each is spelled. Training, tracking, registry and analysis import
these instead of typing the strings.

Every epoch-level series is stored with step = epoch index (0-based); the per-step training
values carry Lightning's `_step` suffix and step = optimizer step.
"""

TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
VAL_LOSS = "val_loss"
VAL_ACC = "val_acc"
TEST_LOSS = "test_loss"
TEST_ACC = "test_acc"
LR = "lr"
EPOCH_TIME = "epoch_time_s"  # wall seconds of one epoch, its validation included
TRAIN_THROUGHPUT = "train_images_per_s"  # training images per second, data loading included
BEST_EPOCH = "best_epoch"  # epoch of the checkpoint with the lowest val_loss
IMAGE_STORE_TIME = "image_store_s"  # seconds to build (first run) or open the uint8 image store
FEATURE_CACHE_TIME = "feature_cache_s"  # seconds to compute the frozen stages' outputs (0: not cached)

# A sweep's parent run, per shard (step = shard index): children trained, skipped as already
# FINISHED, and failed by this invocation.
SWEEP_TRAINED = "children_trained"
SWEEP_SKIPPED = "children_skipped"
SWEEP_FAILED = "children_failed"

STEP_SUFFIX = "_step"  # Lightning's suffix for the per-step value of an on_step+on_epoch metric
EPOCH_SUFFIX = "_epoch"  # ... and for the epoch value, which we store under the bare name

MONITOR = VAL_LOSS  # what checkpointing, early stopping and the LR schedule watch

# (loss, accuracy) names of each split, as the LightningModule logs them
SPLIT_METRICS = {"train": (TRAIN_LOSS, TRAIN_ACC), "val": (VAL_LOSS, VAL_ACC), "test": (TEST_LOSS, TEST_ACC)}
