"""What a run records: every metric, tag, param, artifact, alias and split name, spelled once.

Standard library only, so analysis (and anything else that only reads runs) can import it
without torch or Lightning. Training, registry, sweep, analysis, the README's tables and the
tests take names from here. Where a name changed, the old one is kept as `LEGACY_*` so that
runs recorded before the change still read.

Epoch-level series are stored with step = epoch index (0-based, as in TensorBoard); a result
(`test_*`, `best_epoch`: one value a run) at step 0, which the UI draws as a bar (a single value
at a later step draws as a line of one point); `best_epoch` says which epoch `test_*` measure.
MLflow's chart
view (3.17) puts every prefixed metric section ('setup/...') before the unprefixed "Model
metrics" and sorts charts by name inside a section, so the metrics are the learning curves and
the test results only: timings are artifact tables, counts are params or JSON summaries.

    python -c "from resnet_exp import schema; print(schema.TAG_DEPTH, schema.depth_alias('b2222-f2'))"
"""

# --- splits ---------------------------------------------------------------------------------------
TRAIN, VAL, TEST = "train", "val", "test"  # metric prefixes (train_acc, val_loss, ...)
SPLIT_PREFIXES = (TRAIN, VAL, TEST)

# --- metrics: learning curves (step = epoch) -------------------------------------------------------
TRAIN_LOSS, TRAIN_ACC = f"{TRAIN}_loss", f"{TRAIN}_acc"
VAL_LOSS, VAL_ACC = f"{VAL}_loss", f"{VAL}_acc"
TEST_LOSS, TEST_ACC = f"{TEST}_loss", f"{TEST}_acc"  # step = RESULT_STEP
# (loss, accuracy) names of each split, as the LightningModule logs them
SPLIT_METRICS = {
    TRAIN: (TRAIN_LOSS, TRAIN_ACC),
    VAL: (VAL_LOSS, VAL_ACC),
    TEST: (TEST_LOSS, TEST_ACC),
}
# The learning rate in force during the epoch, logged once the schedule has moved it (the epochs
# before are filled in then); while it stays at the `learning_rate` param, a flat curve says nothing.
LR = "lr"
TEST_ECE = (
    f"{TEST}_ece"  # expected calibration error on the test split (15 bins, L1); step = RESULT_STEP
)
BEST_EPOCH = "best_epoch"  # epoch (0-based) of the checkpoint with the lowest val_loss
RESULT_STEP = 0  # the step of test_* and best_epoch
MONITOR = VAL_LOSS  # what checkpointing, early stopping and the LR schedule watch

STEP_SUFFIX = "_step"  # Lightning's suffix for the per-step value of an on_step+on_epoch metric
EPOCH_SUFFIX = "_epoch"  # ... and for the epoch value, which we store under the bare name

