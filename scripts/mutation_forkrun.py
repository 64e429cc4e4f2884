"""Runs pytest for scripts/mutation.py's recheck, each run in a process forked from this one.

Started in a working copy's mutants/ folder with pytest's options and the test files it will
run: it collects them once (with the preload plugin among the options, that also imports what
a test run of them loads), so each run starts with the imports done instead of paying them
again (about 10 s a run for the round tests). Then, for each request read from stdin (a JSON
line: the mutant to activate, the tests, a time limit in seconds, a log file), it forks a
process of its own process group that runs `pytest -x -q` with that mutant active, its output
in the log, and answers one line: `RESULT {"code": <exit code, or null when stopped at the
limit>}`. Importing starts no thread, so forking after it is safe; each run's fixtures are its
own (a forked process shares nothing back).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _run(request: dict, options: list[str]) -> None:
    """In the forked process: the tests, with the request's mutant active; never returns."""
    import pytest

    os.setpgid(0, 0)  # the parent stops the run with whatever it started
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ["MUTANT_UNDER_TEST"] = request["mutant"]  # mutmut's trampolines read it on each call
    try:
        code = int(pytest.main(["-x", "-q", *options, *request["tests"]]))
    except BaseException:  # noqa: BLE001  # a crash is a failing run, reported by its code
        code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _wait(pid: int, limit: float) -> int | None:
    """The forked run's exit code, or None once it ran past `limit` seconds (then it is killed)."""
    began = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() - began > limit:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        time.sleep(0.05)


def main() -> None:
    import pytest

    sys.path[0] = os.getcwd()  # like `python -m pytest`: the working copy's modules come first
    args = sys.argv[1:]
    files = [a for a in args if not a.startswith("-") and a.endswith(".py")]
    options = [a for a in args if a not in files]
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(1)
    os.dup2(devnull, 1)  # stdout carries the answers only
    try:
        pytest.main(["--collect-only", "-qqq", *options, *files])
    finally:
        os.dup2(saved, 1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _run(request, options)
        code = _wait(pid, float(request["limit"]))
        print("RESULT " + json.dumps({"code": code}), flush=True)


if __name__ == "__main__":
    main()
