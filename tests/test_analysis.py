"""Analysis: the ranking maths on runs logged through the MLflow API with known metric histories
(means, intervals, convergence epoch, AUC, ties, Pareto fronts, exclusions), sweep selection by
sweep.json, the files and the MLflow run it writes, and the errors a user can fix.

One SQLite store is built per module (creating a store costs seconds) and copied for each test,
so every test starts from the same runs and its own analysis runs stay its own."""

from __future__ import annotations

import base64
import hashlib
import io
import math
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from PIL import Image

from analysis import AnalysisConfig, analyze, format_ranking, plots, rank, runs
from analysis import columns as C
from analysis import stats as st
from analysis.plots import PLOT_FILES
from conftest import REPO, mlflow_table, new_store, saved_view, subprocess_env
from resnet_exp import schema as S
from resnet_exp.config import IMAGENET, NO_WEIGHTS
from resnet_exp.errors import ConfigError, DataError
from resnet_exp.tracking.store import tracking_uri

T_975_1, T_975_2 = 12.7062, 4.3027  # Student t quantiles for 2 and 3 seeds
DEMO = "resnet-exp-demo"
NUM_CLASSES, TEST_IMAGES = 4, 40  # what every run but the legacy ones records
TEST_SIZE = S.SPLIT_SIZE.format(split=S.TEST)

# (blocks, freeze_blocks) -> trainable params, and per seed: (test_acc, val_acc per epoch, epoch seconds)
A, B, CC, D = ("1,1,1,1", 3), ("2,2,2,2", 2), ("2,2,2,2", 4), ("2,2,2,2", 0)
PARAMS = {A: 6000, B: 5000, CC: 100, D: 10000}
STUDY = {
    A: {
        0: (0.80, [0.2, 0.5, 0.7, 0.8], [10, 12, 10, 12]),  # 95% of 0.8 = 0.76: reached at epoch 4
        1: (0.82, [0.4, 0.78, 0.8, 0.8], [11, 11, 11, 11]),  # ... at epoch 2
        2: (0.84, [0.3, 0.6, 0.77, 0.8], [10, 12, 10, 12]),
    },  # ... at epoch 3
    B: {0: (0.85, [0.5, 0.9], [30, 30]), 1: (0.87, [0.5, 0.9], [30, 30])},
    CC: {
        0: (0.50, [0.4, 0.5], [5, 5]),
        1: (0.51, [0.4, 0.5], [5, 5]),
        2: (0.52, [0.4, 0.5], [5, 5]),
    },
    D: {0: (0.30, [0.3], [50])},  # a single run: no interval
}

# (blocks, freeze_blocks) -> (test images per run, {seed: test_acc}). P is 0.02 below the leader L
# in every seed while the seeds spread widely; Q's two seeds agree exactly (34 of 80); W shares
# no seed with L.
L, P, Q, W = ("2,2,2,2", 2), ("2,2,2,2", 3), ("1,1,1,1", 2), ("1,1,1,1", 3)
PAIRED_STUDY = {
    L: (10_000, {0: 0.60, 1: 0.70, 2: 0.80, 3: 0.90}),
    P: (10_000, {0: 0.58, 1: 0.68, 2: 0.78, 3: 0.88}),
    Q: (80, {0: 0.425, 1: 0.425}),
    W: (10_000, {10: 0.70, 11: 0.74, 12: 0.78}),
}


def config_hash(
    blocks: str,
    freeze: int,
    dataset: str = "demo",
    max_epochs: int = 30,
    block: str = S.BASIC,
    weights: str = IMAGENET,
) -> str:
    text = f"{block}/{blocks}/{freeze}/{dataset}/{max_epochs}/{weights}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def log_run(
    client: MlflowClient,
    experiment_id: str,
    config: tuple[str, int],
    seed: int,
    test_acc: float | None,
    val_acc: list[float],
    epoch_time: list[float] | None = None,
    status: str = "FINISHED",
    end_time: int | None = None,
    dataset: str = "demo",
    max_epochs: int = 30,
    kind: str | None = S.KIND_TRAIN,
    block: str = S.BASIC,
    weights: str = IMAGENET,
    legacy: bool = False,
    test_size: int = TEST_IMAGES,
) -> str:
    """A training run as resnet_exp.tracking.training_run records it: tags, params, epoch metrics at step = epoch.
    `legacy`: as recorded before the block type, class count and split sizes were logged."""
    blocks, freeze = config
    label = f"{'bn' if block == S.BOTTLENECK else 'b'}{blocks.replace(',', '')}-f{freeze}"
    tags = {
        S.TAG_CONFIG_HASH: config_hash(blocks, freeze, dataset, max_epochs, block, weights),
        S.TAG_DATASET: dataset,
        S.TAG_DEPTH: label,
    }
    if kind:
        tags[S.TAG_KIND] = kind
    run_id = client.create_run(experiment_id, run_name=f"r-{label}-s{seed}", tags=tags).info.run_id
    params = {
        S.BLOCKS: blocks.replace(",", ", ", 1),  # as typed into `mlflow run -P`: '2, 2,2,2'
        S.FREEZE_BLOCKS: str(freeze),
        S.SEED: str(seed),
        S.DATA: dataset,
        S.WEIGHTS: weights,
        "max_epochs": str(max_epochs),
        S.TRAINABLE_PARAMS: str(PARAMS.get(config, 1)),
    }
    if not legacy:
        params.update({S.BLOCK: block, S.NUM_CLASSES: str(NUM_CLASSES), TEST_SIZE: str(test_size)})
    metrics = [Metric(S.VAL_ACC, v, 1000 + e, e) for e, v in enumerate(val_acc)]
    metrics += [Metric(S.EPOCH_TIME, s, 1000 + e, e) for e, s in enumerate(epoch_time or [])]
    if test_acc is not None:
        metrics.append(Metric(S.TEST_ACC, test_acc, 2000, 0))
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run_id, status, end_time=end_time)
    return run_id


