"""Final answers: extract them from model responses, compare them, and vote on them.

What it does:
- `extract_boxed` pulls the last non-empty ``\\boxed{...}`` / ``\\boxed x`` / ``\\fbox{...}``
  out of a response, with nested braces, and returns None when there is none or the last one
  is cut off (a truncated generation has no reliable final answer). `extract_answer` can
  also read an answer stated in words ("The answer is 12.") from a response without a box,
  for small models that do not box (opt-in: `stated=True`).
- `answers_equivalent` compares two bare answers with math-verify (both are parsed as the
  content of a ``\\boxed{}``, so free-form gold answers such as ``x = 3``, ``\\frac{1}{2}``,
  ``n=2 or n=3`` or ``(1, 2)`` parse), and falls back to normalized string equality.
- `is_correct` grades one response against a gold answer.
- `majority_vote` groups the answers of several teacher samples and decides acceptance.
  It stores the evidence (`answers`, `groups`, `agreement`) apart from the decision
  (`accepted`, `reason`), so a different threshold can be applied later without re-parsing.

What it does not: call any model, pick a solution text to keep (the caller keeps the
responses at `Vote.majority`), or grade multiple-choice letters specially.

Containment. Model output is data: it is parsed as LaTeX, never evaluated as Python, and
hostile output costs a bounded time. Extraction scans linearly (a megabyte response takes
milliseconds). Answers longer than `MAX_EXTRACTED_CHARS` ("answer_too_long") or carrying
code ("answer_has_code": Python calls, shell substitutions, TeX file primitives) are
rejected before any parsing. Answers longer than `MAX_ANSWER_CHARS`, nested deeper than
`MAX_NESTING`, or holding a huge power or factorial skip math-verify and are compared as
normalized strings. Everything else goes to math-verify in a separate worker process
(`_verify_worker`): its signal-based timeouts only work in a main thread, and some inputs
make sympy compute a gigantic integer while holding the GIL, which neither a signal nor a
thread can interrupt. The worker gets `VERIFY_TIME_LIMIT_S` per comparison (an interval
timer inside it) and is killed and replaced when it does not answer within
`VERIFY_TIME_LIMIT_S + 1` s; it also runs under a 2 GiB memory limit. A comparison cut
short counts as "not equivalent" and is recorded in `Vote.issues`, so a sample decided by
such an answer is rejected as "unverifiable". This holds in any thread (Dagster's, a
thread pool's). Where a worker process cannot start, math-verify runs in this process as
before: with its own timeouts in the main thread, without them elsewhere.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prismatic_assets.core.samples import normalize_text

__all__ = [
    "MAX_ANSWER_CHARS",
    "MAX_EXTRACTED_CHARS",
    "MAX_NESTING",
    "MATH_VERIFY_TIMEOUT_S",
    "VERIFY_TIME_LIMIT_S",
    "Vote",
    "answers_equivalent",
    "compare_answers",
    "extract_answer",
    "extract_boxed",
    "extract_stated",
    "group_answers",
    "is_correct",
    "majority_vote",
    "normalize_answer",
]

log = logging.getLogger(__name__)

# Longer answers are almost never a single mathematical object, and sympy can take minutes
# on them; they are compared as normalized strings instead.
MAX_ANSWER_CHARS = 300
# Per parse / per comparison, in the main thread only (math-verify's signal-based timeout),
# when no worker process is available.
MATH_VERIFY_TIMEOUT_S = 5
#: Extracted answers longer than this are rejected: no answer a grader can check is that
#: long, and a hostile one (megabytes of digits) would cost seconds to normalize.
MAX_EXTRACTED_CHARS = 1000
#: Nesting of (), [], {} deeper than this skips math-verify: its LaTeX parser takes seconds
#: at depth 10 and minutes at depth 15.
MAX_NESTING = 8
#: Seconds math-verify may spend on one comparison (both parses and both verify directions).
VERIFY_TIME_LIMIT_S = 1.0
#: How much longer the worker may take before it is killed (work that ignores the timer).
_KILL_GRACE_S = 1.0

_BOX_START = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)
_BARE_ARGUMENT = re.compile(r"[^\s$]+")
#: Answers that carry code rather than mathematics: Python (dunder names, import, lambda,
#: calls of eval/exec/open/system ...), shell substitutions, and TeX primitives that read
#: or write files or redefine macros. Nothing here would run them; such a sample is still
#: rejected, since no checkable math answer contains them.
_CODE = re.compile(
    r"__\w+__|(?<!\\)\bimport\s+[A-Za-z_]|(?<!\\)\blambda\b[^:]{0,40}:"
    r"|(?<!\\)\b(?:eval|exec|compile|open|getattr|setattr|globals|locals|system|popen|subprocess|breakpoint|input)"
    r"\s*\("
    r"|\b(?:os|sys|builtins|shutil|socket)\.[A-Za-z_]"
    r"|\$\(|`|<\s*script"
    r"|\\(?:input|include|write18|immediate|openin|openout|read|catcode|csname|def|edef|gdef|let)(?![A-Za-z])")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|textit|mbox)\s*\{([^{}]*)\}")
_WORDS_ONLY = re.compile(r"[A-Za-z][A-Za-z\s'\-]*")
# Inputs where sympy computes huge integers (9^{9^9}, 123456!) while holding the GIL: no
# signal or thread can interrupt that, so such answers never reach math-verify.
_EXPENSIVE = re.compile(
    r"\^\s*\{[^{}]*\^"  # a power in an exponent: 9^{9^9}
    r"|\^\s*\{?\s*[\d.]+\s*\}?\s*\^"  # a power chain: 9^9^9
    r"|\^\s*\{?\s*-?\d{5,}"  # an exponent of 5+ digits
    r"|\d{4,}\s*!"  # the factorial of a 4+ digit number
    r"|\\uparrow"
)


# ---------------------------------------------------------------------------- extraction


def _braced(text: str, open_at: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[open_at] == '{' and the index after it.

    Escaped braces (``\\{``, ``\\}``) do not count, so ``\\boxed{\\{1,2\\}}`` works and
    ``\\boxed{\\left\\{ ... \\right.}`` is balanced. None if the group never closes.
    """
    depth = 0
    # Only backslash pairs and braces matter; the regex skips the rest at C speed, so a
    # megabyte of output is scanned in milliseconds.
    for m in _BRACE_TOKENS.finditer(text, open_at):
        c = m.group()
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : m.start()], m.end()
        # else an escaped character ("\\{", "\\}", "\\\\"): skipped whole
    return None


