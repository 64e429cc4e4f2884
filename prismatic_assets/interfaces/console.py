"""What the pipeline commands print while Dagster runs their jobs: a console a person reads.

`prismatic demo`, `experiment`, `pipeline` and `rounds` launch runs through the instance
(`runs.py`) and pass every event of each run to a `RunView`, which prints:
- one line per materialized asset: its time and its figure (G-Vendi, K, accepted per arm...);
- live progress of long stages from the steps' `progress:` log lines (`orchestration/progress.py`):
  on a terminal a bar redrawn in place, otherwise a line at each tenth of the work at most
  once a minute; the rate is measured over the last minute of work (the time stamps of the
  lines, not when they were read), so a late or bunched delivery does not skew it;
- a retried step (a killed process, a flaky server) with its cause, as it happens;
- on failure, one paragraph: which step, the cause, and where the full log is.

Everything else goes to the command's log file under `<data_dir>/logs/`: every Dagster event
of every run (DEBUG included) and all output of the processes the command starts (code
server, run workers: model-loading progress bars, library warnings), because
`CommandConsole` points this process's stdout and stderr at that file for its duration and
prints through copies of the original streams.

Not here: launching and following runs (`runs.py`), the summaries after the runs (`cli.py`).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, TextIO

import dagster as dg
from dagster._core.events.log import EventLogEntry

from prismatic_assets.orchestration.progress import parse_progress
from prismatic_assets.orchestration.retry import CRASH_PREFIX, crash_cause, error_cause

#: Progress rate window (seconds of work): recent enough to follow a change of pace, long
#: enough to smooth a batch that arrives at once.
RATE_WINDOW_S = 60.0
#: Without a terminal, a progress line at most this often (and only at a new tenth of the work).
PLAIN_PROGRESS_EVERY_S = 60.0
#: Width of the step-name column.
NAME_WIDTH = 22


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Rate:
    """Items per second over the last `window_s` seconds of (time, done) observations."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self._points: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, at: float, done: int) -> None:
        if self._points and done < self._points[-1][1]:  # a new pass over the same stage
            self._points.clear()
        self._points.append((at, done))
        # keep one point older than the window, so the window is always covered
        while len(self._points) > 2 and self._points[1][0] <= at - self.window_s:
            self._points.popleft()

    def per_second(self) -> float | None:
        if len(self._points) < 2:
            return None
        (t0, d0), (t1, d1) = self._points[0], self._points[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 and d1 > d0 else None


def progress_text(stage: str, done: int, total: int, rate: float | None, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "." * (width - filled)
    text = f"{stage} [{bar}] {done}/{total}"
    if rate:
        per = f"{rate:.2f}/s" if rate >= 1 else f"{1 / rate:.1f} s each"
        text += f", {per}, {format_seconds((total - done) / rate)} left"
    return text


# --- figures: the one line of each materialized asset ---------------------------------------

def _values(metadata) -> dict:
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


def _num(value) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _per_arm(meta: dict, prefix: str) -> dict[str, object]:
    return {k[len(prefix):]: v for k, v in meta.items() if k.startswith(prefix) and v is not None}


def figure_line(asset: str, partition: str | None, meta: dict) -> str:
    """The figure a user looks for in one materialization of `asset` ('' if none is known)."""
    get = meta.get
    if asset == "seed_samples":
        return f"{get('n_pool')} samples in the pool, {get('n_holdout')} held out, {get('n_rejected')} rows rejected"
    if asset == "gradient_embeddings":
        return (f"{get('n_valid')} vectors ({get('n_computed')} computed, {get('n_cached')} cached), "
                f"d={get('dim')}" + (f", {get('n_errors')} failed" if get("n_errors") else ""))
    if asset == "gradient_clusters":
        return f"K={get('k')}, {get('n_sparse')} sparse clusters"
    if asset == "g_vendi":
        return f"G-Vendi {_num(get('g_vendi'))} (N={get('n')}, d={get('dim')}, q={get('q')})"
    if asset == "arm_round":
        accepted, gvendi = _per_arm(meta, "accepted/"), _per_arm(meta, "g_vendi/")
        arms = sorted(set(accepted) | set(gvendi))
        return "accepted / G-Vendi: " + ", ".join(f"{a} {accepted.get(a, '-')} / {_num(gvendi.get(a, '-'))}"
                                                    for a in arms)
    if asset == "arm_students":
        accuracy = {k: v for k, v in _per_arm(meta, "accuracy/").items() if k.endswith("/in_distribution")}
        return "in-distribution accuracy: " + ", ".join(f"{k.split('/')[0]} {_num(v)}" for k, v in accuracy.items())
    if asset == "synthesis_round":
        return (f"accepted {get('accepted')} of {get('problems_parsed')} parsed problems; G-Vendi "
                f"{_num(get('g_vendi_before'))} -> {_num(get('g_vendi_after'))}")
    if asset == "distilled_model":
        return f"{get('n_train')} training samples, final loss {_num(get('final_loss'))}"
    if asset == "student_evaluation":
        return f"accuracy: base {_num(get('base_overall'))}, distilled {_num(get('distilled_overall'))}"
    if asset == "dataset_comparison":
        return "G-Vendi: " + ", ".join(f"{k} {_num(v)}" for k, v in _per_arm(meta, "g_vendi/").items())
    return ""


# --- the console ---------------------------------------------------------------------------

class Console:
    """Lines for a person on `out`/`err`; everything, with time stamps, in `log`."""

    def __init__(self, out: TextIO, err: TextIO, log: TextIO, tty: bool):
        self.out, self.err, self.log, self.tty = out, err, log, tty
        self._status = ""

    def say(self, text: str, error: bool = False) -> None:
        self._clear()
        stream = self.err if error else self.out
        stream.write(text + "\n")
        stream.flush()
        self.record(text)

    def status(self, text: str) -> None:
        """A line redrawn in place (terminals only)."""
        if not self.tty:
            return
        columns = _columns()
        text = text[:columns - 1]
        self.out.write("\r" + text + " " * max(0, len(self._status) - len(text)))
        self.out.flush()
        self._status = text

    def record(self, text: str) -> None:
        self.log.write(f"{dt.datetime.now().isoformat(timespec='seconds')} | {text}\n")
        self.log.flush()

    def _clear(self) -> None:
        if self._status:
            self.out.write("\r" + " " * len(self._status) + "\r")
            self._status = ""


def _columns() -> int:
    stdout = sys.__stdout__
    if stdout is None:
        return 100
    try:
        return os.get_terminal_size(stdout.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


def _level(level: str | int) -> int:
    """A log entry's level as a number (Dagster allows a level name)."""
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    return number if isinstance(number, int) else logging.INFO


class RunView:
    """Turns one run's event log entries into console lines (see the module docstring)."""

    def __init__(self, console: Console, label: str):
        self.console, self.label = console, label
        self.started: dict[str, float] = {}
        self.materialized: dict[str, list[tuple[str, str | None, dict]]] = collections.defaultdict(list)
        self.failures: dict[str, str] = {}
        self.crash: dict[str, str] = {}
        self.retries: dict[str, list[str]] = collections.defaultdict(list)
        self.run_failure: str | None = None
        self.rates: dict[tuple[str, str], Rate] = {}
        self.printed: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, entry: EventLogEntry) -> None:
        self.console.log.write(_log_line(entry))
        event, step = entry.dagster_event, entry.step_key or ""  # "": a run-level event
        if event is None:
            self._user_message(entry)
            return
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START:
            self.started[step] = entry.timestamp
            self.console.status(f"  {step} ...")
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            mat = event.step_materialization_data.materialization
            self.materialized[step].append((mat.asset_key.to_user_string(), mat.partition, _values(mat.metadata)))
        elif kind == dg.DagsterEventType.STEP_SUCCESS:
            self._step_done(step, entry.timestamp)
        elif kind == dg.DagsterEventType.ENGINE_EVENT and step and entry.user_message.startswith(CRASH_PREFIX):
            self.crash[step] = crash_cause(entry.user_message)
        elif kind == dg.DagsterEventType.STEP_UP_FOR_RETRY:
            data = event.step_retry_data
            cause = self.crash.pop(step, "") or error_cause(data.error)
            self.retries[step].append(cause)
            wait = f"; retrying in {data.seconds_to_wait:.0f} s" if data.seconds_to_wait else "; retrying"
            self.console.say(f"  {step}: attempt {len(self.retries[step])} failed ({cause}){wait}")
        elif kind == dg.DagsterEventType.STEP_FAILURE:
            failure = event.step_failure_data
            described = failure.user_failure_data.description if failure.user_failure_data else None
            self.failures[step] = self.crash.pop(step, "") or described or error_cause(failure.error)
        elif kind == dg.DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.asset_check_evaluation_data
            if not check.passed:
                severity = "warning" if check.severity == dg.AssetCheckSeverity.WARN else "failed"
                self.console.say(f"  check {check.check_name} on {check.asset_key.to_user_string()}: {severity}"
                                 + (f" ({check.description})" if check.description else ""))
        elif kind == dg.DagsterEventType.RUN_FAILURE:
            self.run_failure = entry.user_message

    def _user_message(self, entry: EventLogEntry) -> None:
        parsed = parse_progress(entry.user_message)
        if parsed is not None:
            self._progress(entry.step_key or "", *parsed, at=entry.timestamp)
        elif _level(entry.level) >= logging.WARNING:
            self.console.say(f"  {entry.step_key or self.label}: {entry.user_message}")

    def _progress(self, step: str, stage: str, done: int, total: int, at: float) -> None:
        key = (step, stage)
        rate = self.rates.setdefault(key, Rate())
        rate.add(at, done)
        text = f"  {step}: " + progress_text(stage, done, total, rate.per_second())
        if self.console.tty:
            self.console.status(text)
            return
        last_at, last_tenth = self.printed.get(key, (self.started.get(step, at), 0))
        tenth = 10 * done // total if total else 10
        if tenth > last_tenth and done < total and at - last_at >= PLAIN_PROGRESS_EVERY_S:
            self.printed[key] = (at, tenth)
            self.console.say(text)

    def _step_done(self, step: str, at: float) -> None:
        seconds = at - self.started.get(step, at)
        for asset, partition, meta in self.materialized.get(step, []):
            name = f"{asset}[{partition}]" if partition else asset
            retried = f" (after {len(self.retries[step])} failed attempt(s): {'; '.join(self.retries[step])})" \
                if self.retries.get(step) else ""
            self.console.say(f"  {name:<{NAME_WIDTH}} {format_seconds(seconds):>8}  "
                             f"{figure_line(asset, partition, meta)}{retried}")

    def failure_paragraph(self, outcome, log_path: Path) -> str:
        """Which step failed, why, and where the full log is: one paragraph."""
        if self.failures:
            step, cause = next(iter(self.failures.items()))
            earlier = self.retries.get(step)
            what = (f"step {step} failed" + (f" after {len(earlier) + 1} attempts" if earlier else "")
                    + f": {cause}")
        else:
            what = f"the run ended {outcome.status.value.lower()}" + (f": {self.run_failure}" if self.run_failure
                                                                     else "")
        return (f"[{self.label}] failed after {format_seconds(outcome.seconds)}: {what}. What finished is kept (the "
                f"store and the caches): run the same command again to resume. Full log: {log_path} (Dagster run "
                f"{outcome.run_id}, also in the UI: make ui, then Runs).")


def _log_line(entry: EventLogEntry) -> str:
    when = dt.datetime.fromtimestamp(entry.timestamp).isoformat(timespec="milliseconds")
    kind = entry.dagster_event.event_type_value if entry.dagster_event else "LOG"
    level = logging.getLevelName(entry.level)
    message = entry.user_message.replace("\n", "\n    ")
    return f"{when} {level:<7} {entry.run_id[:8]} {entry.step_key or '-'} {kind}: {message}\n"


class CommandConsole:
    """The console of one command: the log file, the redirected process output, the runs' views.

    Use as a context manager; `run(launcher, job, label)` launches a job and prints its lines."""

    def __init__(self, label: str, log_dir: Path):
        self.label = label
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_path = Path(log_dir) / f"{label}-{stamp}.log"
        self._stack = contextlib.ExitStack()
        self.console: Console | None = None

    def __enter__(self) -> CommandConsole:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self._stack.enter_context(open(self.log_path, "a", buffering=1, encoding="utf-8"))
        out, err = self._stack.enter_context(_redirected_output(log))
        self.console = Console(out, err, log, tty=out.isatty())
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    @property
    def _open(self) -> Console:
        if self.console is None:
            raise RuntimeError("the CommandConsole is not open: use it as `with CommandConsole(...) as session:`")
        return self.console

    def say(self, text: str, error: bool = False) -> None:
        self._open.say(text, error=error)

    def record(self, text: str) -> None:
        """Into the log file only."""
        self._open.record(text)

    def run(self, launcher, job: str, label: str, partition: str | None = None, tags: dict | None = None):
        """Launch `job` (one `partition`), print its lines; the RunOutcome (failure paragraph printed)."""
        view = RunView(self._open, self.label)
        run_id = launcher.launch(job, partition=partition, tags=tags)
        self.say(f"[{self.label}] {label} (Dagster run {run_id[:8]})")
        outcome = launcher.follow(run_id, view)
        if not outcome.success:
            self.say(view.failure_paragraph(outcome, self.log_path), error=True)
        return outcome


@contextlib.contextmanager
def _redirected_output(log: TextIO) -> Iterator[tuple[TextIO, TextIO]]:
    """Point file descriptors 1 and 2 (this process and every child it starts) at `log`;
    yield writable copies of the original stdout and stderr for the console."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
    err = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    try:
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        out.close()
        err.close()