def build_study(client: MlflowClient, artifacts: Path) -> dict[str, str]:
    """The study above, plus one run per exclusion reason, a sweep parent, a shared depth label."""
    ids = {"demo": client.create_experiment(DEMO, artifact_location=str(artifacts / "demo"))}
    exp = ids["demo"]
    # Duplicates that ended before the study's runs: one started before them, one after, so
    # neither the search order nor the start time can stand in for "latest to end".
    log_run(client, exp, B, 1, 0.10, [0.1, 0.1], [1, 1], end_time=5_000)
    for config, seeds in STUDY.items():
        for seed, (acc, val, secs) in seeds.items():
            legacy = config == CC and seed == 2  # an older run: config_hash but no run_kind tag
            ids[f"{config}-{seed}"] = log_run(
                client,
                exp,
                config,
                seed,
                acc,
                val,
                secs,
                end_time=10_000,
                kind=None if legacy else S.KIND_TRAIN,
                legacy=legacy,
            )
    # Excluded, each with an accuracy that would change the numbers if it were used:
    ids["failed"] = log_run(client, exp, A, 3, 0.99, [0.99], [1], status="FAILED")
    log_run(client, exp, B, 2, 0.99, [0.99], [1], status="RUNNING")
    log_run(client, exp, A, 0, 0.99, [0.99], [1], dataset="pets")
    log_run(client, exp, B, 0, 0.10, [0.1, 0.1], [1, 1], end_time=5_000)
    log_run(client, exp, CC, 3, None, [0.4, 0.5], [5, 5])  # finished without a test
    # Not training runs at all: not counted anywhere
    client.create_run(exp, run_name="old-analysis", tags={S.TAG_KIND: S.KIND_ANALYSIS})
    sweep = client.create_run(
        exp,
        run_name="sweep",
        tags={S.TAG_KIND: S.KIND_SWEEP, S.TAG_SWEEP_ID: "sw1", S.TAG_DATASET: "demo"},
    ).info.run_id
    members = [(A, 0), (A, 1), (B, 0), (B, 1), (A, 3)]  # not seed 2 of A; seed 3 of A FAILED
    grid = [
        {
            "config_hash": config_hash(*config),
            "seed": seed,
            "blocks": config[0],
            "freeze_blocks": config[1],
        }
        for config, seed in members
    ]
    client.log_dict(sweep, {"sweep_id": "sw1", "dataset": "demo", "grid": grid}, S.SWEEP_GRID_FILE)
    client.set_terminated(sweep, "FINISHED")
    ids["sweep"] = sweep
    # Another experiment: b2222-f2 twice, differing only in max_epochs; one without epoch times
    ids["shared"] = shared = client.create_experiment(
        "shared", artifact_location=str(artifacts / "shared")
    )
    for seed in (0, 1):
        log_run(client, shared, B, seed, 0.7 + seed / 100, [0.5, 0.7], [3, 3])
        log_run(client, shared, B, seed, 0.6 + seed / 100, [0.5, 0.6], max_epochs=5)
    # Block types from random weights: basic and bottleneck 2,2,2,2 (the basic one partly legacy)
    ids["blocks"] = blocks = client.create_experiment(
        "blocks", artifact_location=str(artifacts / "blocks")
    )
    for seed in (0, 1):
        log_run(
            client,
            blocks,
            B,
            seed,
            0.6 + seed / 100,
            [0.5, 0.6],
            [3, 3],
            weights=NO_WEIGHTS,
            legacy=seed == 0,
        )
        log_run(
            client,
            blocks,
            B,
            seed,
            0.7 + seed / 100,
            [0.6, 0.7],
            [6, 6],
            weights=NO_WEIGHTS,
            block=S.BOTTLENECK,
        )
    log_run(
        client,
        blocks,
        ("3,4,6,3", 2),
        0,
        0.75,
        [0.6, 0.75],
        [9, 9],
        weights=NO_WEIGHTS,
        block=S.BOTTLENECK,
    )
    # One configuration from ImageNet and from random weights
    ids["mixed"] = mixed = client.create_experiment(
        "mixed", artifact_location=str(artifacts / "mixed")
    )
    for seed in (0, 1):
        for weights, acc in ((IMAGENET, 0.8), (NO_WEIGHTS, 0.5)):
            log_run(
                client, mixed, B, seed, acc + seed / 100, [acc - 0.1, acc], [3, 3], weights=weights
            )
    # Paired seeds (analysis.stats): see PAIRED_STUDY
    ids["paired"] = paired = client.create_experiment(
        "paired", artifact_location=str(artifacts / "paired")
    )
    for config, (test_size, by_seed) in PAIRED_STUDY.items():
        for seed, acc in by_seed.items():
            log_run(client, paired, config, seed, acc, [acc], [1], test_size=test_size)
    ids["empty"] = empty = client.create_experiment(
        "empty", artifact_location=str(artifacts / "empty")
    )
    log_run(client, empty, A, 0, 0.9, [0.9], status="FAILED")
    return ids


@pytest.fixture(scope="module")
def study_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    folder = tmp_path_factory.mktemp("study")
    ids = build_study(MlflowClient(new_store(folder / "mlflow.db")), folder / "artifacts")
    return folder / "mlflow.db", ids


@pytest.fixture
def study(study_db, tracking_uri: str, tmp_path: Path) -> dict[str, str]:
    """A private copy of the study's store, as MLFLOW_TRACKING_URI; returns the ids by name."""
    shutil.copy(study_db[0], tmp_path / "mlflow.db")
    return study_db[1]


def ranked(config: AnalysisConfig) -> tuple[pd.DataFrame, runs.RunTable]:
    table = runs.load_runs(runs.select(config))
    return rank.rank(table.runs, table.curves).set_index(C.LABEL), table


def all_runs() -> list:
    client = MlflowClient(tracking_uri())
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


# --- light imports -------------------------------------------------------------------------------

HEAVY = ("torch", "torchvision", "pytorch_lightning", "lightning")


def heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter (this process has torch loaded already) from the checkout,
    and return the heavy modules it imported."""
    check = f"import sys\n{textwrap.dedent(code)}\nprint(sorted(set({HEAVY!r}) & set(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", check],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    return eval(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh interpreter importing MLflow, pandas, scipy and matplotlib: seconds
def test_analysis_and_its_command_load_no_torch(tmp_path):
    """Analysis only reads runs: importing it, `resnet-exp analyze --help` and an analysis that
    stops at a user error must not cost torch's and Lightning's seconds (one interpreter for all
    three: starting one costs seconds)."""
    uri = new_store(tmp_path / "mlflow.db")  # a prepared store: creating one costs seconds too
    assert (
        heavy_modules_after(f"""
        import os
        import analysis, analysis.pipeline, analysis.report, analysis.plots, analysis.runs
        from click.testing import CliRunner
        from resnet_exp.cli import main
        os.environ["MLFLOW_TRACKING_URI"] = "{uri}"
        helped = CliRunner().invoke(main, ["analyze", "--help"])
        assert helped.exit_code == 0 and "--sweep-run-id" in helped.output, helped.output
        failed = CliRunner().invoke(main, ["analyze", "--data", "nosuch"])
        assert failed.exit_code == 1 and "no such experiment" in failed.output, failed.output
        """)
        == []
    )


# --- pure maths ----------------------------------------------------------------------------------


def test_convergence_epoch_auc_and_interval():
    assert rank.epochs_to_fraction([0.2, 0.5, 0.7, 0.8]) == 4  # 0.7 < 0.95 * 0.8 = 0.76
    assert rank.epochs_to_fraction([0.4, 0.78, 0.8, 0.8]) == 2
    assert rank.epochs_to_fraction([0.9, 0.1]) == 1
    assert rank.auc_per_epoch([0.2, 0.5, 0.7, 0.8]) == pytest.approx((0.35 + 0.6 + 0.75) / 3)
    assert rank.auc_per_epoch([0.3]) == 0.3
    std = 0.02 / math.sqrt(2)  # of 0.85 and 0.87
    assert rank.ci_half_width([0.85, 0.87]) == pytest.approx(T_975_1 * std / math.sqrt(2), rel=1e-4)
    assert math.isnan(rank.ci_half_width([0.5]))
    assert rank.trainable_blocks("3,4,6,3", 2) == 9


def per_run(accs: dict[str, list[float]], test_size: float = 1000.0) -> pd.DataFrame:
    """A per-run table: {label: test_acc per seed 0, 1, ...}; the label is the config hash too."""
    return pd.DataFrame(
        [
            {
                C.CONFIG_HASH: label,
                C.LABEL: label,
                C.DEPTH_LABEL: label,
                C.SEED: seed,
                C.TEST_ACC: acc,
                C.TEST_SIZE: test_size,
                C.TRAINABLE_PARAMS: 1.0,
            }
            for label, values in accs.items()
            for seed, acc in enumerate(values)
        ]
    )


def test_tie_rule_and_competition_ranks():
    """Tied = the Holm-corrected test against the leader does not reject a zero difference."""
    runs_ = per_run(
        {
            "a": [0.90, 0.91, 0.89],
            "b": [0.50, 0.50, 0.50],
            "c": [0.86, 0.92, 0.87],
            "d": [0.60, 0.61, 0.59],
            "e": [0.88],
        }
    )
    table = (
        runs_.groupby(C.LABEL, as_index=False)
        .agg(
            **{
                C.TEST_ACC_MEAN: (C.TEST_ACC, "mean"),
                C.CONFIG_HASH: (C.CONFIG_HASH, "first"),
                C.TRAINABLE_PARAMS: (C.TRAINABLE_PARAMS, "first"),
            }
        )
        .assign(**{C.TRAIN_TIME_MEAN: 1.0})
    )
    for col in (
        set(C.RANKING_COLUMNS)
        - set(table)
        - {
            C.TIED,
            C.RANK,
            C.PARETO_TIME,
            C.PARETO_PARAMS,
            C.DIFF,
            C.DIFF_LO,
            C.DIFF_HI,
            C.P_VALUE,
            C.P_HOLM,
            C.COMPARISON,
            C.N_PAIRS,
        }
    ):
        table[col] = 0
    out = rank.rank_configs(table, runs_)
    # c: paired differences -0.04, +0.01, -0.02 (p ~ 0.37); e: one run, no common seed: t with
    # a's seed variance (p ~ 0.23); d and b: far below in every seed
    assert out[C.LABEL].tolist() == ["a", "c", "e", "d", "b"]
    assert out[C.RANK].tolist() == [1, 1, 1, 4, 5]
    assert out[C.TIED].tolist() == [True, True, True, False, False]
    assert out[C.COMPARISON].tolist() == ["leader", st.PAIRED, st.SINGLE, st.PAIRED, st.PAIRED]
    assert out[C.DIFF].iloc[1] == pytest.approx(-0.05 / 3)


def test_holm_adjusted_p_values_by_hand():
    # sorted: 0.01 x 4 = 0.04; 0.03 x 3 = 0.09; 0.04 x 2 = 0.08, raised to 0.09 (monotone); 0.5 x 1
    assert st.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert st.holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert st.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = st.holm([0.01, math.nan, 0.02])  # NaN (no test) is not counted in m
    assert (
        adjusted[0] == pytest.approx(0.02)
        and math.isnan(adjusted[1])
        and adjusted[2] == pytest.approx(0.02)
    )


def test_wilson_interval_by_hand():
    # 34 of 80: centre (p + z^2/2n) / (1 + z^2/n), half z/(1 + z^2/n) * sqrt(p(1-p)/n + z^2/4n^2)
    z, n, p = 1.959964, 80, 34 / 80
    centre, half = (
        (p + z * z / (2 * n)) / (1 + z * z / n),
        z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)),
    )
    assert st.wilson_interval(34, 80) == pytest.approx((centre - half, centre + half), rel=1e-6)
    lo, hi = st.wilson_interval(0, 80)
    assert lo == 0 and hi > 0.04  # no correct answer is still not certainty


def test_intervals_stay_within_what_an_accuracy_can_be():
    # two seeds 0.075 apart: the t interval over seeds is 0.125 +- 0.476 before clipping
    nan = math.nan
    low = st.accuracy_interval([0.0875, 0.1625], [nan, nan])
    high = st.accuracy_interval([0.8375, 0.9125], [nan, nan])
    assert (low.lo, high.hi) == (0.0, 1.0) and low.hi < 1 and high.lo > 0
    assert 0 <= st.accuracy_interval([0.0, 0.5], [4, 4]).lo  # clipped before the widths compare
    swapped = st.paired({0: (1.0, nan), 1: (0.0, nan)}, {0: (0.0, nan), 1: (1.0, nan)})
    assert (swapped.lo, swapped.hi) == (-1.0, 1.0)
    one_each = st.unpaired([1.0, 0.0], [nan, nan], [0.0], [nan])
    assert -1 <= one_each.lo and one_each.hi <= 1


def test_paired_seeds_resolve_what_overlapping_intervals_cannot(study):
    """P is 0.02 below the leader in every one of 4 seeds: the paired test resolves it, while the
    plain intervals (the seeds spread from 0.6 to 0.9) overlap widely."""
    from scipy import stats

    table, _ = ranked(AnalysisConfig(experiment_name="paired", data="demo"))
    lead, p, q, w = (table.loc[f"b{k[0].replace(',', '')}-f{k[1]}"] for k in (L, P, Q, W))
    assert lead[C.COMPARISON] == "leader" and table.index[0] == "b2222-f2"
    # overlap
    assert p[C.TEST_ACC_LO] < lead[C.TEST_ACC_HI] and lead[C.TEST_ACC_LO] < p[C.TEST_ACC_HI]
    assert p[C.COMPARISON] == st.PAIRED and p[C.N_PAIRS] == 4 and not p[C.TIED]
    assert p[C.DIFF] == pytest.approx(-0.02) and p[C.DIFF_HI] < 0
    # the differences agree exactly, so their variance is the binomial floor of the test sets
    floor = (
        sum(
            a * (1 - a) / 1e4 + b * (1 - b) / 1e4
            for a, b in zip(PAIRED_STUDY[L][1].values(), PAIRED_STUDY[P][1].values())
        )
        / 4
    )
    assert p[C.P_VALUE] == pytest.approx(2 * stats.t.sf(0.02 / math.sqrt(floor / 4), 3), rel=1e-3)
    # Q's seeds agree exactly, and its interval is still the Wilson interval of 68 of 160
    assert q[C.TEST_ACC_STD] == 0 and q[C.TEST_ACC_HI] - q[C.TEST_ACC_LO] > 0.1
    assert (q[C.TEST_ACC_LO], q[C.TEST_ACC_HI]) == pytest.approx(st.wilson_interval(68, 160))
    # W shares no seed with L: Welch's test over all runs, as scipy computes it
    assert w[C.COMPARISON] == st.WELCH and w[C.N_PAIRS] == 0
    welch = stats.ttest_ind(
        list(PAIRED_STUDY[W][1].values()), list(PAIRED_STUDY[L][1].values()), equal_var=False
    )
    assert w[C.P_VALUE] == pytest.approx(welch.pvalue, rel=1e-6) and w[C.TIED]
    # Holm across the three comparisons, by hand
    raw = {label: table.loc[label, C.P_VALUE] for label in table.index[1:]}
    ordered = sorted(raw, key=raw.get)
    expected, running = {}, 0.0
    for i, label in enumerate(ordered):
        running = max(running, min(1.0, (3 - i) * raw[label]))
        expected[label] = running
    assert {k: table.loc[k, C.P_HOLM] for k in raw} == pytest.approx(expected)
    assert table[C.TIED].tolist() == [bool(v >= 0.05) if v == v else True for v in table[C.P_HOLM]]


@pytest.mark.slow  # the whole pipeline: report, plots, report.html
def test_the_report_says_when_welch_replaced_the_paired_test(study, tmp_path):
    result = analyze(
        AnalysisConfig(experiment_name="paired", data="demo", output_dir=str(tmp_path / "out"))
    )
    text = (result.output_folder / S.REPORT_MD).read_text()
    assert "Welch t (no common seeds)" in text and "paired t" in text
    csv = pd.read_csv(result.output_folder / S.RANKING_FILE)
    assert {C.DIFF, C.DIFF_LO, C.DIFF_HI, C.P_VALUE, C.P_HOLM} <= set(csv.columns)


def test_classes_that_freezing_moves_most():
    from analysis.classes import class_changes

    runs_ = pd.DataFrame(
        {
            C.RUN_ID: ["f2s0", "f2s1", "f4s0"],
            C.NETWORK: "basic 2,2,2,2",
            C.WEIGHTS: IMAGENET,
            C.FREEZE_BLOCKS: [2, 2, 4],
        }
    )
    per_class = pd.DataFrame(
        {
            C.RUN_ID: ["f2s0"] * 3 + ["f2s1"] * 3 + ["f4s0"] * 3,
            "class": ["cat", "dog", "owl"] * 3,
            "correct": [4, 2, 3, 4, 4, 3, 1, 3, 3],
            "total": [4] * 9,
        }
    )
    changes = class_changes(per_class, runs_, top=2)
    # pooled over seeds at f2: cat 8/8, dog 6/8, owl 6/8; at f4: cat 1/4, dog 3/4, owl 3/4
    assert changes["class"].tolist() == ["cat", "dog"]  # dog and owl tie at 0: the first listed
    assert changes["change"].tolist() == pytest.approx([-0.75, 0.0])
    assert (changes["freeze_from"].tolist(), changes["freeze_to"].tolist()) == ([2, 2], [4, 4])


def test_pareto_front():
    acc = pd.Series([0.9, 0.8, 0.8, 0.5, 0.95])
    cost = pd.Series([10.0, 5.0, 6.0, 1.0, math.nan])
    assert rank.pareto_front(acc, cost).tolist() == [True, True, False, True, False]


# --- runs logged through MLflow -----------------------------------------------------------------


def test_per_configuration_numbers_from_logged_runs(study):
    table, runs_table = ranked(AnalysisConfig(data="demo"))
    a, b, c, d = (table.loc[f"b{k[0].replace(',', '')}-f{k[1]}"] for k in (A, B, CC, D))
    assert (a[C.N_RUNS], b[C.N_RUNS], c[C.N_RUNS], d[C.N_RUNS]) == (3, 2, 3, 1)
    assert a[C.TEST_ACC_MEAN] == pytest.approx(0.82) and a[C.TEST_ACC_STD] == pytest.approx(0.02)
    assert a[C.TEST_ACC_SEED_CI] == pytest.approx(T_975_2 * 0.02 / math.sqrt(3), rel=1e-4)
    # 40 test images per run: the Wilson interval of the pooled 32+33+34 of 120 is the wider one
    assert (a[C.TEST_ACC_LO], a[C.TEST_ACC_HI]) == pytest.approx(st.wilson_interval(99, 120))
    assert a[C.TEST_ACC_INTERVAL] == st.WILSON and a[C.TEST_IMAGES] == TEST_IMAGES
    # the duplicate (0.10) and the RUNNING run (0.99) are left out
    assert b[C.TEST_ACC_MEAN] == pytest.approx(0.86)
    assert b[C.TEST_ACC_SEED_CI] == pytest.approx(
        T_975_1 * math.sqrt(2e-4) / math.sqrt(2), rel=1e-4
    )
    assert b[C.TEST_ACC_HI] - b[C.TEST_ACC_LO] == pytest.approx(2 * b[C.TEST_ACC_SEED_CI])
    # a single run: no seed interval, but the Wilson interval of its 12 of 40
    assert math.isnan(d[C.TEST_ACC_SEED_CI]) and math.isnan(d[C.TEST_ACC_STD])
    assert (d[C.TEST_ACC_LO], d[C.TEST_ACC_HI]) == pytest.approx(st.wilson_interval(12, 40))
    assert a[C.EPOCHS_TO_95_MEAN] == pytest.approx(3) and a[C.EPOCHS_TO_95_STD] == pytest.approx(1)
    auc = [(0.35 + 0.6 + 0.75) / 3, (0.59 + 0.79 + 0.8) / 3, (0.45 + 0.685 + 0.785) / 3]
    assert a[C.VAL_ACC_AUC_MEAN] == pytest.approx(sum(auc) / 3)
    assert a[C.BEST_VAL_ACC_MEAN] == pytest.approx(0.8) and a[C.BLOCKS] == "1,1,1,1"
    assert a[C.EPOCH_TIME_MEAN] == pytest.approx(11) and a[C.TRAIN_TIME_MEAN] == pytest.approx(44)
    assert (
        a[C.TRAINABLE_PARAMS] == 6000 and a[C.TRAINABLE_BLOCKS] == 1 and d[C.TRAINABLE_BLOCKS] == 8
    )
    # ranking: b leads. a and c share only seeds 0 and 1 with b: a paired t with 1 degree of
    # freedom (t quantile 12.7) resolves neither -0.05 nor -0.355, so both stay tied (the old
    # overlap rule had c below). d's single run measures no seed variation: with b's, and 1
    # degree of freedom, -0.56 is not resolved either (p ~ 0.09, Holm ~ 0.28): all four tied.
    assert table.index.tolist() == ["b2222-f2", "b1111-f3", "b2222-f4", "b2222-f0"]
    assert table[C.RANK].tolist() == [1, 1, 1, 1] and c[C.TIED] and d[C.TIED]
    assert (a[C.COMPARISON], c[C.COMPARISON], d[C.COMPARISON]) == (st.PAIRED, st.PAIRED, st.SINGLE)
    assert (a[C.N_PAIRS], c[C.N_PAIRS], d[C.N_PAIRS]) == (2, 2, 0)
    assert a[C.DIFF] == pytest.approx(-0.05) and c[C.DIFF] == pytest.approx(-0.355)
    assert table[C.PARETO_TIME].tolist() == [True, True, True, False]  # d: slower and worse than a
    assert table[C.PARETO_PARAMS].tolist() == [True, False, True, False]  # a: more params than b
    assert st.unpaired([0.5], [80], [0.3], [80]).method == st.NO_TEST  # one run each: no test
    assert runs_table.excluded == {
        "failed": 1,
        "unfinished": 1,
        "other dataset": 1,
        "duplicate": 2,
        "incomplete": 1,
    }
    assert len(runs_table.runs) == 9


def test_sweep_selects_its_grid_from_sweep_json(study):
    # data and experiment come from the parent run, whatever the defaults say
    table, runs_table = ranked(AnalysisConfig(sweep_run_id=study["sweep"]))
    assert table.index.tolist() == ["b2222-f2", "b1111-f3"]
    assert table[C.N_RUNS].tolist() == [2, 2]  # seed 2 of b1111-f3 is outside the grid
    assert table.loc["b1111-f3", C.TEST_ACC_MEAN] == pytest.approx(0.81)
    assert runs_table.excluded["failed"] == 1 and runs_table.excluded["duplicate"] == 2
    assert runs_table.excluded["other dataset"] == runs_table.excluded["unfinished"] == 0


def test_configurations_sharing_a_depth_label_stay_apart(study):
    table, runs_table = ranked(AnalysisConfig(experiment_name="shared", data="demo"))
    assert len(table) == 2 and all(label.startswith("b2222-f2 (") for label in table.index)
    assert table[C.TEST_ACC_MEAN].round(3).tolist() == [0.705, 0.605]
    # no epoch times: no time, off the time front
    assert math.isnan(table[C.TRAIN_TIME_MEAN].iloc[1])
    assert table[C.PARETO_TIME].tolist() == [True, False]
    from analysis.report import shared_label_notes

    [note] = shared_label_notes(table.reset_index(), runs_table.shared_params)
    assert "max_epochs" in note and "seed" not in note


@pytest.mark.slow
def test_analysis_writes_files_and_an_mlflow_run(study, tmp_path):
    result = analyze(AnalysisConfig(data="demo", output_dir=str(tmp_path / "out")))
    assert result.output_folder == tmp_path / "out" / "demo" / "analysis"
    csv = pd.read_csv(result.output_folder / "ranking.csv")
    assert csv.columns.tolist() == C.RANKING_COLUMNS and len(csv) == 4
    single = csv[csv[C.N_RUNS] == 1].iloc[0]
    assert math.isnan(single[C.TEST_ACC_SEED_CI]) and single[C.TEST_ACC_INTERVAL] == st.WILSON
    for name in PLOT_FILES:
        with Image.open(result.output_folder / S.PLOTS_FOLDER / name) as image:
            assert image.format == "PNG" and min(image.size) > 100
    text = (result.output_folder / "report.md").read_text()
    # numbers as people read them: at most 6 significant digits in the report and the table
    assert "p (Holm) ≥ 0.05)" in text
    for shown in (text, (result.output_folder / "ranking.csv").read_text()):
        numbers = re.findall(r"\d+\.\d+", shown)
        assert numbers and all(len(n.replace(".", "").lstrip("0")) <= 6 for n in numbers)
    assert (
        "A tie between b2222-f2, b1111-f3, b2222-f4 and b2222-f0" in text and result.verdict in text
    )
    assert "Holm-corrected test does not reject a" in text  # the rule, in the definitions
    assert "Wilson" in text and "Brown, Cai & DasGupta" in text and "Holm 1979" in text
    assert "40 test images per run, from 1 to 3 seeds per configuration" in text
    assert "1 failed, 1 unfinished, 1 other dataset, 2 duplicate, 1 incomplete" in text
    assert all(f"]({S.PLOTS_FOLDER}/{name})" in text for name in PLOT_FILES)
    assert "ImageNet weights (transfer); on demo, 4 classes, 40 test images per run." in text
    assert "frozen when transferred from ImageNet)" in text
    assert (
        "b2222-f2 has the highest mean test accuracy, 0.860 (95% interval 0.733–0.987, n=2)"
        in result.answer
    )
    assert "b1111-f3" in format_ranking(result.ranking).splitlines()[2]
    client = MlflowClient(tracking_uri())
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == study["demo"]
    assert run.data.tags[S.TAG_KIND] == S.KIND_ANALYSIS
    assert (
        run.data.params["n_configs"] == "4"
        and run.data.params[S.ANALYSIS_EXCLUDED + "duplicate"] == "2"
    )
    stored = {f.path for f in client.list_artifacts(result.run_id)} | {
        f.path for f in client.list_artifacts(result.run_id, S.PLOTS_FOLDER)
    }
    assert {
        S.RANKING_FILE,
        S.RANKING_TABLE,
        S.REPORT_HTML,
        *(f"{S.PLOTS_FOLDER}/{n}" for n in PLOT_FILES),
    } <= stored
    # one report format in the UI: report.html (report.md's plots would show as text there)
    assert S.REPORT_MD not in stored and (result.output_folder / S.REPORT_MD).exists()
    # the ranking as a table the UI previews, its first columns the ones a reader wants
    shown = mlflow_table(client, result.run_id, S.RANKING_TABLE, tmp_path / "table")
    assert shown.columns[:5].tolist() == ["rank", "config", "test_acc", "95% interval", "n"]
    assert len(shown) == 4
    # the runs page's saved view of the same runs, linked from the description
    key = "resnet-exp-curves-demo"
    name, state = saved_view(client, study["demo"], key)
    assert name == result.view == "Learning curves: demo"
    link = (
        f"#/experiments/{study['demo']}/runs?viewStateShareKey={key}&compareRunsMode=CHART"
        "&workflowType=machine_learning"
    )
    assert f"[learning curves by configuration]({link})" in run.data.tags[S.MLFLOW_NOTE]
    shown = client.search_runs([study["demo"]], state["searchFilter"])
    assert {r.data.tags[S.TAG_DATASET] for r in shown} == {"demo"}
    assert {r.data.tags[S.TAG_KIND] for r in shown} == {S.KIND_TRAIN}
    # a second analysis replaces the folder (no stale file survives) and is not itself ranked
    (result.output_folder / "stale.txt").write_text("old")
    again = analyze(AnalysisConfig(data="demo", output_dir=str(tmp_path / "out")))
    assert not (again.output_folder / "stale.txt").exists() and again.excluded == result.excluded
    # ... and rewrites the view rather than adding one
    tags = client.get_experiment(study["demo"]).tags
    assert [k for k in tags if k.startswith("mlflow.sharedViewState.")] == [
        f"mlflow.sharedViewState.{key}"
    ]
    assert not [p for p in again.output_folder.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    "values, error, words",
    [
        (
            dict(data="nosuch"),
            ConfigError,
            ["data='nosuch'", "'resnet-exp-nosuch'", "no such experiment", DEMO, "sqlite:///"],
        ),
        (
            dict(experiment_name="nope", data="demo"),
            ConfigError,
            ["experiment_name='nope': no such experiment"],
        ),
        (dict(sweep_run_id="0" * 32), ConfigError, ["sweep_run_id='" + "0" * 32, "no such run"]),
        (
            dict(sweep_run_id="<a training run>"),
            ConfigError,
            ["is a train run, not a sweep's parent"],
        ),
        (
            dict(experiment_name="empty", data="demo"),
            DataError,
            ["no usable training runs", "1 failed"],
        ),
    ],
)
def test_user_errors_name_the_value_and_create_nothing(study, tmp_path, values, error, words):
    if values.get("sweep_run_id") == "<a training run>":
        values["sweep_run_id"] = study[f"{B}-0"]
    before = len(all_runs())
    with pytest.raises(error) as err:
        analyze(AnalysisConfig(**values, output_dir=str(tmp_path / "out")))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert len(all_runs()) == before and not (tmp_path / "out").exists()


def synthetic_ranking(
    cases: dict[tuple[str, str, int], list[float]],
    num_classes: float = math.nan,
    test_size: float = math.nan,
    curve=lambda acc: [acc / 2, acc],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ranking and curves of runs given as {(block, blocks, freeze_blocks): test_acc per seed},
    without MLflow; each run's val_acc per epoch is `curve(test_acc)`: half its test_acc at
    epoch 0, then equal to it, unless told otherwise."""
    run_rows, curve_rows = [], []
    for (block, blocks, freeze), accs in cases.items():
        for seed, acc in enumerate(accs):
            key = f"{block}/{blocks}/{freeze}"
            run_id = f"{key}/{seed}"
            run_rows.append(
                {
                    C.RUN_ID: run_id,
                    C.RUN_NAME: run_id,
                    C.CONFIG_HASH: key,
                    C.BLOCK: block,
                    C.BLOCKS: blocks,
                    C.NETWORK: f"{block} {blocks}",
                    C.FREEZE_BLOCKS: freeze,
                    C.SEED: seed,
                    C.WEIGHTS: IMAGENET,
                    C.DEPTH_LABEL: f"{'bn' if block == S.BOTTLENECK else 'b'}"
                    f"{blocks.replace(',', '')}-f{freeze}",
                    C.TRAINABLE_PARAMS: 1000.0 * 10 ** (4 - freeze) + 1,
                    C.TEST_ACC: acc,
                    C.END_TIME: 0,
                    C.NUM_CLASSES: num_classes,
                    C.TEST_SIZE: test_size,
                }
            )
            curve_rows += [
                {
                    C.RUN_ID: run_id,
                    C.CONFIG_HASH: key,
                    C.SEED: seed,
                    C.EPOCH: e,
                    C.VAL_ACC: v,
                    C.EPOCH_TIME: 10.0 - 2 * freeze,
                }
                for e, v in enumerate(curve(acc))
            ]
    curves = pd.DataFrame(curve_rows)
    return rank.rank(pd.DataFrame(run_rows), curves), curves


