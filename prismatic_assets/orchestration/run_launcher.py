"""A run launcher that lets Dagster's run monitoring see dead local run workers.

Dagster's `DefaultRunLauncher` starts each run in a process on this machine, but cannot
tell whether that process still lives, so run monitoring (dagster.yaml `run_monitoring`)
only applies start and run-time limits to it: a run whose process was killed (SIGKILL,
the OOM killer, a closed laptop lid) stays STARTED forever. `LocalRunLauncher` launches
exactly as the default does and adds the health check: the run's process is the first
process id the run logged ("Started process for run (pid: N)", or the executor's parent
process for runs started by `dagster asset materialize`); the run worker is healthy while
that process exists and started before the event was written (a recycled pid is not
mistaken for it). The monitoring daemon (`dagster dev`, `dagster-daemon run`) then marks
runs with a dead worker FAILED on its next poll.

Local only: the check looks at this machine's process table, which is where the default
launcher starts runs. It does not resume runs (`max_resume_run_attempts: 0`): a rerun of
the same assets resumes from the store's caches.
"""

from __future__ import annotations

from typing import Any, Mapping

import psutil
from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher

# Dagster exports the health-check types only from its private package: pyproject.toml pins
# dagster to the minor release this was tested with (1.13.x) so an upgrade cannot break it unseen.
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

# Process start times come from /proc with jiffy resolution; the event is written after the
# process started, so allow a little clock slack before calling a pid recycled.
_START_SLACK_S = 2.0


def run_worker_pid(instance: Any, run_id: str) -> tuple[int, float] | None:
    """(pid, event timestamp) of the first process a run logged, None if it logged none yet."""
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = getattr(event, "engine_event_data", None) if event is not None else None
        metadata = getattr(data, "metadata", None) or {}
        value = metadata.get("pid")
        if value is None:
            continue
        text = getattr(value, "value", value)
        try:
            return int(str(text)), float(entry.timestamp)
        except ValueError:
            continue
    return None


def worker_status(pid: int, logged_at: float) -> tuple[WorkerStatus, str]:
    """Whether the process `pid`, logged at `logged_at`, is still the one that logged."""
    try:
        process = psutil.Process(pid)
        started = process.create_time()
        status = process.status()
    except psutil.NoSuchProcess:
        return WorkerStatus.FAILED, f"run worker process {pid} is gone (killed or crashed)"
    except psutil.AccessDenied:
        return WorkerStatus.RUNNING, f"run worker process {pid} exists (owned by another user)"
    if status == psutil.STATUS_ZOMBIE:
        return WorkerStatus.FAILED, f"run worker process {pid} is gone (exited without ending its run)"
    if started > logged_at + _START_SLACK_S:
        return WorkerStatus.FAILED, (f"run worker process {pid} is gone: that process id now belongs to a process "
                                     f"started later")
    return WorkerStatus.RUNNING, f"run worker process {pid} is running"


class LocalRunLauncher(DefaultRunLauncher):
    """`DefaultRunLauncher` plus a run-worker health check for run monitoring (see module doc)."""

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]) -> LocalRunLauncher:
        return cls(inst_data=inst_data)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        found = run_worker_pid(self._instance, run.run_id)
        if found is None:  # not started far enough to log a process: the start timeout covers it
            return CheckRunHealthResult(WorkerStatus.RUNNING, "run worker has not logged a process yet")
        status, message = worker_status(*found)
        return CheckRunHealthResult(status, message, run_worker_id=str(found[0]))
