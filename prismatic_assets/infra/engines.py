"""LLM engines with owned lifecycles, and the GPU placement check.

An `EngineSet` opens each role's engine (generator, teacher, student under evaluation)
for the stage that needs it and closes it afterwards, so the next engine, or the proxy,
finds its GPUs free. Two roles with the same configuration share one engine, kept open
until both have been served (the local profile writes and solves with one SmolLM2).
`keep_loaded: true` keeps an engine open for the whole set (e.g. across rounds on GPUs it
owns alone); `check_placement` refuses arrangements whose resident engines cannot fit.

Closing is verified: the engine's child processes must have exited and, on NVIDIA GPUs,
the engine's devices must give back their memory (NVML; no CUDA context is created here).

No Dagster here: `dagster_resources.EngineResource` binds a profile's engines to assets.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from prismatic_assets.core.generation import Generator
from prismatic_assets.core.generators import make_generator
from prismatic_assets.infra.config import EngineConfig

log = logging.getLogger(__name__)

#: The most of one GPU's memory that engines resident at the same time may claim together.
MAX_COMBINED_UTILIZATION = 0.95


class PlacementError(ValueError):
    """Engines configured so that they cannot all fit on their GPUs."""


class ReleaseError(RuntimeError):
    """An engine was closed but its processes or GPU memory were not released."""


# -- placement -----------------------------------------------------------------------------
def _gpu_engine(cfg: EngineConfig) -> bool:
    return cfg.backend == "vllm" or (cfg.backend == "transformers" and cfg.device.startswith("cuda"))


def _devices(cfg: EngineConfig) -> tuple[int, ...]:
    if cfg.backend == "transformers":
        return (int(cfg.device.split(":")[1]) if ":" in cfg.device else 0,)
    return cfg.device_ids()


def check_placement(engines: Mapping[str, EngineConfig], gpu_count: int | None = None) -> None:
    """Raise `PlacementError` unless every stage's resident engines fit their GPUs.

    Resident while a stage runs: the stage's engine plus every `keep_loaded` engine (roles
    with equal configurations are one engine). On each GPU their `gpu_memory_utilization`
    must sum to at most MAX_COMBINED_UTILIZATION. `gpu_count`, when known, bounds the
    device ids. OpenAI-compatible servers own no local GPU and are skipped.
    """
    distinct: dict[EngineConfig, list[str]] = {}
    for role, cfg in engines.items():
        if _gpu_engine(cfg):
            distinct.setdefault(cfg, []).append(role)
    for cfg, roles in distinct.items():
        bad = [d for d in _devices(cfg) if d < 0 or (gpu_count is not None and d >= gpu_count)]
        if bad:
            raise PlacementError(f"engine {'/'.join(roles)} ({cfg.model}) is placed on GPU(s) {bad}, but this "
                                 f"machine has {gpu_count} GPU(s) (ids 0..{(gpu_count or 1) - 1}): set its "
                                 f"`devices` to existing GPUs")
    resident = [cfg for cfg in distinct if cfg.keep_loaded]
    for cfg in distinct:
        together = resident + ([cfg] if cfg not in resident else [])
        load: dict[int, list[tuple[str, float]]] = {}
        for other in together:
            for d in _devices(other):
                load.setdefault(d, []).append(("/".join(distinct[other]), other.gpu_memory_utilization))
        for device, claims in sorted(load.items()):
            total = sum(u for _, u in claims)
            if len(claims) > 1 and total > MAX_COMBINED_UTILIZATION + 1e-9:
                who = ", ".join(f"{name} {u:.2f}" for name, u in claims)
                raise PlacementError(
                    f"GPU {device} would hold {len(claims)} engines at once ({who}: gpu_memory_utilization sums to "
                    f"{total:.2f} > {MAX_COMBINED_UTILIZATION}). Fix one of: give them disjoint `devices`; lower "
                    f"their gpu_memory_utilization so it sums to <= {MAX_COMBINED_UTILIZATION}; or set "
                    f"keep_loaded: false so each is closed before the next opens")


def visible_gpu_count() -> int | None:
    """GPUs visible to this process through NVML, or None where there is no NVIDIA driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        return int(pynvml.nvmlDeviceGetCount())
    finally:
        pynvml.nvmlShutdown()


# -- lifecycle -----------------------------------------------------------------------------
def open_engine(cfg: EngineConfig, model: str | None = None) -> Generator:
    """A generator for `cfg` (vLLM starts its engine on the first call)."""
    model = model or cfg.model
    if cfg.backend == "vllm":
        kwargs: dict = {"enforce_eager": True} if cfg.enforce_eager else {}
        if cfg.revision:
            kwargs["revision"] = cfg.revision
        return make_generator("vllm", model=model, tensor_parallel_size=cfg.tensor_parallel_size,
                              max_model_len=cfg.max_model_len, gpu_memory_utilization=cfg.gpu_memory_utilization,
                              devices=cfg.devices, engine_kwargs=kwargs or None,
                              trust_remote_code=cfg.trust_remote_code)
    if cfg.backend == "openai":
        return make_generator("openai", model=model, base_url=cfg.base_url, max_concurrency=cfg.max_concurrency,
                              revision=cfg.revision)
    return make_generator("transformers", model=model, device=cfg.device, trust_remote_code=cfg.trust_remote_code)