def test_the_answer_follows_every_dial_of_depth():
    """Per network across freeze_blocks, per freeze_blocks and block type across block lists, per
    blocks list across block types, with a caveat where the intervals overlap."""
    from analysis.report import answer

    ranking, _ = synthetic_ranking(
        {
            (S.BASIC, "1,1,1,1", 2): [0.50, 0.51, 0.52],
            (S.BASIC, "2,2,2,2", 2): [0.70, 0.71, 0.72],
            (S.BASIC, "2,2,2,2", 4): [0.60, 0.69, 0.75],
            (S.BOTTLENECK, "2,2,2,2", 2): [0.80, 0.81, 0.82],
        }
    )
    text = answer(ranking, "demo")
    assert (
        "With 2 frozen stages and basic blocks, 8 residual blocks (2,2,2,2) instead of 4 (1,1,1,1) "
        "moves test accuracy from 0.510 to 0.710, epochs to 95% of the best val_acc from 2.0 to 2.0"
    ) in text
    assert (
        "With the basic 2,2,2,2 network, freezing 4 stages instead of 2 moves test accuracy from 0.710 "
        "to 0.680 (the intervals overlap, so this is not a clear difference)"
    ) in text
    assert "mean epoch time from 6.0 s to 2.0 s" in text
    assert (
        "With blocks 2,2,2,2 and 2 frozen stages, bottleneck blocks instead of basic moves test "
        "accuracy from 0.710 to 0.810"
    ) in text
    # a bottleneck network is compared neither with basic block lists nor across freeze_blocks alone
    assert (
        "bottleneck 2,2,2,2 network" not in text and "(2,2,2,2) instead of 4 (2,2,2,2)" not in text
    )