# --- timing: where a run's time goes, as two artifact tables (CSV, previewed in the UI) -----
TIMING_FOLDER = "timing"
EPOCH_TIMES_FILE = f"{TIMING_FOLDER}/epochs.csv"  # one row per epoch, written as each one ends
EPOCH = "epoch"  # 0-based, as the metrics' step
EPOCH_TIME = "epoch_time_s"  # wall seconds of one epoch, its validation included
TRAIN_THROUGHPUT = "train_images_per_s"  # training images per second, data loading included
# One row per phase of the attempt that finished the run, in seconds. Setup happens before the run
# opens (data, image store, feature cache); the rest inside it. fit excludes the checkpoint writes
# made during the fit, which checkpoint counts, so the phases add up to no more than run, the
# wall time of the whole training call.
PHASE_TIMES_FILE = f"{TIMING_FOLDER}/phases.csv"
PHASE, SECONDS = "phase", "seconds"  # its columns
PRECISION_TIME = "precision"  # resolving precision=auto: measured on first use, then cached
DATA_TIME = "data"  # loading and checking the data (demo generation included)
IMAGE_STORE_TIME = "image_store"  # building (first run) or opening the image store
FEATURE_CACHE_TIME = "feature_cache"  # computing frozen-stage outputs (0: none)
FIT_TIME = "fit"  # trainer.fit, checkpoint writes excluded
TEST_TIME = "test"  # trainer.test with the best checkpoint
CHECKPOINT_TIME = "checkpoint"  # writing checkpoint files (during fit)
MODEL_LOG_TIME = "model_log"  # logging the best checkpoint as an MLflow Model
REGISTER_TIME = "register"  # registering it and moving the aliases (0: not registered)
RUN_TIME = "run"  # the whole training call, from config to registered model
PHASE_TIMES = (
    PRECISION_TIME,
    DATA_TIME,
    IMAGE_STORE_TIME,
    FEATURE_CACHE_TIME,
    FIT_TIME,
    TEST_TIME,
    CHECKPOINT_TIME,
    MODEL_LOG_TIME,
    REGISTER_TIME,
)
# A sweep's parent: each shard's counts, in its summary under SHARDS_FOLDER
SWEEP_TRAINED = "children_trained"
SWEEP_SKIPPED = "children_skipped"  # already FINISHED
SWEEP_FAILED = "children_failed"
# An analysis run's params: runs left out, per reason (e.g. excluded_failed), and the leader's
# mean test_acc
ANALYSIS_EXCLUDED = "excluded_"
# A sweep's parent, once its grid has ended: the leading configuration's mean test_acc. A result,
# not bookkeeping, so no prefix: it sits with the learning curves in the UI.
LEADER_ACC = "leader_test_acc_mean"
ANALYSIS_LEADER_ACC = LEADER_ACC
# Readable numbers: losses and rates keep 6 significant digits (no float32 noise), seconds 3
# decimals (milliseconds); accuracies are exact fractions (correct / total in double precision)
# and stay as they are
SIGNIFICANT_DIGITS = 6
SECONDS_DECIMALS = 3
SYSTEM = "system/"  # MLflow's system-metrics monitor (CPU, memory, GPU)

# --- params: the user's words, equal to the TrainConfig fields and MLproject parameters ----------
DATA = "data"
FREEZE_BLOCKS = "freeze_blocks"
BLOCK = "block"  # residual block type: BASIC or BOTTLENECK
BLOCKS = "blocks"  # residual blocks per stage, '2,2,2,2'
WEIGHTS = "weights"
SEED = "seed"
IMAGE_SIZE = "image_size"
OUTPUT_DIR = "output_dir"
DATA_DIR = "data_dir"
PRECISION = "precision"  # as given ('auto'); what ran is resolved/precision
RESUME = "resume"  # as given: how the run's first attempt was launched ('auto', 'never', a run id)
# facts the training logs next to its config
NUM_CLASSES = "num_classes"
INITIAL_WEIGHTS = "initial_weights"  # where the backbone came from: 'none', 'resnet18', a file
TRAINABLE_PARAMS = "trainable_params"
TOTAL_PARAMS = "total_params"
SPLIT_SIZE = "{split}_size"  # rows of a data split, e.g. test_size
RESOLVED = "resolved/"  # execution choices made at run time, e.g. resolved/precision
RESOLVED_FEATURE_CACHE = f"{RESOLVED}feature_cache"
RESOLVED_PRECISION = f"{RESOLVED}precision"
# measured training speed of bf16 autocast over fp32 on this CPU at the run's size (precision=auto
# on a CPU; absent where nothing was measured)
RESOLVED_BF16_SPEEDUP = f"{RESOLVED}bf16_speedup"

# --- block types (values of the `block` param) --------------------------------------------------
BASIC, BOTTLENECK = "basic", "bottleneck"
BLOCK_TYPES = (BASIC, BOTTLENECK)

