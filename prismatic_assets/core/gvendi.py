"""G-Vendi: the effective number of distinct gradient directions in a data set.

G-Vendi = exp(H_q(lambda)), where lambda are the eigenvalues of the second-moment matrix
C = (1/N) sum_n g_n g_n^T of the L2-normalized projected gradients g_n (d x d, not
mean-centred, trace 1) and H_q is the Renyi entropy of order q (q = 1: Shannon, the paper's
choice). The nonzero eigenvalues of C equal those of the cosine kernel K/N (the Vendi
score's N x N matrix), so G-Vendi is the Vendi score of the gradients, computed in
O(N d^2 + d^3) time and O(d^2) memory: `SecondMoment` accumulates C batch by batch, so a
million vectors never need to be in memory at once. The score lies in [1, min(N, d)].

All accumulation is float64. This module does not compute or project gradients (see
`projection`), and it does not drop bad rows: non-finite or zero rows raise with their
index, and the caller decides whether to exclude them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal

import numpy as np
import scipy.linalg
from scipy.linalg import blas

#: float32 rows whose squared norm is within this of 1 count as unit length (float32 rounding
#: of a normalized row of d <= 4096 is below 2e-6) and are not rescaled on the float32 path.
UNIT_TOLERANCE = 4e-6

#: vendi_from_kernel builds an N x N float64 matrix; above this N use g_vendi.
KERNEL_MAX_N = 20_000


def _as_numpy(batch) -> np.ndarray:
    """A (b, d) batch from numpy, torch (any device, bf16 included) or nested lists."""
    if hasattr(batch, "detach") and hasattr(batch, "cpu"):  # torch.Tensor, without importing torch
        t = batch.detach().cpu()
        if not t.is_floating_point() or t.dtype.itemsize < 4:  # bf16/fp16 have no numpy twin
            t = t.double()
        return t.numpy()
    return np.asarray(batch)


def _check_rows(x: np.ndarray, row_offset: int, require_nonzero: bool = True) -> np.ndarray:
    """Raise on non-finite or zero rows, naming the global row index; return squared row norms."""
    finite = np.isfinite(x).all(axis=1)  # (b,)
    if not finite.all():
        row = row_offset + int(np.argmin(finite))
        raise ValueError(f"row {row} has a NaN or infinite value: exclude it (or fix its gradient) before scoring")
    sq = np.einsum("ij,ij->i", x, x)  # (b,)
    if require_nonzero and not (sq > 0).all():
        row = row_offset + int(np.argmin(sq > 0))
        raise ValueError(f"row {row} is all zeros and has no direction: exclude it before scoring")
    return sq


class SecondMoment:
    """Streaming C = (1/N) sum g g^T over (b, dim) batches; O(dim^2) memory.

    normalize: L2-normalize each row first (the G-Vendi definition). With normalize=False
    rows are used as given and `matrix()` is divided by its trace, so its eigenvalues still
    form a distribution (for unit rows both settings agree).
    compute_dtype: the dtype of each batch's product. "float64" (default) is exact to
    round-off; "float32" does one float32 pass per batch (norms, scaling unless
    the rows are already unit, BLAS ssyrk) and sums the batches' products in float64: several
    times faster on CPU, score error ~1e-6 relative at N = 1M (benchmarks/bench_gvendi.py).
    """

    def __init__(self, dim: int, normalize: bool = True,
                 compute_dtype: Literal["float64", "float32"] = "float64") -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if compute_dtype not in ("float64", "float32"):
            raise ValueError(f"compute_dtype must be 'float64' or 'float32', got {compute_dtype!r}")
        self.dim = int(dim)
        self.normalize = bool(normalize)
        self.compute_dtype = compute_dtype
        self.n = 0
        # Only the upper triangle is accumulated (syrk), Fortran order so BLAS updates in place.
        self._sum = np.zeros((self.dim, self.dim), dtype=np.float64, order="F")  # (d, d)
        self._trace = 0.0
        self._buffer: np.ndarray | None = None  # float32 rows of the current batch (float32 path)
        self._product: np.ndarray | None = None  # (d, d) float32 product of the current batch (float32 path)

    def update(self, batch) -> "SecondMoment":
        """Add a (b, dim) batch (numpy or torch); rows are validated and, by default, normalized."""
        x = _as_numpy(batch)
        if x.ndim == 1 and x.shape[0] == self.dim:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected a (b, {self.dim}) batch, got shape {x.shape}: "
                             "every batch must have the width the SecondMoment was made with")
        if x.shape[0] == 0:
            return self
        if self.compute_dtype == "float32":
            self._update_float32(x)
            return self
        x = x.astype(np.float64, copy=False)
        sq = _check_rows(x, self.n)  # (b,)
        if self.normalize:
            x = x / np.sqrt(sq)[:, None]
            self._trace += x.shape[0]
        else:
            self._trace += float(sq.sum())
        # x.T of a C-contiguous (b, d) array is a Fortran (d, b) array: no copy; x^T x.
        self._sum = blas.dsyrk(1.0, np.ascontiguousarray(x).T, beta=1.0, c=self._sum, trans=0, lower=0,
                               overwrite_c=1)
        self.n += x.shape[0]
        return self

    def _update_float32(self, x: np.ndarray) -> None:
        """One float32 pass: row norms, then x^T x by BLAS ssyrk (threaded) added to the float64 sum.

        Rows that are already unit length to float32 rounding (|norm^2 - 1| <= UNIT_TOLERANCE,
        e.g. the pipeline's stored gradients) go to ssyrk as they are: rescaling them would
        change the product by less than its own float32 rounding, and skipping the copy and
        the scaling pass saves about a fifth of the time. Other rows are copied into a reused
        buffer (no page faults of a fresh array per batch) and scaled there; the caller's
        array is never changed.
        """
        b = x.shape[0]
        sq = np.einsum("ij,ij->i", x, x, dtype=np.float32) if x.dtype == np.float32 else None  # (b,)
        if sq is None or not (np.isfinite(sq).all() and (sq > 0).all()):
            sq = _check_rows(np.asarray(x, dtype=np.float64), self.n)  # names a bad row; else huge values
        self._trace += b if self.normalize else float(np.sum(sq, dtype=np.float64))
        usable = x.dtype == np.float32 and x.flags.c_contiguous  # BLAS can read it as it is
        rows = x
        if self.normalize and not (usable and np.abs(sq - 1.0).max() <= UNIT_TOLERANCE):
            rows = self._scratch(b)
            np.multiply(x, (1.0 / np.sqrt(sq)).astype(np.float32)[:, None], out=rows, casting="unsafe")
        elif not usable:
            rows = self._scratch(b)
            np.copyto(rows, x, casting="unsafe")
        if self._product is None:
            self._product = np.zeros((self.dim, self.dim), dtype=np.float32, order="F")  # upper triangle used
        # rows.T of a C-contiguous (b, d) array is a Fortran (d, b) array: no copy; rows^T rows.
        self._product = blas.ssyrk(1.0, rows.T, beta=0.0, c=self._product, trans=0, lower=0, overwrite_c=1)
        self._sum += self._product
        self.n += b

    def _scratch(self, b: int) -> np.ndarray:
        """A reused (b, dim) float32 buffer."""
        if self._buffer is None or self._buffer.shape[0] < b:
            self._buffer = np.empty((b, self.dim), dtype=np.float32)
        return self._buffer[:b]

    def matrix(self) -> np.ndarray:
        """The (dim, dim) float64 second-moment matrix, trace 1."""
        if self.n == 0:
            raise ValueError("no vectors were added: call update() with at least one row first")
        upper = np.triu(self._sum)
        full = upper + np.triu(upper, 1).T  # (d, d) symmetric
        return full / (self.n if self.normalize else self._trace)


def renyi_entropy(eigenvalues, q: float) -> float:
    """Renyi entropy of order q of a probability vector (e.g. eigenvalues of a trace-1 matrix).

    q = 1: Shannon, -sum l ln l with 0 ln 0 = 0; q = inf: -ln max l; other q >= 0:
    ln(sum l^q) / (1 - q). Negative round-off values (down to -1e-8 relative) become 0.
    """
    q = _check_q(q)
    lam = np.asarray(eigenvalues, dtype=np.float64).ravel()
    if lam.size == 0 or not np.isfinite(lam).all():
        raise ValueError("eigenvalues must be a non-empty array of finite numbers")
    scale = float(np.abs(lam).max())
    if lam.min() < -1e-8 * max(scale, 1.0):
        raise ValueError(f"eigenvalue {lam.min():.3g} is negative beyond round-off: "
                         "pass the eigenvalues of a PSD matrix")
    lam = np.clip(lam, 0.0, None)
    total = lam.sum()
    if not abs(total - 1.0) <= 1e-6:
        raise ValueError(f"eigenvalues sum to {total:.9g}, not 1: divide them by their sum (the matrix's trace) first")
    if q == 1.0:
        pos = lam[lam > 0]
        return float(-(pos * np.log(pos)).sum())
    if math.isinf(q):
        return float(-math.log(lam.max()))
    if q == 0.0:
        return float(math.log(np.count_nonzero(lam)))
    return float(math.log((lam[lam > 0] ** q).sum()) / (1.0 - q))


def _check_q(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float, np.integer, np.floating)):
        raise ValueError(f"q must be a number >= 0 or float('inf'), got {q!r}")
    q = float(q)
    if math.isnan(q) or q < 0:
        raise ValueError(f"q must be >= 0 (1 is Shannon, the paper's choice; inf is -ln max), got {q!r}")
    return q


@dataclass(frozen=True)
class GVendiResult:
    """A G-Vendi score with what it was computed from. entropy = ln(score)."""

    score: float
    entropy: float
    q: float
    n: int
    dim: int


def _spectrum(c: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD trace-1 matrix as a distribution.

    Values below dim * eps * max (numpy's matrix_rank tolerance) are round-off of a zero
    eigenvalue and set to 0, so q = 0 counts the rank and not the noise.
    """
    lam = scipy.linalg.eigvalsh(c)  # (d,) ascending
    lam = np.where(lam > lam.max() * lam.size * np.finfo(np.float64).eps, lam, 0.0)
    return lam / lam.sum()


def _result(lam: np.ndarray, q: float, n: int, dim: int) -> GVendiResult:
    # Clamp to the mathematical range [0, ln min(n, d)]; only round-off lies outside it.
    h = min(max(renyi_entropy(lam, q), 0.0), math.log(min(n, dim)))
    return GVendiResult(score=math.exp(h), entropy=h, q=float(q), n=n, dim=dim)


def g_vendi_from_moment(moment: SecondMoment, q: float = 1.0) -> GVendiResult:
    """G-Vendi of an accumulated SecondMoment (e.g. one updated round by round)."""
    q = _check_q(q)
    return _result(_spectrum(moment.matrix()), q, moment.n, moment.dim)


def _batches(vectors, batch_size: int) -> Iterator:
    """Yield (b, d) slices of an (N, d) array/tensor, or of an iterable of (b, d) batches or rows.

    Single (d,) rows from an iterable (a list of lists, a generator of vectors) are gathered
    into batches of batch_size; batches larger than batch_size are sliced.
    """
    shape = getattr(vectors, "shape", None)
    if shape is not None:
        if len(shape) != 2:
            raise ValueError(f"expected an (N, d) array or an iterable of (b, d) batches, got shape {tuple(shape)}")
        for start in range(0, shape[0], batch_size):
            yield vectors[start:start + batch_size]
        return
    if isinstance(vectors, (str, bytes)) or not isinstance(vectors, Iterable):
        raise TypeError("expected an (N, d) array/tensor or an iterable of (b, d) batches, "
                        f"got {type(vectors).__name__}")
    rows: list[np.ndarray] = []
    for item in vectors:
        batch = _as_numpy(item)
        if batch.ndim == 1:
            rows.append(batch)
            if len(rows) == batch_size:
                yield _stack_rows(rows)
                rows = []
            continue
        if rows:
            yield _stack_rows(rows)
            rows = []
        if batch.ndim == 2 and batch.shape[0] > batch_size:
            yield from _batches(batch, batch_size)
        else:
            yield batch
    if rows:
        yield _stack_rows(rows)


def _stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    widths = {r.shape[0] for r in rows}
    if len(widths) > 1:
        raise ValueError(f"rows have different widths {sorted(widths)}: every vector must have the same dimension")
    return np.stack(rows)


def g_vendi(vectors, q: float = 1.0, normalize: bool = True, batch_size: int | None = None,
            compute_dtype: Literal["float64", "float32"] = "float64") -> GVendiResult:
    """G-Vendi of (N, d) vectors, or of an iterable of (b, d) batches streamed through.

    vectors: numpy or torch; the projected gradients, one row per sample. q: Renyi order.
    normalize: L2-normalize rows (see SecondMoment). batch_size: rows per accumulation step
    (None: 8192 for float64, 32768 for float32, whose BLAS product gains from large batches;
    memory ~ 2 * batch_size * d * itemsize). compute_dtype: see SecondMoment. Raises ValueError
    on zero, non-finite or no rows.
    """
    q = _check_q(q)
    if batch_size is None:
        batch_size = 32768 if compute_dtype == "float32" else 8192
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    moment: SecondMoment | None = None
    for batch in _batches(vectors, int(batch_size)):
        x = _as_numpy(batch)
        if x.ndim != 2:
            raise ValueError(f"each batch must be (b, d), got shape {x.shape}")
        if moment is None:
            if x.shape[1] == 0:
                raise ValueError("vectors have width 0: nothing to score")
            moment = SecondMoment(x.shape[1], normalize=normalize, compute_dtype=compute_dtype)
        moment.update(x)
    if moment is None or moment.n == 0:
        raise ValueError("no vectors to score: G-Vendi needs at least one row")
    return g_vendi_from_moment(moment, q)


def vendi_from_kernel(vectors, q: float = 1.0) -> GVendiResult:
    """The N x N definition: Vendi score of the cosine kernel K/N. For small N and as a test reference."""
    q = _check_q(q)
    x = _as_numpy(vectors)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected a non-empty (N, d) array, got shape {x.shape}")
    n, d = x.shape
    if n > KERNEL_MAX_N:
        raise ValueError(f"the kernel form needs an {n} x {n} matrix ({8 * n * n / 2**30:.1f} GiB): use g_vendi, "
                         "which gives the same score in O(d^2) memory")
    x = x.astype(np.float64, copy=False)
    sq = _check_rows(x, 0)
    x = x / np.sqrt(sq)[:, None]
    k = x @ x.T  # (N, N) cosine kernel
    return _result(_spectrum(k / n), q, n, d)
