"""Tests for prismatic_assets.core.selection: diversity gains, determinism, parameters, the greedy's objective."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from prismatic_assets.core.clustering import assign_to_centroids
from prismatic_assets.core.gvendi import g_vendi
from prismatic_assets.core.selection import (
    balanced_quotas,
    cluster_in_batches,
    kmeans_plus_plus,
    logdet_objective,
    random_subset,
    select,
    select_greedy,
)

PLANTED_SIZES = (1500, 300, 60, 20, 10, 5, 3)


def planted(sizes=PLANTED_SIZES, d: int = 32, noise: float = 0.35, seed: int = 0):
    """Unit vectors around len(sizes) random directions, with very unequal cluster sizes."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((len(sizes), d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    labels = np.repeat(np.arange(len(sizes)), sizes)
    x = centers[labels] + noise * rng.standard_normal((labels.size, d)) / np.sqrt(d)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.mark.parametrize("method", ["greedy", "cluster-balanced"])
def test_diverse_methods_beat_the_best_of_five_random_subsets(data, method):
    x, labels = data
    k = 60
    best_random = max(g_vendi(x[random_subset(len(x), k, seed)]).score for seed in range(5))
    chosen = select(x, k, method=method, seed=0)
    score = g_vendi(x[chosen.indices]).score
    assert score > best_random
    # and they reach the small planted clusters a random draw of 60 in 1898 mostly misses
    assert len(set(labels[chosen.indices])) >= 6


