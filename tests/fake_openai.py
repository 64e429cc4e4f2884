"""A deterministic OpenAI-compatible chat server on 127.0.0.1 for pipeline-level tests.

It plays the problem generator, the teacher and a student behind `vllm serve`: problem
requests get two new problems in the requested <problem> format, solution requests a
worked answer in \\boxed{}, evaluation prompts a boxed number. Every answer depends only
on the request, as a seeded LLM's would. It records what it was asked (a digest of the
model, messages, seed and n) and with which Authorization header, and can hold requests:
`hold(kind, after=n)` makes every request of that kind beyond the first n wait until
`release()`, which drops them unanswered (their client was killed meanwhile), so a test
knows exactly what a killed process had received.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KINDS = ("problem", "solution", "evaluation")


def request_kind(messages: list[dict[str, str]]) -> str:
    text = " ".join(m["content"] for m in messages)
    if "<problem>" in text:
        return "problem"
    return "solution" if "Solve this problem step by step" in text else "evaluation"


def _number(*parts: object) -> int:
    return int(hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:6], 16) % 900 + 100


def answer(messages: list[dict[str, str]], seed: int | None, choice: int) -> str:
    kind = request_kind(messages)
    if kind == "problem":
        tags = [_number(messages, seed, k) for k in (0, 1)]
        return "Here are the new problems.\n" + "\n".join(
            f"<problem>\nA garden path number {t} has {t * 2} stones, and every second stone is painted red. "
            f"How many red stones does path {t} have?\n</problem>" for t in tags)
    if kind == "solution":
        found = re.search(r"has (\d+) stones", messages[-1]["content"])
        if found is None:  # a problem not written by this server: answer something consistent
            return f"Working through it gives \\boxed{{{_number(messages) % 50}}}."
        stones = int(found.group(1))
        return f"Every second stone of {stones} is red, so there are \\boxed{{{stones // 2}}} red stones."
    return f"Adding up, the result is \\boxed{{{_number(messages) % 50}}}."


class FakeOpenAI:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.asked: list[tuple[str, str]] = []  # (kind, request digest), in arrival order
        self.answered: list[tuple[str, str]] = []
        self.auth: set[str | None] = set()
        self._holds: dict[str, int] = {}
        self._admitted: dict[str, int] = {k: 0 for k in KINDS}
        self._released = threading.Event()
        self._released.set()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # /v1/models
                self._send({"object": "list", "data": []})

            def _send(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                messages, seed, n = body["messages"], body.get("seed"), body.get("n", 1)
                kind = request_kind(messages)
                # One key per (model, request): two students asked the same question are two requests.
                key = hashlib.sha256(json.dumps([body["model"], messages, seed, n],
                                                sort_keys=True).encode()).hexdigest()[:16]
                with owner.lock:
                    owner.asked.append((kind, key))
                    owner.auth.add(self.headers.get("Authorization"))
                    held = kind in owner._holds and owner._admitted[kind] >= owner._holds[kind]
                    if not held:
                        owner._admitted[kind] += 1
                if held:
                    owner._released.wait()
                    self.close_connection = True  # its client is gone: nothing is answered or counted
                    return
                choices = [{"index": j, "finish_reason": "stop",
                            "message": {"role": "assistant",
                                        "content": answer(messages, None if seed is None else seed + j, j)}}
                           for j in range(n)]
                try:
                    self._send({"id": key, "object": "chat.completion", "created": 0, "model": body["model"],
                                "choices": choices,
                                "usage": {"prompt_tokens": 10, "completion_tokens": 10 * n,
                                          "total_tokens": 10 + 10 * n}})
                except (BrokenPipeError, ConnectionResetError):
                    return
                with owner.lock:
                    owner.answered.append((kind, key))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, kind: str, after: int) -> None:
        """Answer the first `after` requests of `kind` (counting from now on), hold the rest."""
        with self.lock:
            self._holds[kind] = self._admitted[kind] + after
            self._released.clear()

    def release(self) -> None:
        with self.lock:
            self._holds.clear()
        self._released.set()

    def count(self, kind: str, what: str = "answered") -> int:
        with self.lock:
            return sum(1 for k, _ in getattr(self, what) if k == kind)

    def keys(self, kind: str, what: str = "answered") -> list[str]:
        with self.lock:
            return [key for k, key in getattr(self, what) if k == kind]

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()
