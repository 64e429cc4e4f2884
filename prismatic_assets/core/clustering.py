"""Spherical k-means over normalized gradients, and the sparse-cluster rule of Prismatic Synthesis.

Each round clusters the pool's projected gradients by cosine similarity (faiss spherical
k-means, 20 iterations), marks the smaller clusters as sparse, and keeps a new candidate
only if its nearest centroid belongs to a sparse cluster. This module holds the three
pieces: `spherical_kmeans`, `sparse_cluster_mask` and `assign_to_centroids`, plus
`num_clusters` for K as a fraction of the pool.

It does not decide acceptance (the synthesis loop does, storing the cluster and similarity
next to the decision) and does not store clusterings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np


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


def _unit_rows(x, name: str) -> np.ndarray:
    """(n, d) float32 C-contiguous unit rows; raises on non-finite or zero rows with their index."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor
        x = x.detach().cpu().float().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (n, d) array, got shape {a.shape}")
    finite = np.isfinite(a).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} row {int(np.argmin(finite))} has a NaN or infinite value: exclude it first")
    norms = np.linalg.norm(a, axis=1)  # (n,)
    if not (norms > 0).all():
        raise ValueError(f"{name} row {int(np.argmin(norms > 0))} is all zeros and has no direction: exclude it first")
    return np.ascontiguousarray(a / norms[:, None], dtype=np.float32)


def assign_to_centroids(x, centroids) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row by cosine similarity -> (assignments (N,) int64, similarities (N,) float32).

    Rows and centroids are L2-normalized here, so raw vectors may be passed. Exact search
    (faiss IndexFlatIP); among equally similar centroids the lower index wins.
    """
    c = _unit_rows(centroids, "centroids")  # (K, d)
    if hasattr(x, "shape") and len(x.shape) == 2 and x.shape[0] == 0:
        if x.shape[1] != c.shape[1]:
            raise ValueError(f"vectors have width {x.shape[1]} but centroids have {c.shape[1]}")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    v = _unit_rows(x, "vectors")  # (N, d)
    if v.shape[1] != c.shape[1]:
        raise ValueError(f"vectors have width {v.shape[1]} but centroids have {c.shape[1]}: "
                         "project both with the same ProjectionSpec")
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    sims, ids = index.search(v, 1)  # (N, 1) each
    return ids[:, 0].astype(np.int64), sims[:, 0].astype(np.float32)


def spherical_kmeans(x, k: int, niter: int = 20, seed: int = 0, sparse_ratio: float = 0.5,
                     init_centroids=None) -> Clustering:
    """Cluster the rows of x (normalized here) into k cosine clusters; deterministic for a seed.

    Every point takes part in every iteration: faiss would otherwise subsample above 256
    points per centroid and warn below 39. Assignments and sizes are recomputed against the
    final centroids, so they are exactly what `assign_to_centroids` gives for the pool.
    init_centroids: (k, d) starting centroids (e.g. k-means++); None lets faiss draw k rows.
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
    _check_sparse_ratio(sparse_ratio)
    km = faiss.Kmeans(
        d, int(k), niter=int(niter), seed=int(seed), spherical=True, verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=max(256, -(-n // int(k))),
    )
    init = None if init_centroids is None else _unit_rows(init_centroids, "init_centroids")
    if init is not None and init.shape != (int(k), d):
        raise ValueError(f"init_centroids must have shape (k, d) = ({k}, {d}), got {init.shape}")
    km.train(v, init_centroids=init)
    centroids = _unit_rows(km.centroids, "centroids")  # (K, d)
    assignments, similarities = assign_to_centroids(v, centroids)
    sizes = np.bincount(assignments, minlength=int(k)).astype(np.int64)
    return Clustering(
        centroids=centroids, assignments=assignments, similarities=similarities, sizes=sizes,
        sparse=sparse_cluster_mask(sizes, sparse_ratio), k=int(k), niter=int(niter), seed=int(seed),
        sparse_ratio=float(sparse_ratio),
    )
