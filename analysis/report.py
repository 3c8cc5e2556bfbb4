"""What the numbers say, in words and tables: the winner or the tie, a plain-language answer to
the study's question built only from the ranking, report.md, and the terminal table.

    python -c "import pandas as pd; from analysis.report import markdown_table; print(markdown_table(pd.DataFrame({'a': [1.5], 'b': ['x']})))"
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from analysis import columns as C
from analysis.plots import COST, CURVES, DEPTH, FREEZE
from analysis.rank import CONVERGENCE_FRACTION
from analysis.study import SERIES, Study, series_name, weights_note
from resnet_exp import schema as S

# {frozen}: how the frozen stages got their weights (Study.frozen_stages_clause), so that a study
# from random weights does not claim to be about transfer
QUESTION = ("How does the depth of a ResNet (its block type, how many residual blocks it has, and how "
            "many of its stages are frozen{frozen}) change how fast and how well it learns?")
FEW_SEEDS = 3  # below this many runs per configuration, the answer warns that intervals are wide

# The table shown in the terminal and in report.md: (column, heading, format)
SHOWN = [(C.RANK, "rank", "{}"), (C.LABEL, "config", "{}"), (C.N_RUNS, "n", "{}"),
         (C.TEST_ACC_MEAN, "test_acc", "{:.4f}"), (C.TEST_ACC_CI, "± 95% CI", "{:.4f}"),
         (C.BEST_VAL_ACC_MEAN, "best val_acc", "{:.4f}"), (C.EPOCHS_TO_95_MEAN, "epochs to 95%", "{:.1f}"),
         (C.EPOCHS_TO_95_STD, "± std", "{:.1f}"), (C.VAL_ACC_AUC_MEAN, "val_acc AUC", "{:.4f}"),
         (C.EPOCH_TIME_MEAN, "epoch s", "{:.1f}"), (C.TRAIN_TIME_MEAN, "train s", "{:.0f}"),
         (C.TRAINABLE_PARAMS, "trainable params", "{:,.0f}"), (C.TIED, "tied", "{}"),
         (C.PARETO_TIME, "front: time", "{}"), (C.PARETO_PARAMS, "front: params", "{}")]


def _cell(value, fmt: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else ""
    return fmt.format(value)


def shown_table(ranking: pd.DataFrame) -> pd.DataFrame:
    """The ranking's main columns as formatted text; the initial weights too where they differ,
    since the config label alone does not tell an ImageNet row from a random one."""
    shown = SHOWN if ranking[C.WEIGHTS].nunique() < 2 else [*SHOWN[:2], (C.WEIGHTS, C.WEIGHTS, "{}"),
                                                            *SHOWN[2:]]
    return pd.DataFrame({heading: [_cell(v, fmt) for v in ranking[col].tolist()]
                         for col, heading, fmt in shown})


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


def _acc(row: pd.Series) -> str:
    """'0.861 ± 0.127 (n=2)', or '0.861 (one run, no interval)'."""
    if math.isnan(row[C.TEST_ACC_CI]):
        return f"{row[C.TEST_ACC_MEAN]:.3f} (one run, no interval)"
    return f"{row[C.TEST_ACC_MEAN]:.3f} ± {row[C.TEST_ACC_CI]:.3f} (n={row[C.N_RUNS]})"


def _names(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def verdict(ranking: pd.DataFrame) -> str:
    """'Winner: b2222-f2' or 'A tie between b2222-f2 and b1111-f3 ...'."""
    tied = ranking[ranking[C.TIED]]
    if len(tied) == 1:
        return f"Winner: {tied[C.LABEL].iloc[0]} (no other configuration's 95% interval overlaps its own)"
    single = tied[C.TEST_ACC_CI].isna()
    why = [f"95% intervals overlapping the leader's ({tied[C.LABEL].iloc[0]})"]
    if single.any():
        why.append(f"a single run, hence no interval: {_names(tied[single][C.LABEL].tolist())}")
    return f"A tie between {_names(tied[C.LABEL].tolist())} ({'; '.join(why)})"


def _leader_sentence(ranking: pd.DataFrame) -> str:
    leader, tied = ranking.iloc[0], ranking[ranking[C.TIED]].iloc[1:]
    text = f"{leader[C.LABEL]} has the highest mean test accuracy, {_acc(leader)}"
    if tied.empty:
        return text + ", and no other configuration's interval reaches it, so it is the single winner."
    return (text + f"; {_names(tied[C.LABEL].tolist())} cannot be told apart from it (intervals overlap, "
            "or a single run has none), so these are tied.")


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
            sentences.append(f"With the {series_name(ranking, network, weights)} network, freezing "
                             f"{hi[C.FREEZE_BLOCKS]} stages instead of {lo[C.FREEZE_BLOCKS]} "
                             f"{_change(lo, hi)}.")
    return sentences


def _size_sentences(ranking: pd.DataFrame) -> list[str]:
    """Per frozen stages and block type, from the fewest to the most residual blocks."""
    sentences, sizes = [], ranking[C.BLOCKS].map(lambda b: sum(int(n) for n in b.split(",")))
    for (freeze, block, weights), g in ranking.assign(_size=sizes).groupby(
            [C.FREEZE_BLOCKS, C.BLOCK, C.WEIGHTS], sort=True):
        if g[C.BLOCKS].nunique() >= 2:
            lo, hi = g.loc[g["_size"].idxmin()], g.loc[g["_size"].idxmax()]
            sentences.append(f"With {freeze} frozen stages and {block} blocks{weights_note(ranking, weights)}, "
                             f"{hi['_size']} residual blocks ({hi[C.BLOCKS]}) instead of {lo['_size']} "
                             f"({lo[C.BLOCKS]}) {_change(lo, hi)}.")
    return sentences


def _block_type_sentences(ranking: pd.DataFrame) -> list[str]:
    """Per blocks list and frozen stages, basic against bottleneck blocks."""
    sentences = []
    for (blocks, freeze, weights), g in ranking.groupby([C.BLOCKS, C.FREEZE_BLOCKS, C.WEIGHTS], sort=True):
        if g[C.BLOCK].nunique() >= 2:
            lo, hi = g.loc[g[C.BLOCK].idxmin()], g.loc[g[C.BLOCK].idxmax()]  # 'basic' < 'bottleneck'
            sentences.append(f"With blocks {blocks} and {freeze} frozen stages{weights_note(ranking, weights)}, "
                             f"{hi[C.BLOCK]} blocks instead of {lo[C.BLOCK]} {_change(lo, hi)}.")
    return sentences


def _change(lo: pd.Series, hi: pd.Series) -> str:
    """What changes from configuration `lo` to `hi`: accuracy, convergence and epoch time."""
    return (f"moves test accuracy from {lo[C.TEST_ACC_MEAN]:.3f} to {hi[C.TEST_ACC_MEAN]:.3f}"
            f"{_difference_caveat(lo, hi)}, epochs to {CONVERGENCE_FRACTION:.0%} of the best val_acc "
            f"from {lo[C.EPOCHS_TO_95_MEAN]:.1f} to {hi[C.EPOCHS_TO_95_MEAN]:.1f}, and the mean epoch "
            f"time from {lo[C.EPOCH_TIME_MEAN]:.1f} s to {hi[C.EPOCH_TIME_MEAN]:.1f} s")


def _difference_caveat(a: pd.Series, b: pd.Series) -> str:
    """Whether the two configurations' accuracies can be told apart at all."""
    if math.isnan(a[C.TEST_ACC_CI]) or math.isnan(b[C.TEST_ACC_CI]):
        return " (one of them is a single run, so this is no evidence of a difference)"
    if a[C.TEST_ACC_HI] < b[C.TEST_ACC_LO] or b[C.TEST_ACC_HI] < a[C.TEST_ACC_LO]:
        return ""
    return " (the intervals overlap, so this is not a clear difference)"


