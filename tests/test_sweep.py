"""The depth sweep: grid parsing and shards, then real sweeps on the demo data against a temporary
SQLite store, in-process through the CLI: resume, shards, failed children, aliases. A sweep under
`mlflow run -e sweep`, its nesting and the `analyze` entry point are tests/test_ray.py's (that
sweep runs on Ray: one `mlflow run` sweep covers both)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow import MlflowClient

from conftest import REPO, cli_options, mlflow_table, saved_view
from resnet_exp import schema as S
from resnet_exp.cli import main
from resnet_exp.config import TrainConfig
from resnet_exp.errors import ConfigError
from resnet_exp.sweep.grid import (
    GRID_FIELDS,
    SweepGrid,
    grid_defaults_as_text,
    grid_entries,
    sweep_id,
)

TINY = cli_options(
    data="demo", weights="none", image_size=32, batch_size=16, max_epochs=2, limit_batches=3
)


def sweep_args(data_dir: Path, tmp_path: Path, *args: str) -> list[str]:
    return [
        "sweep",
        *TINY,
        "--data-dir",
        str(data_dir),
        "--output-dir",
        str(tmp_path / "results"),
        *args,
    ]


def children(client: MlflowClient, parent_id: str | None = None) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(ids, filter_string=f"tags.{S.TAG_KIND} != '{S.KIND_SWEEP}'")
    return [
        r for r in runs if parent_id is None or r.data.tags.get("mlflow.parentRunId") == parent_id
    ]


def sweeps(client: MlflowClient) -> list:
    ids = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(ids, filter_string=f"tags.{S.TAG_KIND} = '{S.KIND_SWEEP}'")


PROGRESS = "resnet_exp.sweep.progress"  # the logger of the [i/n] lines (and of Ray's trial states)


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The progress lines logged since the last call."""
    lines = [r.getMessage() for r in caplog.records if r.name == PROGRESS]
    caplog.clear()
    return lines


def assert_progress(lines: list[str], names: list[str], ended: str = "trained") -> None:
    """Each cell of `names` (this shard's grid order) numbered [i/n]: one start line and one end
    line saying `ended`, or only the end line for a skipped cell (it never starts)."""
    for i, name in enumerate(names, 1):
        label = re.escape(f"[{i}/{len(names)}] {name}")
        left = r"(; about \d+ (s|min) left)?"
        end = {
            "trained": rf"trained: test_acc [01]\.\d{{4}}, \d+ (s|min){left}",
            "skipped": rf"skipped \(run [0-9a-f]{{32}} already FINISHED\){left}",
        }[ended]
        starts = [
            line for line in lines if re.fullmatch(rf"{label} started( \(ray trial \w+\))?", line)
        ]
        ends = [line for line in lines if re.fullmatch(f"{label} {end}", line)]
        assert (len(starts), len(ends)) == (ended != "skipped", 1), (name, lines)


# --- the grid ---------------------------------------------------------------------------------


def test_grid_defaults_and_order():
    grid = SweepGrid()
    configs = grid.expand(TrainConfig(data="demo"))
    assert len(configs) == 5 * 3 and grid_defaults_as_text()["seeds"] == "3"
    # seed-major: every configuration's first seed trains before any second seed
    assert [c.run_name for c in configs[:6]] == [f"r18-b2222-f{f}-s0" for f in range(5)] + [
        "r18-b2222-f0-s1"
    ]
    assert {c.learning_rate for c in configs} == {3e-5}, "other parameters pass through"


def test_the_block_type_passes_through_one_sweep_and_is_listed_in_its_grid():
    base = TrainConfig(data="demo", block="bottleneck")
    configs = SweepGrid(blocks="1,1,1,1;3,4,6,3", freeze_blocks="2", seeds="1").expand(base)
    assert [c.run_name for c in configs] == ["r14-bn1111-f2-s0", "r50-bn3463-f2-s0"]
    entries = grid_entries(configs)
    assert [(e[S.BLOCK], e[S.TAG_DEPTH]) for e in entries] == [
        ("bottleneck", "bn1111-f2"),
        ("bottleneck", "bn3463-f2"),
    ]
    basic = SweepGrid(blocks="3,4,6,3", freeze_blocks="2", seeds="1").expand(
        TrainConfig(data="demo")
    )
    assert basic[0].config_hash != configs[1].config_hash  # ResNet34 and ResNet50 stay apart


