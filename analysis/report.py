"""What the numbers say, in words and tables: the winner or the tie, a plain-language answer to
the study's question built only from the ranking, report.md, and the terminal table.

    python -c "import pandas as pd; from analysis.report import markdown_table; \
print(markdown_table(pd.DataFrame({'a': [1.5], 'b': ['x']})))"
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis import columns as C
from analysis import stats as st
from analysis.plots import COST, CURVES, DEPTH, FREEZE
from analysis.rank import CONVERGENCE_FRACTION
from analysis.study import SERIES, Study, series_name, weights_note
from resnet_exp import schema as S

# {frozen}: how the frozen stages got their weights (Study.frozen_stages_clause), so that a study
# from random weights does not claim to be about transfer
QUESTION = (
    "How does the depth of a ResNet (its block type, how many residual blocks it has, and how "
    "many of its stages are frozen{frozen}) change how fast and how well it learns?"
)
FEW_SEEDS = 3  # below this many runs per configuration, the answer warns that intervals are wide
INTERVAL, DIFF_SHOWN = "_interval", "_diff"  # formatted columns of the shown table
# A configuration whose accuracy interval does not lie above chance: "did not learn" where its
# mean accuracy is at or below chance too, else (a mean above it, an interval too wide to tell
# with these seeds) "not above chance". Neither is ever called fast or slow to converge.
DID_NOT_LEARN, NOT_SHOWN = "did not learn", "not above chance"
EPOCHS_SHOWN = ("epochs to 95%", "± std")  # convergence cells, meaningless where nothing learned

# The table shown in the terminal and in report.md: (column, heading, format)
SHOWN = [
    (C.RANK, "rank", "{}"),
    (C.LABEL, "config", "{}"),
    (C.N_RUNS, "n", "{}"),
    (C.TEST_ACC_MEAN, "test_acc", "{:.4f}"),
    (INTERVAL, "95% interval", "{}"),
    (DIFF_SHOWN, "− leader [95%]", "{}"),
    (C.P_HOLM, "p (Holm)", "{:.3g}"),
    (C.BEST_VAL_ACC_MEAN, "best val_acc", "{:.4f}"),
    (C.EPOCHS_TO_95_MEAN, "epochs to 95%", "{:.1f}"),
    (C.EPOCHS_TO_95_STD, "± std", "{:.1f}"),
    (C.VAL_ACC_AUC_MEAN, "val_acc AUC", "{:.4f}"),
    (C.EPOCH_TIME_MEAN, "epoch s", "{:.1f}"),
    (C.TRAIN_TIME_MEAN, "train s", "{:.0f}"),
    (C.TRAINABLE_PARAMS, "trainable params", "{:,.0f}"),
    (C.TIED, "tied", "{}"),
    (C.PARETO_TIME, "front: time", "{}"),
    (C.PARETO_PARAMS, "front: params", "{}"),
]


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    return fmt.format(value)


def shown_table(ranking: pd.DataFrame) -> pd.DataFrame:
    """The ranking's main columns as formatted text; the initial weights too where they differ,
    since the config label alone does not tell an ImageNet row from a random one."""
    shown = (
        SHOWN
        if ranking[C.WEIGHTS].nunique() < 2
        else [*SHOWN[:2], (C.WEIGHTS, C.WEIGHTS, "{}"), *SHOWN[2:]]
    )
    ranking = ranking.assign(
        **{
            INTERVAL: [
                f"{lo:.3f}–{hi:.3f}" if not math.isnan(lo) else math.nan
                for lo, hi in zip(ranking[C.TEST_ACC_LO], ranking[C.TEST_ACC_HI])
            ],
            DIFF_SHOWN: [
                f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" if not math.isnan(lo) else math.nan
                for d, lo, hi in zip(ranking[C.DIFF], ranking[C.DIFF_LO], ranking[C.DIFF_HI])
            ],
        }
    )
    table = pd.DataFrame(
        {heading: [_cell(v, fmt) for v in ranking[col].tolist()] for col, heading, fmt in shown}
    )
    for i, row in enumerate(ranking.to_dict("records")):
        if not row[C.BEATS_CHANCE]:
            table.loc[i, EPOCHS_SHOWN[0]], table.loc[i, EPOCHS_SHOWN[1]] = _not_learned(row), "–"
    return table


def _not_learned(row) -> str:
    """How a configuration that does not beat chance is named (see DID_NOT_LEARN): its mean
    compared with chance as the report prints them, to 3 decimals."""
    return NOT_SHOWN if _above_chance(row[C.TEST_ACC_MEAN], row[C.CHANCE]) else DID_NOT_LEARN


def _above_chance(mean: float, chance: float) -> bool:
    return round(mean, 3) > round(chance, 3)


def preview_table(ranking: pd.DataFrame) -> pd.DataFrame:
    """The shown table for MLflow's table viewer, which fits about four columns beside its file
    tree: rank, config, test_acc and its interval first."""
    table = shown_table(ranking)
    first = ["rank", "config", "test_acc", "95% interval"]
    return table[first + [c for c in table.columns if c not in first]]


def format_ranking(ranking: pd.DataFrame) -> str:
    """The ranking as aligned text for the terminal."""
    return shown_table(ranking).to_string(index=False)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of the frame's cells as text."""

    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    rows = [line(table.columns), line("---" for _ in table.columns)]
    return "\n".join(rows + [line(r) for r in table.itertuples(index=False)])