def _box_at(text: str, end: int) -> str | None:
    """The argument of the box command ending at text[end]; None if it is cut off."""
    i = end
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text):
        return None  # "\\boxed" at the very end: truncated
    if text[i] == "{":
        got = _braced(text, i)
        return None if got is None else got[0]
    # "\\boxed 5": the argument is one token, up to whitespace or the closing '$'.
    m = _BARE_ARGUMENT.match(text, i)
    return m.group(0) if m else ""


def extract_boxed(text: str) -> str | None:
    """The stripped content of the last non-empty box in `text`.

    Handles ``\\boxed{...}`` with nested and escaped braces, ``\\boxed 5`` and
    ``\\fbox{...}``. Empty boxes (``\\boxed{}``, e.g. an echoed instruction) are skipped.
    Returns None when there is no box, or when the last box never closes: the response was
    truncated, and an earlier box is then not a reliable final answer.
    """
    if not text:
        return None
    for m in reversed(list(_BOX_START.finditer(text))):
        content = _box_at(text, m.end())
        if content is None:
            return None
        content = content.strip()
        if content:
            return content
    return None


# "The answer is 12.", "Final answer: x = 3", "**Answer:** 5" (markdown stars are stripped).
_STATED = re.compile(r"(?:final\s+answer|the\s+answer|answer)\W{0,4}?\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)


def extract_stated(text: str, max_chars: int = 60) -> str | None:
    """The answer a response states in words when it has no box: the last "the answer is X",
    "Final answer: X" or "Answer = X", up to the end of its sentence or line.

    For models that ignore the request to box (SmolLM2-135M writes "The answer is 32.").
    A stated answer longer than `max_chars` is taken for prose and ignored.
    """
    if not text:
        return None
    for m in reversed(list(_STATED.finditer(text))):
        answer = re.split(r"\.\s|\.$", m.group(1))[0]  # `.` in _STATED stops at the line's end
        answer = answer.strip().rstrip(".,;:!").strip().strip("*_").strip().strip("$").strip().rstrip(".,;:!").strip()
        if answer and len(answer) <= max_chars:
            return answer
    return None


def extract_answer(text: str, *, stated: bool = False) -> str | None:
    """The final answer of a response: its last ``\\boxed{}`` (`extract_boxed`); with
    `stated`, a response without any box may instead state it in words (`extract_stated`).
    A response with a box, even a truncated one, never falls back."""
    boxed = extract_boxed(text)
    if boxed is not None or not stated or (text and _BOX_START.search(text)):
        return boxed
    return extract_stated(text)


# ---------------------------------------------------------------------------- comparison


def normalize_answer(answer: str) -> str:
    """The string form used when math-verify cannot decide.

    Strips ``$`` delimiters, ``\\text{}``-like wrappers, ``\\left``/``\\right``, a trailing
    period and all whitespace, then folds case and Unicode form.
    """
    s = answer.strip()
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    prev = None
    while prev != s:
        prev = s
        s = _TEXT_WRAPPER.sub(r"\1", s)
    s = s.strip().rstrip(".").strip().strip("$").strip().rstrip(".").strip()
    return re.sub(r"\s+", "", normalize_text(s))


def _is_words(answer: str) -> bool:
    """True for answers made of words (``Monday``, ``\\text{yes}``): math-verify would read
    them as products of symbols, so ``yes`` and ``sey`` would compare equal."""
    plain = _TEXT_WRAPPER.sub(r"\1", answer).strip().rstrip(".").strip("$").strip().rstrip(".")
    return bool(_WORDS_ONLY.fullmatch(plain)) and sum(c.isalpha() for c in plain) >= 2


def _nesting(answer: str) -> int:
    """The deepest nesting of (), [] and {} (escaped ones included: they nest in LaTeX too)."""
    depth = deepest = 0
    for c in answer:
        if c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _too_expensive(answer: str) -> bool:
    """True when math-verify could hang on `answer`: too long, too deeply nested, or a huge power/factorial."""
    return len(answer) > MAX_ANSWER_CHARS or _nesting(answer) > MAX_NESTING or bool(_EXPENSIVE.search(answer))


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=65536)
def _parse(answer: str, timeout: int | None) -> tuple[Any, ...]:
    """math-verify's parse of a bare answer as the content of a box; () if unparseable (in this process)."""
    from math_verify import LatexExtractionConfig, parse
    from math_verify.errors import TimeoutException

    try:
        parsed = parse(
            "\\boxed{" + answer + "}",
            extraction_config=[LatexExtractionConfig()],
            parsing_timeout=timeout,  # None disables the signal
        )
    except (Exception, TimeoutException):  # noqa: BLE001 - never raise from grading
        log.debug("math-verify could not parse %r", answer, exc_info=True)
        return ()
    return tuple(parsed)


