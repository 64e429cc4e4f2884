"""Spherical k-means over normalized gradients, and the sparse-cluster rule of Prismatic Synthesis.

Each round clusters the pool's projected gradients by cosine similarity (faiss spherical
k-means, 20 iterations), marks the smaller clusters as sparse, and keeps a new candidate
only if its nearest centroid belongs to a sparse cluster. This module holds the three
pieces: `spherical_kmeans`, `sparse_cluster_mask` and `assign_to_centroids`, plus
`num_clusters` for K as a fraction of the pool.

At scale, two ways to train cheaper than the paper's 20 iterations over every point
against every centroid (2 N K d flops each: 2e13 at N = 1M, K = 10k, d = 1024):
- `method="flat"` with `max_points_per_centroid`: faiss trains on a seeded sample of
  K x that many points;
- `method="two_level"`: a coarse spherical k-means into C groups (C = sqrt(K) unless
  given), then within each group a k-means with K split by group size (largest
  remainders), on that group's points only: each iteration costs about 2 N (K / C) d.
  A point near a group's edge trains the wrong group's centroids, so `refine` Lloyd
  iterations over every point follow, in which the points of a group are compared only
  with the centroids listed under the `probe` groups nearest to it (each centroid listed
  under its nearest coarse centroid): one dense matrix product per group, 2 N (probe K / C) d.
Whatever the training, every point is then assigned to its exact nearest final centroid
(one flat search over all K centroids, in batches of `ASSIGN_BATCH` rows, so memory
beyond the (N, d) float32 input stays bounded): only the centroids are approximate, not
the assignment, the sizes or the sparse flags computed from them. That search is one more
2 N K d pass; `assign="probe"` (two-level only) replaces it with the refine steps'
search, 2 N (probe K / C) d: a point whose nearest centroid is listed under a group its own
group does not probe gets the best one it sees, so assignments, sizes and flags become
approximate too (benchmarks/bench_kmeans.py measures how far). With CUDA and a GPU
build of faiss (the `faiss-gpu-cu12` package of the `gpu` extra) the k-means trainings and
the exact assignment run on the GPU(s); the refine steps' grouped search runs on the CPU
(numpy's BLAS).

It does not decide acceptance (the synthesis loop does, storing the cluster and similarity
next to the decision) and does not store clusterings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

#: Rows per nearest-centroid search: bounds the (rows, K) similarity block faiss holds.
ASSIGN_BATCH = 65_536
METHODS = ("flat", "two_level")
ASSIGNMENTS = ("exact", "probe")
#: Points per centroid faiss samples for the coarse level of a two-level k-means (its default):
#: the coarse groups only divide the work, the fine level trains on every point of a group.
COARSE_POINTS_PER_CENTROID = 256


def gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu (whose get_num_gpus exists and returns 0)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _use_gpu(gpu: bool | None) -> bool:
    available = gpu_count() > 0
    if gpu and not available:
        raise ValueError("gpu=True but faiss sees no GPU: install faiss-gpu-cu12 (the `gpu` extra) on a CUDA "
                         "machine, or pass gpu=None to use the CPU")
    return available if gpu is None else bool(gpu)


def num_clusters(n: int, ratio: float, minimum: int = 2) -> int:
    """K for a pool of n: max(minimum, round(ratio * n)), capped at n.

    Rounds half up (0.5 -> 1), unlike Python's round(), so K never drops at exact halves.
    The paper uses ratio = 0.01, its reference code 0.1.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer (the pool size), got {n!r}")
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1] (clusters per sample, the paper uses 0.01), got {ratio!r}")
    if isinstance(minimum, bool) or not isinstance(minimum, (int, np.integer)) or minimum < 1:
        raise ValueError(f"minimum must be a positive integer, got {minimum!r}")
    k = max(int(minimum), int(math.floor(ratio * n + 0.5)))
    return min(k, int(n))


