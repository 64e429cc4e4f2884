"""Which step failures Dagster retries, and how a retried step says so on its run.

Steps whose work resumes from the store's caches (gradients, LLM outputs) are safe to run
again, so `TRANSIENT_RETRY` retries them after a pause. A retry only helps when the cause
may be gone by then: a flaky or restarting server, the store briefly locked by another
process, or the step's process killed (the out-of-memory killer, a signal: Dagster's
multiprocess executor hands such a crash to the same retry policy). A wrong setting, a
round asked for out of order or a full disk fails at once, with its own message, instead of
three times. A step that succeeds on a later attempt tags its run (`RETRIED_TAG`) and adds
the earlier attempts' causes to its metadata (`retry_note`), so the run does not read as a
plain success.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import dagster as dg

from prismatic_assets.core.generation import GenerationError
from prismatic_assets.store.store import StoreLockTimeout

#: Two more attempts, 30 s then 60 s later (+-50%).
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                 jitter=dg.Jitter.PLUS_MINUS)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (GenerationError, StoreLockTimeout, ConnectionError)
_PASSED_THROUGH: tuple[type[BaseException], ...] = (dg.Failure, *TRANSIENT_ERRORS)


@contextlib.contextmanager
def retry_transient_only() -> Iterator[None]:
    """Let transient errors through to the step's RetryPolicy; turn every other error into a
    `dg.Failure` that is not retried (its message first, the original chained)."""
    try:
        yield
    except _PASSED_THROUGH:
        raise
    except Exception as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc


#: Run tag naming the steps of the run that needed more than one attempt, and why.
RETRIED_TAG = "prismatic/retried"
CRASH_PREFIX = "Multiprocess executor: child process for step "


def failure_causes(entries, step_key: str) -> list[str]:
    """One short cause per failed attempt of `step_key`, in order, from the run's event log
    entries (a killed step process is named with its signal; other errors by type and message)."""
    causes: list[str] = []
    crash: str | None = None
    for entry in entries:
        event = entry.dagster_event
        if event is None or entry.step_key != step_key:
            continue
        if event.event_type == dg.DagsterEventType.ENGINE_EVENT and entry.user_message.startswith(CRASH_PREFIX):
            crash = crash_cause(entry.user_message)
        elif event.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY:
            causes.append(crash or error_cause(event.step_retry_data.error))
            crash = None
    return causes


def error_cause(error) -> str:
    """The innermost error of a SerializableErrorInfo chain (under Dagster's wrappers), as 'Type: message'."""
    while error is not None and (error.cause is not None or error.context is not None):
        error = error.cause or error.context
    if error is None:
        return "unknown error"
    if not error.cls_name:
        return error.message.strip()
    # Dagster's message repeats the type, module path included: "pkg.mod.Type: text"
    message = re.sub(rf"^(?:[\w.]+\.)?{re.escape(error.cls_name)}: ", "", error.message.strip())
    return f"{error.cls_name}: {message}"


def crash_cause(message: str) -> str:
    """A short cause from Dagster's message about a step process that died."""
    signal = re.search(r"terminated by signal (\d+) \((\w+)\)", message)
    if signal:
        likely = ", likely out of memory" if signal[2] == "SIGKILL" else ""
        return f"step process killed by signal {signal[1]} ({signal[2]}){likely}"
    code = re.search(r"exited with code (-?\d+)", message)
    return f"step process exited with code {code[1]}" if code else message


def retry_note(context: dg.AssetExecutionContext) -> dict[str, dg.MetadataValue]:
    """On a retried attempt: tag the run (`RETRIED_TAG`) and return metadata naming the failed
    attempts and their causes, so a run that succeeded on a retry says so. {} on a first attempt."""
    attempt = context.retry_number
    if attempt == 0:
        return {}
    step_key = context.op_execution_context.get_step_execution_context().step.key
    entries = context.instance.all_logs(context.run_id, of_type={dg.DagsterEventType.ENGINE_EVENT,
                                                                  dg.DagsterEventType.STEP_UP_FOR_RETRY})
    causes = failure_causes(entries, step_key) or ["unknown error"]
    note = f"{step_key}: {attempt} failed attempt(s) before this one ({'; '.join(causes)})"
    run = context.instance.get_run_by_id(context.run_id)
    earlier = run.tags.get(RETRIED_TAG) if run else None
    context.instance.add_run_tags(context.run_id, {RETRIED_TAG: f"{earlier} | {note}" if earlier else note})
    context.log.info(f"attempt {attempt + 1}: {note}")
    return {"attempt": dg.MetadataValue.int(attempt + 1), "earlier_failures": dg.MetadataValue.json(causes)}
