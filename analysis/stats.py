"""The statistics behind every interval and every tie: pure functions on numbers, no MLflow.

- A configuration's 95% interval of test accuracy is the envelope of two intervals, each valid
  under its own model: Student's t over seeds (seed-to-seed variation; each seed also carves its
  own test split) and the Wilson score interval of all its test predictions pooled (the finite
  test set). Agreeing seeds therefore never give a zero-width interval; a single run gets the
  Wilson interval alone. Wilson (1927); Brown, Cai & DasGupta (2001), Statist. Sci. 16:101-133.
  Every interval is clipped to the values it can take: [0, 1] for an accuracy, [-1, 1] for a
  difference of two (a t interval over two far-apart seeds reaches past them otherwise).
- A configuration is compared with the leader by the per-seed difference in test accuracy over
  the seeds both have (paired Student t), or, with fewer than two common seeds, by Welch's
  unequal-variance t over all their runs (a side with a single run borrows the other side's
  seed variance; a single run on each side gives no test). The variance
  of a difference is floored at the binomial variance of the test sets (as if the two
  configurations' errors were independent), so that identical differences never claim
  certainty. p-values are corrected across configurations by Holm's step-down method (Holm
  1979, Scand. J. Statist. 6:65-70).

    python -c "from analysis.stats import wilson_interval; print(wilson_interval(34, 80))"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # the family-wise error rate of the Holm-corrected comparisons
PAIRED, WELCH = "paired t", "Welch t (no common seeds)"
SINGLE = "t, no common seeds, a single run on one side (its seed variance from the other side)"
NO_TEST = "no test: a single run on each side"
MIN_PAIRS = 2  # a paired t needs at least two differences (one degree of freedom)


def wilson_interval(
    correct: float, total: float, confidence: float = CONFIDENCE
) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion correct / total; never zero-width
    for total > 0, and inside [0, 1] (also at 0 and total correct)."""
    if not total > 0:
        return math.nan, math.nan
    z = stats.norm.ppf((1 + confidence) / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def t_half_width(values: Sequence[float], confidence: float = CONFIDENCE) -> float:
    """Half-width of the Student-t interval of the mean; NaN for a single value."""
    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf((1 + confidence) / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n))


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float
    method: str  # which of the two intervals was wider, hence reported


SEEDS, WILSON = "t over seeds", "Wilson, pooled test images"


def clipped(lo: float, hi: float, least: float) -> tuple[float, float]:
    """An interval cut to [least, 1]; NaN stays NaN (max(0.0, nan) would read 0.0)."""
    return float(np.clip(lo, least, 1.0)), float(np.clip(hi, least, 1.0))


def accuracy_interval(accuracies: Sequence[float], test_sizes: Sequence[float]) -> Interval:
    """The 95% interval of a configuration's mean test accuracy (see the module docstring).
    Test sizes may be NaN (runs from before they were recorded): then seeds alone decide."""
    acc, sizes = np.asarray(accuracies, float), np.asarray(test_sizes, float)
    mean, half = float(acc.mean()), t_half_width(acc)
    # an accuracy lies in [0, 1]: two seeds far apart give a t interval reaching past both ends
    t_lo, t_hi = clipped(mean - half, mean + half, 0.0)
    if np.isnan(sizes).any():
        return Interval(t_lo, t_hi, SEEDS)
    correct = float(np.round(acc * sizes).sum())  # accuracies are exact fractions of the test size
    w_lo, w_hi = wilson_interval(correct, float(sizes.sum()))
    if math.isnan(half) or (w_hi - w_lo) >= (t_hi - t_lo):
        return Interval(w_lo, w_hi, WILSON)
    return Interval(t_lo, t_hi, SEEDS)


def binomial_variance(accuracy: float, test_size: float) -> float:
    """Variance of one run's accuracy from its finite test set alone: p(1-p)/n (0 if n unknown)."""
    return 0.0 if not test_size > 0 else accuracy * (1 - accuracy) / test_size