def test_beats_chance_by_the_lower_end_of_the_interval():
    assert rank.beats_chance(lo=0.11, mean=0.3, chance=0.1)
    assert not rank.beats_chance(lo=0.1, mean=0.3, chance=0.1)  # at chance is not above it
    assert not rank.beats_chance(lo=math.nan, mean=0.1, chance=0.1)  # no interval: the mean
    assert rank.beats_chance(lo=0.0, mean=0.05, chance=math.nan)  # classes unknown: no claim


def test_a_configuration_at_chance_did_not_learn_and_is_never_called_fast():
    """freeze_blocks=4 at test_acc ~0.10 with 10 classes reaches 95% of its own best at once
    (epochs to 95% 1.0 against 2.0): it did not learn, and nothing calls it faster to converge
    or the cheap choice."""
    from analysis.report import DID_NOT_LEARN, NOT_SHOWN, answer, shown_table

    cases = {
        (S.BASIC, "2,2,2,2", 0): [0.45, 0.47, 0.46],
        (S.BASIC, "2,2,2,2", 4): [0.10, 0.11, 0.09],
    }
    flat_at_chance = lambda acc: [acc / 2, acc] if acc > 0.2 else [acc, acc * 0.9]  # noqa: E731
    ranking, _ = synthetic_ranking(cases, 10, 200, flat_at_chance)
    by_label = ranking.set_index(C.LABEL)
    assert by_label[C.BEATS_CHANCE].to_dict() == {"b2222-f0": True, "b2222-f4": False}
    assert by_label.loc["b2222-f4", C.EPOCHS_TO_95_MEAN] == 1.0  # what the old answer called fast
    assert by_label.loc["b2222-f4", C.CHANCE] == pytest.approx(0.1)
    text = answer(ranking, "demo")
    assert "b2222-f4 did not learn: the lower end of its 95% interval is at or below chance" in text
    assert "b2222-f4 did not learn (test accuracy interval not above chance, 0.100)" in text
    assert "epochs to 95%" not in text and "cheapest configuration" not in text, text
    table = shown_table(ranking).set_index("config")
    assert table.loc["b2222-f4", "epochs to 95%"] == DID_NOT_LEARN
    assert table.loc["b2222-f0", "epochs to 95%"] == "2.0"

    nothing, _ = synthetic_ranking({k: [0.1, 0.12, 0.08] for k in cases}, 10, 200)
    assert "No configuration learned" in answer(nothing, "demo")
    assert "cheapest" not in answer(nothing, "demo")

    # two seeds far apart: a mean well above chance that its interval cannot show
    wide, _ = synthetic_ranking({**cases, (S.BASIC, "2,2,2,2", 4): [0.75, 0.10]}, 10, 200)
    text = answer(wide, "demo")
    assert "b2222-f4 is not shown to beat chance: the lower end of its 95% interval" in text
    assert "b2222-f4 did not learn" not in text
    table = shown_table(wide).set_index("config")
    assert table.loc["b2222-f4", "epochs to 95%"] == NOT_SHOWN