def _verify(a: tuple[Any, ...], b: tuple[Any, ...], timeout: int | None) -> bool:
    from math_verify import verify
    from math_verify.errors import TimeoutException

    try:
        # verify(gold, target) is not symmetric (assignments, intervals): try both ways.
        return bool(
            verify(list(a), list(b), timeout_seconds=timeout)
            or verify(list(b), list(a), timeout_seconds=timeout)
        )
    except (Exception, TimeoutException):  # noqa: BLE001
        log.debug("math-verify failed to compare", exc_info=True)
        return False


class _VerifyWorker:
    """One `_verify_worker` child process, started on first use and replaced when it is killed.

    Requests are serialized (a lock): the work is short, and one process bounds the memory.
    """

    START_TIMEOUT_S = 120.0  # importing sympy on a loaded machine

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._starting: subprocess.Popen | None = None  # running, not yet ready (importing sympy)
        self._broken: str | None = None  # why no worker can start here: compare in-process instead

    def _start(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])),
               "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "prismatic_assets.core._verify_worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, bufsize=1)
        self._starting = proc  # already a child process: `pids` must name it while it starts
        try:
            if self._readline(proc, self.START_TIMEOUT_S) != {"ready": True}:
                self._kill(proc)
                raise RuntimeError("the answer-verification worker did not start")
        finally:
            self._starting = None
        return proc

    @staticmethod
    def _readline(proc: subprocess.Popen, timeout: float) -> dict | None:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = proc.stdout.readline()
        return json.loads(line) if line else None

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def compare(self, a: str, b: str, budget: float) -> tuple[bool | None, str | None]:
        """(equal, issue): equal is None when the worker is unavailable (compare in-process);
        issue is "verify_timeout" when the comparison was cut short (equal is then False)."""
        with self._lock:
            if self._broken is not None:
                return None, None
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._start()
                proc = self._proc
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"a": a, "b": b, "budget": budget}) + "\n")
                proc.stdin.flush()
                reply = self._readline(proc, budget + _KILL_GRACE_S)
            except (OSError, RuntimeError, ValueError) as exc:
                if self._proc is None:  # could not start at all: not here, not later
                    self._broken = str(exc)
                    log.warning("answers are verified in-process (no worker process: %s)", exc)
                    return None, None
                reply = None
            if reply is None:  # stuck past the grace time (or died): replace it
                self._kill(self._proc)
                self._proc = None
                return False, "verify_timeout"
            if reply.get("timeout"):
                return False, "verify_timeout"
            if "error" in reply:
                log.debug("math-verify failed on %r vs %r: %s", a, b, reply["error"])
                return False, None
            return bool(reply["equal"]), None

    def close(self) -> None:
        with self._lock:
            if self._proc is not None:
                self._kill(self._proc)
                self._proc = None

    def pids(self) -> set[int]:
        """The running worker's pid, and that of one still starting (read without the lock: a
        caller may ask while another thread waits for the worker to become ready)."""
        return {p.pid for p in (self._proc, self._starting) if p is not None and p.poll() is None}


