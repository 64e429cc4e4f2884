"""Pick k of N samples so that their gradient vectors stay diverse.

Three methods, each deterministic for a seed, none building an N x N matrix:

- ``cluster-balanced``: spherical k-means of the vectors (k-means++ start, about sqrt(k)
  clusters; centroids trained on a seeded sample of rows, then every row assigned in
  batches, so 1M x 1024 fits on two cores), then an even draw across clusters: every
  cluster gets the same quota, clusters smaller than it give all their members and the
  rest is spread over the larger ones (water-filling). Members are drawn at random within a cluster, and the picks are
  interleaved across clusters, so every prefix of the subset is balanced too.
- ``greedy``: maximizes the log-det surrogate of the second moment's entropy,
  f(S) = log det(I + alpha * sum_{i in S} g_i g_i^T), which rewards subsets whose gradients
  span many directions evenly. Adding g raises f by log(1 + g^T B g) with
  B = (I + alpha * sum g g^T)^{-1} * alpha, kept as a d x d matrix and updated by a
  rank-1 (Sherman-Morrison) step per pick. f is submodular, so a candidate's gain can only
  fall: the lazy greedy keeps stale gains as upper bounds and refreshes only the top of
  the list (from the stored rank-1 factors) until the best is fresh. Same picks as the
  plain greedy, at a fraction of the cost on clustered data; O(N + k d + d^2) memory.
  The first pick is a seeded random draw: on the empty set every unit vector has the
  same gain.
- ``random``: a uniform draw without replacement.

Every pick carries why it was made: its cluster (cluster-balanced) or its gain in nats
(greedy). This module does not load samples or write subsets (the pipeline layer does).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from prismatic_assets.core.clustering import assign_to_centroids, spherical_kmeans

METHODS = ("cluster-balanced", "greedy", "random")
#: What `select` (and `prismatic select`, `api.select_subset`) does unless told otherwise.
DEFAULT_METHOD = "greedy"
DEFAULT_SEED = 0

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Selection:
    """k picks out of n candidates, in pick order, with the reason for each."""

    method: str
    indices: np.ndarray  # (k,) int64 candidate rows, in pick order
    clusters: np.ndarray  # (k,) int64 cluster of each pick, -1 when the method does not cluster
    gains: np.ndarray  # (k,) float64 log-det gain in nats, NaN when the method has no gain
    n: int
    seed: int
    params: dict = field(default_factory=dict)
    cluster_sizes: np.ndarray | None = None  # (K,) members per cluster (cluster-balanced)
    quotas: np.ndarray | None = None  # (K,) picks per cluster (cluster-balanced)

    @property
    def k(self) -> int:
        return int(self.indices.size)

    def reason(self, rank: int) -> dict:
        """Why pick number `rank` (0-based) was made, as a JSON-able dict."""
        out: dict = {"method": self.method, "rank": rank}
        if self.method == "cluster-balanced":
            # A cluster-balanced selection always carries its cluster sizes and quotas.
            assert self.cluster_sizes is not None and self.quotas is not None
            c = int(self.clusters[rank])
            out.update(cluster=c, cluster_size=int(self.cluster_sizes[c]), cluster_quota=int(self.quotas[c]))
        elif self.method == "greedy":
            out["gain"] = float(self.gains[rank])
            if rank == 0:
                out["note"] = "first pick drawn at random: every unit vector has the same gain on the empty set"
        else:
            out["seed"] = self.seed
        return out


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer (how many samples to keep), got {k!r}")
    if k > n:
        raise ValueError(f"k={k} but only {n} candidates have a valid gradient vector: choose k <= {n}")
    return int(k)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an integer in [0, 2**31), got {seed!r}")
    return int(seed)


def _shape(vectors) -> tuple[int, int]:
    shape = getattr(vectors, "shape", None)
    if shape is None or len(shape) != 2 or shape[1] == 0:
        raise ValueError(f"vectors must be an (N, d) array, got shape {shape}")
    return int(shape[0]), int(shape[1])


def row_norms(vectors, batch_size: int = 16384) -> np.ndarray:
    """(N,) float64 L2 norms, in batches; raises on a non-finite or zero row, naming it."""
    n, _ = _shape(vectors)
    norms = np.empty(n, dtype=np.float64)
    for start in range(0, n, batch_size):
        b = np.asarray(vectors[start:start + batch_size], dtype=np.float64)
        finite = np.isfinite(b).all(axis=1)
        if not finite.all():
            raise ValueError(f"row {start + int(np.argmin(finite))} has a NaN or infinite value: exclude it first")
        norms[start:start + len(b)] = np.sqrt(np.einsum("ij,ij->i", b, b))
    if not (norms > 0).all():
        raise ValueError(f"row {int(np.argmin(norms > 0))} is all zeros and has no direction: exclude it first")
    return norms


# -- random ------------------------------------------------------------------------------
def random_subset(n: int, k: int, seed: int = 0) -> np.ndarray:
    """(k,) distinct indices drawn uniformly from range(n)."""
    k = _check_k(k, n)
    rng = np.random.default_rng(_check_seed(seed))
    return rng.choice(n, size=k, replace=False).astype(np.int64)


def select_random(vectors, k: int, seed: int = 0) -> Selection:
    n, _ = _shape(vectors)
    idx = random_subset(n, k, seed)
    return Selection("random", idx, np.full(idx.size, -1, dtype=np.int64), np.full(idx.size, np.nan), n, seed,
                     params={})


# -- cluster-balanced --------------------------------------------------------------------
def default_num_clusters(n: int, k: int) -> int:
    """K for a balanced draw of k: about sqrt(k), so each cluster gets about sqrt(k) picks.

    Fewer, coarser clusters keep a large mode from being split into many clusters that
    would then take most of the quota; at most min(k, n).
    """
    return int(max(1, min(k, n, round(math.sqrt(k)))))


def kmeans_plus_plus(x: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """(K, d) k-means++ starting centroids of unit rows x: each next one drawn with probability
    proportional to its squared distance (2 - 2 cos) to the nearest one so far.

    Small, far-away modes get a centroid; faiss's default (K random rows) puts nearly all
    centroids into the largest mode when mode sizes are very unequal.
    """
    rng = np.random.default_rng([seed, 4])
    n = x.shape[0]
    first = int(rng.integers(n))
    chosen = [first]
    dist = np.maximum(1.0 - x @ x[first], 0.0).astype(np.float64)  # (n,) half the squared distance
    for _ in range(n_clusters - 1):
        total = dist.sum()
        i = int(rng.choice(n, p=dist / total)) if total > 0 else int(rng.integers(n))
        chosen.append(i)
        dist = np.minimum(dist, np.maximum(1.0 - x @ x[i], 0.0))
    return x[chosen].copy()


@dataclass(frozen=True)
class BatchClustering:
    centroids: np.ndarray  # (K, d) float32 unit rows
    assignments: np.ndarray  # (N,) int64
    similarities: np.ndarray  # (N,) float32
    sizes: np.ndarray  # (K,) int64
    train_size: int


def cluster_in_batches(vectors, n_clusters: int, seed: int = 0, niter: int = 20, train_size: int | None = None,
                       batch_size: int = 32768, progress: Progress | None = None) -> BatchClustering:
    """Spherical k-means (k-means++ start) trained on a seeded sample, then every row assigned in batches.

    train_size: rows the centroids are trained on (default max(64 * K, 10000), capped at
    N): k-means cost grows with it, and 64 rows per centroid place centroids well. The
    assignment streams `batch_size` rows at a time against the centroids.
    """
    n, _ = _shape(vectors)
    seed = _check_seed(seed)
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be an integer in [1, N={n}], got {n_clusters!r}")
    size = min(n, int(train_size) if train_size else max(64 * int(n_clusters), 10_000))
    if size < n_clusters:
        raise ValueError(f"train_size={size} is below n_clusters={n_clusters}: train on at least one row per cluster")
    norms = row_norms(vectors)  # raises on a bad row, naming its index in the whole set
    rng = np.random.default_rng(seed)
    train_rows = np.sort(rng.choice(n, size=size, replace=False)) if size < n else np.arange(n)
    train = (np.asarray(vectors[train_rows], dtype=np.float64) / norms[train_rows, None]).astype(np.float32)
    trained = spherical_kmeans(train, int(n_clusters), niter=niter, seed=seed,
                               init_centroids=kmeans_plus_plus(train, int(n_clusters), seed))
    assignments = np.empty(n, dtype=np.int64)
    similarities = np.empty(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        a, s = assign_to_centroids(vectors[start:start + batch_size], trained.centroids)
        assignments[start:start + a.size] = a
        similarities[start:start + a.size] = s
        if progress:
            progress(min(start + batch_size, n), n)
    sizes = np.bincount(assignments, minlength=int(n_clusters)).astype(np.int64)
    return BatchClustering(trained.centroids, assignments, similarities, sizes, size)


def balanced_quotas(sizes, k: int, seed: int = 0) -> np.ndarray:
    """(K,) picks per cluster summing to k: the same for every cluster, capped by its size.

    Water-filling: the largest level L with sum(min(size, L)) <= k; the k - that sum picks
    left over go one each to clusters larger than L, chosen at random (seeded).
    """
    s = np.asarray(sizes, dtype=np.int64)
    if s.ndim != 1 or s.size == 0 or (s < 0).any():
        raise ValueError("sizes must be a non-empty 1-D array of non-negative counts")
    k = _check_k(k, int(s.sum()))
    lo, hi = 0, int(s.max())
    while lo < hi:  # largest L with sum(min(s, L)) <= k
        mid = (lo + hi + 1) // 2
        if np.minimum(s, mid).sum() <= k:
            lo = mid
        else:
            hi = mid - 1
    quotas = np.minimum(s, lo)
    rest = k - int(quotas.sum())
    if rest:
        larger = np.flatnonzero(s > lo)
        rng = np.random.default_rng([_check_seed(seed), 1])
        quotas[rng.choice(larger, size=rest, replace=False)] += 1
    return quotas


def select_cluster_balanced(vectors, k: int, seed: int = 0, n_clusters: int | None = None, niter: int = 20,
                            train_size: int | None = None, batch_size: int = 32768,
                            progress: Progress | None = None) -> Selection:
    """An even draw across gradient clusters (see the module docstring)."""
    n, _ = _shape(vectors)
    k = _check_k(k, n)
    seed = _check_seed(seed)
    n_clusters = default_num_clusters(n, k) if n_clusters is None else n_clusters
    clustering = cluster_in_batches(vectors, n_clusters, seed=seed, niter=niter, train_size=train_size,
                                    batch_size=batch_size, progress=progress)
    quotas = balanced_quotas(clustering.sizes, k, seed)
    rng = np.random.default_rng([seed, 2])
    # Random order within each cluster: sort by (cluster, random key).
    order = np.lexsort((rng.random(n), clustering.assignments))  # (N,)
    starts = np.concatenate([[0], np.cumsum(clustering.sizes)[:-1]])
    chosen, within = [], []
    for c in np.flatnonzero(quotas):
        chosen.append(order[starts[c]:starts[c] + quotas[c]])
        within.append(np.arange(quotas[c]))
    chosen_idx = np.concatenate(chosen)
    within_rank = np.concatenate(within)
    clusters = clustering.assignments[chosen_idx]
    # Interleave: the first member of every cluster, then the second, ... (clusters in a seeded order).
    cluster_order = np.random.default_rng([seed, 3]).permutation(int(n_clusters))
    interleave = np.lexsort((cluster_order[clusters], within_rank))
    idx = chosen_idx[interleave].astype(np.int64)
    return Selection("cluster-balanced", idx, clusters[interleave].astype(np.int64), np.full(k, np.nan), n, seed,
                     params={"n_clusters": int(n_clusters), "niter": niter, "train_size": clustering.train_size},
                     cluster_sizes=clustering.sizes, quotas=quotas)


# -- greedy (log-det surrogate) ----------------------------------------------------------
def default_alpha(dim: int, k: int) -> float:
    """alpha = d / k: a subset spread evenly over min(k, d) directions has alpha * eigenvalue ~ 1,
    between the regime where f only counts samples (alpha -> 0) and plain log-det (alpha -> inf)."""
    return float(dim) / float(k)


def logdet_objective(vectors, alpha: float) -> float:
    """f(S) = log det(I + alpha * sum g g^T) of unit rows (a reference for tests and reports)."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sign, value = np.linalg.slogdet(np.eye(x.shape[1]) + alpha * x.T @ x)
    return float(value)