def sparse_cluster_mask(sizes, ratio: float = 0.5) -> np.ndarray:
    """(K,) bool: cluster k is sparse iff sizes[k] < sorted(sizes)[int(K * ratio)].

    The paper's rule: with ratio 0.5 the clusters smaller than the median-position size are
    sparse. Ties at the threshold are not sparse, so all-equal sizes give no sparse cluster;
    empty clusters (size 0) count and are sparse whenever the threshold is above 0.
    """
    s = np.asarray(sizes)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"sizes must be a non-empty 1-D array of cluster sizes, got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.integer):
        if not np.issubdtype(s.dtype, np.floating) or not np.all(np.isfinite(s)) or np.any(s != np.round(s)):
            raise ValueError("sizes must be integer counts")
        s = s.astype(np.int64)
    if np.any(s < 0):
        raise ValueError("sizes must be non-negative counts")
    _check_sparse_ratio(ratio)
    threshold = np.sort(s)[int(s.size * ratio)]
    return s < threshold


def _check_sparse_ratio(ratio: float) -> None:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0 <= ratio < 1:
        raise ValueError(f"sparse ratio must be in [0, 1) (the paper uses 0.5), got {ratio!r}")


@dataclass
class Clustering:
    """A clustering of N unit vectors into k clusters and the sparse flags derived from it."""

    centroids: np.ndarray  # (K, d) float32, unit rows
    assignments: np.ndarray  # (N,) int64, nearest centroid by cosine
    similarities: np.ndarray  # (N,) float32, cosine to the assigned centroid
    sizes: np.ndarray  # (K,) int64, bincount of assignments (empty clusters are 0)
    sparse: np.ndarray  # (K,) bool, sparse_cluster_mask(sizes, sparse_ratio)
    k: int
    niter: int
    seed: int
    sparse_ratio: float


def _unit_rows(x, name: str, offset: int = 0) -> np.ndarray:
    """(n, d) float32 C-contiguous unit rows; raises on non-finite or zero rows with their index.

    Works in float32 (one copy at most): norms are summed in float64 so large values
    cannot overflow them.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().float().numpy()
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {a.shape}")
    given = a
    a = np.ascontiguousarray(a, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))  # (n,)
    if not np.isfinite(norms).all():
        finite = np.isfinite(a).all(axis=1)
        raise ValueError(f"{name} row {offset + int(np.argmin(finite))} has a NaN or infinite value: exclude it first")
    if not (norms > 0).all():
        raise ValueError(f"{name} row {offset + int(np.argmin(norms > 0))} is all zeros and has no direction: "
                         "exclude it first")
    if np.abs(norms - 1.0).max() <= 1e-6:
        return a  # already unit rows (vectors from the store are): no (n, d) copy
    scale = (1.0 / norms).astype(np.float32)[:, None]
    if np.may_share_memory(a, given):
        return a * scale  # the caller's array is never changed
    a *= scale
    return a


def _flat_index(d: int, use_gpu: bool):
    index = faiss.IndexFlatIP(d)
    if use_gpu:
        return faiss.index_cpu_to_all_gpus(index)
    return index


def assign_to_centroids(x, centroids, batch_size: int = ASSIGN_BATCH, gpu: bool | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row by cosine similarity -> (assignments (N,) int64, similarities (N,) float32).

    Rows and centroids are L2-normalized here, so raw vectors may be passed. Exact search
    (faiss IndexFlatIP, on GPU when available and gpu is not False), `batch_size` rows at a
    time; among equally similar centroids the lower index wins.
    """
    c = _unit_rows(centroids, "centroids")  # (K, d)
    if hasattr(x, "shape") and len(x.shape) == 2 and x.shape[0] == 0:
        if x.shape[1] != c.shape[1]:
            raise ValueError(f"vectors have width {x.shape[1]} but centroids have {c.shape[1]}")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if hasattr(x, "shape") and len(x.shape) == 2 and x.shape[1] != c.shape[1]:
        raise ValueError(f"vectors have width {x.shape[1]} but centroids have {c.shape[1]}: "
                         "project both with the same ProjectionSpec")
    n = len(x)
    index = _flat_index(c.shape[1], _use_gpu(gpu))
    index.add(c)
    ids = np.empty(n, dtype=np.int64)
    sims = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        v = _unit_rows(x[start:start + batch_size], "vectors", offset=start)  # (b, d)
        if v.shape[1] != c.shape[1]:
            raise ValueError(f"vectors have width {v.shape[1]} but centroids have {c.shape[1]}: "
                             "project both with the same ProjectionSpec")
        s, i = index.search(v, 1)  # (b, 1) each
        ids[start:start + len(v)] = i[:, 0]
        sims[start:start + len(v)] = s[:, 0]
    return ids, sims


