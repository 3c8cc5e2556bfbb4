"""One analysis from end to end: select runs, rank configurations, write ranking.csv, ranking.json,
report.md, report.html and the plots to a local folder, and log that folder as an MLflow run of
kind 'analysis', or on the sweep's parent when the sweep asks (analysis/rollup.py).

    python -c "from analysis import AnalysisConfig, analyze; print(analyze(AnalysisConfig(data='demo')).verdict)"
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis import classes, plots, rank, report, runs
from analysis import columns as C
from analysis.config import AnalysisConfig
from analysis.html_report import to_html
from analysis.output import mark_started, record_run
from analysis.rollup import roll_up
from analysis.study import study_of
from analysis.views import study_view
from resnet_exp import schema as S
from resnet_exp.atomic import replace_atomically


@dataclass(frozen=True)
class AnalysisResult:
    # one row per configuration, ranked (columns: analysis.columns.RANKING_COLUMNS)
    ranking: pd.DataFrame
    output_folder: Path  # <output_dir>/<dataset>/analysis
    run_id: str  # the MLflow run holding the same files as artifacts
    excluded: dict[str, int]  # runs left out, by reason (analysis.runs.EXCLUSION_REASONS)
    answer: str  # the plain-language paragraph
    verdict: str  # 'Winner: ...' or 'A tie between ...'
    summary: str = ""  # on_parent: the paragraph that opens the sweep parent's description
    view: str = ""  # the saved view of the runs' learning curves in the UI (analysis/views.py)


def analyze(config: AnalysisConfig, on_parent: bool = False) -> AnalysisResult:
    """Rank the depth configurations of an experiment (or of one sweep). User errors (unknown
    experiment, bad sweep run id, no usable runs) are raised before any file or run is made.
    `on_parent`: log the result on the sweep's parent run instead of a new analysis run."""
    selection = runs.select(config)
    mark_started(selection.experiment_id)  # a reader is refused here, not after the analysis
    table = runs.load_runs(selection)
    ranking, study = rank.rank(table.runs, table.curves), study_of(table.runs, selection.dataset)
    changes = classes.class_changes(
        classes.load_per_class(table.runs[C.RUN_ID].tolist()), table.runs
    )
    text = report.render(
        ranking,
        study=study,
        experiment=selection.experiment_name,
        sweep_run_id=selection.sweep_run_id,
        n_runs=len(table.runs),
        excluded=table.excluded,
        notes=report.shared_label_notes(ranking, table.shared_params),
        class_section=classes.changes_markdown(changes),
        extra_plots=(classes.CLASS_PLOT,) if len(changes) else (),
    )

    def write(folder: Path) -> None:
        # 6 significant digits, as the runs record them: 0.0220971, not 0.02209708691207961
        ranking.to_csv(
            folder / S.RANKING_FILE, index=False, float_format=f"%.{S.SIGNIFICANT_DIGITS}g"
        )
        # the shown columns, formatted, in the JSON layout of MlflowClient.log_table
        report.preview_table(ranking).to_json(folder / S.RANKING_TABLE, orient="split", index=False)
        (folder / S.REPORT_MD).write_text(text)
        plots.draw_all(ranking, table.curves, folder, study.chance)
        changes.to_csv(
            folder / S.CLASS_CHANGES_FILE, index=False, float_format=f"%.{S.SIGNIFICANT_DIGITS}g"
        )
        if len(changes):
            plots.save(classes.changes_plot(changes), folder / S.PLOTS_FOLDER / classes.CLASS_PLOT)
        # after the plots, which it inlines; titled by report.md's first heading
        (folder / S.REPORT_HTML).write_text(
            to_html(text, folder, text.splitlines()[0].lstrip("# ")), encoding="utf-8"
        )

    folder = replace_atomically(config.output_folder(selection.dataset), write)
    view, view_link = study_view(selection)
    summary = ""
    if on_parent and selection.sweep_run_id:
        run_id = selection.sweep_run_id
        summary = roll_up(selection.experiment_id, run_id, ranking, folder, view_link)
    else:
        run_id = _record(config, selection, ranking, table, folder, view_link)
    return AnalysisResult(
        ranking,
        folder,
        run_id,
        table.excluded,
        report.answer(ranking, selection.dataset),
        report.verdict(ranking),
        summary,
        view,
    )


def _record(
    config: AnalysisConfig,
    selection: runs.Selection,
    ranking: pd.DataFrame,
    table: runs.RunTable,
    folder: Path,
    view_link: str,
) -> str:
    tags = {S.TAG_DATASET: selection.dataset}
    if selection.sweep_id:
        tags[S.TAG_SWEEP_ID] = selection.sweep_id
    params = {
        **config.to_params(),
        "experiment": selection.experiment_name,
        "n_configs": str(len(ranking)),
        "n_runs": str(len(table.runs)),
        # counts and the leader's accuracy as params: as metrics, each would be a chart of one
        # bar before the training runs' learning curves in the experiment's chart view
        **{
            f"{S.ANALYSIS_EXCLUDED}{reason.replace(' ', '_')}": str(n)
            for reason, n in table.excluded.items()
        },
        S.ANALYSIS_LEADER_ACC: str(S.readable(ranking[C.TEST_ACC_MEAN].iloc[0])),
    }
    metrics: dict[str, float] = {}
    scope = (
        f"sweep run {selection.sweep_run_id}" if selection.sweep_run_id else "every training run"
    )
    description = (
        f"Analysis of {scope} on {selection.dataset}: {len(table.runs)} runs, {len(ranking)} "
        f"configurations ranked by mean test_acc. {report.verdict(ranking)}. Open "
        f"{S.REPORT_HTML} in the artifacts for the answer, the table and the plots, and the "
        f"[learning curves by configuration]({view_link})."
    )
    name = f"analysis-{selection.sweep_id or selection.dataset}"
    return record_run(selection.experiment_id, name, description, tags, params, metrics, folder)
