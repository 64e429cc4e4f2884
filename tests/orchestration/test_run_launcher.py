"""Killed runs end FAILED: this project's dagster.yaml, a real instance, real processes.

A run of a slow asset is started with `dagster asset materialize` in its own process
group; the real monitoring daemon (`dagster-daemon run`) watches it; the whole process
group is then SIGKILLed. The run must stay STARTED while its process lives and end FAILED
once it is gone, with a message naming the dead process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import yaml

from prismatic_assets.orchestration.run_launcher import LocalRunLauncher, worker_status

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

SLOW_ASSET = textwrap.dedent('''
    import os, time
    from pathlib import Path
    import dagster as dg

    @dg.asset
    def slow() -> None:
        Path(os.environ["STEP_PID_FILE"]).write_text(str(os.getpid()))
        time.sleep(600)

    defs = dg.Definitions(assets=[slow])
''')


def _wait(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_project_instance_monitors_runs_with_the_local_launcher():
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_launcher"] == {"module": "prismatic_assets.orchestration.run_launcher",
                                      "class": "LocalRunLauncher"}


def test_worker_status_sees_live_dead_and_recycled_processes():
    from dagster._core.launcher import WorkerStatus

    me = os.getpid()
    assert worker_status(me, time.time())[0] == WorkerStatus.RUNNING
    # A pid logged long before this process started belongs to another, earlier process.
    status, message = worker_status(me, time.time() - 10 * 24 * 3600)
    assert status == WorkerStatus.FAILED and "started later" in message
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    status, message = worker_status(child.pid, time.time())
    assert status == WorkerStatus.FAILED and f"process {child.pid} is gone" in message
    # Killed but not yet reaped by its parent (a zombie): the same message, whichever the monitor sees first.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    child.kill()
    deadline = time.time() + 30
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.time() < deadline:
        time.sleep(0.05)
    status, message = worker_status(child.pid, time.time())
    child.wait()
    assert status == WorkerStatus.FAILED and f"process {child.pid} is gone" in message


@pytest.mark.integration
def test_killed_run_ends_failed(tmp_path):
    import dagster as dg
    from dagster._core.launcher import WorkerStatus

    home = tmp_path / "home"
    home.mkdir()
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["run_monitoring"]["poll_interval_seconds"] = 1  # the project's settings, polled faster
    for key in ("storage", "local_artifact_storage", "compute_logs"):  # keep state in the temporary home
        config.pop(key, None)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "slow_defs.py").write_text(SLOW_ASSET)
    pid_file = tmp_path / "step.pid"
    env = {**os.environ, "DAGSTER_HOME": str(home), "STEP_PID_FILE": str(pid_file),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}

    run_log = tmp_path / "run.log"
    run = subprocess.Popen([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "slow_defs",
                            "--select", "slow"], cwd=tmp_path, env=env, start_new_session=True,
                           stdout=open(run_log, "w"), stderr=subprocess.STDOUT)
    daemon = None
    try:
        # The daemon starts once the run's step does: two processes creating a fresh instance's
        # SQLite storage at the same moment can race on its schema (alembic) and one of them dies.
        _wait(lambda: pid_file.exists() or run.poll() is not None, 180, "the asset to start")
        assert pid_file.exists(), f"the run ended before its step started:\n{run_log.read_text()[-3000:]}"
        daemon = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-m", "slow_defs"], cwd=tmp_path, env=env,
                                  start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=open(tmp_path / "daemon.log", "w"))
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_launcher, LocalRunLauncher)
            (record,) = instance.get_run_records()
            run_id = record.dagster_run.run_id
            assert record.dagster_run.status == dg.DagsterRunStatus.STARTED
            assert instance.run_launcher.check_run_worker_health(record.dagster_run).status == WorkerStatus.RUNNING
            # Monitored while alive: several polls pass and the run stays STARTED.
            _wait(lambda: instance.get_daemon_heartbeats().get("MONITORING"), 180, "the monitoring daemon")
            time.sleep(4)
            assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.STARTED

            os.killpg(run.pid, signal.SIGKILL)  # the run worker and its step process, no chance to clean up
            run.wait(timeout=30)
            status = _wait(lambda: (s := instance.get_run_by_id(run_id).status) != dg.DagsterRunStatus.STARTED and s,
                           120, "the run to leave STARTED")
            assert status == dg.DagsterRunStatus.FAILURE
            failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            assert failure and f"run worker process {run.pid} is gone" in failure[-1].message
    finally:
        for proc in (run, daemon):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