@pytest.mark.slow  # loads the demo data and probes ResNet50 weights: seconds
def test_a_bottleneck_sweep_without_its_imagenet_weights_stops_before_any_run(
    tmp_path, data_dir, tracking_uri
):
    args = sweep_args(
        data_dir, tmp_path, "--block", "bottleneck", "--weights", "imagenet", "--seeds", "1"
    )
    result = CliRunner().invoke(main, args)
    assert (
        result.exit_code != 0 and "resnet50" in result.output and "Traceback" not in result.output
    )
    client = MlflowClient(tracking_uri)
    assert children(client) == [] and sweeps(client) == []


def test_shards_cover_the_grid_exactly_once_and_share_one_sweep_id():
    text = dict(blocks="1,1,1,1;2,2,2,2;3,4,6,3", freeze_blocks="0,2,4", seeds="0,5")
    base = TrainConfig(data="demo")
    everything = [(c.config_hash, c.seed) for c in SweepGrid(**text).expand(base)]
    assert len(set(everything)) == 18
    for n in (1, 2, 4, 18, 25):
        parts = [
            SweepGrid(**text, shard=f"{i}/{n}").shard_of(SweepGrid(**text).expand(base))
            for i in range(n)
        ]
        covered = [(c.config_hash, c.seed) for part in parts for c in part]
        assert sorted(covered) == sorted(everything), n
    ids = {sweep_id(SweepGrid(**text, shard=f"{i}/2").expand(base)) for i in range(2)}
    assert len(ids) == 1
    assert sweep_id(SweepGrid(**{**text, "seeds": "0,6"}).expand(base)) not in ids


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"freeze_blocks": "0,5"}, ["freeze_blocks='0,5'", "0..4"]),
        ({"freeze_blocks": ""}, ["freeze_blocks=''", "0,1,2,3,4"]),
        ({"blocks": "2,2,2,2;2,2,2"}, ["blocks='2,2,2'", "4 positive integers"]),
        ({"seeds": "0"}, ["seeds='0'", "count of seeds >= 1"]),
        ({"seeds": "a,b"}, ["seeds='a,b'", "0,1,7"]),
        ({"shard": "2/2"}, ["shard='2/2'", "0 <= i < n"]),
        ({"shard": "1"}, ["shard='1'", "i/n"]),
        ({"seeds": "auto", "max_seeds": "2"}, ["max_seeds='2'", ">= 3"]),
        ({"seeds": "auto", "shard": "1/2"}, ["shard='1/2'", "one shard (0/1)"]),
    ],
)
def test_bad_grid_values_are_named_with_what_is_accepted(changes, words):
    with pytest.raises(ConfigError) as err:
        SweepGrid(**changes)
    for word in words:
        assert word in str(err.value)


def test_seeds_count_or_list():
    assert SweepGrid(seeds="3").parsed("seeds") == (0, 1, 2)
    assert SweepGrid(seeds="4,1,4").parsed("seeds") == (4, 1)
    assert SweepGrid(seeds="7,").parsed("seeds") == (7,)
    assert SweepGrid(seeds="auto").parsed("seeds") == (0, 1, 2) and SweepGrid(seeds="auto").adaptive
    assert not SweepGrid(seeds="3").adaptive


def test_a_bad_value_stops_the_sweep_before_any_run(tmp_path, data_dir, tracking_uri):
    for bad, word in (
        (["--freeze-blocks", "1,9"], "freeze_blocks='1,9'"),
        (["--learning-rate", "-1"], "learning_rate=-1.0"),
        (["--precision", "16-mixed"], "precision='16-mixed'"),
    ):
        result = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *bad))
        assert result.exit_code != 0 and word in result.output and "Traceback" not in result.output
    client = MlflowClient(tracking_uri)
    assert children(client) == [] and sweeps(client) == []


