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


def _fake_run(gains: dict[str, float]) -> dict:
    """One run of one round: each arm's gain; redraws of 2 draws each (the gain and the gain + 1)."""
    arms = {arm: {"gain": g, "entropy": 1.0, "cells": 3, "accepted": 2, "passed_filter": 2, "verified": 4}
            for arm, g in gains.items()}
    return {"seconds": 10.0, "rounds": [{"round": 1, "arms": arms,
                                         "redraws": {arm: {"gain": [g, g + 1.0], "entropy": [1.0, 1.0]}
                                                     for arm, g in gains.items()}}]}


def _fake_file(path: Path, first_seed: int, runs: list[dict]) -> Path:
    path.write_text(json.dumps({"seeds": len(runs), "first_seed": first_seed, "draws": 2, "ratios": [0.1],
                                "tiny": False, "total_seconds": 10.0 * len(runs), "runs": {"0.1": runs}}))
    return path


def test_combine_summarizes_the_runs_of_several_files_together(tmp_path):
    from benchmarks.bench_arms import main

    a = _fake_file(tmp_path / "a.json", 0, [_fake_run({"prismatic": 1.0, "prismatic_targeted": 0.5, "random": 0.8,
                                                       "naive": 0.1})])
    b = _fake_file(tmp_path / "b.json", 1, [_fake_run({"prismatic": 0.2, "prismatic_targeted": 0.9, "random": 0.4,
                                                       "naive": 0.3}),
                                            _fake_run({"prismatic": 0.7, "prismatic_targeted": 0.6, "random": 0.6,
                                                       "naive": 0.3})])
    out = tmp_path / "out"
    main(["--combine", str(a), str(b), "--out", str(out)])
    result = json.loads((out / "arms.json").read_text())
    assert result["world_seeds"] == {"0.1": [0, 1, 2]} and result["seeds"] == 3
    row = result["summary"]["0.1/1/prismatic"]
    assert row["gain_seeds"] == [1.0, 0.2, 0.7]
    assert row["seeds_at_least_random"] == 2  # 1.0 >= 0.8, 0.2 < 0.4, 0.7 >= 0.6
    # redraws pair draw by draw within a seed: (1, 0.8) (2, 1.8) | (0.2, 0.4) (1.2, 1.4) | (0.7, 0.6) (1.7, 1.6)
    assert row["redraws_at_least_random"] == 4
    # targeted: 0.5 < 0.8; 0.9 >= 0.4; 0.6 >= 0.6
    assert result["summary"]["0.1/1/prismatic_targeted"]["seeds_at_least_random"] == 2
    table = (out / "arms.md").read_text()
    assert "3 seeds (world.seed 0..2)" in table and "2 of 3 | 4 of 6 |" in table


def test_combine_refuses_a_seed_given_twice_and_unlike_runs(tmp_path):
    import pytest

    from benchmarks.bench_arms import main

    run = _fake_run({"prismatic": 1.0, "prismatic_targeted": 0.5, "random": 0.8, "naive": 0.1})
    a = _fake_file(tmp_path / "a.json", 0, [run, run])
    b = _fake_file(tmp_path / "b.json", 1, [run])
    with pytest.raises(SystemExit, match=r"b.json repeats world seed\(s\) \[1\]"):
        main(["--combine", str(a), str(b), "--out", str(tmp_path / "out")])
    c = tmp_path / "c.json"
    c.write_text(json.dumps({**json.loads(b.read_text()), "first_seed": 5, "draws": 3}))
    with pytest.raises(SystemExit, match="c.json has 3 redraws"):
        main(["--combine", str(a), str(c), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "arms.json").exists()
