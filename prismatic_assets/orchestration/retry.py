"""Which step failures Dagster retries: transient ones only.

Steps whose work resumes from the store's caches (gradients, LLM outputs) are safe to run
again, so `TRANSIENT_RETRY` retries them after a pause. A retry only helps when the cause
may be gone by then (a flaky or restarting server, the store briefly locked by another
process); a wrong setting, a round asked for out of order or a full disk fails at once,
with its own message, instead of three times.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import dagster as dg

from prismatic_assets.core.generation import GenerationError
from prismatic_assets.store.store import StoreLockTimeout

#: Two more attempts, 30 s then 60 s later (+-50%).
TRANSIENT_RETRY = dg.RetryPolicy(max_retries=2, delay=30, backoff=dg.Backoff.EXPONENTIAL,
                                 jitter=dg.Jitter.PLUS_MINUS)
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (GenerationError, StoreLockTimeout, ConnectionError)


@contextlib.contextmanager
def retry_transient_only() -> Iterator[None]:
    """Let transient errors through to the step's RetryPolicy; turn every other error into a
    `dg.Failure` that is not retried (its message first, the original chained)."""
    try:
        yield
    except (dg.Failure, *TRANSIENT_ERRORS):
        raise
    except Exception as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