def test_mlproject_sweep_parameters_are_the_cli_options():
    entry = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["sweep"]
    options = {p.name: p.default for p in main.commands["sweep"].params}
    assert {k: str(v["default"]) for k, v in entry["parameters"].items()} == options
    assert not set(GRID_FIELDS) - {"freeze_blocks", "blocks", "seed"} and "seed" not in options
    for name in entry["parameters"]:
        assert f"--{name.replace('_', '-')} {{{name}}}" in entry["command"]


def test_the_study_docs_document_every_grid_parameter():
    study = (REPO / "docs" / "study.md").read_text()  # the sweep's parameter table
    for name, default in grid_defaults_as_text().items():
        assert f"| `{name}` | `{default}` |" in study, name


# --- real sweeps ------------------------------------------------------------------------------


@pytest.mark.slow
def test_sharded_sweep_then_resume(tmp_path, data_dir, tracking_uri, caplog):
    grid = ["--freeze-blocks", "3,4", "--blocks", "1,1,1,1", "--seeds", "2"]
    client = MlflowClient(tracking_uri)
    caplog.set_level(logging.INFO, logger=PROGRESS)
    for shard, parent_status, names in (
        ("0/2", "RUNNING", ["r10-b1111-f3-s0", "r10-b1111-f3-s1"]),
        ("1/2", "FINISHED", ["r10-b1111-f4-s0", "r10-b1111-f4-s1"]),
    ):
        result = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *grid, "--shard", shard))
        assert result.exit_code == 0, result.output
        assert "2 trained, 0 skipped" in result.output
        # the shard that ends the grid prints the sweep's result as plain text; the first, how
        # to rank what is there so far
        [line] = [x for x in result.output.splitlines() if x.startswith(("result:", "rank:"))]
        assert line.startswith("result:" if parent_status == "FINISHED" else "rank:"), line
        assert "**" not in line and "](" not in line, line
        assert ("learning curves: the experiment's Views menu" in result.output) == (
            parent_status == "FINISHED"
        )
        # the parent's status comes from every cell: still RUNNING while a shard has cells left
        assert [p.info.status for p in sweeps(client)] == [parent_status]
        # numbered in the shard's grid order, the time left once known
        lines = progress_lines(caplog)
        assert_progress(lines, names)
        assert "; about " in lines[1] and "; about " not in lines[-1], lines
        [parent] = sweeps(client)
        if shard == "0/2":  # the grid has not ended: nothing to state yet
            assert S.LEADER_ACC not in parent.data.metrics
            assert "**Result" not in parent.data.tags[S.MLFLOW_NOTE]

    [parent] = sweeps(client)
    runs = children(client, parent.info.run_id)
    assert len(runs) == 4 and len(children(client)) == 4, "both shards share one parent"
    assert sorted(r.info.run_name for r in runs) == [
        "r10-b1111-f3-s0",
        "r10-b1111-f3-s1",
        "r10-b1111-f4-s0",
        "r10-b1111-f4-s1",
    ]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags[S.TAG_SWEEP_ID] for r in runs} == {parent.data.tags[S.TAG_SWEEP_ID]}
    # the tags the UI shows are for a reader; bookkeeping (attempt ids, processes, paths) is hidden
    readable = {S.TAG_KIND, S.TAG_CONFIG_HASH, S.TAG_DATASET, S.TAG_DEPTH, S.TAG_ARCH}
    readable |= {S.TAG_SWEEP_ID, S.TAG_FEATURE_CACHE_REASON, S.TAG_GIT_COMMIT, S.TAG_GIT_DIRTY}
    for run in runs:
        shown = {k for k in run.data.tags if not k.startswith("mlflow.")}
        assert {S.TAG_KIND, S.TAG_DEPTH, S.TAG_SWEEP_ID} <= shown <= readable, shown
    assert parent.info.run_name == "sweep-b1111-f34-2seeds" and parent.info.status == "FINISHED"
    assert parent.data.params["freeze_blocks"] == "3,4" and parent.data.params["max_epochs"] == "2"
    grid_file = client.download_artifacts(parent.info.run_id, S.SWEEP_GRID_FILE, str(tmp_path))
    assert len(yaml.safe_load(Path(grid_file).read_text())["grid"]) == 4
    assert_parent_states_its_result(client, parent, tmp_path / "first", runs)

    again = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *grid))
    assert again.exit_code == 0 and "0 trained, 4 skipped" in again.output, again.output
    assert_progress(
        progress_lines(caplog),
        ["r10-b1111-f3-s0", "r10-b1111-f4-s0", "r10-b1111-f3-s1", "r10-b1111-f4-s1"],
        ended="skipped",
    )
    assert len(children(client)) == 4 and len(sweeps(client)) == 1
    assert_parent_states_its_result(client, sweeps(client)[0], tmp_path / "again", runs)

    aliases = client.get_registered_model("resnet-demo").aliases
    assert {"champion", "best-b1111-f3", "best-b1111-f4"} <= set(aliases)
    versions = {r.info.run_id: r for r in runs}
    best_f4 = client.get_model_version("resnet-demo", aliases["best-b1111-f4"])
    assert versions[best_f4.run_id].data.params["freeze_blocks"] == "4"

    analysis = CliRunner().invoke(
        main,
        [
            "analyze",
            "--sweep-run-id",
            parent.info.run_id,
            "--output-dir",
            str(tmp_path / "results"),
        ],
    )
    assert analysis.exit_code == 0, analysis.output
    # real runs log per-class accuracy; f3 and f4 are two freeze levels
    assert_analysis(
        tmp_path / "results" / "demo" / "analysis",
        {"b1111-f3", "b1111-f4"},
        n_runs=2,
        class_plot=True,
    )
    assert "b1111-f3" in analysis.output and "b1111-f4" in analysis.output  # the terminal table
    assert f'Views menu, "Learning curves: {parent.info.run_name}"' in analysis.output


