"""Seeded random projections of per-sample gradients to a fixed low dimension.

A per-sample gradient has as many coordinates as the proxy model has parameters (134.5M
for SmolLM2-135M); G-Vendi and the clustering use a `dim`-dimensional (1024 by default)
Johnson-Lindenstrauss projection of it. Two kinds, chosen by `ProjectionSpec.kind`:

- `"rademacher"`: the paper's dense projection, P[i, j] = +-1/sqrt(dim). On a GPU it is
  regenerated block by block per call; on CPU it is practical only for small inputs (a
  LoRA or last-layers subset), because every sample costs input_dim * dim sign draws.
- `"countsketch"` (default): each input coordinate i goes to one bucket h(i) in [0, dim)
  with a sign s(i) in {+1, -1}. One pass over the gradient (~0.2-0.5 s for 134.5M
  coordinates on 2 CPU cores), and a JL embedding of the same quality up to constants.

Both kinds draw their randomness from a counter-based hash (SplitMix64 of the global
coordinate index, see `_splitmix64`), computed with exact int64 arithmetic in torch. The
signs and buckets are therefore a fixed function of (kind, dim, seed, coordinate): the
same on every machine, device and torch version, and any block of input rows can be
regenerated on its own. Outputs are float32 and *not* normalized; `l2_normalize` does that.

This module does not compute gradients, choose which parameters enter them, or cache
projected vectors: it only maps a gradient, given as per-parameter chunks, to a vector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Literal, Sequence, TypeVar

import numpy as np
import torch

#: Bumped whenever the vectors produced for a given spec would change; part of every key.
ALGORITHM_VERSION = 1
KINDS = ("countsketch", "rademacher")
#: Default memory allowed for a projector's cached hash table (bucket indices or int8 signs).
DEFAULT_CACHE_BYTES = 2 * 1024**3
#: Dense projections larger than this (input_dim * dim) are refused on CPU unless
#: allow_slow=True: regenerating the signs cost 9-13 ns per entry on the 2-core dev machine,
#: so 2**32 entries is ~40 s per sample and the full SmolLM2 gradient (1.4e11) ~20 minutes.
CPU_DENSE_MAX_ENTRIES = 1 << 32
_CPU_DENSE_NS_PER_ENTRY = 10.0
#: Bucket ids of both signs (2 * dim) must fit in int32, the index dtype kept in memory.
MAX_DIM = 1 << 24

# SplitMix64 (Steele, Lea & Flood 2014): state_k = base + (k + 1) * GOLDEN, out = mix(state_k).
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB
# Distinct streams per kind, so the two kinds with one seed are unrelated.
_KIND_TAG = {"countsketch": 0x436F756E74536B65, "rademacher": 0x526164656D616368}
# Work is cut into blocks. On CPU, each op stays below torch's 32768-element grain size and
# so runs on one thread: these ops are memory-light, and on a shared 2-core machine the
# OpenMP barriers of 2-thread ops made them 10-20x slower (measured: converting 28M bf16
# values took 0.57 s on 2 threads, 0.05 s on one). On a GPU, large blocks amortize launches.
_CPU_BLOCK = (1 << 15) - 1
_GPU_BLOCK = 1 << 20


def _block_size(device: torch.device) -> int:
    return _CPU_BLOCK if device.type == "cpu" else _GPU_BLOCK


def _to_i64(x: int) -> int:
    """A 64-bit pattern as the signed int64 torch stores (two's complement)."""
    x &= _MASK64
    return x - (1 << 64) if x >= (1 << 63) else x


def _splitmix64(z: int) -> int:
    """Reference SplitMix64 finalizer on Python ints; the torch code must match it bit for bit."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    return z ^ (z >> 31)


def _stream_base(kind: str, seed: int) -> int:
    return _splitmix64(seed ^ _KIND_TAG[kind])


def _hash_block(out: torch.Tensor, tmp: torch.Tensor, start: int, base: int) -> torch.Tensor:
    """out[k] = SplitMix64 output number start + k of the stream `base`, as int64 bit patterns.

    In place on preallocated int64 buffers: fresh allocations of this size cost more than
    the arithmetic on CPU. int64 multiply and add wrap modulo 2**64 on CPU and CUDA alike;
    `>>` is arithmetic on int64, so each logical shift is masked.
    """
    n = out.numel()
    torch.arange(start + 1, start + 1 + n, out=out)
    out.mul_(_to_i64(_GOLDEN)).add_(_to_i64(base))
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(out, shift, out=tmp)
        tmp.bitwise_and_((1 << (64 - shift)) - 1)
        out.bitwise_xor_(tmp)
        if mult is not None:
            out.mul_(_to_i64(mult))
    return out


@dataclass(frozen=True)
class ProjectionSpec:
    """Which projection: kind, output dimension and seed. Stored with every projected vector."""

    kind: Literal["countsketch", "rademacher"] = "countsketch"
    dim: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"projection kind {self.kind!r} is unknown: use one of {KINDS}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"projection dim must be an integer in [1, {MAX_DIM}], got {self.dim!r} (the paper uses 1024)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ValueError(f"projection seed must be an integer in [0, 2**63), got {self.seed!r}")
        # numpy integers become Python ints, so keys and the 64-bit hash arithmetic are exact.
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "seed", int(self.seed))

    def key(self, input_dim: int, device_type: str = "cpu") -> str:
        """A stable string that changes whenever the projected vectors would change.

        `device_type` is accepted and ignored: the signs and buckets are integer hashes,
        identical on CPU and CUDA, so vectors from either device may share a cache.
        """
        _check_input_dim(input_dim)
        return f"{self.kind}-v{ALGORITHM_VERSION}-dim{self.dim}-seed{self.seed}-in{int(input_dim)}"


def _check_input_dim(input_dim: int) -> None:
    if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
        raise ValueError(f"input_dim must be a positive integer (the number of gradient coordinates), got {input_dim!r}")


class Projector:
    """Maps one gradient, given as flattened per-parameter chunks, to a (dim,) float32 CPU vector.

    Built by `make_projector`. Not thread-safe: it reuses scratch buffers between calls.
    """

    def __init__(self, spec: ProjectionSpec, input_dim: int, device: str | torch.device = "cpu",
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        _check_input_dim(input_dim)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, (int, np.integer)) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be a non-negative integer, got {cache_bytes!r}")
        self.spec = spec
        self.input_dim = int(input_dim)
        self.device = torch.device(device)
        self.cache_bytes = int(cache_bytes)
        self._base = _stream_base(spec.kind, spec.seed)
        self._scratch: torch.Tensor | None = None

    @property
    def key(self) -> str:
        return self.spec.key(self.input_dim, self.device.type)

    @property
    def cached(self) -> bool:
        """Whether the hash table is held in memory (else it is regenerated on every call)."""
        raise NotImplementedError

    def project(self, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Project one gradient; `chunks` in the fixed parameter order, numels summing to input_dim."""
        return self._project(self._check_chunks(chunks))

    def project_many(self, samples: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """Project several gradients at once -> (B, dim). Same result as stacking `project` calls."""
        if len(samples) == 0:
            return torch.zeros(0, self.spec.dim, dtype=torch.float32)
        return torch.stack([self.project(chunks) for chunks in samples])

    def _project(self, flats: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _check_chunks(self, chunks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if isinstance(chunks, torch.Tensor):
            raise TypeError("project() takes a sequence of chunks: pass [grad.reshape(-1)] for a single flat gradient")
        flats = []
        total = 0
        for i, chunk in enumerate(chunks):
            if not isinstance(chunk, torch.Tensor):
                raise TypeError(f"gradient chunk {i} is a {type(chunk).__name__}, expected a torch.Tensor")
            if not chunk.is_floating_point():
                raise TypeError(f"gradient chunk {i} has dtype {chunk.dtype}: pass float32 or bfloat16 gradients")
            flat = chunk.reshape(-1)
            if flat.device != self.device:
                flat = flat.to(self.device)
            flats.append(flat)
            total += flat.numel()
        if total != self.input_dim:
            raise ValueError(
                f"gradient chunks hold {total:,} coordinates but this projector was made for "
                f"input_dim={self.input_dim:,}: pass the same parameters, in the same order, that "
                "make_projector was sized for (sum of p.numel())"
            )
        return flats

    def _float32_slices(self, flat: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(start, fp32 values) covering a chunk: the chunk itself if fp32, else block-sized
        slices converted into a reused scratch buffer (never a full-size copy)."""
        if flat.dtype == torch.float32:
            yield 0, flat
            return
        size = _block_size(self.device)
        if self._scratch is None:
            self._scratch = torch.empty(size, dtype=torch.float32, device=self.device)
        for start in range(0, flat.numel(), size):
            part = flat[start:start + size]
            yield start, self._scratch[: part.numel()].copy_(part)


class _CountSketch(Projector):
    """out[b] = sum over i with h(i) = b of s(i) * g[i].

    h and s come from one hash per coordinate, folded into a single int32 id in [0, 2*dim):
    id = h + dim * [s = -1]. Accumulating into 2*dim bins and subtracting the halves costs
    no per-coordinate multiply and keeps 4 bytes per coordinate (538 MB for 134.5M).
    """

    def __init__(self, spec: ProjectionSpec, input_dim: int, device: str | torch.device = "cpu",
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        super().__init__(spec, input_dim, device, cache_bytes)
        self._index: torch.Tensor | None = None
        self._hash_block = _block_size(self.device)
        if 4 * self.input_dim <= self.cache_bytes:
            index = torch.empty(self.input_dim, dtype=torch.int32, device=self.device)  # (input_dim,)
            for start in range(0, self.input_dim, self._hash_block):
                stop = min(start + self._hash_block, self.input_dim)
                index[start:stop] = self._bucket_ids(start, stop - start)
            self._index = index

    @property
    def cached(self) -> bool:
        return self._index is not None

    def _bucket_ids(self, start: int, n: int) -> torch.Tensor:
        """int32 bucket ids of coordinates [start, start + n)."""
        dim = self.spec.dim
        z = torch.empty(n, dtype=torch.int64, device=self.device)
        tmp = torch.empty_like(z)
        _hash_block(z, tmp, start, self._base)
        # Bucket from the high 32 bits by multiply-shift (Lemire): floor(hi * dim / 2**32).
        torch.bitwise_right_shift(z, 32, out=tmp)
        tmp.bitwise_and_(0xFFFFFFFF).mul_(dim).bitwise_right_shift_(32)
        # Sign from the lowest bit: 1 means -1, i.e. the upper half of the 2*dim bins.
        z.bitwise_and_(1).mul_(dim).add_(tmp)
        return z.to(torch.int32)

    def _project(self, flats: list[torch.Tensor]) -> torch.Tensor:
        dim = self.spec.dim
        acc = torch.zeros(2 * dim, dtype=torch.float32, device=self.device)  # (2*dim,)
        offset = 0
        for flat in flats:
            for start, src in self._float32_slices(flat):
                if self._index is not None:
                    acc.index_add_(0, self._index[offset + start:offset + start + src.numel()], src)
                    continue
                for s0 in range(0, src.numel(), self._hash_block):
                    part = src[s0:s0 + self._hash_block]
                    acc.index_add_(0, self._bucket_ids(offset + start + s0, part.numel()), part)
            offset += flat.numel()
        return (acc[:dim] - acc[dim:]).to("cpu")  # (dim,)


class _Rademacher(Projector):
    """out = P^T g with P[i, j] = +-1/sqrt(dim), the paper's dense JL projection.

    Row i of P holds bits of the hashes number i*W .. i*W + W-1 (W = ceil(dim / 64) words of
    64 signs each; bit b of word w is column 64*w + b, 1 meaning -1). P is cached as int8
    when input_dim * dim bytes fit in cache_bytes, else regenerated block by block per call.
    """

    def __init__(self, spec: ProjectionSpec, input_dim: int, device: str | torch.device = "cpu",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, allow_slow: bool = False) -> None:
        super().__init__(spec, input_dim, device, cache_bytes)
        entries = self.input_dim * spec.dim
        if self.device.type == "cpu" and entries > CPU_DENSE_MAX_ENTRIES and not allow_slow:
            seconds = entries * _CPU_DENSE_NS_PER_ENTRY * 1e-9
            cost = f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"
            raise ValueError(
                f"a dense Rademacher projection of {self.input_dim:,} dims to {spec.dim} on CPU costs "
                f"{entries:.2e} sign draws, roughly {cost} per sample here: use "
                "ProjectionSpec(kind='countsketch') on CPU, or restrict the gradient to a parameter "
                "subset (LoRA or the last layers); pass allow_slow=True to run it anyway"
            )
        self._words = -(-spec.dim // 64)
        # Rows per block: on CPU at most _CPU_BLOCK signs (one thread per op, see above); on a
        # GPU _GPU_BLOCK hash words, i.e. 64M signs (256 MiB as float32).
        if self.device.type == "cpu":
            self._block_rows = max(1, _CPU_BLOCK // (self._words * 64))
        else:
            self._block_rows = max(1, _GPU_BLOCK // self._words)
        # (256, 8) sign of bit b of byte value v: one gather turns hash bytes into signs.
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        self._lut_f32 = (1 - 2 * bits).to(torch.float32).to(self.device)
        self._byte_shifts = torch.arange(0, 64, 8, device=self.device)
        self._cache: torch.Tensor | None = None
        if entries <= self.cache_bytes:
            lut_i8 = self._lut_f32.to(torch.int8)
            cache = torch.empty(self.input_dim, spec.dim, dtype=torch.int8, device=self.device)  # (input_dim, dim)
            for r0 in range(0, self.input_dim, self._block_rows):
                r1 = min(r0 + self._block_rows, self.input_dim)
                cache[r0:r1] = self._signs(r0, r1 - r0, lut_i8)
            self._cache = cache
        self._block: torch.Tensor | None = None

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def _signs(self, r0: int, rows: int, lut: torch.Tensor) -> torch.Tensor:
        """(rows, dim) +-1 signs of input rows [r0, r0 + rows) in lut's dtype (unscaled)."""
        w = self._words
        z = torch.empty(rows * w, dtype=torch.int64, device=self.device)
        tmp = torch.empty_like(z)
        _hash_block(z, tmp, r0 * w, self._base)
        # Bytes by shifts rather than a uint8 view, so the bit order never depends on endianness.
        byte = (z.unsqueeze(-1) >> self._byte_shifts) & 255  # (rows*w, 8)
        # index_select, not lut[byte]: advanced indexing was ~100x slower here.
        signs = lut.index_select(0, byte.reshape(-1))  # (rows*w*8, 8): byte k, bit b -> column 8k + b of a word
        return signs.reshape(rows, w * 64)[:, : self.spec.dim]

    def _rows_f32(self, r0: int, rows: int) -> torch.Tensor:
        if self._cache is None:
            return self._signs(r0, rows, self._lut_f32)
        if self._block is None or self._block.shape[0] < rows:
            self._block = torch.empty(self._block_rows, self.spec.dim, dtype=torch.float32, device=self.device)
        return self._block[:rows].copy_(self._cache[r0:r0 + rows])

    def _project(self, flats: list[torch.Tensor]) -> torch.Tensor:
        return self._project_stacked([flats])[0]

    def project_many(self, samples: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """Project B gradients sharing one chunk layout; each block of P is made once for all B."""
        if len(samples) == 0:
            return torch.zeros(0, self.spec.dim, dtype=torch.float32)
        checked = [self._check_chunks(chunks) for chunks in samples]
        layout = [f.numel() for f in checked[0]]
        for b, flats in enumerate(checked[1:], start=1):
            if [f.numel() for f in flats] != layout:
                raise ValueError(f"sample {b} splits its gradient into other chunk sizes than sample 0: "
                                 "pass every sample's chunks in the same parameter order")
        return self._project_stacked(checked)

    def _project_stacked(self, samples: list[list[torch.Tensor]]) -> torch.Tensor:
        batch = len(samples)
        out = torch.zeros(batch, self.spec.dim, dtype=torch.float32, device=self.device)  # (B, dim)
        offset = 0
        for c in range(len(samples[0])):
            n = samples[0][c].numel()
            for s0 in range(0, n, self._block_rows):
                rows = min(self._block_rows, n - s0)
                signs = self._rows_f32(offset + s0, rows)  # (rows, dim)
                if batch == 1 or self.device.type == "cpu":
                    # On CPU one matrix-vector product per sample: small threaded GEMMs
                    # (B x rows x dim) stalled for ms each on a busy 2-core machine.
                    for b, flats in enumerate(samples):
                        out[b].addmv_(signs.t(), flats[c][s0:s0 + rows].to(torch.float32))
                else:
                    g = torch.stack([flats[c][s0:s0 + rows].to(torch.float32) for flats in samples])  # (B, rows)
                    out.addmm_(g, signs)
            offset += n
        return (out * (1.0 / math.sqrt(self.spec.dim))).to("cpu")


def make_projector(spec: ProjectionSpec, input_dim: int, device: str | torch.device = "cpu", *,
                   cache_bytes: int = DEFAULT_CACHE_BYTES, allow_slow: bool = False) -> Projector:
    """Build the projector for `spec` over gradients of `input_dim` coordinates on `device`.

    cache_bytes: memory allowed for the hash table (CountSketch: 4 bytes per input
    coordinate; Rademacher: input_dim * dim bytes of int8 signs). Above it the table is
    regenerated on every call: same vectors, slower. allow_slow: permit a dense projection
    beyond CPU_DENSE_MAX_ENTRIES on CPU.
    """
    if not isinstance(spec, ProjectionSpec):
        raise TypeError(f"spec must be a ProjectionSpec, got {type(spec).__name__}")
    if spec.kind == "countsketch":
        return _CountSketch(spec, input_dim, device, cache_bytes)
    return _Rademacher(spec, input_dim, device, cache_bytes, allow_slow)


_Array = TypeVar("_Array", np.ndarray, torch.Tensor)


def l2_normalize(x: _Array) -> _Array:
    """Rows of an (n, d) numpy array or torch tensor (or one (d,) vector) scaled to unit L2 norm.

    Zero rows stay zero rather than becoming NaN; G-Vendi rejects them with their index.
    Float dtypes are kept; integer input becomes float64 (numpy) or float32 (torch).
    """
    if isinstance(x, torch.Tensor):
        t = x if x.is_floating_point() else x.to(torch.float32)
        norms = torch.linalg.vector_norm(t, dim=-1, keepdim=True)  # (n, 1)
        return t / torch.where(norms > 0, norms, torch.ones_like(norms))
    a = np.asarray(x)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    norms = np.linalg.norm(a, axis=-1, keepdims=True)  # (n, 1)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)
