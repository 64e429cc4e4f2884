"""Progress of a long step, as log lines the UI shows and the command line turns into a bar.

`StepProgress` wraps the pipeline's progress callbacks (`done` of `total` items of a stage)
and logs `progress: <stage> <done>/<total>` to the step's Dagster log: at most one line
every `every_s` seconds, plus the first and the last, so a stage of hours writes a few
hundred lines and a fast stage two. The time of each line is the time of the work it
reports; the command line (`interfaces/console.py`) reads these lines back from the event
log with their timestamps and measures the rate over the recent ones.
"""

from __future__ import annotations

import re
import time
from typing import Callable

#: Seconds between two progress lines of one stage.
EVERY_S = 3.0
_PATTERN = re.compile(r"^progress: (?P<stage>.+) (?P<done>\d+)/(?P<total>\d+)$")


def progress_message(stage: str, done: int, total: int) -> str:
    return f"progress: {stage} {done}/{total}"


def parse_progress(message: str) -> tuple[str, int, int] | None:
    """(stage, done, total) of a progress line, None for any other message."""
    match = _PATTERN.match(message)
    if not match:
        return None
    return match["stage"], int(match["done"]), int(match["total"])


class StepProgress:
    """A `(stage, done, total)` callback that logs throttled progress lines through `log`."""

    def __init__(self, log: Callable[[str], None], every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic):
        self._log, self._every, self._clock = log, every_s, clock
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        previous = self._last.get(stage)
        if previous is not None and previous[1] == done:
            return
        if previous is None or done >= total or now - previous[0] >= self._every:
            self._last[stage] = (now, done)
            self._log(progress_message(stage, done, total))
