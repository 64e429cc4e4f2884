"""The gradient GPU smoke benchmark (benchmarks/bench_gpu_gradients.py), run with --tiny on the CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tiny_gpu_gradient_benchmark_runs_on_cpu(tmp_path):
    from benchmarks.bench_gpu_gradients import main

    assert main(["--tiny", "--device", "cpu", "--batch-size", "4", "--n", "4", "--tokens", "48", "--dim", "64",
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "gpu_gradients.json").read_text())
    assert result["tiny"] and result["device"] == "cpu" and result["n"] == 4 and result["errors"] == []
    assert result["samples_per_s"] > 0 and result["projection_ms_per_sample"] > 0
    assert result["projection"].startswith("rademacher-") and result["autocast"] == "bf16"
    assert "samples/s" in (tmp_path / "gpu_gradients.md").read_text()


def test_gpu_smoke_script_is_valid_bash():
    script = ROOT / "scripts" / "gpu_smoke_gradients.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert "benchmarks.bench_gpu_gradients" in script.read_text()
