"""`make ui` serves on loopback only and stops on Ctrl-C: the command the Makefile runs
(`dg dev`), started for real, every listening socket of it and its children (webserver, code
server, daemon) inspected, then SIGINT sent to its process group as a terminal's Ctrl-C does
(with SIGINT at its default in the UI, as in a terminal, even when this test run was started
in the background; see tests/ui_process.py)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.ui_process import REPO, free_port, start_ui, ui_home

LOOPBACK = {"127.0.0.1", "::1"}
#: Seconds within which Ctrl-C must have stopped every process of `make ui` (about 15 s
#: measured on a 2-core machine under a load average of 9). A code server that misses the
#: webserver's shutdown call on a loaded machine exits at its heartbeat timeout (Dagster's
#: `--heartbeat-timeout 30`): 30 s plus the time to notice and exit bounds every process.
STOP_WITHIN_S = 45


def ui_recipe() -> str:
    """The `dg dev` line of the Makefile's `ui` target."""
    lines = (REPO / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ui:"))
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        if "dg dev" in line:
            return line.strip()
    raise AssertionError("the Makefile's ui target runs no `dg dev`")


LOCATIONS_QUERY = b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"}'


def _locations_loaded(port: int) -> bool:
    """Whether every code location of the UI has finished loading (GraphQL, as the UI asks)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=LOCATIONS_QUERY,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            entries = json.loads(reply.read())["data"]["workspaceOrError"].get("locationEntries") or []
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def test_ui_recipe_names_loopback():
    words = shlex.split(ui_recipe())
    host = words[words.index("-h") + 1] if "-h" in words else words[words.index("--host") + 1]
    assert host == "127.0.0.1"


@pytest.mark.integration
def test_ui_listens_on_loopback_only(tmp_path):
    words = shlex.split(ui_recipe())
    command = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
    command[0] = str(Path(sys.executable).parent / Path(command[0]).name)  # .venv/bin/dagster of this env
    port = free_port()
    command[command.index("-p") + 1] = str(port)
    env = {**os.environ, "DAGSTER_HOME": str(ui_home(tmp_path)), "PYTHONPATH": str(REPO)}
    proc = start_ui(command, env, tmp_path / "ui.log")
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dagster dev did not answer within 240 s"
            time.sleep(1)
        listening: list[tuple[str, int, str]] = []
        for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]:
            try:
                for conn in p.net_connections(kind="inet"):
                    if conn.status == psutil.CONN_LISTEN:
                        listening.append((conn.laddr.ip, conn.laddr.port, p.name()))
            except psutil.NoSuchProcess:
                continue
        assert any(lport == port for _, lport, _ in listening), listening
        exposed = [entry for entry in listening if entry[0] not in LOOPBACK]
        assert not exposed, f"listening beyond loopback: {exposed}"
        log = (tmp_path / "ui.log").read_text()
        assert "superseded" not in log.lower() and "deprecat" not in log.lower(), log[-3000:]

        # Ctrl-C once the UI is up (the code location loaded, as a user sees it): every process
        # of the UI is gone within seconds. (Interrupted as soon as /server_info answered, while
        # its code servers were still starting, every process was once still alive 30 s later.)
        while not _locations_loaded(port):
            assert proc.poll() is None, (tmp_path / "ui.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the code location did not load within 240 s"
            time.sleep(1)
        processes = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(processes) >= 3  # dg, webserver, daemon, code server
        os.killpg(proc.pid, signal.SIGINT)
        _, alive = psutil.wait_procs(processes, timeout=STOP_WITHIN_S)
        assert not alive, f"still running {STOP_WITHIN_S} s after Ctrl-C: {[p.cmdline() for p in alive]}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