def assert_parent_states_its_result(client: MlflowClient, parent, tmp_path: Path, runs) -> None:
    """Once its grid has ended (and again after a rerun that skipped every cell), a sweep's
    parent carries its analysis: the leader, its ties and what did not learn opening the
    description, with a link to report.html that the UI resolves; the leader's mean test_acc
    as a metric; the ranking as one table the UI previews (replaced, never appended to); no
    separate analysis run."""
    import pandas as pd

    run_id, experiment = parent.info.run_id, parent.info.experiment_id
    parent = client.get_run(run_id)
    (tmp_path / "rollup").mkdir(parents=True)
    folder = Path(client.download_artifacts(run_id, S.ANALYSIS_FOLDER, str(tmp_path / "rollup")))
    ranking = pd.read_csv(folder / S.RANKING_FILE)
    assert (folder / S.REPORT_HTML).is_file() and not (folder / S.REPORT_MD).exists()
    # the metric is the leader's mean test_acc over its children, as the client reads them
    by_config: dict[str, list[float]] = {}
    for run in runs:
        by_config.setdefault(run.data.tags[S.TAG_DEPTH], []).append(run.data.metrics[S.TEST_ACC])
    best = max(sum(accs) / len(accs) for accs in by_config.values())
    assert parent.data.metrics[S.LEADER_ACC] == round(best, 4)
    # ranking.csv keeps 6 significant digits
    assert ranking["test_acc_mean"].iloc[0] == pytest.approx(best, rel=1e-5)

    note = parent.data.tags[S.MLFLOW_NOTE]
    assert note.count("**Result") == 1 and note.startswith(f"**Result: {ranking['label'][0]} leads")
    assert "Depth sweep: 2 configurations" in note  # the sweep's own description follows
    tied = ranking[ranking["tied_with_leader"]]["label"].tolist()[1:]
    assert ("tied with it: " in note) == bool(tied) and all(label in note for label in tied)
    for label in ranking[~ranking["beats_chance"]]["label"]:  # at chance: said, never "fast"
        assert f"{label} did not learn" in note or "No configuration learned" in note, note
    link = f"(#/experiments/{experiment}/runs/{run_id}/artifacts/{S.ANALYSIS_FOLDER}/"
    assert f"[{S.REPORT_HTML}]{link}{S.REPORT_HTML})" in note
    # the runs page's saved view of exactly this sweep's children, on their learning curves
    key = f"resnet-exp-curves-{parent.data.tags[S.TAG_SWEEP_ID]}"
    assert f"runs?viewStateShareKey={key}&compareRunsMode=CHART&" in note
    name, state = saved_view(client, experiment, key)
    assert name == f"Learning curves: {parent.info.run_name}"
    shown = client.search_runs([experiment], state["searchFilter"])
    assert {r.info.run_id for r in shown} == {r.info.run_id for r in runs}

    table = f"{S.ANALYSIS_FOLDER}/{S.RANKING_TABLE}"
    shown = mlflow_table(client, run_id, table, tmp_path / "table")
    assert shown["config"].tolist() == ranking["label"].tolist()  # one row each, not doubled
    assert shown.columns[:5].tolist() == ["rank", "config", "test_acc", "95% interval", "n"]
    assert not client.search_runs([experiment], f"tags.{S.TAG_KIND} = '{S.KIND_ANALYSIS}'")


