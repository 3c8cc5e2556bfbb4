"""Benchmarks are not timed tests; this only keeps them runnable (tiny sizes, CPU).

Each script runs in this process as `python benchmarks/<name>.py` would run it: its folder first
on sys.path (for `harness`), sys.argv set, and the file executed as `__main__` (runpy), so its
`if __name__ == "__main__": main()` and click's exit status are exercised. A fresh interpreter
per script would only add the imports of torch, Lightning and MLflow (13-16 s of CPU each on
2 cores), which every other slow test already proves importable."""

from __future__ import annotations

import json
import logging
import runpy
import sys

import pytest

from conftest import REPO, cli_options

# 10 classes x 6 JPEGs of 64 px: enough for a train/validation/test carving at batch 8
TINY = cli_options(image_size=32, batch_size=8, epochs=2, images_per_class=6, source_size=64)
# the smallest network and fp32: `auto` would first measure bf16 against fp32 (seconds), which
# tests/test_resources.py covers; the benchmarks' own code paths are the same at any size
SMALL = ["--blocks", "1,1,1,1", "--precision", "32-true"]
# harness.py quiets these for its tables; the tests after a benchmark keep their own levels
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning.fabric")


@pytest.fixture
def benchmark(monkeypatch, capsys):
    """Run benchmarks/<name> as a script in this process; return its last JSON line, or, when
    `expect` is a failing status, its stderr."""
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    # what conftest.subprocess_env did for the script's process: no experiment id left over
    # from an earlier test's mlflow.set_experiment()
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)

    def run(name: str, *args: str, tmp_path=None, expect: int = 0) -> dict:
        extra = ["--work-dir", str(tmp_path)] if tmp_path else []
        script = REPO / "benchmarks" / name
        monkeypatch.setattr(sys, "argv", [str(script), *args, *extra])
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit:  # click's standalone mode always exits
            runpy.run_path(str(script), run_name="__main__")
        out, err = capsys.readouterr()
        assert (exit.value.code or 0) == expect, err[-3000:]
        return json.loads(out.strip().splitlines()[-1]) if expect == 0 else {"stderr": err}

    yield run
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.slow
def test_freeze_speed_prints_ratios_against_its_baseline(benchmark):
    summary = benchmark(
        "freeze_speed.py", *SMALL, "--image-size", "32", "--steps", "1", "--batch-size", "4"
    )
    assert summary["speedup_vs_freeze0"]["0"] == 1.0 and set(summary["images_per_s"]) == {
        "0",
        "1",
        "2",
        "3",
        "4",
    }


@pytest.mark.slow
def test_train_throughput_compares_compute_only_project_and_baseline(benchmark, tmp_path):
    summary = benchmark(
        "train_throughput.py",
        *TINY,
        *SMALL,
        "--freeze-blocks",
        "2",
        "--steps",
        "1",
        tmp_path=tmp_path,
    )
    rates = summary["images_per_s"]
    assert set(rates) == {
        "compute only",
        "project",
        "project, feature cache on",
        "seed-style baseline",
    }
    assert all(v > 0 for v in rates.values()) and summary["project_vs_compute_only"] > 0


@pytest.mark.slow
def test_sweep_time_times_the_project_and_the_baseline(benchmark, tmp_path):
    summary = benchmark(
        "sweep_time.py",
        *TINY,
        *SMALL,
        "--freeze",
        "0,4",
        "--limit-batches",
        "2",
        "--compare-uncached",
        tmp_path=tmp_path,
    )
    assert (
        set(summary["per_freeze"]) == {"0", "4"}
        and summary["project_s"] > 0
        and summary["baseline_s"] > 0
    )
    assert (
        summary["per_freeze"]["4"]["feature_cache"] == "on"
        and "uncached_val_acc" in summary["per_freeze"]["4"]
    )
    # the compute bound: measured per cell, and no real sweep beats it
    # each figure is rounded on its own (seconds to 0.01, the ratio to 0.01): allow for that in
    # the ratio of the rounded ones
    project, bound = summary["project_s"], summary["bound_s"]
    assert bound > 0 and summary["over_bound"] == pytest.approx(
        project / bound, abs=0.006 + 0.006 / bound + 0.006 * project / bound**2
    )
    assert all(row["bound_s"] > 0 for row in summary["per_freeze"].values())


@pytest.mark.slow
def test_the_gpu_benchmark_refuses_a_cpu_unless_asked(benchmark, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run the benchmark itself")
    refused = benchmark("gpu_throughput.py", tmp_path=tmp_path, expect=2)
    assert "needs a CUDA GPU" in refused["stderr"]
    # fp32: the benchmark's bf16 default is emulated, several times slower, on most CPUs
    summary = benchmark(
        "gpu_throughput.py",
        *TINY,
        "--steps",
        "1",
        "--allow-cpu",
        "--precision",
        "32-true",
        tmp_path=tmp_path,
    )
    assert summary["device"] == "cpu" and summary["ratio"] > 0
