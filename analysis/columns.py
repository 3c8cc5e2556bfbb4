"""Column names of the per-run table and of ranking.csv. A column that holds a recorded param,
tag or metric takes its name from resnet_exp.schema; the analysis's own columns are spelled here.

    python -c "from analysis import columns as C; print(C.RANKING_COLUMNS)"
"""

from resnet_exp import schema as S

# --- one row per training run (analysis/runs.py) ---------------------------------------------
RUN_ID = "run_id"
RUN_NAME = "run_name"
CONFIG_HASH = S.TAG_CONFIG_HASH
BLOCK = S.BLOCK  # residual block type, 'basic' or 'bottleneck'; runs from before the param: basic
BLOCKS = S.BLOCKS  # '2,2,2,2', as training logs the param
# The network as plots and sentences name it, 'basic 2,2,2,2' / 'bottleneck 3,4,6,3': a basic and a
# bottleneck 2,2,2,2 are different networks, never one series.
NETWORK = "network"
FREEZE_BLOCKS = S.FREEZE_BLOCKS
# 'b2222-f2', 'bn3463-f2' (bottleneck): the tag's name, one name per concept
DEPTH_LABEL = S.TAG_DEPTH
SEED = S.SEED
TRAINABLE_PARAMS = S.TRAINABLE_PARAMS
WEIGHTS = S.WEIGHTS  # initial weights: 'imagenet', 'none' (random) or a state_dict file
NUM_CLASSES = S.NUM_CLASSES
TEST_SIZE = S.SPLIT_SIZE.format(split=S.TEST)  # images in the test split
TEST_ACC = S.TEST_ACC
END_TIME = "end_time"  # ms since the epoch; the latest of duplicate runs wins
BEST_VAL_ACC = f"best_{S.VAL_ACC}"
EPOCHS_TO_95 = "epochs_to_95"  # epochs until val_acc first reaches 95% of the run's best
VAL_ACC_AUC = f"{S.VAL_ACC}_auc"  # area under the val_acc curve per epoch, in [0, 1]
EPOCH_TIME = S.EPOCH_TIME  # mean seconds of one epoch
TRAIN_TIME = "train_time_s"  # seconds of all epochs together

# --- the per-epoch curves (long format) --------------------------------------------------------
EPOCH = "epoch"
VAL_ACC = S.VAL_ACC

# --- one row per configuration (ranking.csv) ---------------------------------------------------
RANK = "rank"
TIED = "tied_with_leader"
LABEL = "label"  # depth_label, plus the config hash when two configurations share it
TRAINABLE_BLOCKS = "trainable_blocks"  # residual blocks that learn: sum(blocks[freeze_blocks:])
N_RUNS = "n_runs"
TEST_ACC_MEAN = f"{TEST_ACC}_mean"
TEST_ACC_STD = f"{TEST_ACC}_std"
TEST_ACC_SEED_CI = (
    f"{TEST_ACC}_seed_ci95"  # half-width of the Student-t interval over seeds; NaN for one run
)
# The reported 95% interval: the wider of the t interval over seeds and the Wilson interval of
# the pooled test images (analysis/stats.py), so agreeing seeds never give a zero width
TEST_ACC_LO = f"{TEST_ACC}_ci95_lo"
TEST_ACC_HI = f"{TEST_ACC}_ci95_hi"
TEST_ACC_INTERVAL = f"{TEST_ACC}_ci95_method"  # which one it was: analysis.stats.SEEDS or WILSON
TEST_IMAGES = "test_images"  # test images per run (NaN if the runs differ or did not record it)
# The comparison with the leader (analysis.rank.compare_with_leader): this minus the leader
DIFF = f"{TEST_ACC}_diff"
DIFF_LO = f"{DIFF}_ci95_lo"
DIFF_HI = f"{DIFF}_ci95_hi"
P_VALUE = "p_value"  # two-sided, of a zero difference
P_HOLM = "p_holm"  # Holm-adjusted across the configurations compared with the leader
COMPARISON = "comparison"  # 'paired t', 'Welch t (no common seeds)', ... (analysis.stats)
N_PAIRS = "n_paired_seeds"  # seeds this configuration and the leader both have
# Guessing's accuracy, 1 / num_classes (NaN where the runs did not record one class count), and
# whether the configuration beats it: its 95% interval lies above it (analysis.rank.beats_chance).
# A configuration that does not is reported as "did not learn", never as fast or slow to converge.
CHANCE = "chance_acc"
BEATS_CHANCE = "beats_chance"
MAX_SEED = "max_seed"  # the highest seed a configuration has (adaptive sweeps add the next)
BEST_VAL_ACC_MEAN = f"{BEST_VAL_ACC}_mean"
EPOCHS_TO_95_MEAN = f"{EPOCHS_TO_95}_mean"
EPOCHS_TO_95_STD = f"{EPOCHS_TO_95}_std"
VAL_ACC_AUC_MEAN = f"{VAL_ACC_AUC}_mean"
EPOCH_TIME_MEAN = f"{EPOCH_TIME}_mean"
TRAIN_TIME_MEAN = f"{TRAIN_TIME}_mean"
PARETO_TIME = "pareto_time"  # not beaten on both test_acc mean and training time
PARETO_PARAMS = "pareto_params"  # ... on both test_acc mean and trainable parameters

# The reader's columns first (the UI previews a CSV's first five): rank, configuration, test_acc
# and its interval
RANKING_COLUMNS = [
    RANK,
    LABEL,
    TEST_ACC_MEAN,
    TEST_ACC_LO,
    TEST_ACC_HI,
    N_RUNS,
    TIED,
    BEATS_CHANCE,
    CHANCE,
    DEPTH_LABEL,
    NETWORK,
    BLOCK,
    BLOCKS,
    FREEZE_BLOCKS,
    TRAINABLE_BLOCKS,
    WEIGHTS,
    CONFIG_HASH,
    TEST_IMAGES,
    TEST_ACC_STD,
    TEST_ACC_SEED_CI,
    TEST_ACC_INTERVAL,
    DIFF,
    DIFF_LO,
    DIFF_HI,
    P_VALUE,
    P_HOLM,
    COMPARISON,
    N_PAIRS,
    BEST_VAL_ACC_MEAN,
    EPOCHS_TO_95_MEAN,
    EPOCHS_TO_95_STD,
    VAL_ACC_AUC_MEAN,
    EPOCH_TIME_MEAN,
    TRAIN_TIME_MEAN,
    TRAINABLE_PARAMS,
    PARETO_TIME,
    PARETO_PARAMS,
]