_WORKER = _VerifyWorker()
atexit.register(_WORKER.close)


def worker_pids() -> set[int]:
    """Process ids of the verification worker (a long-lived helper, not an engine's process)."""
    return _WORKER.pids()


@lru_cache(maxsize=65536)
def _math_equal(a: str, b: str) -> tuple[bool, str | None]:
    """math-verify's verdict on two short, non-hostile answers, within the time limit."""
    if os.environ.get("PRISMATIC_VERIFY_IN_PROCESS") != "1":
        equal, issue = _WORKER.compare(a, b, VERIFY_TIME_LIMIT_S)
        if equal is not None:
            return equal, issue
    timeout = _timeout()
    pa, pb = _parse(a, timeout), _parse(b, timeout)
    if not pa or not pb:
        return False, None
    return _verify(pa, pb, timeout), None


def _strip_outer_box(answer: str) -> str:
    """A gold answer given as ``\\boxed{3}`` or ``$3$`` means ``3``."""
    s = answer.strip()
    if _BOX_START.search(s):
        inner = extract_boxed(s)
        if inner is not None:
            return inner
    return s.strip("$").strip()


def compare_answers(a: str, b: str) -> tuple[bool, str | None]:
    """Whether two bare answers denote the same object, and why it could not be decided.

    Returns (equivalent, issue); issue is None, "answer_too_long" (either side longer than
    `MAX_EXTRACTED_CHARS`: only identical strings are equal), "answer_has_code" (either side
    holds code, e.g. ``__import__('os')`` or ``\\input{...}``: not equivalent) or
    "verify_timeout" (math-verify ran out of time: not equivalent). See `answers_equivalent`
    for the order.
    """
    try:
        if len(a) > MAX_EXTRACTED_CHARS or len(b) > MAX_EXTRACTED_CHARS:
            return a.strip() == b.strip(), "answer_too_long"
        if _CODE.search(a) or _CODE.search(b):
            return False, "answer_has_code"
        a = _strip_outer_box(a)
        b = _strip_outer_box(b)
        na, nb = normalize_answer(a), normalize_answer(b)
        if not na or not nb:
            return False, None
        if na == nb:
            return True, None
        if _is_words(a) or _is_words(b):
            return False, None
        if _too_expensive(a) or _too_expensive(b):
            return False, None
        return _math_equal(a, b)
    except Exception:  # noqa: BLE001 - grading must not take a pipeline down
        log.debug("compare_answers(%.200r, %.200r) failed", a, b, exc_info=True)
        return False, None


def answers_equivalent(a: str, b: str) -> bool:
    """True if the two bare answers denote the same mathematical object.

    Order: either side longer than `MAX_EXTRACTED_CHARS` -> only identical strings count;
    identical after `normalize_answer` -> True; either side is words only -> that string
    comparison is final; either side longer than `MAX_ANSWER_CHARS`, nested deeper than
    `MAX_NESTING` or holding a huge power or factorial (``9^{9^9}``, ``10^{100000}``,
    ``5000!``) -> the string comparison is final; otherwise math-verify parses both (as
    ``\\boxed{a}``) and verifies in both directions, within `VERIFY_TIME_LIMIT_S` (see
    "Containment"); if it cannot parse one side, the string comparison stands. Never raises.
    """
    return compare_answers(a, b)[0]


