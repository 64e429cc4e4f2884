"""Selection at its edges: every method's default seed is 0, the settings reach the k-means they
configure, k-means++ on near-identical rows, the training sample drawn without repeats, and
pinned draws (the same seed must select the same samples in every version)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from prismatic_assets.core.selection import (
    balanced_quotas,
    cluster_in_batches,
    kmeans_plus_plus,
    random_subset,
    select_cluster_balanced,
    select_greedy,
    select_random,
)


def _x(n: int = 200, d: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.eye(d)[rng.integers(0, d, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.int64).tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("name, call", [
    ("random_subset", lambda x, **kw: random_subset(len(x), 10, **kw)),
    ("select_random", lambda x, **kw: select_random(x, 10, **kw).indices),
    ("kmeans_plus_plus", lambda x, **kw: kmeans_plus_plus(x, 5, **kw)),
    ("cluster_in_batches", lambda x, **kw: cluster_in_batches(x, 5, train_size=80, **kw).assignments),
    ("balanced_quotas", lambda x, **kw: balanced_quotas([7, 7, 7, 7, 7], 12, **kw)),
    ("select_cluster_balanced", lambda x, **kw: select_cluster_balanced(x, 12, **kw).indices),
    ("select_greedy", lambda x, **kw: select_greedy(x, 6, **kw).indices),
])
def test_every_methods_default_seed_is_0(name, call):
    x = _x()
    default = call(x)
    assert np.array_equal(default, call(x, seed=0)), name
    assert any(not np.array_equal(default, call(x, seed=s)) for s in (1, 2, 3)), name


def test_k_means_plus_plus_draws_by_distance_even_when_the_distances_sum_to_at_most_1():
    x = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]], np.float32)  # five identical rows and one at distance 1
    for seed in range(20):
        starts = kmeans_plus_plus(x, 2, seed=seed)
        assert {tuple(r) for r in starts.tolist()} == {(1.0, 0.0), (0.0, 1.0)}, seed


def test_the_training_sample_is_seeded_and_without_repeats_and_the_settings_reach_the_k_means():
    x = _x(300)
    a = cluster_in_batches(x, 6, seed=4, niter=3, train_size=90)
    b = cluster_in_batches(x, 6, seed=4, niter=3, train_size=90)
    assert np.array_equal(a.assignments, b.assignments) and a.train_size == 90
    assert a.similarities.dtype == np.float32 and a.assignments.dtype == np.int64
    assert (a.sizes.tolist(), _digest(a.assignments)) == PINNED_BATCHES
    longer = cluster_in_batches(x, 6, seed=4, niter=20, train_size=90)
    assert not np.array_equal(longer.centroids, a.centroids)  # niter reaches the k-means
    picked = select_cluster_balanced(x, 12, seed=4, n_clusters=6, niter=3, train_size=90)
    assert picked.cluster_sizes.tolist() == a.sizes.tolist()  # seed, niter and train_size reach the clustering


def test_pinned_balanced_draws():
    assert balanced_quotas([5, 5, 5, 5], 6, seed=3).tolist() == PINNED_QUOTAS
    picked = select_cluster_balanced(_x(), 12, seed=3)
    assert (picked.indices.tolist(), picked.clusters.tolist()) == PINNED_BALANCED


PINNED_BATCHES = ([36, 54, 43, 51, 57, 59], "30f51d199e609b5f")
PINNED_QUOTAS = [1, 2, 2, 1]
PINNED_BALANCED = ([118, 4, 44, 198, 19, 102, 46, 10, 5, 0, 123, 186], [2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])


def test_the_k_means_runs_20_iterations_unless_told_otherwise():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 8)).astype(np.float32)
    default = cluster_in_batches(x, 12, seed=1)
    np.testing.assert_array_equal(default.centroids, cluster_in_batches(x, 12, seed=1, niter=20).centroids)
    assert not np.array_equal(default.centroids, cluster_in_batches(x, 12, seed=1, niter=21).centroids)


def test_cluster_sizes_list_every_cluster_even_the_empty_last_one():
    # Two distinct rows, three clusters: one cluster gets nobody.
    x = np.repeat(np.eye(8, dtype=np.float32)[:2], 10, axis=0)
    got = cluster_in_batches(x, 3, seed=0)
    assert got.sizes.tolist() == np.bincount(got.assignments, minlength=3).tolist()
    assert len(got.sizes) == 3 and sorted(got.sizes.tolist()) == [0, 10, 10]


def test_a_balanced_draw_takes_the_seeded_quotas_of_its_own_seed():
    # Four clusters of five: k = 6 is one each plus two extra, and which two get them is the
    # seed's draw (seed 2 and seed 0 pick different clusters).
    rng = np.random.default_rng(3)
    x = (np.repeat(np.eye(8)[:4], 5, axis=0) + 0.01 * rng.standard_normal((20, 8))).astype(np.float32)
    assert not np.array_equal(balanced_quotas([5] * 4, 6, 2), balanced_quotas([5] * 4, 6, 0))
    for seed in (0, 2):
        got = select_cluster_balanced(x, 6, seed=seed, n_clusters=4)
        clustering = cluster_in_batches(x, 4, seed=seed)
        assert clustering.sizes.tolist() == [5] * 4
        picked = np.bincount(clustering.assignments[got.indices], minlength=4)
        assert picked.tolist() == balanced_quotas(clustering.sizes, 6, seed).tolist()


def test_plain_and_lazy_greedy_pick_the_same_rows_when_rows_are_not_unit_length():
    x = _x(120, 8, seed=4) * np.random.default_rng(5).uniform(0.1, 10.0, size=(120, 1)).astype(np.float32)
    lazy = select_greedy(x, 15, seed=3, lazy=True, refresh=4)
    plain = select_greedy(x, 15, seed=3, lazy=False)
    assert lazy.indices.tolist() == plain.indices.tolist()
    np.testing.assert_allclose(lazy.gains, plain.gains, rtol=1e-9)
    # The same picks as on the unit rows: the objective is over directions only.
    assert select_greedy(_x(120, 8, seed=4), 15, seed=3, lazy=False).indices.tolist() == plain.indices.tolist()
