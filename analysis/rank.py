"""The ranking maths, pure functions on DataFrames: per-run learning measures, per-configuration
means and intervals (analysis.stats), the comparison of every configuration with the leader by
paired per-seed differences with Holm's correction (the tie rule), and the Pareto fronts of
accuracy against cost.

    python -c "from analysis.rank import epochs_to_fraction, auc_per_epoch; \
print(epochs_to_fraction([.2, .5, .8]), auc_per_epoch([.2, .5, .8]))"
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis import columns as C
from analysis import stats as st

CONVERGENCE_FRACTION = 0.95  # a run has converged once val_acc reaches 95% of its own best
CONFIDENCE = st.CONFIDENCE  # two-sided 95% intervals and tests at 5%


# --- one run ----------------------------------------------------------------------------------


def epochs_to_fraction(val_acc: Sequence[float], fraction: float = CONVERGENCE_FRACTION) -> int:
    """Epochs trained until val_acc first reached `fraction` of the run's best (1 = after the first)."""
    values = np.asarray(val_acc, dtype=float)
    return int(np.argmax(values >= fraction * values.max())) + 1


def auc_per_epoch(val_acc: Sequence[float]) -> float:
    """Trapezoid area under val_acc over epoch index, divided by the epochs spanned (len - 1):
    the curve's average height, in [0, 1]. High means good early and stayed good. One epoch: its value."""
    values = np.asarray(val_acc, dtype=float)
    if len(values) == 1:
        return float(values[0])
    return float((values[:-1] + values[1:]).sum() / 2 / (len(values) - 1))


