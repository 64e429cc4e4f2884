"""`python -m benchmarks.bench_sft --tiny`: both batch layouts train, through the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_tiny_benchmark_times_both_layouts_on_the_same_batches(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_sft", "--tiny", "--steps", "2", "--batch", "3",
                           "--repeats", "1", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "sft.json").read_text())
    assert result["samples"] == 24 and result["steps"] == 2 and result["batch"] == 3
    assert all(len(runs) == 1 and runs[0] > 0 for runs in result["seconds"].values())
    # 2 batches of 3 samples padded to their longest: a multiple of 3, never fewer than the real tokens.
    assert result["padded_tokens"] % 3 == 0 and 0 < result["real_tokens"] <= result["padded_tokens"]
    # The same batches learn the same: the losses of the two layouts agree step by step.
    padded, flat = result["losses"]["padded"], result["losses"]["padding_free"]
    assert len(padded) == len(flat) == 2 and flat == pytest.approx(padded, rel=1e-5)
    assert result["speedup"] == pytest.approx(result["seconds_per_step"]["padded"]
                                              / result["seconds_per_step"]["padding_free"])
    table = (tmp_path / "sft.md").read_text()
    assert f"| padded | {result['padded_tokens']:,} |" in table and "| padding_free |" in table
