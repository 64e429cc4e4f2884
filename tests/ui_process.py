"""`dg dev` started for a test as a user starts it from a terminal: its own process group, a
Dagster home of the project's instance settings outside the repository, and Ctrl-C acting.

A command started in the background by a non-interactive shell (`make test &`, `nohup ...
&`) inherits SIGINT ignored, and an ignored signal stays ignored across exec: `dg dev` and
every process of the UI would then outlive Ctrl-C. A terminal's foreground job has SIGINT at
its default, so the UI is started with it reset there, whatever this test run inherited.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ui_home(root: Path) -> Path:
    """A Dagster home under `root` with the project's instance settings, its state (storage,
    artifacts, compute logs) kept out of the repository."""
    home = root / "home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    for key in ("storage", "local_artifact_storage", "compute_logs"):
        config.pop(key, None)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


def _terminal_signals() -> None:
    """In the child before exec: Ctrl-C and Ctrl-\\ at their defaults, as in a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def start_ui(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start `command` (a `dg dev` line) in its own process group with terminal signals,
    stderr to `log`."""
    with open(log, "w") as stderr:
        return subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=stderr, preexec_fn=_terminal_signals)