def spherical_kmeans(x, k: int, niter: int = 20, seed: int = 0, sparse_ratio: float = 0.5,
                     max_points_per_centroid: int | None = None, gpu: bool | None = None,
                     init_centroids=None, method: str = "flat", coarse: int | None = None,
                     refine: int = 3, probe: int = 16, assign: str = "exact") -> Clustering:
    """Cluster the rows of x (normalized here) into k cosine clusters; deterministic for a seed.

    method "flat" (default): one k-means over the pool. max_points_per_centroid: None trains
    on every point, as the paper's 20 iterations over the pool; an integer m trains on a
    seeded sample of k * m points when the pool is larger (faiss's own subsampling; 256 is
    faiss's default), which divides the cost of each iteration by N / (k * m).
    method "two_level": `coarse` groups (None: round(sqrt(k))), then k split among them by
    size and a k-means inside each, then `refine` Lloyd iterations over all points, the
    points of each group compared with the centroids of the `probe` groups nearest to it
    (see the module docstring); max_points_per_centroid caps each group's training sample.
    assign "exact" (default): every point is then assigned to its exact nearest final
    centroid (in batches), so assignments and sizes are exactly what `assign_to_centroids`
    gives for the pool; "probe" (two_level only): to the nearest centroid of those its
    group probes, the refine steps' search instead of a pass over all k centroids
    (approximate).
    gpu: None uses faiss's GPUs when it sees any.
    init_centroids: (k, d) starting centroids (e.g. k-means++, flat only); None lets faiss
    draw k rows.
    """
    v = _unit_rows(x, "vectors")  # (N, d)
    n, d = v.shape
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k > n:
        raise ValueError(f"cannot make k={k} clusters from {n} vectors: use k <= n (num_clusters(n, ratio) caps it)")
    if isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 1:
        raise ValueError(f"niter must be a positive integer (the paper uses 20), got {niter!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    if max_points_per_centroid is not None and (isinstance(max_points_per_centroid, bool) or not isinstance(
            max_points_per_centroid, (int, np.integer)) or max_points_per_centroid < 1):
        raise ValueError(f"max_points_per_centroid must be a positive integer or None, got {max_points_per_centroid!r}")
    _check_sparse_ratio(sparse_ratio)
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    if coarse is not None and (isinstance(coarse, bool) or not isinstance(coarse, (int, np.integer)) or coarse < 1):
        raise ValueError(f"coarse must be a positive integer or None, got {coarse!r}")
    for name, value in (("refine", refine), ("probe", probe)):
        least = 0 if name == "refine" else 1
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be a {'non-negative' if name == 'refine' else 'positive'} integer, "
                             f"got {value!r}")
    if assign not in ASSIGNMENTS:
        raise ValueError(f"assign={assign!r}: choose one of {ASSIGNMENTS}")
    if assign == "probe" and method != "two_level":
        raise ValueError("assign='probe' needs method='two_level': the probe searches the coarse groups' lists")
    if method == "two_level" and init_centroids is not None:
        raise ValueError("init_centroids applies to method='flat' only: a two-level k-means draws its own starts")
    use_gpu = _use_gpu(gpu)
    init = None if init_centroids is None else _unit_rows(init_centroids, "init_centroids")
    if init is not None and init.shape != (int(k), d):
        raise ValueError(f"init_centroids must have shape (k, d) = ({k}, {d}), got {init.shape}")
    coarse_centroids = point_groups = None
    if method == "two_level":
        centroids, coarse_centroids, point_groups = _two_level_centroids(
            v, int(k), int(niter), int(seed), coarse, max_points_per_centroid, use_gpu, int(refine), int(probe))
    else:
        centroids = _train(v, int(k), int(niter), int(seed), max_points_per_centroid, use_gpu, init)
    if assign == "probe" and coarse_centroids is not None:
        assignments, similarities = _probe_search(v, centroids, coarse_centroids, int(probe), point_groups)
    else:
        assignments, similarities = assign_to_centroids(v, centroids, gpu=use_gpu)
    sizes = np.bincount(assignments, minlength=int(k)).astype(np.int64)
    return Clustering(
        centroids=centroids, assignments=assignments, similarities=similarities, sizes=sizes,
        sparse=sparse_cluster_mask(sizes, sparse_ratio), k=int(k), niter=int(niter), seed=int(seed),
        sparse_ratio=float(sparse_ratio),
    )


