"""The child process in which math-verify compares answers (see `answers.py`, "Containment").

Protocol: one JSON object per line on stdin, {"a": str, "b": str, "budget": seconds}; one
JSON line back on stdout per request: {"equal": bool, "parsed": bool} or {"timeout": true}
or {"error": str}. A first line {"ready": true} says the imports are done. The process
exits when stdin closes (the parent is gone).

Containment: a memory limit (RLIMIT_AS) makes memory bombs fail with MemoryError; an
interval timer interrupts Python-level work after `budget` seconds. Work that holds the
GIL inside C (sympy computing a gigantic integer) cannot be interrupted from inside: the
parent kills this process when it does not answer in time, and starts a new one.
Model output is parsed as LaTeX here and never evaluated as Python.
"""

from __future__ import annotations

import json
import resource
import signal
import sys

MEMORY_LIMIT_BYTES = 2 << 30


class _Budget(BaseException):  # not Exception: math-verify swallows those
    pass


def _on_alarm(signum, frame):  # noqa: ARG001
    raise _Budget()


def _parse(answer: str):
    from math_verify import LatexExtractionConfig, parse

    return parse("\\boxed{" + answer + "}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None)


def _equal(a: str, b: str) -> dict:
    from math_verify import verify

    pa, pb = _parse(a), _parse(b)
    if not pa or not pb:
        return {"equal": False, "parsed": False}
    # verify(gold, target) is not symmetric (assignments, intervals): try both ways.
    equal = bool(verify(pa, pb, timeout_seconds=None) or verify(pb, pa, timeout_seconds=None))
    return {"equal": equal, "parsed": True}


def main() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))
    except (ValueError, OSError):
        pass  # a lower hard limit is already in place
    signal.signal(signal.SIGALRM, _on_alarm)
    import logging

    logging.disable(logging.WARNING)  # math-verify warns on every unparseable answer
    _equal("1", "1")  # import and warm up sympy and the LaTeX grammar before saying ready
    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            signal.setitimer(signal.ITIMER_REAL, float(request.get("budget", 1.0)))
            try:
                reply = _equal(request["a"], request["b"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Budget:
            reply = {"timeout": True}
        except MemoryError:
            reply = {"error": "out of memory"}
        except Exception as exc:  # noqa: BLE001 - a bad answer must not end the worker
            reply = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
