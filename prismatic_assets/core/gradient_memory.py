"""Memory of one batched gradient step, and batches that fit a memory budget.

`GradientEmbedder.embed_many` (core/gradients.py) computes the gradients of B samples,
right-padded to T tokens, in one step. Beside what stays resident (the model, the
projection table, the runtime), a step holds:

- the activations autograd keeps for backward. They are measured on the model itself
  (`KeptBytes`: every distinct storage autograd saves, plus the module inputs the
  per-sample hooks keep, during short forwards at three lengths) and fitted per repeated
  block (decoder layer) as const + per token x B*T + per token pair x B*T^2; the last
  term is zero unless the attention implementation materializes its (T, T) matrices. A
  block recomputed in backward (`PerSampleGradients.attach(recompute=...)`) keeps only
  its input; backward also needs one block's worth of room at a time (its recomputation,
  or the gradients of its activations);
- the logits of the kept (response) positions x vocabulary in float32, their log-softmax,
  and the gradients of both: `LOGIT_COPIES` float32 copies per position. When the output
  head can be split from the model, they exist for one chunk of positions at a time;
- a block of per-sample gradients (core/per_sample.py: B x one weight's gradient, at most
  `block_bytes`) and the projection's working memory.

What the process holds besides (allocator caches, fragmentation) is covered by planning
only (1 - HEADROOM) of the room left under the budget.

`plan_batches` turns that cost into batches: longest sample first, as many samples of
similar length as fit beside it, the fewest recomputed blocks and the largest logit chunk
that fit; one sample that cannot fit even with every block recomputed raises
`MemoryBudgetError` with the figure to set.

This module does not compute gradients; it only measures, predicts and plans.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

#: Float32 copies of the logits alive at once: logits, log-softmax (kept for backward),
#: the gradient of the log-softmax and the gradient of the logits.
LOGIT_COPIES = 4
#: Copies still alive when the head's per-sample gradients are made: logits and their gradient.
HEAD_LOGIT_COPIES = 2
#: Share of the room under the budget left unplanned: allocator overhead and what the model
#: does not see (CPU peaks measured up to 10% above the prediction; benchmarks/bench_gradients.py).
HEADROOM = 0.2
#: Logit positions per sample that a batch of several samples must afford at once: fewer
#: means more head chunks, each one more projection of the head's per-sample gradients.
PACKED_LOGIT_CHUNK = 256
#: The smallest chunk a sample alone may fall back to before it is declared too big.
MIN_LOGIT_CHUNK = 16
#: Lengths of the probe forwards that measure the activations (three: const, T, T^2).
PROBE_LENGTHS = (16, 32, 64)
PROBE_BATCH = 2


class MemoryBudgetError(ValueError):
    """A sample whose gradient step cannot fit the memory budget; the message gives the figure."""


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes the gradient step may use in all, model and projection table included.

    resident: bytes in use before a step (called before each `embed_many`); None means this
    process's resident memory on CPU, or the device memory torch has allocated on a GPU.
    """

    total_bytes: int
    resident: Callable[[], int] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.total_bytes, bool) or not isinstance(self.total_bytes, (int, np.integer)) \
                or self.total_bytes <= 0:
            raise ValueError(f"memory budget must be a positive number of bytes, got {self.total_bytes!r}")

    @classmethod
    def gb(cls, gigabytes: float, resident: Callable[[], int] | None = None) -> "MemoryBudget":
        """A budget of `gigabytes` GiB (the unit of `compute.memory_gb`)."""
        return cls(int(gigabytes * 2**30), resident)


@dataclass(frozen=True)
class Polynomial:
    """Bytes of a batch of `batch` samples padded to `tokens`: const + B*T*token + B*T^2*pair."""

    const: float = 0.0
    token: float = 0.0
    pair: float = 0.0

    def at(self, batch: int, tokens: int) -> float:
        return self.const + batch * tokens * (self.token + self.pair * tokens)