def run_measures(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """The per-run table plus best val_acc, epochs to 95%, val_acc AUC, epoch and total time."""

    def measures(run_id: str, curve: pd.DataFrame) -> dict:
        acc, seconds = curve.sort_values(C.EPOCH)[C.VAL_ACC], curve[C.EPOCH_TIME]
        return {
            C.RUN_ID: run_id,
            C.BEST_VAL_ACC: acc.max(),
            C.EPOCHS_TO_95: epochs_to_fraction(acc),
            C.VAL_ACC_AUC: auc_per_epoch(acc),
            C.EPOCH_TIME: seconds.mean(),
            C.TRAIN_TIME: seconds.sum(min_count=len(seconds)),
        }  # NaN if an epoch has no time

    per_run = pd.DataFrame([measures(run_id, curve) for run_id, curve in curves.groupby(C.RUN_ID)])
    return runs.merge(per_run, on=C.RUN_ID, how="left")


# --- one configuration -----------------------------------------------------------------------


def ci_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t interval of the mean over seeds; NaN for a single value."""
    return st.t_half_width(values, confidence)


def beats_chance(lo: float, mean: float, chance: float) -> bool:
    """Whether a configuration learned: the lower bound of its 95% accuracy interval lies above
    guessing's accuracy (1 / classes). Without an interval its mean decides; without a known
    class count nothing can be said against it (True)."""
    if math.isnan(chance):
        return True
    return bool((mean if math.isnan(lo) else lo) > chance)


def _chance(runs: pd.DataFrame) -> float:
    """1 / num_classes where the runs recorded one class count, else NaN."""
    counts = set(runs[C.NUM_CLASSES].dropna()) if C.NUM_CLASSES in runs else set()
    return 1 / float(counts.pop()) if len(counts) == 1 else math.nan


def trainable_blocks(blocks: str, freeze_blocks: int) -> int:
    """Residual blocks that learn: those of the stages after the frozen ones ('2,2,2,2', 1 -> 6)."""
    return sum(int(b) for b in blocks.split(",")[freeze_blocks:])


def aggregate(measured: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (config hash), aggregated over its seeds. Block type, blocks,
    frozen stages and weights are part of the hash, so they are equal across its runs."""

    def summary(config_hash: str, g: pd.DataFrame) -> dict:
        acc, half = g[C.TEST_ACC], ci_half_width(g[C.TEST_ACC].tolist())
        interval = st.accuracy_interval(acc.tolist(), _test_sizes(g))
        first, chance = g.iloc[0], _chance(g)
        return {
            C.CONFIG_HASH: config_hash,
            C.NETWORK: first[C.NETWORK],
            C.BLOCK: first[C.BLOCK],
            C.BLOCKS: first[C.BLOCKS],
            C.FREEZE_BLOCKS: first[C.FREEZE_BLOCKS],
            C.DEPTH_LABEL: first[C.DEPTH_LABEL],
            C.WEIGHTS: first[C.WEIGHTS],
            C.TRAINABLE_BLOCKS: trainable_blocks(first[C.BLOCKS], first[C.FREEZE_BLOCKS]),
            C.N_RUNS: len(g),
            C.TEST_ACC_MEAN: acc.mean(),
            C.TEST_ACC_STD: acc.std(ddof=1),
            C.TEST_ACC_SEED_CI: half,
            C.TEST_ACC_LO: interval.lo,
            C.TEST_ACC_HI: interval.hi,
            C.TEST_ACC_INTERVAL: interval.method,
            C.CHANCE: chance,
            C.BEATS_CHANCE: beats_chance(interval.lo, acc.mean(), chance),
            C.TEST_IMAGES: _test_images(g),
            C.BEST_VAL_ACC_MEAN: g[C.BEST_VAL_ACC].mean(),
            C.EPOCHS_TO_95_MEAN: g[C.EPOCHS_TO_95].mean(),
            C.EPOCHS_TO_95_STD: g[C.EPOCHS_TO_95].std(ddof=1),
            C.VAL_ACC_AUC_MEAN: g[C.VAL_ACC_AUC].mean(),
            C.EPOCH_TIME_MEAN: g[C.EPOCH_TIME].mean(),
            C.TRAIN_TIME_MEAN: g[C.TRAIN_TIME].mean(),
            C.TRAINABLE_PARAMS: g[C.TRAINABLE_PARAMS].max(),
        }

    table = pd.DataFrame([summary(h, g) for h, g in measured.groupby(C.CONFIG_HASH)])
    return table.assign(**{C.LABEL: labels(table)})


def _test_sizes(runs: pd.DataFrame) -> list[float]:
    """Test images of each run; NaN where a run did not record it (or the table lacks it)."""
    return runs[C.TEST_SIZE].tolist() if C.TEST_SIZE in runs else [math.nan] * len(runs)


def _test_images(runs: pd.DataFrame) -> float:
    """Test images per run, if all runs agree; NaN otherwise."""
    sizes = set(_test_sizes(runs))
    return sizes.pop() if len(sizes) == 1 else math.nan


def labels(table: pd.DataFrame) -> pd.Series:
    """The depth label, with the config hash where two configurations share one (they differ in
    another parameter, e.g. max_epochs)."""
    shared = table[C.DEPTH_LABEL].duplicated(keep=False)
    with_hash = table[C.DEPTH_LABEL] + " (" + table[C.CONFIG_HASH].str[:6] + ")"
    return table[C.DEPTH_LABEL].where(~shared, with_hash)


# --- ranking -------------------------------------------------------------------------------------


def leader_first(table: pd.DataFrame) -> pd.DataFrame:
    """Configurations by test_acc mean, highest first; equal means: fewer trainable parameters,
    then label. The first row is the leader."""
    return table.sort_values(
        [C.TEST_ACC_MEAN, C.TRAINABLE_PARAMS, C.LABEL], ascending=[False, True, True], kind="stable"
    ).reset_index(drop=True)


def compare_with_leader(runs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per config hash of `order` (the leader first): mean difference from the leader
    (this minus leader), its 95% interval, p, Holm-adjusted p across the other configurations,
    the method, and whether it is tied: the corrected test does not reject a zero difference
    at 5% (or cannot be made). The leader is tied with itself, with no test."""

    def by_seed(config_hash: str) -> dict[int, tuple[float, float]]:
        g = runs[runs[C.CONFIG_HASH] == config_hash]
        return dict(zip(g[C.SEED].astype(int), zip(g[C.TEST_ACC], _test_sizes(g))))

    leader = by_seed(order[0])
    found = [st.paired(leader, by_seed(h)) for h in order[1:]]
    adjusted = st.holm([c.p for c in found])
    rows = [
        {
            C.CONFIG_HASH: order[0],
            C.DIFF: 0.0,
            C.DIFF_LO: math.nan,
            C.DIFF_HI: math.nan,
            C.P_VALUE: math.nan,
            C.P_HOLM: math.nan,
            C.COMPARISON: "leader",
            C.N_PAIRS: len(leader),
            C.TIED: True,
        }
    ]
    for h, c, p_holm in zip(order[1:], found, adjusted):
        rows.append(
            {
                C.CONFIG_HASH: h,
                C.DIFF: c.diff,
                C.DIFF_LO: c.lo,
                C.DIFF_HI: c.hi,
                C.P_VALUE: c.p,
                C.P_HOLM: p_holm,
                C.COMPARISON: c.method,
                C.N_PAIRS: c.n_pairs,
                C.TIED: bool(math.isnan(p_holm) or p_holm >= st.ALPHA),
            }
        )
    return pd.DataFrame(rows)


def standing(runs: pd.DataFrame) -> pd.DataFrame:
    """Who leads and who is still tied with it, from the per-run table alone (config hash, seed,
    test_acc, test size, trainable params, depth label): what an adaptive sweep needs between
    rounds, without the curves."""
    table = (
        runs.groupby(C.CONFIG_HASH)
        .agg(
            **{
                C.TEST_ACC_MEAN: (C.TEST_ACC, "mean"),
                C.N_RUNS: (C.TEST_ACC, "size"),
                C.TRAINABLE_PARAMS: (C.TRAINABLE_PARAMS, "max"),
                C.LABEL: (C.DEPTH_LABEL, "first"),
                C.MAX_SEED: (C.SEED, "max"),
            }
        )
        .reset_index()
    )
    ordered = leader_first(table)
    return ordered.merge(
        compare_with_leader(runs, ordered[C.CONFIG_HASH].tolist()), on=C.CONFIG_HASH
    )


def rank_configs(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Order by test_acc mean (the leader first), compare every configuration with the leader
    (compare_with_leader, over the per-run table `runs`), list the tied ones first, and give
    competition ranks: 1 for the leader and everything tied with it, the row's position for
    the rest (1, 1, 1, 4, 5)."""
    ordered = leader_first(table)
    ordered = ordered.merge(
        compare_with_leader(runs, ordered[C.CONFIG_HASH].tolist()), on=C.CONFIG_HASH
    )
    ordered = ordered.sort_values(C.TIED, ascending=False, kind="stable").reset_index(drop=True)
    position = pd.Series(range(1, len(ordered) + 1))
    ordered[C.RANK] = position.where(~ordered[C.TIED], 1)
    ordered[C.PARETO_TIME] = pareto_front(ordered[C.TEST_ACC_MEAN], ordered[C.TRAIN_TIME_MEAN])
    ordered[C.PARETO_PARAMS] = pareto_front(ordered[C.TEST_ACC_MEAN], ordered[C.TRAINABLE_PARAMS])
    return ordered[C.RANKING_COLUMNS]


def pareto_front(accuracy: pd.Series, cost: pd.Series) -> pd.Series:
    """True where no other configuration is at least as accurate and at most as costly, and better
    in one of the two. A configuration with an unknown cost is not on the front."""
    acc, cost_ = accuracy.to_numpy(float), cost.to_numpy(float)
    known = ~np.isnan(cost_)
    front = []
    for a, c, ok in zip(acc, cost_, known):
        beaten = known & (acc >= a) & (cost_ <= c) & ((acc > a) | (cost_ < c))
        front.append(bool(ok and not beaten.any()))
    return pd.Series(front, index=accuracy.index)


def rank(runs: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """ranking.csv's table from the per-run table and the curves."""
    return rank_configs(aggregate(run_measures(runs, curves)), runs)
