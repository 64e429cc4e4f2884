"""scripts/gpu_smoke.py, the GPU smoke test, dry-run on CPU with tiny models so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_smoke_script_passes_its_cpu_dry_run():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py"), "--tiny"], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    lines = [l for l in done.stdout.splitlines() if l.startswith("[gpu-smoke]")]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    checks = [l.split(":")[0].split(" ", 2)[2] for l in lines]
    assert checks == ["engine generator", "engine teacher", "sft", "gradients", "total"]
    assert all(" PASS " in l for l in lines)


def test_gpu_smoke_refuses_to_run_without_cuda_unless_tiny():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_smoke.py")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 2 and "no CUDA device" in done.stdout