# --- tags ------------------------------------------------------------------------------------------
TAG_KIND = "run_kind"  # what a run is: one of the kinds below
KIND_TRAIN, KIND_SWEEP, KIND_ANALYSIS = "train", "sweep", "analysis"
TAG_CONFIG_HASH = "config_hash"  # equal for runs that differ only by seed
TAG_DATASET = "dataset"  # the dataset's slug, e.g. 'demo' or 'animal-wildlife' (runs and versions)
TAG_DATA = "data"  # the `data` text as given (versions; on runs it is the param)
TAG_DEPTH = "depth_config"  # NetSpec.depth_label, e.g. 'b2222-f2' (runs and versions)
TAG_ARCH = "arch"  # NetSpec.arch_name, e.g. 'r18'
TAG_SWEEP_ID = "sweep_id"  # on a sweep's parent run and on each child it trained
TAG_ERROR = "error"  # why a run failed (only on a run that is not FINISHED)
# a run that was resumed and finished: the errors of its earlier attempts, newest last
TAG_EARLIER_ERRORS = "earlier_errors"
TAG_RUN_ID = "run_id"  # on a model version: the training run
TAG_MODEL_DIGEST = "model_sha256"  # on a logged model and its versions: sha256 of DIGESTS_FILE
# Bookkeeping that only resume and the project's own code read (which process trains a run, local
# paths) sits under HIDDEN: the MLflow UI lists no tag whose name starts with 'mlflow.' (its own
# namespace; ours is the 'resnet_exp.' part below it), and the client and searches read them as
# any other tag (docs/resume.md)
HIDDEN = "mlflow.resnet_exp."
TAG_BEST_CHECKPOINT = f"{HIDDEN}best_checkpoint"
TAG_CHECKPOINT_DIR = f"{HIDDEN}checkpoint_dir"
TAG_IMAGE_STORE = f"{HIDDEN}image_store"
TAG_SWEEP_ATTEMPT = f"{HIDDEN}sweep_attempt"  # finds the run of one attempt at a sweep's cell
TAG_FEATURE_CACHE_REASON = "feature_cache_reason"
TAG_SEED_REASON = "seed_reason"  # on a child an adaptive sweep added: why that seed ran
TAG_GIT_COMMIT, TAG_GIT_DIRTY = "git_commit", "git_dirty"
# Resume (resnet_exp/tracking/resume.py): which process trains a run, when it last showed it was alive,
# and how often the run was resumed.
# '<host> <pid> <process start time (ISO)>' of the process training the run
TAG_PROCESS = f"{HIDDEN}process"
# on an experiment: when (UTC, ISO 8601) an analysis of it last started. Written before the
# analysis loads any run, so that a user who may only read the experiment is refused at once
TAG_ANALYSIS_STARTED = f"{HIDDEN}analysis_started"
TAG_HEARTBEAT = f"{HIDDEN}heartbeat"  # UTC time (ISO 8601) of that process's last heartbeat
# A param per resume of a stopped run, n = 2, 3, ... (its first attempt is 1): '<UTC time> by
# <host> pid <pid> (started <UTC time>)'. Params are write-once, so the first process to log
# attempt n of a run is its only resumer (resnet_exp/tracking/claims.py)
RESUME_ATTEMPT = "resume/attempt_{n}"
TAG_CONTINUED_BY = "continued_by"  # on a stopped sweep parent: the parent run that continued it
TAG_RESUMED = "resumed"  # 'epoch E from last.ckpt' of the latest resume, absent if never resumed
TAG_RESUMED_INTO = "resumed_into"  # on the run `mlflow run` created when it resumed an older run
# on a child a sweep with executor=ray trained: the Ray node it ran on, and its Tune trial's folder
# (an absolute path that finds the run of a dead attempt: bookkeeping)
TAG_RAY_NODE_ID = "ray_node_id"
TAG_RAY_TRIAL_DIR = f"{HIDDEN}ray_trial_dir"
# every Ray node the run trained on, comma-separated in order: a retry on another node adds one
TAG_RAY_NODES = "ray_nodes"
# Tag names before this schema: model versions called the depth 'depth_label', and their
# 'dataset' tag held the raw `data` text instead of the slug.
LEGACY_TAG_DEPTH = "depth_label"
# ... and the resume bookkeeping was in sight, under these names (the heartbeat as a unix time)
LEGACY_HIDDEN_TAGS = {
    TAG_BEST_CHECKPOINT: "best_checkpoint",
    TAG_CHECKPOINT_DIR: "checkpoint_dir",
    TAG_IMAGE_STORE: "image_store",
    TAG_PROCESS: "process",
    TAG_HEARTBEAT: "heartbeat",
    TAG_RAY_TRIAL_DIR: "ray_trial_dir",
}

