"""An OpenAI-compatible server that fails mid-batch: 500s, hangs past the timeout, truncated
or malformed JSON. Each is retried with backoff up to a bound, then fails clearly, and the
conversations that did complete come back with the error (`PartialGenerationError`).

The server is real HTTP on 127.0.0.1; what it does with a request is scripted by the last
user message ("q3" -> the script's entry for q3).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest

from prismatic_assets.core.generation import GenerationError, PartialGenerationError, SamplingConfig
from prismatic_assets.core.generation_openai import OpenAIGenerator


class ScriptedServer:
    """Answers each request as `script(question, attempt)` says: "ok", "500", "hang", "truncate",
    "html", "no_choices" or "drop" (close the connection half-way through the body)."""

    def __init__(self, script: Callable[[str, int], str], hang_s: float = 3.0, delay: float = 0.0) -> None:
        self.script, self.hang_s, self.delay = script, hang_s, delay
        self.seen: list[str] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, data: bytes, length: int | None = None, ctype: str = "application/json"):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data) if length is None else length))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                with owner.lock:
                    attempt = owner.seen.count(question)
                    owner.seen.append(question)
                action = owner.script(question, attempt)
                time.sleep(owner.delay)
                payload = json.dumps({
                    "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": i, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": f"answer to {question}"}}
                                for i in range(body.get("n", 1))],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
                try:
                    if action == "ok":
                        self._send(200, payload)
                    elif action == "500":
                        self._send(500, b'{"error": {"message": "scripted 500"}}')
                    elif action == "hang":
                        time.sleep(owner.hang_s)
                        self._send(200, payload)
                    elif action == "truncate":
                        self._send(200, payload[: len(payload) // 2])
                    elif action == "html":
                        self._send(200, b"<html><body>502 Bad Gateway</body></html>", ctype="text/html")
                    elif action == "no_choices":
                        self._send(200, b'{"id": "x", "object": "chat.completion"}')
                    elif action == "drop":
                        self._send(200, payload[:40], length=len(payload))
                        self.connection.close()
                    else:
                        raise ValueError(action)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _convs(n: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"q{i}"}] for i in range(n)]


@pytest.mark.parametrize("bad", ["truncate", "html", "no_choices", "drop", "500"])
def test_a_bad_reply_is_retried_then_succeeds(bad):
    with ScriptedServer(lambda q, attempt: bad if attempt < 2 else "ok") as server, \
            OpenAIGenerator("m", base_url=server.url, max_retries=3, backoff=0.01) as g:
        assert g.chat(_convs(1), SamplingConfig()) == [["answer to q0"]]
        assert server.seen == ["q0"] * 3


@pytest.mark.parametrize("bad, says", [("truncate", "unreadable response (JSONDecodeError"),
                                       ("html", "malformed response"), ("no_choices", "malformed response"),
                                       ("drop", "connection error"), ("500", "HTTP 500")])
def test_a_bad_reply_that_persists_fails_clearly_within_the_bound(bad, says):
    with ScriptedServer(lambda q, attempt: bad) as server, \
            OpenAIGenerator("m", base_url=server.url, max_retries=2, backoff=0.05) as g:
        began = time.perf_counter()
        with pytest.raises(GenerationError, match="failed 3 attempts") as caught:
            g.chat(_convs(1), SamplingConfig())
        assert says in str(caught.value) and "check that the server is up" in str(caught.value)
        assert len(server.seen) == 3  # the bound: 1 + max_retries
        assert 0.15 <= time.perf_counter() - began < 5  # backoff 0.05 + 0.1 s, jittered up to 25%


def test_failure_mid_batch_keeps_what_was_received_and_starts_nothing_more():
    # One request at a time: q0 and q1 answer, q2 fails every attempt, q3..q5 are never sent.
    script = lambda q, attempt: "500" if q == "q2" else "ok"  # noqa: E731
    with ScriptedServer(script) as server, OpenAIGenerator("m", base_url=server.url, max_concurrency=1,
                                                           max_retries=2, backoff=0.01) as g:
        with pytest.raises(PartialGenerationError, match=r"HTTP 500.*2 of 6 conversations") as caught:
            g.chat(_convs(6), SamplingConfig())
        assert caught.value.completed == {0: ["answer to q0"], 1: ["answer to q1"]}
        assert server.seen == ["q0", "q1", "q2", "q2", "q2"]


def test_a_request_hanging_past_the_timeout_fails_while_the_others_complete():
    script = lambda q, attempt: "hang" if q == "q1" else "ok"  # noqa: E731
    with ScriptedServer(script, hang_s=3.0, delay=0.05) as server, \
            OpenAIGenerator("m", base_url=server.url, max_concurrency=3, timeout=0.4, max_retries=1,
                            backoff=0.01) as g:
        began = time.perf_counter()
        with pytest.raises(PartialGenerationError, match=r"timed out after 0.4 s \(2 attempts\)") as caught:
            g.chat(_convs(3), SamplingConfig())
        assert time.perf_counter() - began < 2.5  # two 0.4 s attempts, not the 3 s hang
        assert caught.value.completed == {0: ["answer to q0"], 2: ["answer to q2"]}
        assert server.seen.count("q1") == 2


def test_stream_yields_each_result_as_it_arrives_then_the_failure():
    script = lambda q, attempt: "500" if q == "q2" else "ok"  # noqa: E731
    with ScriptedServer(script, delay=0.05) as server, OpenAIGenerator("m", base_url=server.url, max_concurrency=1,
                                                                       max_retries=1, backoff=0.01) as g:
        got: list[tuple[int, list[str], int]] = []
        with pytest.raises(GenerationError, match=r"HTTP 500.*2 of 4 conversations of this call completed"):
            for batch in g.chat_stream(_convs(4), SamplingConfig()):
                got += [(index, outputs, len(server.seen)) for index, outputs in batch]  # what the server had seen
        assert [(i, o) for i, o, _ in got] == [(0, ["answer to q0"]), (1, ["answer to q1"])]
        assert got[0][2] <= 2  # q0 came out before q2 was even sent: one by one, not at the end
        assert "q3" not in server.seen


def test_stream_records_usage_like_chat():
    with ScriptedServer(lambda q, attempt: "ok") as server, OpenAIGenerator("m", base_url=server.url) as g:
        batches = list(g.chat_stream(_convs(3), SamplingConfig(n=2)))
        assert sorted(i for batch in batches for i, _ in batch) == [0, 1, 2]
        assert g.last_usage.completions == 6 and g.last_usage.prompt_tokens == 3
        assert g.total_completion_tokens == g.last_usage.completion_tokens == 3