def assert_analysis(folder: Path, labels: set[str], n_runs: int, class_plot: bool = False) -> None:
    """ranking.csv has every configuration with its seeds, the plots are real PNGs (the class
    changes too where a network was trained at two freeze_blocks levels), and the report names
    a winner or a tie."""
    import pandas as pd
    from PIL import Image

    ranking = pd.read_csv(folder / "ranking.csv")
    assert set(ranking["label"]) == labels and set(ranking["n_runs"]) == {n_runs}
    plots = sorted((folder / "plots").glob("*.png"))
    assert len(plots) == 4 + class_plot
    for png in plots:
        with Image.open(png) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 100
    report = (folder / "report.md").read_text()
    assert "**Winner: " in report or "**A tie between " in report
    assert all(f"plots/{png.name}" in report for png in plots)


@pytest.mark.slow
def test_failed_children_are_recorded_and_redone(tmp_path, data_dir, tracking_uri):
    grid = ["--freeze-blocks", "4", "--blocks", "1,1,1,1", "--seeds", "2", "--max-epochs", "1"]
    # A file where the checkpoint folder must go: every child fails inside its run.
    blocker = tmp_path / "results" / "demo" / "checkpoints"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    failed = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *grid))
    assert failed.exit_code != 0
    assert "0 trained, 0 skipped (already finished), 2 failed" in failed.output
    assert "FAILED r10-b1111-f4-s0" in failed.output and "FAILED r10-b1111-f4-s1" in failed.output

    client = MlflowClient(tracking_uri)
    runs = children(client)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}
    assert all("checkpoints" in r.data.tags["error"] for r in runs)
    assert sweeps(client)[0].info.status == "FAILED"

    blocker.unlink()
    redone = CliRunner().invoke(main, sweep_args(data_dir, tmp_path, *grid))
    assert redone.exit_code == 0 and "2 trained, 0 skipped" in redone.output, redone.output
    statuses = sorted(r.info.status for r in children(client))
    assert statuses == ["FAILED", "FAILED", "FINISHED", "FINISHED"] and len(sweeps(client)) == 1


@pytest.mark.slow
def test_a_child_that_fails_before_its_run_opens_is_still_recorded(
    tmp_path, data_dir, tracking_uri
):
    # The image store lives under data_dir; a file in its place fails each child before its run.
    own_data = tmp_path / "data"
    own_data.mkdir()
    (own_data / "store").write_text("in the way")
    grid = ["--freeze-blocks", "4", "--blocks", "1,1,1,1", "--seeds", "1"]
    result = CliRunner().invoke(
        main,
        [
            "sweep",
            *TINY,
            "--data-dir",
            str(own_data),
            "--output-dir",
            str(tmp_path / "results"),
            *grid,
        ],
    )
    assert result.exit_code != 0 and "1 failed" in result.output
    [child] = children(MlflowClient(tracking_uri))
    [parent] = sweeps(MlflowClient(tracking_uri))
    assert child.info.status == "FAILED" and child.info.run_name == "r10-b1111-f4-s0"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["freeze_blocks"] == "4" and child.data.tags["error"]


