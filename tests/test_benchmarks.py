"""Benchmarks are not timed tests; this only keeps them runnable."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO


def test_freeze_speed_prints_ratios_against_its_baseline():
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "freeze_speed.py"), "--image-size", "32",
                             "--steps", "1", "--batch-size", "4"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["speedup_vs_freeze0"]["0"] == 1.0 and set(summary["images_per_s"]) == {"0", "1", "2", "3", "4"}
