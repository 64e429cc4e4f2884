"""scripts/measure_step_memory.py: the peak it reports is the peak of the largest process of the tree."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_peak_of_a_child_process_is_seen():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from measure_step_memory import measure
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    # A parent that starts a child which holds 400 MB for a moment, then frees it and waits.
    child = "import time; b = bytearray(400 * 2**20); time.sleep(1.0); del b; time.sleep(0.5)"
    parent = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}], check=True)"
    code, peaks = measure([sys.executable, "-c", parent], dict(os.environ), interval=0.1)
    assert code == 0
    largest = max(peaks.values(), key=lambda v: v["peak"])
    assert "bytearray" in largest["cmd"] and 400 * 2**20 <= largest["peak"] < 600 * 2**20