# --- the answer ------------------------------------------------------------------------------------


def accuracy_text(row: pd.Series) -> str:
    """'0.861 (95% interval 0.790–0.920, n=2)'; 'no interval' only where the runs recorded
    neither a second seed nor their test size."""
    runs = "one run" if row[C.N_RUNS] == 1 else f"n={row[C.N_RUNS]}"
    if math.isnan(row[C.TEST_ACC_LO]):
        return f"{row[C.TEST_ACC_MEAN]:.3f} ({runs}, no interval)"
    return f"{row[C.TEST_ACC_MEAN]:.3f} (95% interval {row[C.TEST_ACC_LO]:.3f}–{row[C.TEST_ACC_HI]:.3f}, {runs})"


def _names(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def verdict(ranking: pd.DataFrame) -> str:
    """'Winner: b2222-f2 (...)' or 'A tie between b2222-f2 and b1111-f3 (...)'."""
    tied, leader = ranking[ranking[C.TIED]], ranking[C.LABEL].iloc[0]
    if len(tied) > 1 and (tied[C.COMPARISON].iloc[1:] == st.NO_TEST).all():
        return (
            f"A tie between {_names(tied[C.LABEL].tolist())} (a single run of each: no test can "
            f"tell them from the leader, {leader})"
        )
    if len(tied) == 1:
        return (
            f"Winner: {leader} (every other configuration's difference from it is significant: "
            f"Holm-corrected tests at {st.ALPHA:.0%})"
        )
    return (
        f"A tie between {_names(tied[C.LABEL].tolist())} (the Holm-corrected test of each one's "
        f"difference from the leader, {leader}, does not reject zero at {st.ALPHA:.0%})"
    )


def _leader_sentence(ranking: pd.DataFrame) -> str:
    leader, tied = ranking.iloc[0], ranking[ranking[C.TIED]].iloc[1:]
    text = f"{leader[C.LABEL]} has the highest mean test accuracy, {accuracy_text(leader)}"
    if tied.empty:
        return (
            text + ", and every other configuration is significantly below it (Holm-corrected "
            "p < 0.05), so it is the single winner."
        )
    differences = ", ".join(
        f"{row[C.LABEL]} {row[C.DIFF]:+.3f} (p_holm {row[C.P_HOLM]:.2g}, {row[C.COMPARISON]})"
        for _, row in tied.iterrows()
    )
    return (
        text + f"; {_names(tied[C.LABEL].tolist())} cannot be told apart from it (differences "
        f"from the leader: {differences}), so these are tied. A tie means the data cannot "
        "order them, not that they are equal."
    )


def chance_sentence(ranking: pd.DataFrame) -> str:
    """Which configurations did not learn: their 95% interval does not lie above chance."""
    stuck = ranking[~ranking[C.BEATS_CHANCE].astype(bool)]
    if stuck.empty:
        return ""
    chance = f"chance ({stuck[C.CHANCE].iloc[0]:.3f}, guessing among the classes)"
    if len(stuck) == len(ranking):
        return (
            f"No configuration learned: the lower end of every 95% interval is at or below "
            f"{chance}, so their epochs to converge say nothing of speed."
        )
    sentences = []
    for name, rows in (
        (DID_NOT_LEARN, stuck[[_not_learned(r) == DID_NOT_LEARN for _, r in stuck.iterrows()]]),
        (
            "are not shown to beat chance",
            stuck[[_not_learned(r) == NOT_SHOWN for _, r in stuck.iterrows()]],
        ),
    ):
        if rows.empty:
            continue
        one = len(rows) == 1
        verb = name if name == DID_NOT_LEARN else ("is" if one else "are") + name[3:]
        sentences.append(
            f"{_names(rows[C.LABEL].tolist())} {verb}: the lower end of "
            f"{'its' if one else 'their'} 95% interval is at or below {chance}."
        )
    return " ".join(sentences)


def _trend_sentences(ranking: pd.DataFrame) -> list[str]:
    """The dials of depth, each turned with the others held fixed, and never across
    initialisations (a random and an ImageNet start differ in more than depth)."""
    return [*_freeze_sentences(ranking), *_size_sentences(ranking), *_block_type_sentences(ranking)]


def _freeze_sentences(ranking: pd.DataFrame) -> list[str]:
    """Per network, from the fewest to the most frozen stages."""
    sentences = []
    for (network, weights), g in ranking.groupby(SERIES, sort=True):
        if g[C.FREEZE_BLOCKS].nunique() >= 2:
            lo, hi = g.loc[g[C.FREEZE_BLOCKS].idxmin()], g.loc[g[C.FREEZE_BLOCKS].idxmax()]
            sentences.append(
                f"With the {series_name(ranking, network, weights)} network, freezing "
                f"{hi[C.FREEZE_BLOCKS]} stages instead of {lo[C.FREEZE_BLOCKS]} "
                f"{_change(lo, hi)}."
            )
    return sentences


def _size_sentences(ranking: pd.DataFrame) -> list[str]:
    """Per frozen stages and block type, from the fewest to the most residual blocks."""
    sentences, sizes = [], ranking[C.BLOCKS].map(lambda b: sum(int(n) for n in b.split(",")))
    for (freeze, block, weights), g in ranking.assign(_size=sizes).groupby(
        [C.FREEZE_BLOCKS, C.BLOCK, C.WEIGHTS], sort=True
    ):
        if g[C.BLOCKS].nunique() >= 2:
            lo, hi = g.loc[g["_size"].idxmin()], g.loc[g["_size"].idxmax()]
            sentences.append(
                f"With {freeze} frozen stages and {block} blocks{weights_note(ranking, weights)}, "
                f"{hi['_size']} residual blocks ({hi[C.BLOCKS]}) instead of {lo['_size']} "
                f"({lo[C.BLOCKS]}) {_change(lo, hi)}."
            )
    return sentences


def _block_type_sentences(ranking: pd.DataFrame) -> list[str]:
    """Per blocks list and frozen stages, basic against bottleneck blocks."""
    sentences = []
    for (blocks, freeze, weights), g in ranking.groupby(
        [C.BLOCKS, C.FREEZE_BLOCKS, C.WEIGHTS], sort=True
    ):
        if g[C.BLOCK].nunique() >= 2:
            # 'basic' < 'bottleneck'
            lo, hi = (
                g.loc[g[C.BLOCK].idxmin()],
                g.loc[g[C.BLOCK].idxmax()],
            )
            sentences.append(
                f"With blocks {blocks} and {freeze} frozen stages{weights_note(ranking, weights)}, "
                f"{hi[C.BLOCK]} blocks instead of {lo[C.BLOCK]} {_change(lo, hi)}."
            )
    return sentences


def _change(lo: pd.Series, hi: pd.Series) -> str:
    """What changes from configuration `lo` to `hi`: accuracy, convergence and epoch time.
    Convergence only where both learned: a network stuck at chance reaches 95% of its own
    (chance-level) best at once, which is no speed."""
    moves = (
        f"moves test accuracy from {lo[C.TEST_ACC_MEAN]:.3f} to {hi[C.TEST_ACC_MEAN]:.3f}"
        f"{_difference_caveat(lo, hi)}"
    )
    seconds = (
        f"the mean epoch time from {lo[C.EPOCH_TIME_MEAN]:.1f} s to {hi[C.EPOCH_TIME_MEAN]:.1f} s"
    )
    stuck = [f"{row[C.LABEL]} {_not_learned(row)}" for row in (lo, hi) if not row[C.BEATS_CHANCE]]
    if stuck:
        return (
            f"{moves} and {seconds}; {' and '.join(stuck)} (test accuracy interval not above "
            f"chance, {lo[C.CHANCE]:.3f}), so no convergence speed is compared"
        )
    return (
        f"{moves}, epochs to {CONVERGENCE_FRACTION:.0%} of the best val_acc from "
        f"{lo[C.EPOCHS_TO_95_MEAN]:.1f} to {hi[C.EPOCHS_TO_95_MEAN]:.1f}, and {seconds}"
    )


def _difference_caveat(a: pd.Series, b: pd.Series) -> str:
    """Whether the two configurations' accuracies can be told apart at all (by their intervals:
    only the comparisons with the leader are tested)."""
    if min(a[C.N_RUNS], b[C.N_RUNS]) == 1:
        return " (one of them is a single run, so this is no evidence of a difference)"
    if (
        math.isnan(a[C.TEST_ACC_LO])
        or math.isnan(b[C.TEST_ACC_LO])
        or a[C.TEST_ACC_HI] < b[C.TEST_ACC_LO]
        or b[C.TEST_ACC_HI] < a[C.TEST_ACC_LO]
    ):
        return ""
    return " (the intervals overlap, so this is not a clear difference)"


def _cheapest_sentences(ranking: pd.DataFrame) -> list[str]:
    leader, sentences = ranking.iloc[0], []
    if not leader[C.BEATS_CHANCE]:
        return []  # cheaper ways of not learning are no trade-off
    for flag, cost, unit, front_name in (
        (C.PARETO_TIME, C.TRAIN_TIME_MEAN, "s of training", "training time"),
        (C.PARETO_PARAMS, C.TRAINABLE_PARAMS, "trainable parameters", "trainable parameters"),
    ):
        front = ranking[ranking[flag] & ranking[C.BEATS_CHANCE].astype(bool)]
        if front.empty:
            continue
        cheap = front.loc[front[cost].idxmin()]
        if cheap[C.CONFIG_HASH] == leader[C.CONFIG_HASH]:
            sentences.append(
                f"The leader is also the cheapest in {front_name} ({cheap[cost]:,.0f} {unit})."
            )
            continue
        sentences.append(
            f"The cheapest configuration on the front of accuracy against {front_name} is "
            f"{cheap[C.LABEL]}: {cheap[cost]:,.0f} {unit} against the leader's {leader[cost]:,.0f}, "
            f"for {leader[C.TEST_ACC_MEAN] - cheap[C.TEST_ACC_MEAN]:.3f} less mean test accuracy."
        )
    return sentences


def _caveat(ranking: pd.DataFrame) -> str:
    fewest = int(ranking[C.N_RUNS].min())
    if fewest >= FEW_SEEDS:
        return ""
    if fewest == 1:
        return (
            "With a single run for the least-sampled configuration, its interval covers only its "
            "test set, not seed-to-seed variation, so small differences here are not evidence; "
            "more seeds (resnet-exp sweep --seeds auto) would sharpen the ranking."
        )
    return (
        f"With only {fewest} seeds for the least-sampled configuration, the intervals are wide, "
        "so small differences here are not evidence; more seeds (resnet-exp sweep --seeds auto) "
        "would sharpen the ranking."
    )


def answer(ranking: pd.DataFrame, dataset: str) -> str:
    """One paragraph answering the study's question from the ranking's numbers only."""
    parts = [
        f"On {dataset}, {_leader_sentence(ranking)}",
        chance_sentence(ranking),
        *_trend_sentences(ranking),
        *_cheapest_sentences(ranking),
        _caveat(ranking),
    ]
    return " ".join(p for p in parts if p)


# --- report.md -----------------------------------------------------------------------------------


def shared_label_notes(
    ranking: pd.DataFrame, params_by_hash: dict[str, dict[str, str]]
) -> list[str]:
    """A note per depth configuration that appears as several rows, naming the params that differ."""
    notes = []
    for label, g in ranking.groupby(C.DEPTH_LABEL):
        if len(g) < 2:
            continue
        params = [params_by_hash.get(h, {}) for h in g[C.CONFIG_HASH]]
        keys = sorted(
            {k for p in params for k in p if k != C.SEED and len({q.get(k) for q in params}) > 1}
        )
        notes.append(
            f"{label} appears as {len(g)} rows (config hashes {', '.join(g[C.CONFIG_HASH])}): "
            f"its runs differ in {', '.join(keys) or 'parameters not logged'}, so they are "
            "ranked separately."
        )
    return notes


DEFINITIONS = f"""\
- **test_acc**: mean over seeds. **95% interval**: the wider of two intervals, so that it never
  claims more certainty than either source of noise allows: the Student-t interval over seeds,
  mean ± t(0.975, n-1) · std / √n (seed-to-seed variation; `{C.TEST_ACC_SEED_CI}` in ranking.csv),
  and the Wilson score interval of all the configuration's test predictions pooled (the finite
  test set; Wilson 1927, recommended by Brown, Cai & DasGupta 2001, *Statistical Science*
  16:101-133). Seeds that agree exactly therefore still get a width; a single run gets the
  Wilson interval alone. `{C.TEST_ACC_INTERVAL}` says which one was wider.
- **− leader [95%]**: this configuration's test_acc minus the leader's, as the mean of the
  per-seed differences over the seeds both have (every configuration of a seed sees the same
  split and the same data order, so the runs are paired), with its paired Student-t 95% interval
  and two-sided p-value. With fewer than two common seeds it is Welch's unequal-variance t over
  all runs of the two (a single run borrows the other side's seed variance; one run on each
  side gives no test), and `{C.COMPARISON}` says so. The variance of a difference is never
  taken below the binomial variance of the two test sets, p(1-p)/n each, so that identical
  differences do not claim certainty.
- **p (Holm)**: the p-values of the comparisons with the leader, adjusted by Holm's step-down
  method (Holm 1979, *Scand. J. Statist.* 6:65-70), which keeps the chance of any false "not
  tied" at most {st.ALPHA:.0%} across all of them.
- **rank / tied**: the leader has the highest test_acc mean (equal means: fewer trainable
  parameters first). **Tied with the leader** means the Holm-corrected test does not reject a
  zero difference at {st.ALPHA:.0%} (p (Holm) ≥ {st.ALPHA:.2g}), or no test can be made. Tied rows share
  rank 1 and come first, then the rest by test_acc mean, ranked by their position (1, 1, 1, 4, 5).
- **epochs to 95%**: epochs trained until val_acc first reached {CONVERGENCE_FRACTION:.0%} of that run's
  best val_acc (convergence speed; lower is faster). A count: 1 means after the first epoch,
  which the plots number 0.
- **val_acc AUC**: trapezoid area under the val_acc curve over epochs, divided by the epochs
  spanned: the curve's average height, in [0, 1] (a one-epoch run: its value).
- **epoch s / train s**: mean epoch time and total time of all epochs (validation included),
  per run, then averaged over seeds.
- **plots**: epochs count from 0, as in MLflow and TensorBoard; the dotted **chance** line is
  1 / number of classes, the accuracy of guessing (drawn when the runs recorded `{C.NUM_CLASSES}`).
- **did not learn** / **not above chance**: the lower end of the configuration's 95% interval of
  test_acc is at or below chance, 1 / number of classes (`{C.BEATS_CHANCE}` false and `{C.CHANCE}`
  in ranking.csv; a single run without its test size: its test_acc); "did not learn" where its
  mean is at or below chance too, "not above chance" where the mean is above it but the seeds
  cannot show it. Its accuracy is no evidence that it learned, so its epochs to 95% are no
  convergence speed and are shown as either phrase.
- **front**: on the Pareto front of test_acc mean against total training time, or against
  trainable parameters: no other configuration is at least as accurate and at most as costly.
"""


def seeds_per_configuration(ranking: pd.DataFrame) -> str:
    """'3 seeds for every configuration' or 'from 3 to 5 seeds per configuration (b2222-f2: 5, ...)'."""
    counts = ranking[C.N_RUNS].astype(int)
    if counts.nunique() == 1:
        return f"{counts.iloc[0]} seed{'s' if counts.iloc[0] > 1 else ''} for every configuration"
    each = ", ".join(f"{label}: {n}" for label, n in zip(ranking[C.LABEL], counts))
    return f"from {counts.min()} to {counts.max()} seeds per configuration ({each})"


def limits(ranking: pd.DataFrame, study: Study) -> str:
    """The data, the initialisation, the test images and the seeds behind the numbers, and what
    they support."""
    images = ranking[C.TEST_IMAGES].dropna()
    per_run = (
        f"{int(images.iloc[0]):,} test images per run"
        if images.nunique() == 1
        else "test sets of different sizes"
        if len(images)
        else "an unrecorded number of test images"
    )
    # the binomial standard error of one run's accuracy near its mean: the finest difference one run resolves
    resolution = (
        f" One run's accuracy on {int(images.iloc[0])} images has a standard error of about "
        f"{math.sqrt(0.25 / images.iloc[0]):.3f} at 50% accuracy from the test set alone."
        if images.nunique() == 1
        else ""
    )
    return "\n".join(
        f"- {line}"
        for line in [
            study.description(),
            f"Evidence: {per_run}, {seeds_per_configuration(ranking)}.{resolution}",
            "Can conclude: which configurations are significantly below the best one on this dataset, "
            "at these settings (image size, epochs, learning rate), with a 5% chance of any false "
            "such claim across the comparisons with the leader.",
            "Cannot conclude: that tied configurations are equal (a tie is a lack of evidence, and more "
            "seeds may resolve it); the order among configurations that are not the leader (only the "
            "comparisons with the leader are tested; the trend sentences above compare intervals, a "
            "weaker check); anything about other datasets, image sizes or training lengths.",
        ]
    )


def render(
    ranking: pd.DataFrame,
    *,
    study: Study,
    experiment: str,
    sweep_run_id: str,
    n_runs: int,
    excluded: dict[str, int],
    notes: list[str],
    class_section: str = "",
    extra_plots: tuple[str, ...] = (),
) -> str:
    """report.md: what was read and compared, the verdict, the answer, the table, the classes
    that freezing moves most, the plots (the four, then `extra_plots` under plots/)."""
    scope = f"the runs of sweep run `{sweep_run_id}`" if sweep_run_id else "every training run"
    left_out = ", ".join(f"{n} {reason}" for reason, n in excluded.items()) or "none"
    question = QUESTION.format(frozen=study.frozen_stages_clause())
    sections = [
        f"# Ranking of depth configurations on {study.dataset}",
        f"Read {scope} in experiment `{experiment}`: {n_runs} runs used, {len(ranking)} configurations. "
        f"Runs excluded: {sum(excluded.values())} ({left_out}).",
        study.description(),
        f"**{verdict(ranking)}.**",
        f"## The answer\n\n*{question}*\n\n{answer(ranking, study.dataset)}",
        "## Ranking\n\n" + markdown_table(shown_table(ranking)) + "\n\nAll columns: `ranking.csv`.",
        *(["## Notes\n\n" + "\n".join(f"- {n}" for n in notes)] if notes else []),
        *(["## Classes that freezing moves most\n\n" + class_section] if class_section else []),
        "## What these numbers can and cannot conclude\n\n" + limits(ranking, study),
        "## Definitions\n\n" + DEFINITIONS,
        "## Plots\n\n"
        + "\n\n".join(
            f"![{Path(name).stem}]({S.PLOTS_FOLDER}/{name})"
            for name in (CURVES, FREEZE, DEPTH, COST, *extra_plots)
        ),
    ]
    return "\n\n".join(sections) + "\n"
