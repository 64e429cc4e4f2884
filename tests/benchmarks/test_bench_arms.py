"""`python -m benchmarks.bench_arms --tiny`: whole runs of a tiny world with a tiny random-init proxy,
redraws of each acceptance, and the per-arm summary, through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_tiny_replay_runs_every_seed_and_redraw(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_arms", "--tiny", "--seeds", "2", "--draws", "3",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "arms.json").read_text())
    assert result["seeds"] == 2 and result["draws"] == 3 and result["ratios"] == [0.2]
    runs = result["runs"]["0.2"]
    assert len(runs) == 2 and all(len(run["rounds"]) == 2 for run in runs)
    assert runs[0]["rounds"][0]["arms"]["random"]["gain"] != runs[1]["rounds"][0]["arms"]["random"]["gain"]
    summary = result["summary"]
    for rnd in (1, 2):
        naive = summary[f"0.2/{rnd}/naive"]
        # naive takes generation order: every redraw is the run's own acceptance
        assert naive["gain_redraws"] == [g for g in naive["gain_seeds"] for _ in range(3)]
        assert len(set(summary[f"0.2/{rnd}/random"]["gain_redraws"])) > 1  # the draws differ
        for arm in ("prismatic", "prismatic_targeted"):
            row = summary[f"0.2/{rnd}/{arm}"]
            rand = summary[f"0.2/{rnd}/random"]
            assert row["seeds_at_least_random"] == sum(a >= b for a, b in zip(row["gain_seeds"], rand["gain_seeds"]))
            assert 0 <= row["redraws_at_least_random"] <= 6
    table = (tmp_path / "arms.md").read_text()
    assert "| 2 | prismatic_targeted |" in table and "of 6 |" in table and "Wall time" in table