@dataclass(frozen=True)
class Comparison:
    """A configuration against the leader: its mean accuracy minus the leader's."""

    diff: float
    lo: float
    hi: float
    p: float
    method: str
    n_pairs: int  # seeds both have (0 under Welch or normal)


def paired(
    leader: dict[int, tuple[float, float]],
    other: dict[int, tuple[float, float]],
    confidence: float = CONFIDENCE,
) -> Comparison:
    """Compare by seed: {seed: (test_acc, test_size)} of the leader and of another configuration.
    Paired t over the common seeds when there are at least two, else Welch over all runs."""
    common = sorted(set(leader) & set(other))
    if len(common) < MIN_PAIRS:
        return unpaired(
            [a for a, _ in leader.values()],
            [n for _, n in leader.values()],
            [a for a, _ in other.values()],
            [n for _, n in other.values()],
            confidence,
        )
    d = np.array([other[s][0] - leader[s][0] for s in common])
    floor = np.mean([binomial_variance(*leader[s]) + binomial_variance(*other[s]) for s in common])
    variance = max(float(np.var(d, ddof=1)), float(floor))
    return _t_test(float(d.mean()), variance / len(d), len(d) - 1, PAIRED, len(d), confidence)


def unpaired(
    acc_a: Sequence[float],
    size_a: Sequence[float],
    acc_b: Sequence[float],
    size_b: Sequence[float],
    confidence: float = CONFIDENCE,
) -> Comparison:
    """Welch's t for mean(b) - mean(a), each side's variance floored by its binomial variance.
    A single run measures no seed variation: it borrows the other side's sample variance, and
    the test its degrees of freedom; with a single run on each side there is nothing to test."""
    a, b = np.asarray(acc_a, float), np.asarray(acc_b, float)
    diff = float(b.mean() - a.mean())
    if len(a) < 2 and len(b) < 2:
        return Comparison(diff, math.nan, math.nan, math.nan, NO_TEST, 0)
    several = a if len(a) > 1 else b  # a side with seeds to measure their variation on

    def variance_of_mean(acc: np.ndarray, size: Sequence[float]) -> float:
        floor = float(np.mean([binomial_variance(x, n) for x, n in zip(acc, size)]))
        seeds = float(np.var(acc if len(acc) > 1 else several, ddof=1))
        return max(seeds, floor) / len(acc)

    var_a, var_b = variance_of_mean(a, size_a), variance_of_mean(b, size_b)
    se2 = var_a + var_b
    if min(len(a), len(b)) < 2:
        return _t_test(diff, se2, len(several) - 1, SINGLE, 0, confidence)
    df = se2**2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1)) if se2 > 0 else math.inf
    return _t_test(diff, se2, df, WELCH, 0, confidence)


def _t_test(
    diff: float, se2: float, df: float, method: str, n_pairs: int, confidence: float
) -> Comparison:
    """Two-sided test of a zero difference and the interval of the difference."""
    if not se2 > 0:  # no variance at all (test sizes unknown and seeds agree): nothing to test
        return Comparison(diff, math.nan, math.nan, math.nan, method, n_pairs)
    se = math.sqrt(se2)
    dist = stats.norm if math.isinf(df) else stats.t(df)
    q = dist.ppf((1 + confidence) / 2)
    p = float(2 * dist.sf(abs(diff) / se))
    # a difference of two accuracies lies in [-1, 1], whatever the normal approximation says
    lo, hi = clipped(diff - q * se, diff + q * se, -1.0)
    return Comparison(diff, lo, hi, p, method, n_pairs)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order; NaN stays NaN and is not counted.
    With m p-values sorted p(1) <= ... <= p(m): adj(i) = max over j <= i of min(1, (m - j + 1) p(j))."""
    p = np.asarray(p_values, float)
    known = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    running, m = 0.0, len(known)
    for rank, index in enumerate(known[np.argsort(p[known], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()