def _cheapest_sentences(ranking: pd.DataFrame) -> list[str]:
    leader, sentences = ranking.iloc[0], []
    for flag, cost, unit, front_name in (
            (C.PARETO_TIME, C.TRAIN_TIME_MEAN, "s of training", "training time"),
            (C.PARETO_PARAMS, C.TRAINABLE_PARAMS, "trainable parameters", "trainable parameters")):
        front = ranking[ranking[flag]]
        if front.empty:
            continue
        cheap = front.loc[front[cost].idxmin()]
        if cheap[C.CONFIG_HASH] == leader[C.CONFIG_HASH]:
            sentences.append(f"The leader is also the cheapest in {front_name} "
                             f"({cheap[cost]:,.0f} {unit}).")
            continue
        sentences.append(
            f"The cheapest configuration on the front of accuracy against {front_name} is "
            f"{cheap[C.LABEL]}: {cheap[cost]:,.0f} {unit} against the leader's {leader[cost]:,.0f}, "
            f"for {leader[C.TEST_ACC_MEAN] - cheap[C.TEST_ACC_MEAN]:.3f} less mean test accuracy.")
    return sentences


def _caveat(ranking: pd.DataFrame) -> str:
    fewest = int(ranking[C.N_RUNS].min())
    if fewest >= FEW_SEEDS:
        return ""
    runs = "a single run" if fewest == 1 else f"only {fewest} seeds"
    return (f"With {runs} for the least-sampled configuration, the intervals are wide (or missing), "
            "so small differences here are not evidence; more seeds would sharpen the ranking.")


