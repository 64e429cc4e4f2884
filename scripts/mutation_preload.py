"""A pytest plugin for mutation runs (`scripts/mutation.py` loads it with `-p`): it makes the
modules a test run needs load once per run instead of once per mutant.

mutmut runs each mutant's tests in a process forked from a server that has only collected
them, so every mutant imported again what the tests import while they run (torch, the
transformers model classes, Dagster, SciPy: about 4,000 modules and 5 s for a round test,
half of its time). The first real test run of a working copy writes the names of the modules
it ended with to $PRISMATIC_MUTATION_PRELOAD; a collect-only run (mutmut's server warming up)
imports them, so the processes forked from it start with them loaded. Importing starts no
thread, so forking after it stays safe. The test modules themselves are left to pytest.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

ENV = "PRISMATIC_MUTATION_PRELOAD"


def _listed() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def _own(name: str, rootdir: Path) -> bool:
    """A module pytest imports itself: a test module or a conftest of this run's tree."""
    if name == "__main__":
        return True
    file = getattr(sys.modules.get(name), "__file__", None)
    if file is None:  # built in, or a namespace package
        return False
    path = Path(file).resolve()
    return path.name == "conftest.py" or path.name.startswith("test_") or (rootdir / "tests") in path.parents


def pytest_configure(config: pytest.Config) -> None:
    path = _listed()
    if path is None or not config.option.collectonly or not path.is_file():
        return
    for name in path.read_text().split():
        if name not in sys.modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001  # best effort: a module the run imported another way
                pass


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = _listed()
    if path is None or session.config.option.collectonly or path.is_file():
        return
    rootdir = Path(session.config.rootpath).resolve()
    names = sorted(name for name in list(sys.modules) if not _own(name, rootdir))
    path.write_text("\n".join(names) + "\n")