#: Helpers that Python's multiprocessing starts once and keeps for the parent's lifetime:
#: not part of any engine, so not expected to exit when one closes.
_PROCESS_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _children() -> set[int]:
    """This process's descendants, without multiprocessing's own long-lived helpers."""
    import psutil

    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if not any(h in " ".join(p.cmdline()) for h in _PROCESS_HELPERS):
                pids.add(p.pid)
        except psutil.Error:  # exited meanwhile
            pass
    return pids


def _running(pid: int) -> bool:
    """True while `pid` runs (an exited child, zombie or reaped, does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # exited between listing and asking
        return False


def _gpu_used_bytes(devices: tuple[int, ...]) -> dict[int, int] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        return {d: int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(d)).used) for d in devices}
    finally:
        pynvml.nvmlShutdown()


@dataclass
class _Lease:
    cfg: EngineConfig
    generator: Generator
    roles: set[str]
    children_before: set[int]
    gpu_before: dict[int, int] | None
    served: set[str] = field(default_factory=set)


class EngineSet:
    """The engines of a set of roles, each opened for its stage and closed after it.

        engines = EngineSet({"generator": cfg_a, "teacher": cfg_b})
        with engines.open("generator") as llm: ...     # cfg_a's engine; closed on exit
        with engines.open("teacher") as llm: ...       # then cfg_b's
        engines.close()                                # whatever is still open

    `borrowed` generators (tests, or an engine the caller owns) are served as they are and
    never closed. `release_timeout` bounds the wait for processes and GPU memory to go.
    """

    def __init__(self, configs: Mapping[str, EngineConfig] | None = None, *,
                 borrowed: Mapping[str, Generator] | None = None, release_timeout: float = 120.0,
                 gpu_count: int | None = None) -> None:
        self.configs = dict(configs or {})
        self.borrowed = dict(borrowed or {})
        self.release_timeout = release_timeout
        check_placement(self.configs, gpu_count)
        self._open: dict[EngineConfig, _Lease] = {}
        self.calls: list[tuple[str, str]] = []  # (event, role): "open"/"reuse"/"close", for logs and tests

    @classmethod
    def of(cls, **generators: Generator) -> "EngineSet":
        """An EngineSet serving already-built generators (not closed by the set)."""
        return cls(borrowed=generators)

    @contextlib.contextmanager
    def open(self, role: str, model: str | None = None) -> Iterator[Generator]:
        if role in self.borrowed:
            yield self.borrowed[role]
            return
        if role not in self.configs:
            raise KeyError(f"no engine configured for role {role!r}; configured: {sorted(self.configs)}")
        cfg = self.configs[role]
        if model is not None and model != cfg.model:
            cfg = cfg.model_copy(update={"model": model})
        lease = self._open.get(cfg)
        if lease is None:
            roles = {r for r, c in self.configs.items() if c == cfg} | {role}
            lease = _Lease(cfg, open_engine(cfg), roles, _children(),
                           _gpu_used_bytes(_devices(cfg)) if _gpu_engine(cfg) else None)
            self._open[cfg] = lease
            self.calls.append(("open", role))
        else:
            self.calls.append(("reuse", role))
        try:
            yield lease.generator
        finally:
            lease.served.add(role)
            if not cfg.keep_loaded and lease.served >= lease.roles:
                self._close(cfg, role)

    def _close(self, cfg: EngineConfig, role: str) -> None:
        lease = self._open.pop(cfg)
        lease.generator.close()
        self.calls.append(("close", role))
        self._verify_released(lease)

    def _verify_released(self, lease: _Lease) -> None:
        """Wait until the engine's processes have exited and its GPUs' memory is back."""
        from prismatic_assets.core.answers import worker_pids

        deadline = time.monotonic() + self.release_timeout
        while True:
            # The answer-verification worker may start while an engine is open (grading its
            # outputs); it outlives engines on purpose.
            stray = [pid for pid in _children() - lease.children_before - worker_pids() if _running(pid)]
            before = lease.gpu_before
            used = _gpu_used_bytes(tuple(before)) if before else None
            held = {d: used[d] - before[d] for d in used if used[d] - before[d] > 1 << 30} \
                if used and before else {}
            if not stray and not held:
                return
            if time.monotonic() > deadline:
                raise ReleaseError(f"engine {lease.cfg.model} was closed but after {self.release_timeout:.0f} s "
                                   f"processes {stray} still run and GPUs {held} still hold memory (bytes): "
                                   f"the next engine cannot start there; kill them or raise release_timeout")
            time.sleep(0.5)

    def close(self) -> None:
        """Close every engine still open (keep_loaded ones included)."""
        for cfg in list(self._open):
            self._close(cfg, next(iter(self._open[cfg].roles)))

    def __enter__(self) -> "EngineSet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
