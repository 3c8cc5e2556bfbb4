"""Benchmarks are not timed tests; this only keeps them runnable (tiny sizes, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, subprocess_env

# 10 classes x 6 JPEGs of 64 px: enough for a train/validation/test carving at batch 8
TINY = ["--image-size", "32", "--batch-size", "8", "--epochs", "2", "--images-per-class", "6",
        "--source-size", "64"]
# the smallest network and fp32: `auto` would first measure bf16 against fp32 (seconds), which
# tests/test_resources.py covers; the benchmarks' own code paths are the same at any size
SMALL = ["--blocks", "1,1,1,1", "--precision", "32-true"]


def benchmark(name: str, *args: str, tmp_path=None, expect: int = 0) -> dict:
    extra = ["--work-dir", str(tmp_path)] if tmp_path else []
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / name), *args, *extra], capture_output=True,
                            text=True, timeout=180, env=subprocess_env(), cwd=tmp_path)
    assert result.returncode == expect, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]) if expect == 0 else {"stderr": result.stderr}


@pytest.mark.slow
def test_freeze_speed_prints_ratios_against_its_baseline():
    summary = benchmark("freeze_speed.py", *SMALL, "--image-size", "32", "--steps", "1", "--batch-size", "4")
    assert summary["speedup_vs_freeze0"]["0"] == 1.0 and set(summary["images_per_s"]) == {"0", "1", "2", "3", "4"}


@pytest.mark.slow
def test_train_throughput_compares_compute_only_project_and_baseline(tmp_path):
    summary = benchmark("train_throughput.py", *TINY, *SMALL, "--freeze-blocks", "2", "--steps", "1", tmp_path=tmp_path)
    rates = summary["images_per_s"]
    assert set(rates) == {"compute only", "project", "project, feature cache on", "seed-style baseline"}
    assert all(v > 0 for v in rates.values()) and summary["project_vs_compute_only"] > 0


@pytest.mark.slow
def test_sweep_time_times_the_project_and_the_baseline(tmp_path):
    # ResNet18 kept: the rounded compute bound of a ResNet10 cell can be 0.0 s on a fast CPU
    summary = benchmark("sweep_time.py", *TINY, "--precision", "32-true", "--freeze", "0,4", "--limit-batches", "2",
                        "--compare-uncached", tmp_path=tmp_path)
    assert set(summary["per_freeze"]) == {"0", "4"} and summary["project_s"] > 0 and summary["baseline_s"] > 0
    assert summary["per_freeze"]["4"]["feature_cache"] == "on" and "uncached_val_acc" in summary["per_freeze"]["4"]
    # the compute bound: measured per cell, and no real sweep beats it
    # each figure is rounded on its own (seconds to 0.1): allow for that in the ratio of the rounded ones
    project, bound = summary["project_s"], summary["bound_s"]
    assert bound > 0 and summary["over_bound"] == pytest.approx(project / bound, abs=0.01 + 0.06 / bound + 0.06 * project / bound ** 2)
    assert all(row["bound_s"] > 0 for row in summary["per_freeze"].values())


@pytest.mark.slow
def test_the_gpu_benchmark_refuses_a_cpu_unless_asked(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run the benchmark itself")
    refused = benchmark("gpu_throughput.py", tmp_path=tmp_path, expect=2)
    assert "needs a CUDA GPU" in refused["stderr"]
    # fp32: the benchmark's bf16 default is emulated, several times slower, on most CPUs
    summary = benchmark("gpu_throughput.py", *TINY, "--steps", "1", "--allow-cpu", "--precision", "32-true",
                        tmp_path=tmp_path)
    assert summary["device"] == "cpu" and summary["ratio"] > 0