def _train(v: np.ndarray, k: int, niter: int, seed: int, max_points_per_centroid: int | None, use_gpu: bool,
           init: np.ndarray | None = None) -> np.ndarray:
    """(k, d) unit centroids of a faiss spherical k-means of the unit rows v (k <= len(v))."""
    n, d = v.shape
    per_centroid = max(256, -(-n // k)) if max_points_per_centroid is None else int(max_points_per_centroid)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False, gpu=use_gpu,
                      min_points_per_centroid=1, max_points_per_centroid=per_centroid)
    km.train(v, init_centroids=init)
    return _unit_rows(km.centroids, "centroids")


def split_clusters(sizes, k: int) -> np.ndarray:
    """K split among groups in proportion to their sizes (largest remainders; ties to the lower
    index): every non-empty group gets at least one cluster and at most one per point."""
    sizes = np.asarray(sizes, dtype=np.int64)
    nonempty = sizes > 0
    if k < int(nonempty.sum()) or k > int(sizes.sum()):
        raise ValueError(f"cannot split k={k} clusters among {int(nonempty.sum())} groups of {int(sizes.sum())} "
                         "points: need one cluster per non-empty group and at most one per point")
    share = k * sizes / sizes.sum()  # (G,)
    counts = np.where(nonempty, np.maximum(1, np.floor(share)), 0).astype(np.int64)
    counts = np.minimum(counts, sizes)
    while counts.sum() != k:
        if counts.sum() < k:  # the largest remainder among groups that can take one more
            room = np.where(counts < sizes, share - counts, -np.inf)
            counts[int(np.argmax(room))] += 1
        else:  # too many (the floor of 1 per group): take from the most over-served
            room = np.where(counts > 1, counts - share, -np.inf)
            counts[int(np.argmax(room))] -= 1
    return counts


def _two_level_centroids(v: np.ndarray, k: int, niter: int, seed: int, coarse: int | None,
                         max_points_per_centroid: int | None, use_gpu: bool, refine: int, probe: int
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """((k, d) unit centroids, (C, d) coarse centroids, (N,) coarse group of each point), the last
    two None for one group: coarse groups, a k-means inside each with k split by size, then
    `refine` Lloyd iterations, each point against the centroids of the `probe` groups nearest
    to its own."""
    n, d = v.shape
    groups = min(k, coarse if coarse is not None else max(1, int(round(math.sqrt(k)))))
    if groups == 1:
        return _train(v, k, niter, seed, max_points_per_centroid, use_gpu), None, None
    coarse_centroids = _train(v, groups, niter, seed, COARSE_POINTS_PER_CENTROID, use_gpu)
    labels, _ = assign_to_centroids(v, coarse_centroids, gpu=use_gpu)
    order = np.argsort(labels, kind="stable")  # (N,) point indices grouped by coarse label
    bounds = np.searchsorted(labels[order], np.arange(groups + 1))
    counts = split_clusters(np.diff(bounds), k)
    parts = []
    for g in range(groups):
        if counts[g] == 0:
            continue
        members = v[order[bounds[g]:bounds[g + 1]]]  # (n_g, d), a copy of one group's rows
        if counts[g] == len(members):
            parts.append(members)  # one cluster per point: each point is its own centroid
            continue
        # Seeds differ by group, so groups of equal shape do not start from the same draws.
        parts.append(_train(members, int(counts[g]), niter, (seed + 1 + g) % 2**31, max_points_per_centroid,
                            use_gpu))
    centroids = np.concatenate(parts)  # (k, d)
    for _ in range(refine):
        centroids = _lloyd_step(v, centroids, coarse_centroids, probe, labels)
    return centroids, coarse_centroids, labels


#: Similarities a probe search holds at once (rows x candidate centroids, float32: 64 MiB).
PROBE_BLOCK = 1 << 24


def _probe_search(v: np.ndarray, centroids: np.ndarray, coarse_centroids: np.ndarray, probe: int,
                  point_groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(assignments (N,) int64, similarities (N,) float32): each row's nearest centroid among
    those listed under the `probe` coarse groups nearest to its own group's coarse centroid.

    Each centroid is listed under its nearest coarse centroid; a row's group is its nearest
    coarse centroid (`point_groups`, computed when None). All rows of a group share one list
    of candidate centroids, so the search is one dense matrix product per group (BLAS), not
    a per-row scan: 2 N (probe K / C) d flops at matrix-product speed. A group whose probed
    lists are all empty is searched against every centroid. Ties go to the lower index.
    """
    groups = len(coarse_centroids)
    if point_groups is None:
        point_groups, _ = assign_to_centroids(v, coarse_centroids, gpu=False)
    centroid_groups, _ = assign_to_centroids(centroids, coarse_centroids, gpu=False)  # (K,)
    near = coarse_centroids @ coarse_centroids.T  # (C, C)
    np.fill_diagonal(near, np.inf)  # a group always probes its own list first
    probed = np.argsort(-near, axis=1, kind="stable")[:, :min(probe, groups)]  # (C, probe)
    ids = np.empty(len(v), dtype=np.int64)
    sims = np.empty(len(v), dtype=np.float32)
    order = np.argsort(point_groups, kind="stable")
    bounds = np.searchsorted(point_groups[order], np.arange(groups + 1))
    for g in range(groups):
        rows = order[bounds[g]:bounds[g + 1]]
        if not len(rows):
            continue
        candidates = np.flatnonzero(np.isin(centroid_groups, probed[g]))  # ascending: ties to the lower index
        if not len(candidates):
            candidates = np.arange(len(centroids))
        block = centroids[candidates].T  # (d, m)
        step = max(1, PROBE_BLOCK // len(candidates))
        for s in range(0, len(rows), step):
            part = rows[s:s + step]
            scores = v[part] @ block  # (b, m)
            best = scores.argmax(axis=1)
            ids[part] = candidates[best]
            sims[part] = scores[np.arange(len(part)), best]
    return ids, sims


def _lloyd_step(v: np.ndarray, centroids: np.ndarray, coarse_centroids: np.ndarray, probe: int,
                point_groups: np.ndarray) -> np.ndarray:
    """One spherical Lloyd iteration: each point to the nearest centroid listed under the `probe`
    coarse groups nearest to its own (`_probe_search`), then each centroid to the normalized
    mean of its points (a centroid that gets none stays where it was)."""
    from scipy.sparse import csr_matrix

    k, d = centroids.shape
    ids, _ = _probe_search(v, centroids, coarse_centroids, probe, point_groups)
    sums = np.zeros((k, d), dtype=np.float64)
    for start in range(0, len(v), ASSIGN_BATCH):
        batch = ids[start:start + ASSIGN_BATCH]
        members = csr_matrix((np.ones(len(batch), dtype=np.float32), (batch, np.arange(len(batch)))),
                             shape=(k, len(batch)))
        sums += members @ v[start:start + ASSIGN_BATCH]  # (k, d): the sum of each centroid's points
    norms = np.linalg.norm(sums, axis=1)
    moved = norms > 0
    out = centroids.copy()
    out[moved] = (sums[moved] / norms[moved, None]).astype(np.float32)
    return out