def test_shards_started_together_converge_on_one_parent(tracking_uri):
    """Search-then-create is not atomic: shards that start at the same instant may each create
    a parent; they must end with one, the same for all."""
    from resnet_exp.sweep.run import _open_parent

    base, barrier, opened = TrainConfig(data="demo"), threading.Barrier(3), []

    def open_parent() -> None:
        barrier.wait()
        opened.append(_open_parent(base, "0123456789ab", "sweep-test")[0])

    threads = [threading.Thread(target=open_parent) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client = MlflowClient(tracking_uri)
    assert len(opened) == 3 and len(set(opened)) == 1
    assert [p.info.run_id for p in sweeps(client)] == opened[:1]


# --- seeds=auto -------------------------------------------------------------------------------


def prelog_finished_runs(
    client: MlflowClient,
    experiment_id: str,
    config: TrainConfig,
    correct: dict[int, int],
    test_size: int = 80,
) -> None:
    """FINISHED training runs as training records them (tags, params, test_acc = correct / 80),
    so that a sweep skips these seeds and an adaptive sweep's first round has known numbers."""
    from mlflow.entities import Metric, Param

    from resnet_exp.tracking.training_run import config_tags

    for seed, right in correct.items():
        c = config.replace(seed=seed)
        run_id = client.create_run(
            experiment_id, run_name=c.run_name, tags={S.TAG_KIND: S.KIND_TRAIN, **config_tags(c)}
        ).info.run_id
        params = {
            **c.to_params(),
            S.SPLIT_SIZE.format(split=S.TEST): str(test_size),
            S.TRAINABLE_PARAMS: "1000",
        }
        client.log_batch(
            run_id,
            params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[
                Metric(S.TEST_ACC, right / test_size, 0, 0),
                Metric(S.VAL_ACC, right / test_size, 0, 0),
            ],
        )
        client.set_terminated(run_id, "FINISHED")


@pytest.mark.slow
def test_auto_seeds_go_only_to_configurations_tied_with_the_leader(
    tmp_path, data_dir, tracking_uri
):
    """Seeds 0-2 known (logged through MLflow, so the sweep skips them): f4 and f3 differ by one
    test image of 80 per seed (tied), f2 is 0.45 below in every seed (resolved: Holm p ~ 0.01).
    Round 1 trains seed 3 of f4 and f3 for real (near chance: still tied); round 2 plans seed 4
    of both from those fresh results and finds them already FINISHED (logged here too, as an
    interrupted adaptive sweep would have left them), so it resumes without training them again.
    Both reach max_seeds=5; f2 never gets a seed. Two real trainings in all (each ~10 s)."""
    import pandas as pd

    from resnet_exp.sweep.grid import split_sweep_values

    args = sweep_args(
        data_dir,
        tmp_path,
        "--freeze-blocks",
        "2,3,4",
        "--blocks",
        "1,1,1,1",
        "--seeds",
        "auto",
        "--max-seeds",
        "5",
        "--registered-model-name",
        "none",
        "--max-epochs",
        "1",  # limit_batches=3: 48 test images, 6 classes
        # explicit: the pre-logged runs' config hash includes it, and a sweep
        # trains its cells with `auto` resolved
        "--precision",
        "32-true",
    )
    values = dict(zip([a.lstrip("-").replace("-", "_") for a in args[1::2]], args[2::2]))
    _, base = split_sweep_values(values)
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment(base.default_experiment_name)
    known = {
        4: {0: 40, 1: 42, 2: 38, 4: 40},
        3: {0: 39, 1: 43, 2: 37, 4: 41},
        2: {0: 4, 1: 4, 2: 4},
    }
    for freeze, correct in known.items():
        prelog_finished_runs(
            client, experiment_id, base.replace(blocks=(1, 1, 1, 1), freeze_blocks=freeze), correct
        )

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 trained, 11 skipped" in result.output
    added = [line for line in result.output.splitlines() if line.startswith("  added seed ")]
    names = [line.split()[2] for line in added]
    # round 1: the leader (f4: 40+42+38 of 240 against 39+43+37) first, both trained; round 2's
    # leader depends on the real runs of round 1, and both its seeds were already finished
    assert names[:2] == ["r10-b1111-f4-s3", "r10-b1111-f3-s3"], result.output
    assert sorted(names[2:]) == ["r10-b1111-f3-s4", "r10-b1111-f4-s4"], result.output
    assert all("(trained): round 1: " in line for line in added[:2]), result.output
    assert all("(skipped): round 2: " in line for line in added[2:]), result.output
    assert all("tied with the leader" in line or "the leader after" in line for line in added)
    assert (
        "seeds stopped: max_seeds=5 reached by every configuration still tied with the leader"
        in result.output
    )

    [parent] = sweeps(client)
    runs = children(client, parent.info.run_id)
    extra = {
        r.info.run_name: r.data.tags.get(S.TAG_SEED_REASON)
        for r in runs
        if r.data.tags.get(S.TAG_SEED_REASON)
    }
    assert sorted(extra) == sorted(names[:2])  # the trained ones; round 2's were logged here
    assert all(reason.startswith("round 1: ") for reason in extra.values())
    note = parent.data.tags[S.MLFLOW_NOTE]
    assert "Added seeds: r10-b1111-f4-s3 (round 1: " in note and "(round 2: " in note
    assert "Stopped: max_seeds=5 reached" in note
    assert (
        parent.info.run_name == "sweep-b1111-f234-auto3to5seeds"
        and parent.data.params["max_seeds"] == "5"
    )
    assert parent.info.status == "FINISHED"
    grid_file = client.download_artifacts(parent.info.run_id, S.SWEEP_GRID_FILE, str(tmp_path))
    assert len(yaml.safe_load(Path(grid_file).read_text())["grid"]) == 13  # 9 + 4 added

    from analysis import AnalysisConfig, analyze

    ranking = analyze(
        AnalysisConfig(sweep_run_id=parent.info.run_id, output_dir=str(tmp_path / "results"))
    ).ranking.set_index("label")
    assert ranking["n_runs"].to_dict() == {"b1111-f4": 5, "b1111-f3": 5, "b1111-f2": 3}
    assert not ranking.loc["b1111-f2", "tied_with_leader"]
    # only the real runs (f3, f4 seed 3) logged per-class accuracy: their classes that move most
    changes = pd.read_csv(tmp_path / "results" / "demo" / "analysis" / S.CLASS_CHANGES_FILE)
    assert set(zip(changes["freeze_from"], changes["freeze_to"])) == {(3, 4)} and len(changes) == 5


def test_a_round_adds_seeds_to_the_leader_and_its_ties_only():
    import pandas as pd

    from analysis import columns as C
    from analysis.rank import standing
    from resnet_exp.sweep.adaptive import plan_round

    def table(accs: dict[str, list[float]]) -> pd.DataFrame:
        return standing(
            pd.DataFrame(
                [
                    {
                        C.CONFIG_HASH: k,
                        C.DEPTH_LABEL: k,
                        C.SEED: seed,
                        C.TEST_ACC: a,
                        C.TEST_SIZE: 80.0,
                        C.TRAINABLE_PARAMS: 1.0,
                    }
                    for k, values in accs.items()
                    for seed, a in enumerate(values)
                ]
            )
        )

    tied = table({"lead": [0.5, 0.525, 0.475], "near": [0.4875, 0.5375, 0.4625], "far": [0.05] * 3})
    planned, stop = plan_round(tied, max_seeds=5, round_=1)
    assert [(p.config_hash, p.seed) for p in planned] == [("lead", 3), ("near", 3)] and not stop
    assert planned[1].reason.startswith(
        "round 1: tied with the leader lead after 3 seeds (difference -0.0042"
    )
    capped, stop = plan_round(tied, max_seeds=3, round_=1)
    assert (
        capped == []
        and stop
        == "max_seeds=3 reached by every configuration still tied with the leader lead: near"
    )
    resolved, stop = plan_round(table({"lead": [0.5, 0.525, 0.475], "far": [0.05] * 3}), 5, 1)
    assert resolved == [] and stop == "resolved: no configuration is tied with the leader lead"
