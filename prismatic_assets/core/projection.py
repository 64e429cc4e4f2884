"""Seeded random projections of per-sample gradients to a fixed low dimension.

A per-sample gradient has as many coordinates as the proxy model has parameters (134.5M
for SmolLM2-135M); G-Vendi and the clustering use a `dim`-dimensional (1024 by default)
Johnson-Lindenstrauss projection of it. Two kinds, chosen by `ProjectionSpec.kind`:

- `"rademacher"`: the paper's dense projection, P[i, j] = +-1/sqrt(dim). On a GPU it is
  regenerated block by block per call, each block shared by all samples of the call (bf16
  signs, float32 accumulation); on CPU it is practical only for small inputs (a LoRA or
  last-layers subset), because every call costs input_dim * dim sign draws.
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
from typing import Sequence, TypeVar

import numpy as np
import torch

from prismatic_assets.core.projection_spec import (  # noqa: F401  (re-exported: the spec is part of this API)
    ALGORITHM_VERSION,
    KINDS,
    MAX_DIM,
    ProjectionSpec,
    check_input_dim,
    projection_key,
)

#: Default memory allowed for a projector's cached hash table (bucket indices or int8 signs).
DEFAULT_CACHE_BYTES = 2 * 1024**3
#: Dense projections larger than this (input_dim * dim) are refused on CPU unless
#: allow_slow=True: regenerating the signs cost 9-13 ns per entry on the 2-core dev machine,
#: so 2**32 entries is ~40 s per sample and the full SmolLM2 gradient (1.4e11) ~20 minutes.
CPU_DENSE_MAX_ENTRIES = 1 << 32
_CPU_DENSE_NS_PER_ENTRY = 10.0

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
#: A dense projection's block of regenerated signs on a GPU (bf16: 128k input rows at dim 1024).
DEFAULT_GPU_BLOCK_BYTES = 256 * 1024**2
COMPUTE_DTYPES = ("float32", "bfloat16")


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


def _mix(out: torch.Tensor, tmp: torch.Tensor, base: int) -> torch.Tensor:
    """out[k] = SplitMix64 output number out[k] of the stream `base`, given counters out[k] + 1.

    In place on preallocated int64 buffers: fresh allocations of this size cost more than
    the arithmetic on CPU. int64 multiply and add wrap modulo 2**64 on CPU and CUDA alike;
    `>>` is arithmetic on int64, so each logical shift is masked.
    """
    out.mul_(_to_i64(_GOLDEN)).add_(_to_i64(base))
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, None)):
        torch.bitwise_right_shift(out, shift, out=tmp)
        tmp.bitwise_and_((1 << (64 - shift)) - 1)
        out.bitwise_xor_(tmp)
        if mult is not None:
            out.mul_(_to_i64(mult))
    return out


def _hash_block(out: torch.Tensor, tmp: torch.Tensor, start: int, base: int) -> torch.Tensor:
    """out[k] = SplitMix64 output number start + k of the stream `base`, as int64 bit patterns."""
    n = out.numel()
    torch.arange(start + 1, start + 1 + n, out=out)
    return _mix(out, tmp, base)


def _hash_at(numbers: torch.Tensor, base: int) -> torch.Tensor:
    """SplitMix64 outputs number `numbers[k]` (any int64 tensor) of the stream `base`."""
    out = numbers.to(torch.int64).add(1)
    return _mix(out, torch.empty_like(out), base)


class Projector:
    """Maps gradients, given as flattened per-parameter chunks, to (dim,) float32 vectors.

    Built by `make_projector`. Three ways in, all giving the same vectors:
    `project` (one gradient), `project_many` (B gradients at once: the hash table or the
    random block is made once and applied to all B), and `project_slice`/`project_rows`
    (the contribution of part of B gradients, for callers that produce a gradient piece by
    piece and never hold it whole; the projection is linear, so contributions add up).
    Not thread-safe: it reuses scratch buffers between calls.
    """

    def __init__(self, spec: ProjectionSpec, input_dim: int, device: str | torch.device = "cpu",
                 cache_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        check_input_dim(input_dim)
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

    def working_bytes(self, batch: int) -> int:
        """Memory a call on `batch` samples allocates beyond its inputs and output (at most)."""
        raise NotImplementedError

    # -- public entry points ---------------------------------------------------------------
    def project(self, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Project one gradient; `chunks` in the fixed parameter order, numels summing to input_dim."""
        return self.project_many([chunks])[0]

    def project_many(self, samples: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
        """Project B gradients at once -> (B, dim) on CPU. Same result as stacking `project` calls.

        Every sample must split its gradient into the same chunk sizes (the same parameters
        in the same order): each block of the random matrix is then made once for all B.
        """
        if len(samples) == 0:
            return torch.zeros(0, self.spec.dim, dtype=torch.float32)
        checked = [self._check_chunks(chunks) for chunks in samples]
        layout = [f.numel() for f in checked[0]]
        for b, flats in enumerate(checked[1:], start=1):
            if [f.numel() for f in flats] != layout:
                if self.spec.kind == "countsketch":  # no shared block to gain: one sample at a time
                    return torch.cat([self.project_many([flats]) for flats in checked])
                raise ValueError(f"sample {b} splits its gradient into other chunk sizes than sample 0: "
                                 "pass every sample's chunks in the same parameter order")
        acc = self._new_acc(len(checked))
        offset = 0
        for c, n in enumerate(layout):
            self._accumulate(acc, [flats[c] for flats in checked], offset)
            offset += n
        return self._finish(acc).to("cpu")

    def project_slice(self, values: torch.Tensor, offset: int) -> torch.Tensor:
        """Contribution of coordinates [offset, offset + n) of B gradients, given as (B, n) values.

        Returns (B, dim) float32 on the projector's device. Summing the contributions of
        slices that cover every coordinate once gives `project_many` of the whole gradients.
        """
        values = self._check_values(values, 2, "project_slice(values (B, n), offset)")
        offset = self._check_offset(offset)
        if offset + values.shape[1] > self.input_dim:
            raise ValueError(f"slice [{offset}, {offset + values.shape[1]}) runs past input_dim={self.input_dim:,}")
        acc = self._new_acc(values.shape[0])
        self._accumulate(acc, list(values.unbind(0)), offset)
        return self._finish(acc)

    def project_rows(self, values: torch.Tensor, rows: torch.Tensor, offset: int) -> torch.Tensor:
        """Contribution of scattered rows of a (rows x width) parameter stored at `offset`.

        values: (B, R, width); rows: (R,) distinct row indices. Coordinate j of row rows[r]
        is offset + rows[r] * width + j. For sparse gradients such as an embedding table's,
        where a batch touches only the rows of its tokens. Returns (B, dim) on the device.
        """
        values = self._check_values(values, 3, "project_rows(values (B, R, width), rows (R,), offset)")
        offset = self._check_offset(offset)
        batch, n_rows, width = values.shape
        rows = torch.as_tensor(rows, device=self.device)
        if rows.dtype.is_floating_point or rows.shape != (n_rows,):
            raise ValueError(f"rows must be {n_rows} integer row indices, "
                             f"got {rows.dtype} of shape {tuple(rows.shape)}")
        acc = self._new_acc(batch)
        if n_rows == 0 or width == 0:
            return self._finish(acc)
        rows = rows.to(torch.int64)
        if int(rows.min()) < 0 or offset + (int(rows.max()) + 1) * width > self.input_dim:
            raise ValueError(f"rows {int(rows.min())}..{int(rows.max())} of width {width} at offset {offset} run "
                             f"outside input_dim={self.input_dim:,}")
        flat = values.reshape(batch, n_rows * width)
        # Rows per step so that a step's coordinates stay within one block.
        step = max(1, self._coordinate_block() // width)
        cols = torch.arange(width, device=self.device)
        for r0 in range(0, n_rows, step):
            r1 = min(r0 + step, n_rows)
            coords = (offset + rows[r0:r1, None] * width + cols).reshape(-1)  # ((r1-r0)*width,)
            self._accumulate_at(acc, [v[r0 * width:r1 * width] for v in flat.unbind(0)], coords)
        return self._finish(acc)

    # -- for subclasses --------------------------------------------------------------------
    def _new_acc(self, batch: int) -> torch.Tensor:
        raise NotImplementedError

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _accumulate(self, acc: torch.Tensor, parts: list[torch.Tensor], offset: int) -> None:
        """acc += projection of B equal-length 1-D parts covering [offset, offset + n)."""
        raise NotImplementedError

    def _accumulate_at(self, acc: torch.Tensor, parts: list[torch.Tensor], coords: torch.Tensor) -> None:
        """acc += projection of B 1-D parts whose k-th value sits at coordinate coords[k]."""
        raise NotImplementedError

    def _coordinate_block(self) -> int:
        return _block_size(self.device)

    # -- checks and helpers ----------------------------------------------------------------
    def _check_values(self, values: torch.Tensor, ndim: int, usage: str) -> torch.Tensor:
        if not isinstance(values, torch.Tensor) or values.dim() != ndim:
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise TypeError(f"{usage}: values must be a {ndim}-D tensor, got {shape}")
        if not values.is_floating_point():
            raise TypeError(f"values have dtype {values.dtype}: pass float32 or bfloat16 gradients")
        return values if values.device == self.device else values.to(self.device)

    def _check_offset(self, offset: int) -> int:
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or not 0 <= offset < self.input_dim:
            raise ValueError(f"offset must be an integer in [0, {self.input_dim}), got {offset!r}")
        return int(offset)

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

    def _as_float32(self, part: torch.Tensor) -> torch.Tensor:
        """A block-sized part as float32: itself, or converted into a reused scratch buffer."""
        if part.dtype == torch.float32:
            return part
        if self._scratch is None or self._scratch.numel() < part.numel():
            self._scratch = torch.empty(max(part.numel(), _block_size(self.device)), dtype=torch.float32,
                                        device=self.device)
        return self._scratch[: part.numel()].copy_(part)


class _CountSketch(Projector):
    """out[b] = sum over i with h(i) = b of s(i) * g[i].

    h and s come from one hash per coordinate, folded into a single int32 id in [0, 2*dim):
    id = h + dim * [s = -1]. Accumulating into 2*dim bins and subtracting the halves costs
    no per-coordinate multiply and keeps 4 bytes per coordinate (538 MB for 134.5M). With B
    samples, the ids of a block are read or hashed once and applied to each sample in turn
    (one index_add_ per sample: on CPU, a single index_add_ over a (B, n) layout measured
    5-7x slower per value than B contiguous ones).
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

    def working_bytes(self, batch: int) -> int:
        # Per block: two int64 hash buffers and the int32 ids (none when cached), and a
        # float32 copy of a non-float32 part.
        block = self._hash_block
        return (0 if self.cached else 20 * block) + 4 * block

    def _ids_from_hash(self, z: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
        dim = self.spec.dim
        # Bucket from the high 32 bits by multiply-shift (Lemire): floor(hi * dim / 2**32).
        torch.bitwise_right_shift(z, 32, out=tmp)
        tmp.bitwise_and_(0xFFFFFFFF).mul_(dim).bitwise_right_shift_(32)
        # Sign from the lowest bit: 1 means -1, i.e. the upper half of the 2*dim bins.
        z.bitwise_and_(1).mul_(dim).add_(tmp)
        return z.to(torch.int32)

    def _bucket_ids(self, start: int, n: int) -> torch.Tensor:
        """int32 bucket ids of coordinates [start, start + n)."""
        z = torch.empty(n, dtype=torch.int64, device=self.device)
        tmp = torch.empty_like(z)
        _hash_block(z, tmp, start, self._base)
        return self._ids_from_hash(z, tmp)

    def _new_acc(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 2 * self.spec.dim, dtype=torch.float32, device=self.device)  # (B, 2*dim)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        dim = self.spec.dim
        return acc[:, :dim] - acc[:, dim:]  # (B, dim)

    def _accumulate(self, acc: torch.Tensor, parts: list[torch.Tensor], offset: int) -> None:
        n = parts[0].numel()
        # Cached fp32 input goes in one call per sample; anything hashed or converted, in blocks.
        whole = self._index is not None and all(p.dtype == torch.float32 for p in parts)
        step = max(n, 1) if whole else self._hash_block
        for s0 in range(0, n, step):
            m = min(step, n - s0)
            if self._index is not None:
                ids = self._index[offset + s0:offset + s0 + m]
            else:
                ids = self._bucket_ids(offset + s0, m)  # hashed once for all B samples
            for b, part in enumerate(parts):
                acc[b].index_add_(0, ids, self._as_float32(part[s0:s0 + m]))

    def _accumulate_at(self, acc: torch.Tensor, parts: list[torch.Tensor], coords: torch.Tensor) -> None:
        if self._index is not None:
            ids = self._index.index_select(0, coords)
        else:
            z = coords.add(1)
            ids = self._ids_from_hash(_mix(z, torch.empty_like(z), self._base), torch.empty_like(z))
        for b, part in enumerate(parts):
            acc[b].index_add_(0, ids, self._as_float32(part))


class _Rademacher(Projector):
    """out = P^T g with P[i, j] = +-1/sqrt(dim), the paper's dense JL projection.

    Row i of P holds bits of the hashes number i*W .. i*W + W-1 (W = ceil(dim / 64) words of
    64 signs each; bit b of word w is column 64*w + b, 1 meaning -1). P is cached as int8
    when input_dim * dim bytes fit in cache_bytes, else regenerated block by block per call,
    each block applied to all B samples of a `project_many`/`project_slice` call: with B
    samples per call the cost of making the signs is divided by B.

    compute_dtype "bfloat16" (the default on GPUs) makes the signs (exact in bf16) and
    rounds each gradient value to bf16 before the product, which accumulates in float32;
    "float32" (the default on CPU) keeps the values as they are. The key records bf16.
    """

    def __init__(self, spec: ProjectionSpec, input_dim: int, device: str | torch.device = "cpu",
                 cache_bytes: int = DEFAULT_CACHE_BYTES, allow_slow: bool = False,
                 compute_dtype: str | None = None, block_bytes: int | None = None) -> None:
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
        if compute_dtype is None:
            compute_dtype = "float32" if self.device.type == "cpu" else "bfloat16"
        if compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute_dtype={compute_dtype!r}: choose one of {COMPUTE_DTYPES}")
        self.compute_dtype = compute_dtype
        self._dtype = torch.bfloat16 if compute_dtype == "bfloat16" else torch.float32
        self._words = -(-spec.dim // 64)
        # Rows per block: on CPU at most _CPU_BLOCK signs (one thread per op, see above); on a
        # GPU as many rows as fit in block_bytes (the signs block, reused for all B samples).
        if block_bytes is None:
            block_bytes = DEFAULT_GPU_BLOCK_BYTES if self.device.type != "cpu" else 0
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, (int, np.integer)) or block_bytes < 0:
            raise ValueError(f"block_bytes must be a non-negative integer, got {block_bytes!r}")
        if block_bytes == 0:
            self._block_rows = max(1, _CPU_BLOCK // (self._words * 64))
        else:
            self._block_rows = max(1, int(block_bytes) // (self._words * 64 * self._dtype.itemsize))
        # (256, 8) sign of bit b of byte value v: one gather turns hash bytes into signs.
        bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
        self._lut_f32 = (1 - 2 * bits).to(torch.float32).to(self.device)
        self._lut = self._lut_f32.to(self._dtype)
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
        self._mm_out_dtype = self.device.type == "cuda"  # torch.mm(..., out_dtype=) exists for CUDA only

    @property
    def key(self) -> str:
        return projection_key(self.spec, self.input_dim, self.device, self.compute_dtype)

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def working_bytes(self, batch: int) -> int:
        rows, words, size = self._block_rows, self._words, self._dtype.itemsize
        signs = rows * words * 64 * size  # one block of signs in the compute dtype
        # Regenerating it: two int64 hash buffers, the bytes of every word as int64. A cached
        # block is copied out of the int8 table instead.
        making = signs if self.cached else rows * words * (16 + 64)
        # The batch's block of values in the compute dtype, and float32 copies where the
        # device has no mixed-precision product.
        values = batch * rows * (size + (4 if size != 4 and not self._mm_out_dtype else 0))
        return signs + making + values + (rows * self.spec.dim * 4 if size != 4 and not self._mm_out_dtype else 0)

    def _signs_from_words(self, z: torch.Tensor, rows: int, lut: torch.Tensor) -> torch.Tensor:
        # Bytes by shifts rather than a uint8 view, so the bit order never depends on endianness.
        byte = (z.unsqueeze(-1) >> self._byte_shifts) & 255  # (rows*w, 8)
        # index_select, not lut[byte]: advanced indexing was ~100x slower here.
        signs = lut.index_select(0, byte.reshape(-1))  # (rows*w*8, 8): byte k, bit b -> column 8k + b of a word
        return signs.reshape(rows, self._words * 64)[:, : self.spec.dim]

    def _signs(self, r0: int, rows: int, lut: torch.Tensor) -> torch.Tensor:
        """(rows, dim) +-1 signs of input rows [r0, r0 + rows) in lut's dtype (unscaled)."""
        w = self._words
        z = torch.empty(rows * w, dtype=torch.int64, device=self.device)
        tmp = torch.empty_like(z)
        _hash_block(z, tmp, r0 * w, self._base)
        return self._signs_from_words(z, rows, lut)

    def _signs_at(self, coords: torch.Tensor) -> torch.Tensor:
        """(len(coords), dim) signs of the rows of P at arbitrary input coordinates, compute dtype."""
        if self._cache is not None:
            return self._cache.index_select(0, coords).to(self._dtype)
        w = self._words
        numbers = (coords.unsqueeze(1) * w + torch.arange(w, device=self.device)).reshape(-1)  # (n*w,)
        return self._signs_from_words(_hash_at(numbers, self._base), coords.numel(), self._lut)

    def _rows(self, r0: int, rows: int) -> torch.Tensor:
        if self._cache is None:
            return self._signs(r0, rows, self._lut)
        if self._block is None or self._block.shape[0] < rows:
            self._block = torch.empty(self._block_rows, self.spec.dim, dtype=self._dtype, device=self.device)
        return self._block[:rows].copy_(self._cache[r0:r0 + rows])

    def _coordinate_block(self) -> int:
        return self._block_rows

    def _new_acc(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.spec.dim, dtype=torch.float32, device=self.device)  # (B, dim)

    def _finish(self, acc: torch.Tensor) -> torch.Tensor:
        return acc * (1.0 / math.sqrt(self.spec.dim))

    def _mm_into(self, acc: torch.Tensor, g: torch.Tensor, signs: torch.Tensor) -> None:
        """acc += g @ signs with float32 accumulation; g (B, rows), signs (rows, dim) in compute dtype."""
        if self._dtype == torch.float32:
            acc.addmm_(g, signs)
            return
        if self._mm_out_dtype:
            try:
                acc.add_(torch.mm(g, signs, out_dtype=torch.float32))
                return
            except (TypeError, RuntimeError, NotImplementedError):
                self._mm_out_dtype = False  # an older torch: same math through float32 copies
        acc.addmm_(g.float(), signs.float())

    def _apply(self, acc: torch.Tensor, parts: list[torch.Tensor], signs: torch.Tensor) -> None:
        if self._dtype == torch.float32 and (len(parts) == 1 or self.device.type == "cpu"):
            # On CPU one matrix-vector product per sample: small threaded GEMMs
            # (B x rows x dim) stalled for ms each on a busy 2-core machine.
            for b, part in enumerate(parts):
                acc[b].addmv_(signs.t(), part.to(torch.float32))
            return
        g = torch.stack([part.to(self._dtype) for part in parts])  # (B, rows)
        self._mm_into(acc, g, signs)

    def _accumulate(self, acc: torch.Tensor, parts: list[torch.Tensor], offset: int) -> None:
        n = parts[0].numel()
        for s0 in range(0, n, self._block_rows):
            rows = min(self._block_rows, n - s0)
            signs = self._rows(offset + s0, rows)  # (rows, dim), made once for all B parts
            self._apply(acc, [part[s0:s0 + rows] for part in parts], signs)

    def _accumulate_at(self, acc: torch.Tensor, parts: list[torch.Tensor], coords: torch.Tensor) -> None:
        self._apply(acc, parts, self._signs_at(coords))


def make_projector(spec: ProjectionSpec, input_dim: int, device: str | torch.device = "cpu", *,
                   cache_bytes: int = DEFAULT_CACHE_BYTES, allow_slow: bool = False,
                   compute_dtype: str | None = None, block_bytes: int | None = None) -> Projector:
    """Build the projector for `spec` over gradients of `input_dim` coordinates on `device`.

    cache_bytes: memory allowed for the hash table (CountSketch: 4 bytes per input
    coordinate; Rademacher: input_dim * dim bytes of int8 signs). Above it the table is
    regenerated on every call: same vectors, slower. allow_slow: permit a dense projection
    beyond CPU_DENSE_MAX_ENTRIES on CPU. compute_dtype (Rademacher only): "bfloat16"
    (default on GPUs: bf16 signs and values, float32 accumulation) or "float32" (default on
    CPU). block_bytes (Rademacher only): memory for one block of regenerated signs, shared by
    all samples of a batch (default 256 MiB on GPUs; on CPU blocks stay small, see above).
    """
    if not isinstance(spec, ProjectionSpec):
        raise TypeError(f"spec must be a ProjectionSpec, got {type(spec).__name__}")
    if spec.kind == "countsketch":
        return _CountSketch(spec, input_dim, device, cache_bytes)
    return _Rademacher(spec, input_dim, device, cache_bytes, allow_slow, compute_dtype, block_bytes)


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
