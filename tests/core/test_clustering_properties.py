"""Properties of the sparse-cluster rule and of spherical k-means (Hypothesis).

The sparse mask is checked against a line-by-line transcription of the paper's rule; the
k-means against what makes it spherical: unit centroids, every point assigned to its exact
nearest centroid by cosine, and at convergence each centroid the normalized mean of its
members (the fixed point of Lloyd's iteration on the sphere). Examples are few and small,
so the module runs in seconds.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic_assets.core.clustering import assign_to_centroids, sparse_cluster_mask, spherical_kmeans

FAST = settings(max_examples=60, deadline=None)

sizes_lists = st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=40)
ratios = st.floats(min_value=0.0, max_value=0.99, allow_nan=False)


def paper_sparse(sizes: list[int], ratio: float) -> list[bool]:
    """The paper's rule, as its reference code states it: sort the cluster sizes, take the size
    at position int(K * ratio) as the threshold, and call every cluster below it sparse."""
    ordered = sorted(sizes)
    threshold = ordered[int(len(sizes) * ratio)]
    return [size < threshold for size in sizes]


@FAST
@given(sizes=sizes_lists, ratio=ratios)
def test_sparse_mask_is_the_papers_rule(sizes, ratio):
    mask = sparse_cluster_mask(np.array(sizes), ratio)
    assert mask.dtype == bool and mask.tolist() == paper_sparse(sizes, ratio)


@FAST
@given(sizes=sizes_lists, ratio=ratios, data=st.data())
def test_sparse_mask_properties(sizes, ratio, data):
    mask = sparse_cluster_mask(np.array(sizes), ratio)
    k = len(sizes)
    # At most int(K * ratio) sparse clusters; exactly that many when sizes are distinct.
    assert mask.sum() <= int(k * ratio)
    if len(set(sizes)) == k:
        assert mask.sum() == int(k * ratio)
    # A cluster smaller than a sparse one is sparse; one at least as large as a dense one is dense.
    for i in range(k):
        for j in range(k):
            if mask[j] and sizes[i] < sizes[j]:
                assert mask[i]
            if not mask[j] and sizes[i] >= sizes[j]:
                assert not mask[i]
    # The mask follows its clusters when they are reordered.
    perm = data.draw(st.permutations(range(k)))
    assert sparse_cluster_mask(np.array(sizes)[perm], ratio).tolist() == mask[perm].tolist()


@st.composite
def blobs(draw) -> tuple[np.ndarray, int, int]:
    """Up to 120 points in 2..6 dimensions around a few random directions (tight blobs to
    nearly isotropic clouds, where clusters differ in tightness and cosine and Euclidean
    k-means part ways), and a k <= n."""
    d = draw(st.integers(2, 6))
    n_centres = draw(st.integers(1, 4))
    n = draw(st.integers(4, 120))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([0.05, 0.3, 1.0, 5.0]))
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_centres, d))
    x = centres[rng.integers(n_centres, size=n)] + spread * rng.normal(size=(n, d))
    scale = rng.uniform(0.5, 3.0, size=(n, 1))  # rows of any length: the k-means normalizes them
    k = draw(st.integers(1, min(n, 10)))
    return (x * scale).astype(np.float32), k, seed % 1000


@settings(max_examples=40, deadline=None)
@given(case=blobs())
def test_spherical_kmeans_is_spherical_and_assigns_to_the_nearest_centroid(case):
    x, k, seed = case
    result = spherical_kmeans(x, k, niter=100, seed=seed)
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)  # (n, d)
    centroids = result.centroids.astype(np.float64)  # (k, d)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    cos = unit @ centroids.T  # (n, k)
    # Exact nearest centroid (ties within float32 round-off may go either way).
    chosen = cos[np.arange(len(x)), result.assignments]
    np.testing.assert_array_less(cos.max(axis=1) - chosen, 1e-5)
    np.testing.assert_allclose(result.similarities, chosen, atol=1e-5)
    assert result.sizes.tolist() == np.bincount(result.assignments, minlength=k).tolist()
    assert result.sparse.tolist() == paper_sparse(result.sizes.tolist(), result.sparse_ratio)
    # The fixed point of spherical Lloyd iterations: once converged (one more iteration moves no
    # centroid), every non-empty cluster's centroid is the normalized mean of its members' unit
    # vectors. A draw that 100 iterations do not settle (points of nearly one direction split into
    # several clusters) is not a fixed point yet, so only the converged ones are held to it.
    longer = spherical_kmeans(x, k, niter=101, seed=seed)
    if not np.allclose(longer.centroids, result.centroids, atol=1e-6):
        return
    # A point (nearly) as close to two centroids may sit in either cluster (faiss's float32 search
    # and the exact assignment can break the tie differently): clusters with such a point are left out.
    ambiguous: set[int] = set()
    if k > 1:
        top2 = np.sort(cos, axis=1)[:, -2:]
        ambiguous = set(result.assignments[top2[:, 1] - top2[:, 0] < 1e-4].tolist())
    for c in np.flatnonzero(result.sizes):
        if c in ambiguous:
            continue
        mean = unit[result.assignments == c].mean(axis=0)
        np.testing.assert_allclose(centroids[c], mean / np.linalg.norm(mean), atol=2e-4,
                                   err_msg=f"centroid {c} is not the normalized mean of its members")


@FAST
@given(case=blobs(), n_centroids=st.integers(1, 5), batch=st.integers(1, 7))
def test_assignment_is_the_exact_cosine_argmax_whatever_the_batch(case, n_centroids, batch):
    x, _, seed = case
    centroids = np.random.default_rng(seed).normal(size=(n_centroids, x.shape[1])).astype(np.float32)
    ids, sims = assign_to_centroids(x, centroids, batch_size=batch)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cos = unit.astype(np.float64) @ (centroids / np.linalg.norm(centroids, axis=1, keepdims=True)).T.astype(np.float64)
    np.testing.assert_array_less(cos.max(axis=1) - cos[np.arange(len(x)), ids], 1e-5)
    np.testing.assert_allclose(sims, cos.max(axis=1), atol=1e-5)