def test_a_sweep_parent_states_a_winner_a_tie_or_what_single_runs_cannot_tell():
    """The paragraph that opens a sweep parent's description (analysis/rollup.py), from the
    ranking alone: one seed per configuration is still ranked, and says why nothing is resolved."""
    from analysis.report import verdict
    from analysis.rollup import summary

    single, _ = synthetic_ranking(
        {(S.BASIC, "1,1,1,1", 0): [0.5], (S.BASIC, "1,1,1,1", 4): [0.3]}, 10, 200
    )
    text = summary(single, "7", "abc")
    assert text.startswith("**Result: b1111-f0 leads** with mean test_acc 0.500 (95% interval ")
    assert (
        "tied with it: b1111-f4 (0.300) (a single run of each: no test can tell them apart)" in text
    )
    assert "did not learn" not in text  # both intervals lie above chance (0.1)
    assert "[report.html](#/experiments/7/runs/abc/artifacts/analysis/report.html)" in text
    assert "[ranking.json](#/experiments/7/runs/abc/artifacts/analysis/ranking.json)" in text
    assert "no test can tell them from the leader" in verdict(single)

    apart, _ = synthetic_ranking(
        {(S.BASIC, "1,1,1,1", 0): [0.5, 0.52, 0.51], (S.BASIC, "1,1,1,1", 4): [0.1, 0.11, 0.09]},
        10,
        200,
    )
    text = summary(apart, "7", "abc")
    assert "every other configuration is significantly below it" in text
    assert "b1111-f4 did not learn" in text


