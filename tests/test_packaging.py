"""The wheel: every package and the profiles ship, and `prismatic config show` works from an install."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "prismatic_assets").rglob("__init__.py")}
    assert found | {"prismatic_assets.profiles"} == listed


def test_installed_wheel_shows_the_paper_profile_from_another_directory(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheel_dir), str(ROOT)], check=True, capture_output=True, cwd=tmp_path)
    wheel = next(wheel_dir.glob("prismatic-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    env.pop("PRISMATIC_PROFILE", None)
    code = ("import prismatic_assets, sys; from prismatic_assets.interfaces.cli import main; "
            "print('FROM', prismatic_assets.__file__); sys.exit(main(['config', 'show', '--profile', 'paper']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"FROM {target}" in done.stdout  # the installed copy, not the source checkout
    assert "prismatic_assets/profiles/paper.yaml" in done.stdout and "Qwen/Qwen2.5-72B-Instruct" in done.stdout