@dataclass(frozen=True)
class StepCost:
    """What one gradient step holds beyond the resident model (see the module docstring).

    blocks: what each repeated block keeps for backward; block_inputs: bytes per token of
    each block's input (all that a recomputed block keeps); other: everything outside the
    blocks (embeddings, final norm, the hidden states handed to the head and their
    gradients); logit_position: bytes of one float32 copy of one position's logits;
    sample_block: bytes of one sample's gradient of the largest weight, block_cap: the
    most a block of per-sample gradients may hold (`block_bytes`); projection: the
    projection's working memory; split_head: logits can be made in chunks; can_recompute:
    blocks can be recomputed in backward.
    """

    blocks: tuple[Polynomial, ...]
    block_inputs: tuple[float, ...]
    other: Polynomial
    logit_position: float
    sample_block: float
    block_cap: float
    projection: float
    split_head: bool
    can_recompute: bool

    @property
    def max_recompute(self) -> int:
        return len(self.blocks) if self.can_recompute else 0

    def bytes(self, batch: int, tokens: int, positions: int, recompute: int = 0) -> float:
        """Peak bytes of a step of `batch` samples padded to `tokens`, with `positions` logit
        positions (all samples together) alive at once and the last `recompute` blocks recomputed.

        Two phases: the head's backward (the logits' copies, then the head's per-sample
        gradient block beside the logits and their gradient), and the blocks' backward,
        one block at a time (its recomputed activations or the gradients of its kept
        ones, and a per-sample gradient block); every kept activation is alive in both.
        """
        split = len(self.blocks) - recompute
        kept = sum(p.at(batch, tokens) for p in self.blocks[:split])
        inputs = sum(self.block_inputs[split:]) * batch * tokens
        gradient_block = min(self.block_cap, batch * self.sample_block)
        logits = positions * self.logit_position
        head = max(LOGIT_COPIES * logits, HEAD_LOGIT_COPIES * logits + gradient_block)
        workspace = max((p.at(batch, tokens) for p in self.blocks), default=0.0) + gradient_block
        return kept + inputs + self.other.at(batch, tokens) + max(head, workspace) + self.projection


@dataclass(frozen=True)
class PlannedBatch:
    """One step: which samples (indices into the input), padded to `tokens`, how."""

    indices: tuple[int, ...]
    tokens: int  # the longest sample's length: every row is padded to it
    positions: int  # logit positions per sample (the first response token's predecessor on)
    recompute: int  # blocks recomputed in backward
    logit_chunk: int | None  # positions per sample per head chunk; None: all logits at once
    predicted_bytes: float  # StepCost.bytes of this step (0 when planned without a budget)

    @property
    def padded_tokens(self) -> int:
        return len(self.indices) * self.tokens


def plan_batches(lengths: Sequence[int], prompts: Sequence[int], cost: StepCost, budget_bytes: float,
                 resident: float, max_batch: int, max_batch_tokens: int | None = None) -> list[PlannedBatch]:
    """Group samples (token `lengths`, `prompts` prompt tokens each) into steps that fit.

    Longest first; a step takes the next samples while its predicted peak stays within
    `budget_bytes - resident`, at most `max_batch` samples and `max_batch_tokens` padded
    tokens. Each step uses the fewest recomputed blocks, then the largest logit chunk, that
    fit. Raises MemoryBudgetError for a sample that cannot fit alone.
    """
    available = (budget_bytes - resident) * (1 - HEADROOM)
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plans: list[PlannedBatch] = []
    start = 0
    while start < len(order):
        first = order[start]
        tokens = int(lengths[first])
        recompute = _lone_setting(cost, tokens, tokens - int(prompts[first]), available)
        if recompute is None:
            raise _too_big(first, tokens, cost, budget_bytes, resident)
        members = [first]
        min_prompt = int(prompts[first])
        for i in order[start + 1:]:
            if len(members) >= max_batch:
                break
            if max_batch_tokens is not None and (len(members) + 1) * tokens > max_batch_tokens:
                break
            positions = tokens - min(min_prompt, int(prompts[i]))
            if _chunk(cost, len(members) + 1, tokens, positions, recompute, available, PACKED_LOGIT_CHUNK) is None:
                break
            members.append(i)
            min_prompt = min(min_prompt, int(prompts[i]))
        positions = tokens - min_prompt
        chunk = _chunk(cost, len(members), tokens, positions, recompute, available, MIN_LOGIT_CHUNK)
        assert chunk is not None  # the lone sample fitted with this setting
        plans.append(PlannedBatch(tuple(members), tokens, positions, recompute,
                                  None if not cost.split_head or chunk >= positions else chunk,
                                  cost.bytes(len(members), tokens, len(members) * min(chunk, positions), recompute)))
        start += len(members)
    return plans