@pytest.mark.slow  # the whole pipeline: report, plots, report.html
def test_report_html_is_self_contained(study, tmp_path):
    """report.html carries its plots as data URIs (MLflow's viewer drops relative images), each
    the very PNG file written next to it, and its tables as HTML tables."""
    folder = analyze(AnalysisConfig(data="demo", output_dir=str(tmp_path / "out"))).output_folder
    page = (folder / S.REPORT_HTML).read_text(encoding="utf-8")
    assert f'src="{S.PLOTS_FOLDER}/' not in page and "<table>" in page and "<style>" in page
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', page)
    assert sorted(alt for alt, _ in images) == sorted(Path(n).stem for n in PLOT_FILES)
    for alt, data in images:
        png = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(png)) as image:
            image.verify()  # raises on a truncated or corrupt PNG
            assert image.format == "PNG"
        assert png == (folder / S.PLOTS_FOLDER / f"{alt}.png").read_bytes()


# --- block type and initialisation ----------------------------------------------------------------


def test_block_type_is_part_of_the_network(study):
    """A basic and a bottleneck 2,2,2,2 are two networks: two rows, two plot series; a run
    recorded before the `block` param is basic."""
    table, _ = ranked(AnalysisConfig(experiment_name="blocks", data="demo"))
    assert table.index.tolist() == ["bn3463-f2", "bn2222-f2", "b2222-f2"]
    assert table[C.NETWORK].tolist() == [
        "bottleneck 3,4,6,3",
        "bottleneck 2,2,2,2",
        "basic 2,2,2,2",
    ]
    assert table[C.BLOCK].tolist() == [S.BOTTLENECK, S.BOTTLENECK, S.BASIC]
    assert table.loc["b2222-f2", C.N_RUNS] == 2  # one of them legacy: no block param
    assert (
        table.loc["bn3463-f2", C.TRAINABLE_BLOCKS] == 9
        and table.loc["bn2222-f2", C.TRAINABLE_BLOCKS] == 4
    )
    fig, ax = plt.subplots()
    plots.accuracy_by(ax, table.reset_index(), C.FREEZE_BLOCKS, "frozen stages")
    assert sorted(ax.get_legend_handles_labels()[1]) == [
        "basic 2,2,2,2",
        "bottleneck 2,2,2,2",
        "bottleneck 3,4,6,3",
    ]
    plt.close(fig)


