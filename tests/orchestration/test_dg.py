"""`dg check defs`, Dagster's own check of a project, passes for this project and fails when the
code location cannot load (here: a profile with an unknown key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DG = str(Path(sys.executable).parent / "dg")


def _check(tmp_path, profile: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("PRISMATIC_PROFILE", None)
    if profile:
        env["PRISMATIC_PROFILE"] = profile
    return subprocess.run([DG, "check", "defs", "--use-active-venv"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_dg_check_defs_passes(tmp_path):
    proc = _check(tmp_path, None)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "All definitions loaded successfully" in proc.stdout + proc.stderr


def test_dg_check_defs_fails_on_a_broken_profile(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("profile: broken\nclustering:\n  ratoi: 0.1\n")
    proc = _check(tmp_path, str(broken))
    assert proc.returncode != 0
    assert "ratoi" in proc.stdout + proc.stderr