def unbudgeted_batches(lengths: Sequence[int], prompts: Sequence[int], max_batch: int,
                       max_batch_tokens: int | None = None) -> list[PlannedBatch]:
    """Steps without a budget: longest first, `max_batch` samples, at most `max_batch_tokens`
    padded tokens; all logits at once, nothing recomputed."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    plans: list[PlannedBatch] = []
    start = 0
    while start < len(order):
        tokens = int(lengths[order[start]])
        end = start + 1
        while end < len(order) and end - start < max_batch and (
                max_batch_tokens is None or (end - start + 1) * tokens <= max_batch_tokens):
            end += 1
        members = tuple(order[start:end])
        positions = tokens - min(int(prompts[i]) for i in members)
        plans.append(PlannedBatch(members, tokens, positions, 0, None, 0.0))
        start = end
    return plans


def _chunk(cost: StepCost, batch: int, tokens: int, positions: int, recompute: int, available: float,
           least: int) -> int | None:
    """The most logit positions per sample that fit at once (at least min(least, positions)), or None."""
    def fits(per_sample: int) -> bool:
        return cost.bytes(batch, tokens, batch * per_sample, recompute) <= available

    if not cost.split_head:
        return positions if fits(positions) else None
    low = min(least, positions)
    if not fits(low):
        return None
    high = positions
    while low < high:  # the largest chunk that fits: bytes grow with the chunk
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _lone_setting(cost: StepCost, tokens: int, positions: int, available: float) -> int | None:
    """Fewest recomputed blocks for one sample: first with a packing-sized logit chunk, then
    with any chunk down to MIN_LOGIT_CHUNK; None if even that does not fit."""
    for least in (PACKED_LOGIT_CHUNK, MIN_LOGIT_CHUNK):
        for recompute in range(cost.max_recompute + 1):
            if _chunk(cost, 1, tokens, positions, recompute, available, least) is not None:
                return recompute
    return None


def _too_big(index: int, tokens: int, cost: StepCost, budget_bytes: float, resident: float) -> MemoryBudgetError:
    positions = min(MIN_LOGIT_CHUNK, tokens) if cost.split_head else tokens
    need = cost.bytes(1, tokens, positions, cost.max_recompute)
    how = ("with every block recomputed in backward" if cost.max_recompute else
           "(this model's blocks cannot be recomputed)")
    how += f" and {'the logits in chunks of ' + str(positions) + ' positions' if cost.split_head else 'all its logits'}"
    gib = 2**30
    return MemoryBudgetError(
        f"sample {index} ({tokens} tokens) needs {need / gib:.2f} GiB for its gradient step {how}; "
        f"{resident / gib:.2f} GiB is already resident (model, projection table, runtime), so the memory budget "
        f"of {budget_bytes / gib:.2f} GiB leaves {max(0.0, budget_bytes - resident) / gib:.2f} GiB: raise "
        f"compute.memory_gb to at least {math.ceil(10 * (resident + need / (1 - HEADROOM)) / gib) / 10:.1f}, or lower "
        "proxy.max_length so that long samples are cut")


# -- measuring ---------------------------------------------------------------------------
def _not_kept(_: None) -> torch.Tensor:
    raise RuntimeError("a graph recorded by KeptBytes.recording cannot run backward: its saved tensors were "
                       "counted, not kept")


class KeptBytes:
    """Adds up the distinct storages autograd saves for backward during a forward (and the
    module inputs the per-sample hooks keep, passed to `add`), by region: the index of the
    repeated block running, or -1 outside the blocks. Storages of `exclude` (the model's
    parameters and buffers) are resident anyway and not counted."""

    def __init__(self, exclude: Iterable[torch.Tensor]) -> None:
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._seen: set[int] = set()
        # The counted storages, held until the recording ends: a storage freed mid-forward would
        # hand its address to a later one, which would then look already counted.
        self._held: list[torch.UntypedStorage] = []
        self.region = -1
        self.bytes: dict[int, float] = defaultdict(float)
        self.inputs: dict[int, float] = {}  # region -> bytes of the block's input

    def add(self, tensor: torch.Tensor) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self._exclude or ptr in self._seen:
            return
        self._seen.add(ptr)
        self._held.append(storage)
        self.bytes[self.region] += storage.nbytes()

    @contextmanager
    def recording(self, blocks: Sequence[torch.nn.Module]) -> Iterator["KeptBytes"]:
        """Count what forwards run inside save for backward. A graph recorded here cannot run
        backward: the saved tensors are counted, not kept. (Keeping them from the pack hook
        would tie each output to its own graph in a cycle that Python's collector cannot
        see, and every module a hook refers to, the whole model included, would stay in
        memory for the life of the process.) The storages themselves, which refer to no graph,
        are held until the recording ends, so that no two are ever at the same address."""
        def pack(t: torch.Tensor) -> None:
            self.add(t)
            return None

        def enter(index: int):
            def hook(module, args, kwargs):
                self.region = index
                x = args[0] if args else kwargs.get("hidden_states")
                if isinstance(x, torch.Tensor):
                    self.inputs[index] = float(x.nelement() * x.element_size())
            return hook

        def leave(module, args, output):
            self.region = -1

        with ExitStack() as stack:
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, _not_kept))
            stack.callback(self._held.clear)
            for i, block in enumerate(blocks):
                stack.callback(block.register_forward_pre_hook(enter(i), with_kwargs=True).remove)
                stack.callback(block.register_forward_hook(leave).remove)
            yield self


def fit_polynomial(tokens: Sequence[int], measured: Sequence[float], batch: int) -> Polynomial:
    """The Polynomial through three (T, bytes) points of batches of `batch` samples.

    Coefficients that come out negative (round-off of storages that do not scale) are set
    to zero, so the fitted cost never undercounts what grows with T.
    """
    if len(tokens) != 3 or len(measured) != 3:
        raise ValueError("fit_polynomial needs three lengths and three measurements")
    t = np.asarray(tokens, dtype=np.float64)
    a = np.stack([np.ones(3), batch * t, batch * t * t], axis=1)  # (3, 3)
    const, token, pair = np.linalg.solve(a, np.asarray(measured, dtype=np.float64))
    token = max(token, 0.0)
    pair = max(pair, 0.0)
    # The constant absorbs what the clamped terms no longer explain at the longest length.
    const = max(0.0, float(measured[-1]) - batch * t[-1] * (token + pair * t[-1]), const)
    return Polynomial(float(const), float(token), float(pair))


# -- process memory ----------------------------------------------------------------------
def resident_bytes(device: torch.device | str = "cpu") -> int:
    """Memory in use now: the process's resident set on CPU, torch's allocated memory on a GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        # The peak, in KiB on Linux: an overestimate of what is resident now, which errs safe.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


_LIBC: ctypes.CDLL | None | bool = False


def release_freed_memory() -> None:
    """Give memory that tensors freed back to the OS (glibc's malloc_trim; nothing elsewhere).

    glibc keeps freed heap memory for reuse; after a step of large activations it stays
    counted as resident, and the next budget plan would see less room than there is.
    """
    global _LIBC
    if _LIBC is False:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else None
        except OSError:
            _LIBC = None
        if _LIBC is not None and not hasattr(_LIBC, "malloc_trim"):
            _LIBC = None
    if isinstance(_LIBC, ctypes.CDLL):
        _LIBC.malloc_trim(0)