# MLflow's own tags that the UI shows
MLFLOW_NOTE = "mlflow.note.content"  # the description of a run or an experiment
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_SOURCE_NAME = "mlflow.source.name"
MLFLOW_SOURCE_TYPE = "mlflow.source.type"
MLFLOW_USER = "mlflow.user"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"

# --- artifacts ------------------------------------------------------------------------------------
CONFIG_FILE = "config.json"  # a training run's resolved config, runtime and data facts
CLASS_NAMES_FILE = "class_names.json"
NETSPEC_FILE = "netspec.json"  # the network spec, in training runs and in the registered model
LEGACY_NETSPEC_FILE = "classifier.json"  # its name (and a subset of its fields) in older models
DIGESTS_FILE = "digests.json"  # in a logged model: the sha256 of each of its other files
# ResNetClassifier's hyper-parameter holding NetSpec.to_dict() in a checkpoint; it is also the
# argument name, because Lightning's load_from_checkpoint passes hparams back as arguments.
CKPT_NETSPEC = "spec"
SWEEP_GRID_FILE = "sweep.json"  # a sweep parent's grid, which analysis selects runs by
SHARDS_FOLDER = "shards"  # a sweep parent's per-shard summaries
RANKING_FILE = "ranking.csv"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"  # self-contained (plots inline): MLflow's artifact viewer renders it
# the ranking's shown columns as an MLflow table (JSON, split orient): the UI previews it as a table
RANKING_TABLE = "ranking.json"
ANALYSIS_FOLDER = "analysis"  # a sweep's parent: its analysis's files, logged when the grid ends
PLOTS_FOLDER = "plots"
CLASS_CHANGES_FILE = (
    "class_changes.csv"  # analysis: classes whose accuracy moves most with freeze_blocks
)
# A training run's test diagnostics (resnet_exp/tracking/diagnostics.py), under DIAGNOSTICS_FOLDER
DIAGNOSTICS_FOLDER = "diagnostics"
PREDICTIONS_FILE = "predictions.parquet"  # image_index, labels, prob_<class> per test image
PER_CLASS_FILE = "per_class_accuracy.csv"  # class, label, correct, total, accuracy
CONFUSION_FILE = "confusion_matrix.csv"  # counts; rows: true class, columns: predicted
CONFUSION_PNG = "confusion_matrix.png"
RELIABILITY_FILE = "reliability.csv"  # per confidence bin: images, confidence, accuracy
RELIABILITY_PNG = "reliability_diagram.png"
# ... and as MLflow tables that the UI previews (the files above stay for analysis and pandas)
PER_CLASS_TABLE = "per_class_accuracy.json"  # class, correct, total, accuracy
PREDICTIONS_TABLE = "predictions.json"  # image_index, true and predicted class, confidence, correct

# --- registry aliases -----------------------------------------------------------------------------
CHAMPION = "champion"  # the version with the best val_acc of a registered model
DEPTH_ALIAS_PREFIX = "best-"


def depth_alias(depth_label: str) -> str:
    """The alias of the best version of one depth configuration, e.g. 'best-b2222-f2'."""
    return f"{DEPTH_ALIAS_PREFIX}{depth_label}"


def tag(tags: dict, name: str, default: str | None = None) -> str | None:
    """A tag's value under its current name, else under the name it had before (old runs)."""
    legacy = {TAG_DEPTH: LEGACY_TAG_DEPTH, **LEGACY_HIDDEN_TAGS}.get(name)
    return tags.get(name, tags.get(legacy, default) if legacy else default)


def readable(value: float) -> float:
    """A loss, accuracy or rate as recorded: 6 significant digits, so that a float32 value
    shows as 2.31006, not 2.3100564479827881 (exact fractions such as 0.3125 stay exact)."""
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def recorded(name: str, value: float) -> float:
    """A metric's value as stored: an accuracy (also its _step/_epoch form) exactly, any other
    value readable()."""
    base = name.removesuffix(STEP_SUFFIX).removesuffix(EPOCH_SUFFIX)
    exact = base in {acc for _, acc in SPLIT_METRICS.values()}
    return float(value) if exact else readable(float(value))


def seconds(value: float) -> float:
    """A duration as recorded: seconds to the millisecond."""
    return round(value, SECONDS_DECIMALS)