def select_greedy(vectors, k: int, seed: int = 0, alpha: float | None = None, lazy: bool = True,
                  refresh: int = 256, batch_size: int = 8192, progress: Progress | None = None) -> Selection:
    """Greedy maximization of log det(I + alpha * sum_{i in S} g_i g_i^T) over unit rows g_i.

    alpha: the surrogate's scale (default d / k, `default_alpha`). lazy: refresh only the
    top stale gains (True) or every candidate's gain after each pick (False, the plain
    greedy: one (N, d) pass per pick); both make the same picks. refresh: how many of the
    top candidates the lazy greedy refreshes at once (doubled while the best stays stale).
    Gains are in nats; their running sum is f(S).
    """
    n, d = _shape(vectors)
    k = _check_k(k, n)
    seed = _check_seed(seed)
    alpha = default_alpha(d, k) if alpha is None else float(alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number (default d / k), got {alpha!r}")
    norms = row_norms(vectors)  # (N,)

    def unit(rows: np.ndarray) -> np.ndarray:  # (m,) -> (m, d) float64 unit rows
        return np.asarray(vectors[rows], dtype=np.float64) / norms[rows, None]

    b = alpha * np.eye(d)  # (d, d): alpha * (I + alpha * sum g g^T)^{-1}
    w = np.empty((k, d), dtype=np.float64)  # rank-1 factors: B_t = B_0 - sum_{j<t} w_j w_j^T
    q = np.full(n, alpha, dtype=np.float64)  # g^T B g, exact when stamp == t, an upper bound otherwise
    stamp = np.zeros(n, dtype=np.int64)  # the step q was last refreshed at
    picks = np.empty(k, dtype=np.int64)
    gains = np.empty(k, dtype=np.float64)
    first = int(np.random.default_rng(seed).integers(n))

    def refresh_rows(rows: np.ndarray, t: int) -> None:
        for start in range(0, rows.size, batch_size):
            r = rows[start:start + batch_size]
            s0 = int(stamp[r].min())
            proj = unit(r) @ w[s0:t].T  # (m, t - s0)
            # Only factors added after a row's last refresh are subtracted from its gain.
            proj[np.arange(t - s0)[None, :] < (stamp[r] - s0)[:, None]] = 0.0
            q[r] = q[r] - np.einsum("ij,ij->i", proj, proj)
            stamp[r] = t

    for t in range(k):
        if t == 0:
            i = first
        else:
            m = refresh
            while True:
                i = int(np.argmax(q))
                if stamp[i] == t:
                    break
                m = min(m, n - t)
                top = np.argpartition(-q, m - 1)[:m]
                top = top[(stamp[top] < t) & np.isfinite(q[top])]
                refresh_rows(top, t)
                m *= 2
        x = unit(np.array([i]))[0]  # (d,)
        u = b @ x  # (d,)
        c = max(float(x @ u), 0.0)
        gains[t] = math.log1p(c)
        w[t] = u / math.sqrt(1.0 + c)
        b -= np.outer(w[t], w[t])
        picks[t] = i
        q[i] = -np.inf
        stamp[i] = t + 1
        if not lazy and t + 1 < k:
            for start in range(0, n, batch_size):
                g = np.asarray(vectors[start:start + batch_size], dtype=np.float64) @ w[t]  # (b,)
                g /= norms[start:start + batch_size]
                q[start:start + g.size] -= g * g
            stamp[:] = t + 1
        if progress:
            progress(t + 1, k)
    return Selection("greedy", picks, np.full(k, -1, dtype=np.int64), gains, n, seed,
                     params={"alpha": alpha, "lazy": lazy, "objective": "logdet"})


def select(vectors, k: int, method: str = DEFAULT_METHOD, seed: int = DEFAULT_SEED, *, n_clusters: int | None = None,
           progress: Progress | None = None, **options) -> Selection:
    """Dispatch to `select_cluster_balanced`, `select_greedy` or `select_random`."""
    if method == "cluster-balanced":
        return select_cluster_balanced(vectors, k, seed, n_clusters=n_clusters, progress=progress, **options)
    if n_clusters is not None:
        raise ValueError(f"n_clusters applies to method 'cluster-balanced' only, not {method!r}")
    if method == "greedy":
        return select_greedy(vectors, k, seed, progress=progress, **options)
    if method == "random":
        if options:
            raise ValueError(f"method 'random' takes no options, got {sorted(options)}")
        return select_random(vectors, k, seed)
    raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
