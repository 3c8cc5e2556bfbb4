"""Analysis of finished runs: reads only what `resnet_exp.tracking.training_run` wrote to MLflow (params,
tags, metric histories with step = epoch) and ranks the depth configurations of an experiment or
of one sweep: ranking.csv, report.md, report.html and plots, locally and as an MLflow run.

    config.py    AnalysisConfig: the parameters and their defaults (light: no MLflow import)
    runs.py      select runs, read them into a per-run table and per-epoch curves, count exclusions
    study.py     what the runs compared besides depth: initialisation, classes, test images
    stats.py     Wilson and t intervals, paired / Welch comparisons, Holm's correction (pure maths)
    rank.py      per-run measures, per-configuration means and intervals, ties, Pareto fronts
    classes.py   per-class accuracy from each run's diagnostics: the classes freezing moves most
    plots.py     the four PNGs
    report.py    the verdict, the plain-language answer, report.md, the terminal table
    html_report.py  report.html: report.md with its plots inline, for MLflow's artifact viewer
    output.py    the MLflow run holding the folder (swapped in whole by resnet_exp.atomic)
    rollup.py    a sweep's parent stating its result: leader, ties, metric, report link, table
    pipeline.py  analyze(): all of the above in order

    python -c "from analysis import AnalysisConfig, analyze, format_ranking; \
print(format_ranking(analyze(AnalysisConfig(data='demo')).ranking))"
"""

from __future__ import annotations

from typing import Any

from analysis.config import AnalysisConfig

__all__ = ["AnalysisConfig", "AnalysisResult", "analyze", "format_ranking"]

# Imported on first use (PEP 562): the CLI builds its options from AnalysisConfig without
# loading MLflow, pandas, scipy and matplotlib.
_LAZY = {
    "analyze": "analysis.pipeline",
    "AnalysisResult": "analysis.pipeline",
    "format_ranking": "analysis.report",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
