"""`OpenAIGenerator`: chat completions from any OpenAI-compatible server (see `core.generation`).

`vllm serve`, a hosted API or llama.cpp's server: requests go out with bounded concurrency,
retries with exponential backoff on transient errors and a per-request timeout; what
finished before a failure is handed back (`PartialGenerationError`) so it is kept. The
`openai` package is imported only when a client is made.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Iterator, Sequence

from prismatic_assets.core.generation import (
    BaseGenerator,
    GenerationError,
    Message,
    PartialGenerationError,
    SamplingConfig,
    Usage,
    check_conversations,
    decoded_completions,
)

_RETRY_STATUS = {408, 409, 429}


class _Malformed(Exception):
    """A response that parsed but is not a chat completion."""


class _Skipped(Exception):
    """A conversation not sent because another of the same call had already failed."""


def _checked(response: Any) -> Any:
    """The response if it looks like a chat completion with messages; raise _Malformed otherwise."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list):
        raise _Malformed(f"no 'choices' list in {str(response)[:80]!r}")
    for choice in choices:
        if getattr(choice, "message", None) is None or not isinstance(getattr(choice, "index", None), int):
            raise _Malformed(f"a choice without message or index: {str(choice)[:80]!r}")
    return response


class OpenAIGenerator(BaseGenerator):
    """Any OpenAI-compatible chat endpoint: `vllm serve`, a hosted API, llama.cpp's server.

    base_url / api_key: arguments, else $OPENAI_BASE_URL / $OPENAI_API_KEY; with a base_url
    and no key a dummy key is sent (local servers ignore it). max_concurrency: requests in
    flight at once (a thread pool). max_retries: retries after a connection error, timeout,
    429, 408/409 or 5xx, or a reply that is not a chat completion (truncated JSON, a proxy's
    HTML page), waiting backoff * 2**attempt seconds (capped at 60 s, jittered up to 25%), or
    the server's Retry-After (capped at 300 s). timeout: seconds per request. When a
    conversation still fails, no further request of that call is sent, those in flight
    finish their current attempt, and `PartialGenerationError.completed` returns the
    conversations that did complete, so a caller keeps what was paid for. When a server
    returns fewer than n choices, the rest are asked for in further requests, seeded
    seed + (choices so far). Greedy requests (temperature 0) ask for one choice and repeat it.
    revision: a label for the weights behind `model` on that server (a commit, a date):
    the server's weights cannot be read from here, so the fingerprint is the served id plus
    this label; change it whenever the server's model changes, or cached generations of the
    old weights are reused. The API key is kept only inside the HTTP client: it is not an
    attribute, not in repr, and not part of the fingerprint.
    """

    def __init__(self, model: str, base_url: str | None = None, api_key: str | None = None,
                 max_concurrency: int = 8, max_retries: int = 5, timeout: float = 120.0,
                 backoff: float = 1.0, revision: str | None = None) -> None:
        super().__init__()
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency={max_concurrency!r}: must be an int >= 1")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries={max_retries!r}: must be an int >= 0")
        if not timeout > 0:
            raise ValueError(f"timeout={timeout!r}: must be > 0 seconds")
        if not backoff >= 0:
            raise ValueError(f"backoff={backoff!r}: must be >= 0 seconds")
        try:
            import openai
        except ImportError as error:
            raise ImportError("the openai backend needs the `openai` package: pip install openai") from error
        self.model_name = model
        self.revision = revision
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY") or ("EMPTY" if self.base_url else None)
        if api_key is None:
            raise ValueError("no API key: pass api_key= or set OPENAI_API_KEY; for a local server "
                             "(vllm serve) pass base_url='http://127.0.0.1:8000/v1' and any key works")
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout = float(timeout)
        self.backoff = float(backoff)
        self._openai = openai
        # Retries are ours (counted, logged in errors), not the client's.
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key, max_retries=0, timeout=self.timeout)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False

    @property
    def endpoint(self) -> str:
        return str(self._client.base_url)

    def _identity(self) -> str:
        # The served id names the model; nothing on this side can see its weights.
        payload = json.dumps({"backend": "openai", "model": self.model_name, "revision": self.revision})
        return hashlib.blake2b(payload.encode(), digest_size=16).hexdigest()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._closed:
                raise GenerationError(f"OpenAIGenerator({self.model_name!r}) is closed: create a new one")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai-generator")
            return self._pool

    def _retry_after(self, error: Exception) -> float | None:
        response = getattr(error, "response", None)
        value = response.headers.get("retry-after") if response is not None else None
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    def _request(self, messages: list[Message], sampling: SamplingConfig, n: int, seed: int | None,
                 abort: threading.Event | None = None) -> Any:
        openai = self._openai
        kwargs: dict[str, Any] = {"model": self.model_name, "messages": messages, "n": n,
                                  "temperature": sampling.temperature, "top_p": sampling.top_p,
                                  "max_tokens": sampling.max_tokens}
        if seed is not None:
            kwargs["seed"] = seed
        failures: list[str] = []
        timeouts = 0
        for attempt in range(self.max_retries + 1):
            if abort is not None and abort.is_set() and attempt > 0:
                raise GenerationError(f"{self.endpoint}: stopped retrying because another request of this batch "
                                      f"failed ({'; '.join(failures)})")
            try:
                return _checked(self._client.chat.completions.create(**kwargs, timeout=self.timeout))
            except _Malformed as error:  # a 200 with a body that is not a chat completion: truncated, a proxy page
                failures.append(f"malformed response ({error})")
                retry_after = None
            except json.JSONDecodeError as error:  # the client could not parse the body (truncated JSON)
                failures.append(f"unreadable response ({type(error).__name__}: {error})")
                retry_after = None
            except openai.APITimeoutError:
                timeouts += 1
                failures.append(f"timed out after {self.timeout:g} s")
                retry_after = None
            except openai.APIConnectionError as error:
                failures.append(f"connection error ({error.__cause__ or error})")
                retry_after = None
            except openai.APIStatusError as error:
                if error.status_code not in _RETRY_STATUS and error.status_code < 500:
                    hint = (" (is the model name right? GET /v1/models lists what the server serves)"
                            if error.status_code == 404 else "")
                    raise GenerationError(f"{self.endpoint} refused the request for model {self.model_name!r}: "
                                          f"HTTP {error.status_code} {error.message}{hint}") from error
                failures.append(f"HTTP {error.status_code}")
                retry_after = self._retry_after(error)
            if attempt < self.max_retries:
                # Jittered, so that max_concurrency failed requests do not return in lockstep.
                pause = min(300.0, retry_after) if retry_after is not None else min(60.0, self.backoff * 2**attempt)
                pause = pause * random.uniform(1.0, 1.25) if retry_after is None else pause
                if abort is not None:
                    abort.wait(pause)  # wakes early when the batch is given up
                else:
                    time.sleep(pause)
        attempts = self.max_retries + 1
        if timeouts == attempts:
            raise GenerationError(
                f"every request to {self.endpoint} timed out after {self.timeout:g} s ({attempts} attempts): "
                f"raise timeout= (a {sampling.max_tokens}-token completion can take minutes on a busy server) "
                "or lower max_concurrency")
        raise GenerationError(f"{self.endpoint} failed {attempts} attempts ({'; '.join(failures)}): check that the "
                              "server is up (vllm serve answers GET /health), or raise max_retries / backoff")

    def _complete_unless_aborted(self, messages: list[Message], sampling: SamplingConfig, abort: threading.Event):
        """`_complete`, unless another conversation of the call failed first (then no request is sent)."""
        if abort.is_set():
            raise _Skipped()
        try:
            return self._complete(messages, sampling, abort)
        except BaseException:
            abort.set()  # before this worker thread takes the next queued conversation
            raise

    def _complete(self, messages: list[Message], sampling: SamplingConfig, abort: threading.Event | None = None
                  ) -> tuple[list[str], list[str], int, int, list[int] | None]:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = completion_tokens = 0
        counts: list[int] | None = []
        target = decoded_completions(sampling)
        while len(texts) < target:
            want = target - len(texts)
            response = self._request(messages, sampling, want, sampling.completion_seed(len(texts)), abort)
            choices = sorted(response.choices, key=lambda ch: ch.index)[:want]
            if not choices:
                raise GenerationError(f"{self.endpoint} returned no choices for model {self.model_name!r}")
            texts += [ch.message.content or "" for ch in choices]
            reasons += [str(ch.finish_reason) for ch in choices]
            usage = response.usage
            if usage is not None:
                prompt_tokens += usage.prompt_tokens or 0
                completion_tokens += usage.completion_tokens or 0
            if counts is not None and usage is not None and len(response.choices) == 1:
                counts.append(usage.completion_tokens or 0)
            else:
                counts = None
        repeat = sampling.n // target  # greedy: decoded once, repeated
        return texts * repeat, reasons * repeat, prompt_tokens, completion_tokens, \
            None if counts is None else counts * repeat

    def chat_stream(self, conversations: Sequence[Sequence[Message]],
                    sampling: SamplingConfig | Sequence[SamplingConfig]) -> Iterator[list[tuple[int, list[str]]]]:
        """Completions as their requests return, in batches of what returned together (see
        `BaseGenerator.chat_stream`).

        On a failure no further request is sent, those in flight finish their attempt and are
        still yielded, then `GenerationError` is raised. Closing the iterator early stops the
        call the same way."""
        convs, samplings = check_conversations(conversations, sampling)
        abort = threading.Event()
        futures = {self._executor().submit(self._complete_unless_aborted, c, s, abort): i
                   for i, (c, s) in enumerate(zip(convs, samplings))}
        failure: BaseException | None = None
        delivered = 0
        waiting = set(futures)
        began = time.perf_counter()
        try:
            while waiting:
                done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                batch = []
                for future in done:
                    error = None if future.cancelled() else future.exception()
                    if future.cancelled() or isinstance(error, _Skipped):
                        continue
                    if error is None:
                        batch.append((futures[future], future.result()[0]))
                    elif failure is None:
                        failure = error
                        abort.set()
                        for other in futures:
                            other.cancel()
                if batch:
                    delivered += len(batch)
                    yield sorted(batch)
            if failure is None:
                self._record_results([f.result() for f in sorted(futures, key=futures.__getitem__)],
                                     time.perf_counter() - began)
        finally:
            abort.set()
            for other in futures:
                other.cancel()
        if failure is not None:
            raise GenerationError(f"{failure} ({delivered} of {len(futures)} conversations of this call completed "
                                  f"and were delivered)") from failure

    def chat(self, conversations: Sequence[Sequence[Message]],
             sampling: SamplingConfig | Sequence[SamplingConfig]) -> list[list[str]]:
        convs, samplings = check_conversations(conversations, sampling)
        if not convs:
            return []
        began = time.perf_counter()
        abort = threading.Event()
        executor = self._executor()
        futures = [executor.submit(self._complete_unless_aborted, c, s, abort) for c, s in zip(convs, samplings)]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # interrupted: start nothing more, stop retrying
            abort.set()
            for f in futures:
                f.cancel()
            raise
        failed = [i for i, f in enumerate(futures) if f.done() and not f.cancelled()
                  and f.exception() is not None and not isinstance(f.exception(), _Skipped)]
        if failed:
            # Keep what was received: start no new request, let those in flight finish their
            # current attempt (they retry no more), and hand the finished ones to the caller.
            abort.set()
            for f in futures:
                f.cancel()
            wait([f for f in futures if not f.cancelled()])
            completed = {i: f.result()[0] for i, f in enumerate(futures)
                         if not f.cancelled() and f.exception() is None}
            first = futures[failed[0]].exception()
            raise PartialGenerationError(f"{first} ({len(completed)} of {len(futures)} conversations of this call "
                                         f"completed and are returned with the error)", completed) from first
        results = [f.result() for f in futures]
        self._record_results(results, time.perf_counter() - began)
        return [r[0] for r in results]

    def _record_results(self, results: list[tuple], seconds: float) -> None:
        all_counts = [r[4] for r in results]
        self._record(Usage(prompt_tokens=sum(r[2] for r in results), completion_tokens=sum(r[3] for r in results),
                           completions=sum(len(r[0]) for r in results), seconds=seconds,
                           completion_token_counts=None if any(c is None for c in all_counts)
                           else tuple(tuple(c) for c in all_counts),
                           finish_reasons=tuple(tuple(r[1]) for r in results)))

    def close(self) -> None:
        """Stop the thread pool and the HTTP connection pool."""
        with self._pool_lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()
