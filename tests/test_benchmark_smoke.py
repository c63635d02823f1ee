"""The CPU smoke benchmark completes and prints sdcompose's overhead ratio against plain diffusers."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_benchmark_prints_the_overhead_ratio(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r"overhead ratio \(sdcompose / plain diffusers, s per call, \+1 ControlNet\): ([0-9.]+)",
                      proc.stdout)
    assert match and float(match[1]) > 0, proc.stdout[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["smoke"] and len(results["rows"]) == 3
    for row in results["rows"]:
        assert row["sdcompose"]["s_per_call"] > 0 and row["diffusers"]["s_per_call"] > 0, row
    assert (tmp_path / "results.md").read_text().count("\n|") >= 4
