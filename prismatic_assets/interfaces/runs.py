"""Launch the code location's jobs through the Dagster instance, as the UI does, and follow them.

`Launcher` opens the project's code location (a code server process, like `dg dev`'s),
creates each run for a job of that location (so the run shows under Overview, Jobs and the
job's runs, not in an anonymous asset job), hands it to the instance's run launcher and
reads its event log until the run ends, passing every event record to a callback. A run
whose worker process died (killed, out of memory) is marked failed, as run monitoring does
in `dg dev`; Ctrl-C asks the launcher to terminate the run before returning.

The runs are launched directly, not queued: a command runs its steps one after the other,
and no daemon may be running to dequeue them. Not here: what is printed (`console.py`).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.errors import DagsterLaunchFailedError, DagsterUserCodeUnreachableError
from dagster._core.events.log import EventLogEntry
from dagster._core.launcher import WorkerStatus
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget

#: The code location of workspace.yaml and pyproject's [tool.dg]: the same name the UI shows.
LOCATION = "prismatic"
MODULE = "prismatic_assets.orchestration.definitions"
#: Seconds between two reads of a running run's event log.
POLL_SECONDS = 0.5
#: Seconds between two checks that the run's worker process still lives.
HEALTH_SECONDS = 10.0

EventCallback = Callable[[EventLogEntry], None]


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    job: str
    status: dg.DagsterRunStatus
    seconds: float

    @property
    def success(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS


class Launcher:
    """The instance and the code location, open for the commands' runs (a context manager)."""

    def __init__(self, instance: dg.DagsterInstance, working_directory: str):
        self.instance = instance
        self._target = ModuleTarget(module_name=MODULE, attribute=None, working_directory=working_directory,
                                    location_name=LOCATION)
        self._stack = contextlib.ExitStack()
        self._process: WorkspaceProcessContext | None = None

    def __enter__(self) -> Launcher:
        self._process = self._stack.enter_context(WorkspaceProcessContext(self.instance, self._target))
        location = self._process.create_request_context().get_code_location(LOCATION)  # raises on load errors
        if location is None:
            errors = self._process.create_request_context().get_code_location_error(LOCATION)
            raise RuntimeError(f"the code location {LOCATION!r} did not load: {errors}")
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def _workspace(self) -> WorkspaceProcessContext:
        if self._process is None:
            raise RuntimeError("the Launcher is not open: use it as `with Launcher(...) as launcher:`")
        return self._process

    def _job(self, name: str):
        """(request context, code location, repository, RemoteJob) of the job `name`."""
        context = self._workspace.create_request_context()
        location = context.get_code_location(LOCATION)
        repository = next(iter(location.get_repositories().values()))
        if not repository.has_job(name):
            raise KeyError(f"job {name!r} is not defined in the code location {LOCATION!r}; jobs: "
                           f"{sorted(j.name for j in repository.get_all_jobs())}")
        selector = JobSubsetSelector(location_name=LOCATION, repository_name=repository.name, job_name=name,
                                     op_selection=None)
        return context, location, repository, location.get_job(selector)

    def launch(self, job: str, partition: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """Create and launch a run of `job` (one `partition` of a partitioned job); its run id.

        The code server shuts itself down when it misses heartbeats for 45 s (a machine too
        busy to answer, a laptop asleep): it is then started again and the launch repeated once."""
        try:
            return self._launch(job, partition, tags)
        except (DagsterLaunchFailedError, DagsterUserCodeUnreachableError):
            self._workspace.reload_code_location(LOCATION)
            return self._launch(job, partition, tags)

    def _launch(self, job: str, partition: str | None, tags: Mapping[str, str] | None) -> str:
        context, location, repository, remote_job = self._job(job)
        run_config: dict = {}  # the job's own default config (the profile's settings) applies
        plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None,
                                           instance=self.instance)
        run_tags = {**remote_job.tags, **(tags or {})}
        if partition is not None:
            run_tags["dagster/partition"] = partition
        run = self.instance.create_run(
            job_name=job, run_id=None, run_config=run_config, resolved_op_selection=None,
            step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute, op_selection=None,
            status=None, root_run_id=None, parent_run_id=None, tags=run_tags, job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=None, asset_check_selection=None, asset_graph=repository.asset_graph)
        self.instance.launch_run(run.run_id, context)
        return run.run_id

    def follow(self, run_id: str, on_event: EventCallback) -> RunOutcome:
        """Read the run's events until it ends; Ctrl-C terminates the run, then re-raises."""
        cursor, began, last_health = None, time.monotonic(), time.monotonic()
        try:
            while True:
                cursor = self._drain(run_id, cursor, on_event)
                run = self.instance.get_run_by_id(run_id)
                if run is None:
                    raise KeyError(f"run {run_id} is not in the Dagster instance {self.instance.root_directory}")
                if run.is_finished:
                    self._drain(run_id, cursor, on_event)
                    return RunOutcome(run_id, run.job_name, run.status, time.monotonic() - began)
                if time.monotonic() - last_health >= HEALTH_SECONDS:
                    last_health = time.monotonic()
                    self._fail_if_worker_died(run)
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            self.instance.run_launcher.terminate(run_id)
            raise

    def _drain(self, run_id: str, cursor: str | None, on_event: EventCallback) -> str | None:
        while True:
            connection = self.instance.get_records_for_run(run_id, cursor=cursor, limit=500)
            for record in connection.records:
                on_event(record.event_log_entry)
            cursor = connection.cursor if connection.records else cursor
            if not connection.has_more:
                return cursor

    def _fail_if_worker_died(self, run) -> None:
        launcher = self.instance.run_launcher
        if run.status != dg.DagsterRunStatus.STARTED or not launcher.supports_check_run_worker_health:
            return
        health = launcher.check_run_worker_health(run)
        if health.status == WorkerStatus.FAILED:
            self.instance.report_run_failed(run, f"Run worker failed: {health.msg}")

    def in_flight(self, tags: Mapping[str, str]) -> list[str]:
        """Ids of runs carrying `tags` that are queued or running (started from the UI, say)."""
        runs = self.instance.get_runs(filters=dg.RunsFilter(tags=dict(tags), statuses=[
            dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
        return [r.run_id for r in runs]


@contextlib.contextmanager
def open_launcher(working_directory: str) -> Iterator[Launcher]:
    """The instance of $DAGSTER_HOME and the project's code location, closed on exit."""
    with dg.DagsterInstance.get() as instance, Launcher(instance, working_directory) as launcher:
        yield launcher
