"""Hostile model output through answer extraction and voting: bounded time, nothing runs,
rejected with a reason.

Each case is what a broken or adversarial teacher (or a hostile OpenAI-compatible server)
could return. Votes run in a worker thread, as in a thread pool or a Dagster step thread,
where math-verify's own signal-based timeouts do not work. Several of these inputs hang
math-verify for minutes when run uncontained (140 nested braces; a binomial of 10^5).
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from prismatic_assets.core import answers
from prismatic_assets.core.answers import (
    MAX_EXTRACTED_CHARS,
    VERIFY_TIME_LIMIT_S,
    compare_answers,
    extract_boxed,
    is_correct,
    majority_vote,
)

# A comparison ends within the limit plus the kill grace; slack for a loaded 2-core machine.
PER_COMPARISON_S = VERIFY_TIME_LIMIT_S + answers._KILL_GRACE_S
SLACK_S = 1.5


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    """Start the verification worker once (importing sympy is not part of any answer's bound)."""
    assert answers.answers_equivalent("\\frac{1}{2}", "0.5")
    yield


def _in_thread(fn, *args, **kwargs):
    with ThreadPoolExecutor(1) as pool:
        began = time.perf_counter()
        result = pool.submit(fn, *args, **kwargs).result(timeout=120)
        return result, time.perf_counter() - began


def _box(content: str) -> str:
    return f"Some reasoning first. Therefore the answer is \\boxed{{{content}}}."


MEGA = "1" * 1_000_000
HOSTILE = {  # name -> (three teacher responses, the issue named, or None when plain disagreement)
    "megabyte answers": ([_box(MEGA)] * 2 + [_box("3")], "answer_too_long"),
    "megabyte of nested braces": ([_box("{" * 200_000 + "1" + "}" * 200_000)] * 2 + [_box("3")], "answer_too_long"),
    "megabyte of unclosed boxes": (["\\boxed{" * 150_000, "\\boxed{1", _box("3")], None),
    "140 nested braces": ([_box("{" * 140 + "1" + "}" * 140), _box("{" * 140 + "2" + "}" * 140), _box("3")], None),
    "binomial of 10^5": ([_box("\\binom{100000}{50000}"), _box("\\binom{100000}{50001}"), _box("3")], None),
    "factorial of a power": ([_box("(9^9)!"), _box("(9^8)!"), _box("3")], None),
    "gamma of 10^4": ([_box("\\Gamma(10^{4})"), _box("\\Gamma(10^{3})"), _box("3")], None),
    "python in the box": ([_box("__import__('os').system('touch {marker}')")] * 3, "answer_has_code"),
    "eval in the box": ([_box("eval(\"open('{marker}', 'w')\")")] * 3, "answer_has_code"),
    "tex reads a file": ([_box("\\input{/etc/passwd}")] * 3, "answer_has_code"),
    "tex writes a file": ([_box("\\immediate\\write18{touch {marker}}")] * 3, "answer_has_code"),
    "shell substitution": ([_box("$(touch {marker})")] * 3, "answer_has_code"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_answers_are_bounded_inert_and_rejected(name, tmp_path):
    responses, issue = HOSTILE[name]
    marker = tmp_path / "executed"
    responses = [r.replace("{marker}", str(marker)) for r in responses]
    vote, seconds = _in_thread(majority_vote, responses, 2)
    # At most 3 comparisons (3 answers), each bounded; extraction is linear.
    assert seconds < 3 * PER_COMPARISON_S + SLACK_S, f"{name}: {seconds:.1f} s"
    assert not vote.accepted and vote.majority_answer is None
    if issue is None:
        assert vote.reason in ("disagreement", "no_answer", "unverifiable")
    else:
        assert vote.reason == "unverifiable" and any(issue in i for i in vote.issues), vote.issues
    assert all(a is None or len(a) <= MAX_EXTRACTED_CHARS for a in vote.answers)
    assert not marker.exists()  # nothing ran
    for response in set(responses) - {_box("3")}:  # grading the same output (evaluation): bounded and inert too
        correct, seconds = _in_thread(is_correct, response, "3")
        assert seconds < PER_COMPARISON_S + SLACK_S and not correct
    assert not marker.exists()


def test_extraction_of_a_megabyte_response_is_linear():
    text = "x" * 2_000_000 + _box("\\frac{1}{2}")
    began = time.perf_counter()
    assert extract_boxed(text) == "\\frac{1}{2}"
    assert extract_boxed("{" * 1_000_000 + "\\boxed{" + "{" * 1_000_000) is None
    assert time.perf_counter() - began < 2.0


def test_ordinary_answers_still_verify_through_the_worker():
    for a, b in [("\\frac{1}{2}", "0.5"), ("x = 3", "3"), ("\\sqrt{8}", "2\\sqrt{2}"), ("(1, 2)", "(1,2)")]:
        (equal, issue), seconds = _in_thread(compare_answers, a, b)
        assert equal and issue is None, (a, b)
    assert compare_answers("\\frac{1}{3}", "0.5") == (False, None)
    vote = majority_vote([_box("\\frac{1}{2}"), _box("0.5"), _box("2")])
    assert vote.accepted and vote.issues == ()


def test_a_stuck_worker_is_killed_within_the_bound_and_replaced():
    worker = answers._WORKER
    assert worker.compare("1", "1", VERIFY_TIME_LIMIT_S) == (True, None)
    stuck = worker._proc
    os.kill(stuck.pid, signal.SIGSTOP)  # a worker that no longer answers (like C code holding the GIL)
    try:
        began = time.perf_counter()
        assert worker.compare("2", "3", VERIFY_TIME_LIMIT_S) == (False, "verify_timeout")
        assert time.perf_counter() - began < PER_COMPARISON_S + SLACK_S
    finally:
        if stuck.poll() is None:
            os.kill(stuck.pid, signal.SIGKILL)
    assert stuck.wait(timeout=10) == -signal.SIGKILL
    assert worker.compare("\\frac{2}{4}", "0.5", VERIFY_TIME_LIMIT_S) == (True, None)  # a new worker
    assert worker._proc.pid != stuck.pid


def test_a_timed_out_comparison_makes_the_vote_unverifiable(monkeypatch):
    monkeypatch.setattr(answers, "VERIFY_TIME_LIMIT_S", 0.05)
    answers._math_equal.cache_clear()
    try:
        vote, seconds = _in_thread(majority_vote, [_box("\\binom{100000}{50000}"), _box("\\binom{100000}{49999}"),
                                                   _box("\\binom{99999}{3}")], 2)
    finally:
        answers._math_equal.cache_clear()
    assert vote.reason == "unverifiable" and any("verify_timeout" in i for i in vote.issues), vote
    assert seconds < 3 * (0.05 + answers._KILL_GRACE_S) + SLACK_S


def test_the_worker_is_not_mistaken_for_an_engine_process(tiny_model_dir):
    """Grading while an engine is open starts the worker; closing the engine must not wait for it."""
    from prismatic_assets.infra.config import EngineConfig
    from prismatic_assets.infra.engines import EngineSet

    answers._WORKER.close()
    answers._math_equal.cache_clear()
    engines = EngineSet({"student": EngineConfig(backend="transformers", model=tiny_model_dir)}, release_timeout=2)
    with engines.open("student"):
        assert answers.compare_answers("\\frac{3}{6}", "0.5") == (True, None)  # starts a new worker
        assert answers.worker_pids()
    assert engines.calls[-1] == ("close", "student") and answers.worker_pids()  # closed; the worker lives on


def test_a_worker_still_starting_is_not_mistaken_for_an_engine_process(tiny_model_dir, monkeypatch):
    """Another thread starts the worker while an engine is open; the engine closes before the
    worker is ready (still importing sympy). Closing must not wait for it, nor blame it."""
    import threading

    import psutil

    from prismatic_assets.infra.config import EngineConfig
    from prismatic_assets.infra.engines import EngineSet

    answers._WORKER.close()
    answers._math_equal.cache_clear()
    ready = threading.Event()
    readline = answers._VerifyWorker._readline

    def held_start(proc, timeout):  # the worker runs; its parent waits to hear it is ready
        if timeout == answers._VerifyWorker.START_TIMEOUT_S:
            ready.wait(60)
        return readline(proc, timeout)

    def starting_worker() -> int | None:
        for child in psutil.Process().children():
            try:
                if "prismatic_assets.core._verify_worker" in " ".join(child.cmdline()):
                    return child.pid
            except psutil.Error:  # exited meanwhile
                pass
        return None

    monkeypatch.setattr(answers._VerifyWorker, "_readline", staticmethod(held_start))
    result: dict = {}
    grader = threading.Thread(target=lambda: result.update(equal=compare_answers("\\frac{3}{6}", "0.5")))
    engines = EngineSet({"student": EngineConfig(backend="transformers", model=tiny_model_dir)}, release_timeout=2)
    try:
        with engines.open("student"):
            grader.start()
            deadline = time.monotonic() + 30
            while (worker := starting_worker()) is None:
                assert time.monotonic() < deadline, "the worker process never started"
                time.sleep(0.05)
        # Closed within release_timeout while the worker still waited to be ready.
        assert engines.calls[-1] == ("close", "student") and not ready.is_set()
    finally:
        ready.set()
        grader.join(120)
    assert result["equal"] == (True, None) and answers.worker_pids() == {worker}  # the same worker lives on


# ----------------------------------------------------------------------------- edges the mutation run found


def _fake_python(tmp_path, body: str):
    """An executable standing in for the worker's interpreter: a shell script that logs each start."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\necho started >> {tmp_path / 'starts'}\n{body}\n")
    script.chmod(0o755)
    return str(script)


def _starts(tmp_path) -> int:
    path = tmp_path / "starts"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"timeout": true}', (False, "verify_timeout")),
        ('{"error": "boom"}', (False, None)),
        ('{"equal": 1}', (True, None)),
        ('{"equal": false, "parsed": false}', (False, None)),
    ],
)
def test_the_worker_reply_decides_the_comparison(tmp_path, monkeypatch, reply, expected):
    body = f"echo '{{\"ready\": true}}'\nwhile read line; do echo '{reply}'; done"
    monkeypatch.setattr(answers.sys, "executable", _fake_python(tmp_path, body))
    worker = answers._VerifyWorker()
    try:
        assert worker.compare("1", "2", 5.0) == expected
        assert worker.compare("1", "3", 5.0) == expected
        assert _starts(tmp_path) == 1  # the same worker answered both (a timeout inside it is not a hang)
        assert worker.pids() == {worker._proc.pid}
    finally:
        worker.close()
    assert worker._proc is None and worker.pids() == set()


def test_a_worker_that_dies_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(answers.sys, "executable", _fake_python(tmp_path, "echo '{\"ready\": true}'\nread line"))
    worker = answers._VerifyWorker()
    try:
        assert worker.compare("1", "2", 5.0) == (False, "verify_timeout")  # it exited without a reply
        assert worker._proc is None
        assert worker.compare("1", "2", 5.0) == (False, "verify_timeout")
        assert _starts(tmp_path) == 2
    finally:
        worker.close()


@pytest.mark.parametrize("body", ["echo '{\"ready\": false}'", "exit 3"])
def test_a_worker_that_cannot_start_is_not_tried_again(tmp_path, monkeypatch, body):
    monkeypatch.setattr(answers.sys, "executable", _fake_python(tmp_path, body))
    worker = answers._VerifyWorker()
    assert worker.compare("1", "2", 5.0) == (None, None)  # compare in-process instead
    assert worker.compare("1", "2", 5.0) == (None, None)
    assert _starts(tmp_path) == 1 and worker.pids() == set()
    worker.close()


def test_a_missing_interpreter_means_in_process_comparison(tmp_path, monkeypatch):
    monkeypatch.setattr(answers.sys, "executable", str(tmp_path / "no-such-python"))
    worker = answers._VerifyWorker()
    assert worker.compare("1", "2", 5.0) == (None, None)
    assert worker._broken


def _one_comparison(tmp_path, monkeypatch, body: str, a: str, b: str, budget: float):
    """One comparison through a fake worker running `body` after it says it is ready."""
    monkeypatch.setattr(answers.sys, "executable", _fake_python(tmp_path, "echo '{\"ready\": true}'\n" + body))
    worker = answers._VerifyWorker()
    try:
        return worker.compare(a, b, budget)
    finally:
        worker.close()


def test_the_worker_gets_the_package_on_its_path_and_one_thread(tmp_path, monkeypatch):
    body = (f"read line\necho \"$PYTHONPATH $OMP_NUM_THREADS $@\" > {tmp_path / 'env'}\n"
            "echo '{\"equal\": true}'\nread line")
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert _one_comparison(tmp_path, monkeypatch, body, "1", "1", 5.0) == (True, None)
    root = str(Path(answers.__file__).resolve().parents[2])
    assert (tmp_path / "env").read_text().split() == [f"{root}:/somewhere/else", "1", "-m",
                                                      "prismatic_assets.core._verify_worker"]


def test_a_new_worker_names_no_process() -> None:
    assert answers._VerifyWorker().pids() == set()


def test_closing_the_worker_closes_its_pipes(tmp_path, monkeypatch):
    body = "echo '{\"ready\": true}'\nwhile read line; do echo '{\"equal\": true}'; done"
    monkeypatch.setattr(answers.sys, "executable", _fake_python(tmp_path, body))
    worker = answers._VerifyWorker()
    assert worker.compare("1", "1", 5.0) == (True, None)
    proc = worker._proc
    worker.close()
    assert proc.returncode is not None and proc.stdin.closed and proc.stdout.closed


def test_a_worker_that_answers_garbage_is_replaced(tmp_path, monkeypatch):
    body = "echo '{\"ready\": true}'\nwhile read line; do echo 'not json'; done"
    monkeypatch.setattr(answers.sys, "executable", _fake_python(tmp_path, body))
    worker = answers._VerifyWorker()
    try:
        assert worker.compare("1", "2", 5.0) == (False, "verify_timeout")
        assert worker._proc is None  # killed; the next comparison starts another
        assert worker.compare("1", "2", 5.0) == (False, "verify_timeout")
        assert _starts(tmp_path) == 2
    finally:
        worker.close()


def test_a_worker_that_never_gets_ready_is_given_up_after_the_start_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(answers.sys, "executable", _fake_python(tmp_path, "exec sleep 60"))
    monkeypatch.setattr(answers._VerifyWorker, "START_TIMEOUT_S", 0.5)
    worker = answers._VerifyWorker()
    began = time.perf_counter()
    assert worker.compare("1", "2", 5.0) == (None, None)  # compare in-process instead
    assert time.perf_counter() - began < 10
    assert worker._broken == "the answer-verification worker did not start" and worker.pids() == set()


def test_the_reason_a_worker_cannot_start_is_kept(tmp_path, monkeypatch):
    missing = tmp_path / "no-such-python"
    monkeypatch.setattr(answers.sys, "executable", str(missing))
    worker = answers._VerifyWorker()
    assert worker.compare("1", "2", 5.0) == (None, None)
    assert str(missing) in worker._broken


def test_readline_is_none_at_the_end_of_the_output():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"], stdout=subprocess.PIPE, text=True)
    try:
        assert answers._VerifyWorker._readline(proc, 30) is None
    finally:
        proc.wait()
        proc.stdout.close()


def test_the_worker_gets_its_budget_and_no_terminal(tmp_path, monkeypatch, capfd):
    body = (f"echo 'worker noise' >&2\nread line\necho \"$line\" > {tmp_path / 'request'}\n"
            "echo '{\"equal\": true}'\nread line")
    assert _one_comparison(tmp_path, monkeypatch, body, "1", "2", 0.25) == (True, None)
    assert json.loads((tmp_path / "request").read_text()) == {"a": "1", "b": "2", "budget": 0.25}
    assert "worker noise" not in capfd.readouterr().err