def answer(ranking: pd.DataFrame, dataset: str) -> str:
    """One paragraph answering the study's question from the ranking's numbers only."""
    parts = [f"On {dataset}, {_leader_sentence(ranking)}", *_trend_sentences(ranking),
             *_cheapest_sentences(ranking), _caveat(ranking)]
    return " ".join(p for p in parts if p)


# --- report.md -----------------------------------------------------------------------------------


def shared_label_notes(ranking: pd.DataFrame, params_by_hash: dict[str, dict[str, str]]) -> list[str]:
    """A note per depth configuration that appears as several rows, naming the params that differ."""
    notes = []
    for label, g in ranking.groupby(C.DEPTH_LABEL):
        if len(g) < 2:
            continue
        params = [params_by_hash.get(h, {}) for h in g[C.CONFIG_HASH]]
        keys = sorted({k for p in params for k in p if k != C.SEED and len({q.get(k) for q in params}) > 1})
        notes.append(f"{label} appears as {len(g)} rows (config hashes {', '.join(g[C.CONFIG_HASH])}): "
                     f"its runs differ in {', '.join(keys) or 'parameters not logged'}, so they are "
                     "ranked separately.")
    return notes


DEFINITIONS = f"""\
- **test_acc**: mean over seeds; **± 95% CI** is the Student-t half-width t(0.975, n-1) · std / √n
  (none for a single run).
- **rank / tied**: the leader has the highest test_acc mean (equal means: fewer trainable
  parameters first); a configuration whose interval overlaps the leader's (or that has a single
  run, hence no interval) is tied with it and shares rank 1. Tied rows come first, then the rest
  by test_acc mean, ranked by their position (1, 1, 1, 4, 5).
- **epochs to 95%**: epochs trained until val_acc first reached {CONVERGENCE_FRACTION:.0%} of that run's
  best val_acc (convergence speed; lower is faster). A count: 1 means after the first epoch,
  which the plots number 0.
- **val_acc AUC**: trapezoid area under the val_acc curve over epochs, divided by the epochs
  spanned: the curve's average height, in [0, 1] (a one-epoch run: its value).
- **epoch s / train s**: mean epoch time and total time of all epochs (validation included),
  per run, then averaged over seeds.
- **plots**: epochs count from 0, as in MLflow and TensorBoard; the dotted **chance** line is
  1 / number of classes, the accuracy of guessing (drawn when the runs recorded `{C.NUM_CLASSES}`).
- **front**: on the Pareto front of test_acc mean against total training time, or against
  trainable parameters: no other configuration is at least as accurate and at most as costly.
"""


def render(ranking: pd.DataFrame, *, study: Study, experiment: str, sweep_run_id: str, n_runs: int,
           excluded: dict[str, int], notes: list[str]) -> str:
    """report.md: what was read and compared, the verdict, the answer, the table, the plots."""
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
        "## Definitions\n\n" + DEFINITIONS,
        "## Plots\n\n" + "\n\n".join(f"![{Path(name).stem}]({S.PLOTS_FOLDER}/{name})"
                                     for name in (CURVES, FREEZE, DEPTH, COST)),
    ]
    return "\n\n".join(sections) + "\n"