def is_correct(response_text: str, gold_answer: str) -> bool:
    """True if the last boxed answer in `response_text` is equivalent to `gold_answer`.

    A response without a (complete) box is incorrect. `gold_answer` may be bare
    (``\\frac{1}{2}``), in ``$...$`` or itself boxed.
    """
    predicted = extract_boxed(response_text)
    if predicted is None or not gold_answer or not gold_answer.strip():
        return False
    return answers_equivalent(predicted, gold_answer)


# ---------------------------------------------------------------------------- voting


@dataclass(frozen=True)
class Vote:
    """The evidence and the decision of one majority vote.

    answers: the extracted answer of each response (None: no complete box, or an answer
        longer than `MAX_EXTRACTED_CHARS` or holding code, rejected and named in `issues`).
    groups: indices of responses with equivalent answers, largest group first (ties keep
        first-appearance order); responses without an answer are in no group.
    majority: the indices of the winning group; empty unless accepted.
    agreement: size of the largest group (0 when no response has an answer).
    accepted / reason: the decision; reason is one of "accepted", "no_answer",
        "disagreement" (largest group below min_agree), "tie" (two or more groups of the
        largest size reach min_agree: the problem is ambiguous, so it is rejected) or
        "unverifiable" (not accepted, and an answer was rejected as too long or as code,
        or a comparison ran out of time: `issues` says which).
    issues: what could not be checked, e.g. "response 1: answer_too_long (1048576 chars)",
        "responses 0, 2: verify_timeout".
    """

    answers: tuple[str | None, ...]
    groups: tuple[tuple[int, ...], ...]
    majority: tuple[int, ...]
    agreement: int
    accepted: bool
    reason: str
    issues: tuple[str, ...] = ()

    @property
    def majority_answer(self) -> str | None:
        """The answer of the winning group's first member, None if not accepted."""
        return self.answers[self.majority[0]] if self.majority else None


def group_answers(answers: Sequence[str | None], issues: list[str] | None = None) -> tuple[tuple[int, ...], ...]:
    """Group indices of equivalent answers, largest group first.

    Each answer joins the first group whose first member (its representative) is
    equivalent to it, else starts a new group. Comparing with one representative keeps the
    grouping well defined even though numeric tolerance makes equivalence non-transitive.
    Comparisons that could not be decided are appended to `issues` when given.
    """
    groups: list[list[int]] = []
    for i, ans in enumerate(answers):
        if ans is None:
            continue
        for g in groups:
            equal, issue = compare_answers(answers[g[0]], ans)  # type: ignore[arg-type]
            if issue is not None and issues is not None:
                issues.append(f"responses {g[0]}, {i}: {issue}")
            if equal:
                g.append(i)
                break
        else:
            groups.append([i])
    # sorted() is stable: equal sizes keep first-appearance order.
    return tuple(tuple(g) for g in sorted(groups, key=len, reverse=True))


def majority_vote(responses: Sequence[str], min_agree: int = 2, *, stated_answers: bool = False) -> Vote:
    """Extract each response's boxed answer, group equivalent ones, and decide.

    Accepted when the largest group has at least `min_agree` members and no other group
    is as large (a tie between groups that both reach `min_agree` is rejected as "tie").
    `stated_answers` also reads "The answer is X" from responses without a box
    (`extract_answer`).
    """
    if min_agree < 1:
        raise ValueError(f"min_agree={min_agree}: set min_agree >= 1 (the votes needed to accept)")
    issues: list[str] = []
    extracted = []
    for i, response in enumerate(responses):
        answer = extract_answer(response, stated=stated_answers)
        code = _CODE.search(answer) if answer is not None and len(answer) <= MAX_EXTRACTED_CHARS else None
        if answer is not None and len(answer) > MAX_EXTRACTED_CHARS:
            issues.append(f"response {i}: answer_too_long ({len(answer)} chars, limit {MAX_EXTRACTED_CHARS})")
            answer = None
        elif code is not None:
            issues.append(f"response {i}: answer_has_code ({code.group()!r})")
            answer = None
        extracted.append(answer)
    answers = tuple(extracted)
    groups = group_answers(answers, issues)
    found = tuple(issues)

    def rejected(reason: str) -> str:
        return "unverifiable" if found else reason

    if not groups:
        return Vote(answers, (), (), 0, False, rejected("no_answer"), found)
    agreement = len(groups[0])
    if agreement < min_agree:
        return Vote(answers, groups, (), agreement, False, rejected("disagreement"), found)
    if len(groups) > 1 and len(groups[1]) == agreement:
        return Vote(answers, groups, (), agreement, False, rejected("tie"), found)
    return Vote(answers, groups, groups[0], agreement, True, "accepted", found)