@pytest.mark.parametrize("method", ["greedy", "cluster-balanced", "random"])
def test_same_input_and_seed_give_the_same_subset(data, method):
    x, _ = data
    a = select(x, 40, method=method, seed=3)
    b = select(x.copy(), 40, method=method, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert len(set(a.indices.tolist())) == 40


@pytest.mark.parametrize("method", ["greedy", "cluster-balanced", "random"])
def test_seed_and_k_change_the_subset(data, method):
    x, _ = data
    base = select(x, 40, method=method, seed=0)
    assert set(select(x, 40, method=method, seed=1).indices) != set(base.indices)
    bigger = select(x, 41, method=method, seed=0)
    assert bigger.k == 41 and set(bigger.indices) != set(base.indices)


def test_methods_differ(data):
    x, _ = data
    subsets = [frozenset(select(x, 40, method=m, seed=0).indices.tolist()) for m in ("greedy", "cluster-balanced",
                                                                                  "random")]
    assert len(set(subsets)) == 3


def test_lazy_greedy_makes_the_plain_greedy_picks_and_the_gains_sum_to_the_objective(data):
    x, _ = data
    rows = np.random.default_rng(1).choice(len(x), 400, replace=False)
    sub = x[rows]
    lazy = select_greedy(sub, 30, seed=2, lazy=True, refresh=4)
    plain = select_greedy(sub, 30, seed=2, lazy=False)
    np.testing.assert_array_equal(lazy.indices, plain.indices)
    np.testing.assert_allclose(lazy.gains, plain.gains, rtol=1e-9)
    alpha = lazy.params["alpha"]
    assert lazy.gains.sum() == pytest.approx(logdet_objective(sub[lazy.indices], alpha), rel=1e-9)
    assert np.all(np.diff(lazy.gains) <= 1e-12)  # submodular: gains never rise


def test_greedy_pick_is_the_best_next_sample_by_brute_force():
    x, _ = planted(sizes=(12, 6, 3), d=8, seed=4)
    chosen = select_greedy(x, 4, seed=0, alpha=2.0)
    for t in range(1, 4):
        prefix = list(chosen.indices[:t])
        rest = [i for i in range(len(x)) if i not in prefix]
        values = [logdet_objective(x[prefix + [i]], 2.0) for i in rest]
        assert logdet_objective(x[list(chosen.indices[:t + 1])], 2.0) == pytest.approx(max(values), rel=1e-12)


def test_alpha_changes_the_greedy_subset(data):
    x, _ = data
    a = select_greedy(x, 40, seed=0, alpha=0.05)
    b = select_greedy(x, 40, seed=0, alpha=50.0)
    assert set(a.indices) != set(b.indices)


def test_cluster_balanced_draws_evenly_and_every_prefix_is_balanced(data):
    x, _ = data
    chosen = select(x, 40, method="cluster-balanced", seed=0, n_clusters=8)
    counts = np.bincount(chosen.clusters, minlength=8)
    np.testing.assert_array_equal(counts, chosen.quotas)
    assert counts.sum() == 40 and chosen.cluster_sizes.sum() == len(x)
    assert counts.max() - counts[chosen.cluster_sizes >= counts.max()].min() <= 1
    first = chosen.clusters[:8]
    assert len(set(first.tolist())) == min(8, int((chosen.quotas > 0).sum()))
    reason = chosen.reason(0)
    assert reason["cluster"] == chosen.clusters[0] and reason["cluster_quota"] >= 1
    # n_clusters changes the subset
    assert set(select(x, 40, method="cluster-balanced", seed=0, n_clusters=20).indices) != set(chosen.indices)


@pytest.mark.parametrize("sizes, k, expected", [
    ([10, 10, 10], 9, [3, 3, 3]),
    ([1, 2, 30], 12, [1, 2, 9]),  # small clusters give all they have
    ([0, 5, 5], 10, [0, 5, 5]),
    ([4, 4, 1], 9, [4, 4, 1]),
])
def test_balanced_quotas_water_fill(sizes, k, expected):
    assert balanced_quotas(sizes, k).tolist() == expected


def test_balanced_quotas_spread_the_remainder_at_random():
    quotas = [tuple(balanced_quotas([10] * 5, 7, seed=s)) for s in range(6)]
    assert all(sum(q) == 7 and max(q) == 2 and min(q) == 1 for q in quotas)
    assert len(set(quotas)) > 1


def test_cluster_in_batches_recovers_clusters_from_a_sample_and_assigns_every_row():
    from sklearn.metrics import adjusted_rand_score

    x, labels = planted(sizes=(300, 300, 300, 300), d=32, noise=0.5, seed=1)
    batched = cluster_in_batches(x, 4, seed=0, train_size=200, batch_size=128)
    assert batched.train_size == 200 and batched.sizes.sum() == len(x)
    assert adjusted_rand_score(labels, batched.assignments) > 0.95  # from 200 of 1200 rows
    one_pass, _ = assign_to_centroids(x, batched.centroids)
    np.testing.assert_array_equal(batched.assignments, one_pass)
    # train_size changes the centroids
    other = cluster_in_batches(x, 4, seed=0, train_size=40, batch_size=128)
    assert not np.allclose(other.centroids, batched.centroids)


def test_kmeans_plus_plus_gives_small_far_modes_a_centroid():
    x, labels = planted(sizes=(2000, 20, 20), d=32, noise=0.05, seed=2)
    hits = [len(set(labels[[int(np.argmax(x @ c)) for c in kmeans_plus_plus(x, 3, seed)]])) for seed in range(5)]
    # 3 random rows reach a small mode with probability ~6%: the mean would be ~1.06
    assert np.mean(hits) >= 2.4


@pytest.mark.parametrize("method, k, kw, message", [
    ("greedy", 0, {}, "positive integer"),
    ("greedy", 10_000, {}, "only 1898 candidates"),
    ("random", 5, {"seed": -1}, "seed must be"),
    ("sideways", 5, {}, "choose one of"),
    ("greedy", 5, {"n_clusters": 3}, "'cluster-balanced' only"),
    ("greedy", 5, {"alpha": 0.0}, "alpha must be"),
])
def test_bad_parameters_name_the_fix(data, method, k, kw, message):
    x, _ = data
    with pytest.raises(ValueError, match=message):
        select(x, k, method=method, **kw)


@pytest.mark.parametrize("bad, message", [(np.nan, "NaN"), (0.0, "all zeros")])
def test_bad_rows_are_named(bad, message):
    x = np.random.default_rng(0).standard_normal((20, 4))
    x[7] = bad
    for method in ("greedy", "cluster-balanced"):
        with pytest.raises(ValueError, match=f"row 7.*{message}|{message}.*row 7|row 7"):
            select(x, 5, method=method)


def test_no_pair_repeats():
    x, _ = planted(sizes=(50, 5), d=8)
    for method, seed in itertools.product(("greedy", "cluster-balanced", "random"), range(3)):
        idx = select(x, 55, method=method, seed=seed).indices
        assert sorted(idx.tolist()) == list(range(55))


def test_spherical_kmeans_starts_from_given_centroids():
    from prismatic_assets.core.clustering import spherical_kmeans

    x, labels = planted(sizes=(2000, 20, 20), d=32, noise=0.05, seed=2)
    start = np.stack([x[labels == i][0] for i in range(3)])  # one row of each planted mode
    seeded = spherical_kmeans(x, 3, niter=5, seed=0, init_centroids=start)
    assert sorted(seeded.sizes.tolist()) == [20, 20, 2000]  # each mode keeps its own centroid
    crowded = spherical_kmeans(x, 3, niter=1, seed=0, init_centroids=x[labels == 0][:3])
    assert sorted(crowded.sizes.tolist()) != [20, 20, 2000]  # three starts in the big mode: it gets split
    with pytest.raises(ValueError, match="init_centroids must have shape"):
        spherical_kmeans(x, 3, init_centroids=start[:2])