@pytest.mark.slow  # the whole pipeline: report, plots, report.html
def test_a_study_from_random_weights_says_so(study, tmp_path):
    result = analyze(
        AnalysisConfig(experiment_name="blocks", data="demo", output_dir=str(tmp_path / "out"))
    )
    text = (result.output_folder / S.REPORT_MD).read_text()
    assert (
        "Initialisation: random initialisation (no transfer: frozen stages are random features); "
        "on demo, 4 classes, 40 test images per run."
    ) in text
    assert "frozen at their random initial weights)" in text
    assert "ImageNet" not in text and "transferred" not in text
    assert (
        "With blocks 2,2,2,2 and 2 frozen stages, bottleneck blocks instead of basic moves test accuracy "
        "from 0.605 to 0.705"
    ) in result.answer
    csv = pd.read_csv(result.output_folder / S.RANKING_FILE)
    assert csv[C.BLOCK].tolist() == [S.BOTTLENECK, S.BOTTLENECK, S.BASIC]
    assert set(csv[C.WEIGHTS]) == {NO_WEIGHTS}


@pytest.mark.slow  # the whole pipeline: report, plots, report.html
def test_mixed_initialisations_are_named_and_kept_apart(study, tmp_path):
    result = analyze(
        AnalysisConfig(experiment_name="mixed", data="demo", output_dir=str(tmp_path / "out"))
    )
    text = (result.output_folder / S.REPORT_MD).read_text()
    assert (
        "The runs mix initialisations: ImageNet weights (transfer) in 2 runs; random initialisation "
        "(no transfer: frozen stages are random features) in 2 runs."
    ) in text
    assert "transferred from ImageNet" not in text  # the question claims no single initialisation
    assert "its runs differ in weights" in text
    assert "| rank | config | weights | n |" in text and "| 1 | b2222-f2 (" in text
    assert result.ranking[C.WEIGHTS].tolist() == [IMAGENET, NO_WEIGHTS]
    fig, ax = plt.subplots()
    plots.accuracy_by(ax, result.ranking, C.FREEZE_BLOCKS, "frozen stages")
    assert sorted(ax.get_legend_handles_labels()[1]) == [
        "basic 2,2,2,2 (weights=imagenet)",
        "basic 2,2,2,2 (weights=none)",
    ]
    plt.close(fig)


def test_describe_weights():
    from analysis.study import describe_weights

    assert describe_weights(IMAGENET) == "ImageNet weights (transfer)"
    assert describe_weights(NO_WEIGHTS).startswith("random initialisation (no transfer")
    assert describe_weights("r18-animals.pt") == "weights from r18-animals.pt"


# --- plots ------------------------------------------------------------------------------------------


def _chance_lines(ax: plt.Axes) -> list[list[float]]:
    return [list(line.get_ydata()) for line in ax.lines if line.get_label() == "chance"]


def test_plots_count_epochs_from_zero_mark_chance_and_log_parameters():
    ranking, curves = synthetic_ranking(
        {(S.BASIC, "2,2,2,2", 2): [0.7, 0.72], (S.BASIC, "2,2,2,2", 4): [0.5, 0.52]}
    )
    fig, ax = plt.subplots()
    plots.curves_plot(ax, ranking, curves, chance=0.25)
    curves_drawn = [line for line in ax.lines if line.get_label() != "chance"]
    assert len(curves_drawn) == 2 and all(list(line.get_xdata()) == [0, 1] for line in curves_drawn)
    assert _chance_lines(ax) == [[0.25, 0.25]] and "chance" in ax.get_legend_handles_labels()[1]
    plt.close(fig)
    fig, ax = plt.subplots()
    plots.accuracy_by(ax, ranking, C.FREEZE_BLOCKS, "frozen stages", chance=0.25)
    assert _chance_lines(ax) == [[0.25, 0.25]]
    plt.close(fig)
    fig = plots.cost_plot(ranking, chance=0.25)
    assert [ax.get_xscale() for ax in fig.axes] == ["linear", "log"]  # time, trainable parameters
    assert [_chance_lines(ax) for ax in fig.axes] == [[[0.25, 0.25]]] * 2
    plt.close(fig)
    fig, ax = plt.subplots()
    plots.curves_plot(ax, ranking, curves, chance=None)  # class count unknown: no line
    assert _chance_lines(ax) == []
    plt.close(fig)
