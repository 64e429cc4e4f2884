"""Tests for prismatic_assets.core.selection: diversity gains, determinism, parameters, the greedy's objective."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from prismatic_assets.core.clustering import assign_to_centroids
from prismatic_assets.core.gvendi import g_vendi
from prismatic_assets.core.selection import (
    METHODS,
    Selection,
    balanced_quotas,
    cluster_in_batches,
    default_num_clusters,
    kmeans_plus_plus,
    logdet_objective,
    random_subset,
    row_norms,
    select,
    select_greedy,
    select_random,
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


# ---- edges the mutation run found

def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_each_methods_reason_names_what_decided_the_pick():
    x = _unit(30, 4)
    greedy = select(x, 3, method="greedy", seed=1, alpha=2.0)
    first = {"method": "greedy", "rank": 0, "gain": pytest.approx(math.log1p(2.0)),  # g^T (alpha I) g = alpha
             "note": "first pick drawn at random: every unit vector has the same gain on the empty set"}
    assert greedy.reason(0) == first
    assert greedy.reason(2) == {"method": "greedy", "rank": 2, "gain": float(greedy.gains[2])}
    assert select(x, 3, method="random", seed=7).reason(1) == {"method": "random", "rank": 1, "seed": 7}
    hand = Selection("cluster-balanced", np.array([5, 2]), np.array([1, 0]), np.full(2, np.nan), 10, 0,
                     cluster_sizes=np.array([4, 6]), quotas=np.array([1, 1]))
    assert hand.k == 2
    assert hand.reason(0) == {"method": "cluster-balanced", "rank": 0, "cluster": 1, "cluster_size": 6,
                              "cluster_quota": 1}
    assert all(type(v) is int for v in hand.reason(1).values() if v != "cluster-balanced")


def test_random_is_numpys_uniform_draw_for_the_seed():
    for n, k, seed in [(10, 4, 0), (10, 10, 3), (50, 7, 2**31 - 1)]:
        expected = np.random.default_rng(seed).choice(n, size=k, replace=False)
        drawn = random_subset(n, k, seed)
        assert drawn.dtype == np.int64 and drawn.tolist() == expected.tolist()
    chosen = select_random(_unit(10, 3), 4, seed=3)
    assert (chosen.method, chosen.n, chosen.seed, chosen.params) == ("random", 10, 3, {})
    assert chosen.clusters.tolist() == [-1] * 4 and np.isnan(chosen.gains).all()
    assert chosen.indices.tolist() == np.random.default_rng(3).choice(10, size=4, replace=False).tolist()


@pytest.mark.parametrize("k", [1, 10, np.int64(4)])
def test_k_from_1_to_n_is_accepted(k):
    assert random_subset(10, k).size == k and select_greedy(_unit(10, 3), k).k == k


@pytest.mark.parametrize("k, message", [(0, "positive integer"), (True, "positive integer"),
                                        (2.0, "positive integer"), (11, "only 10 candidates.*choose k <= 10")])
def test_k_must_be_a_count_of_at_most_n(k, message):
    with pytest.raises(ValueError, match=message):
        random_subset(10, k)


@pytest.mark.parametrize("seed", [0, 2**31 - 1, np.int64(5)])
def test_seeds_in_0_to_2_31_are_accepted(seed):
    assert random_subset(10, 3, seed).size == 3


@pytest.mark.parametrize("seed", [-1, 2**31, True, 1.0])
def test_other_seeds_are_refused(seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*31\)"):
        random_subset(10, 3, seed)


@pytest.mark.parametrize("vectors", [np.ones(5), np.ones((5, 0)), [[1.0, 0.0]], np.ones((2, 2, 2))])
def test_vectors_must_be_an_n_by_d_array(vectors):
    for method in METHODS:
        with pytest.raises(ValueError, match=r"vectors must be an \(N, d\) array"):
            select(vectors, 1, method=method)


def test_row_norms_are_float64_norms_and_name_a_bad_row_across_batches():
    x = np.random.default_rng(0).standard_normal((10, 3)).astype(np.float32)
    norms = row_norms(x, batch_size=3)
    assert norms.dtype == np.float64
    np.testing.assert_allclose(norms, np.linalg.norm(x.astype(np.float64), axis=1), rtol=1e-15)
    for bad, message in [(np.inf, "row 7 has a NaN or infinite value"), (np.nan, "row 7 has a NaN"),
                         (0.0, "row 7 is all zeros")]:
        y = x.copy()
        y[7] = bad
        with pytest.raises(ValueError, match=message):
            row_norms(y, batch_size=3)
    y = x.copy()
    y[4] = 0.0
    y[8, 1] = np.nan  # a later bad row in another batch: the first one found is named
    with pytest.raises(ValueError, match="row 8 has a NaN"):
        row_norms(y, batch_size=3)


@pytest.mark.parametrize("n, k, expected", [(100, 1, 1), (100, 2, 1), (100, 3, 2), (100, 9, 3), (100, 12, 3),
                                            (100, 13, 4), (100, 100, 10), (3, 3, 2), (2, 100, 2), (5, 25, 5)])
def test_default_num_clusters_is_about_sqrt_k_and_at_most_n(n, k, expected):
    assert default_num_clusters(n, k) == expected


def _reference_kmeans_plus_plus(x: np.ndarray, n_clusters: int, seed: int) -> list[int]:
    """The docstring's rule, row by row: the first row uniform, each next one with probability
    proportional to 1 - cos to its nearest chosen row (a uniform draw when every distance is 0)."""
    rng = np.random.default_rng([seed, 4])
    chosen = [int(rng.integers(len(x)))]
    for _ in range(n_clusters - 1):
        dist = np.array([max(min(1.0 - float(row @ x[c]) for c in chosen), 0.0) for row in x])
        chosen.append(int(rng.choice(len(x), p=dist / dist.sum())) if dist.sum() > 0 else int(rng.integers(len(x))))
    return chosen


@pytest.mark.parametrize("seed", [0, 3])
def test_kmeans_plus_plus_draws_by_distance_to_the_nearest_start(seed):
    x = _unit(40, 3, seed=seed)
    starts = kmeans_plus_plus(x, 5, seed)
    np.testing.assert_allclose(starts, x[_reference_kmeans_plus_plus(x, 5, seed)], rtol=1e-12)
    starts[0] = 0.0
    assert np.isfinite(x).all() and (np.linalg.norm(x, axis=1) > 0.99).all()  # a copy, not a view of x


def test_kmeans_plus_plus_with_fewer_distinct_rows_than_clusters_draws_uniformly():
    """Once every row coincides with a start, all distances are 0: the next starts are uniform draws."""
    x = np.repeat(_unit(2, 3), [3, 2], axis=0).astype(np.float32)
    starts = kmeans_plus_plus(x, 4, seed=1)
    assert starts.shape == (4, 3) and len({tuple(r) for r in starts.round(6).tolist()}) == 2
    same = np.tile(x[:1], (5, 1))
    assert np.array_equal(kmeans_plus_plus(same, 3, seed=0), np.tile(x[:1], (3, 1)))


@pytest.mark.parametrize("n_clusters", [0, 7, True, 2.0])
def test_cluster_in_batches_refuses_a_cluster_count_outside_1_to_n(n_clusters):
    with pytest.raises(ValueError, match=r"n_clusters must be an integer in \[1, N=6\]"):
        cluster_in_batches(_unit(6, 3), n_clusters)


def test_cluster_in_batches_trains_on_at_least_one_row_per_cluster():
    x = _unit(6, 3)
    assert cluster_in_batches(x, 6, niter=2).sizes.tolist() == [1] * 6  # K = N: every row its own cluster
    assert cluster_in_batches(x, 3, train_size=3, niter=2).train_size == 3
    with pytest.raises(ValueError, match="train_size=2 is below n_clusters=3"):
        cluster_in_batches(x, 3, train_size=2)


def test_cluster_in_batches_default_sample_is_64_rows_per_cluster_or_10000():
    x = _unit(12_000, 4).astype(np.float32)
    assert cluster_in_batches(x, 2, niter=2).train_size == 10_000
    assert cluster_in_batches(x, 160, niter=1).train_size == 64 * 160
    assert cluster_in_batches(x[:500], 2, niter=2).train_size == 500  # capped at N


def test_cluster_in_batches_reports_progress_per_batch_and_exact_sizes():
    x, _ = planted(sizes=(150, 100, 50), d=8, noise=0.2, seed=3)
    calls = []
    result = cluster_in_batches(x, 3, seed=1, batch_size=128, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(128, 300), (256, 300), (300, 300)]
    assert result.sizes.dtype == np.int64 and sorted(result.sizes.tolist()) == [50, 100, 150]
    np.testing.assert_array_equal(result.sizes, np.bincount(result.assignments, minlength=3))
    xn = x.astype(np.float64)
    np.testing.assert_allclose(result.similarities, (xn @ result.centroids.T.astype(np.float64)).max(1), atol=1e-5)


@pytest.mark.parametrize("sizes", [[[1, 2]], [], [3, -1]])
def test_balanced_quotas_refuse_sizes_that_are_not_counts(sizes):
    with pytest.raises(ValueError, match="non-empty 1-D array of non-negative counts"):
        balanced_quotas(sizes, 1)


def test_balanced_quotas_take_every_member_when_k_is_the_total():
    assert balanced_quotas([3, 0, 5, 1], 9).tolist() == [3, 0, 5, 1]
    assert balanced_quotas([7], 1).tolist() == [1]
    with pytest.raises(ValueError, match="only 9 candidates"):
        balanced_quotas([3, 0, 5, 1], 10)


def test_cluster_balanced_reports_its_clustering_and_passes_its_settings_on():
    x, labels = planted(sizes=(120, 60, 30, 15), d=16, noise=0.1, seed=5)
    calls = []
    chosen = select(x, 8, method="cluster-balanced", seed=2, n_clusters=4, niter=7, train_size=100, batch_size=64,
                    progress=lambda done, total: calls.append((done, total)))
    assert chosen.params == {"n_clusters": 4, "niter": 7, "train_size": 100}
    assert calls == [(64, 225), (128, 225), (192, 225), (225, 225)]
    assert (chosen.method, chosen.n, chosen.seed) == ("cluster-balanced", 225, 2)
    assert sorted(chosen.cluster_sizes.tolist()) == [15, 30, 60, 120] and chosen.quotas.tolist() == [2, 2, 2, 2]
    assert np.isnan(chosen.gains).all() and chosen.indices.dtype == np.int64 and chosen.clusters.dtype == np.int64
    # each pick's cluster is the planted mode it came from (one cluster per mode, well separated)
    mode_of = {int(c): int(np.bincount(labels[chosen.indices[chosen.clusters == c]]).argmax())
               for c in set(chosen.clusters.tolist())}
    assert sorted(mode_of.values()) == [0, 1, 2, 3]
    # interleaved: each of the first four picks is from another cluster
    assert len(set(chosen.clusters[:4].tolist())) == 4
    default = select(x, 9, method="cluster-balanced", seed=2)
    assert default.params["n_clusters"] == 3 and default.params["niter"] == 20 and default.params["train_size"] == 225


def test_cluster_balanced_members_are_a_uniform_draw_within_their_cluster():
    """Which members a cluster gives depends on the seed, not on their row order."""
    x = np.repeat(np.eye(2), [40, 40], axis=0)
    picks = [frozenset(select(x, 4, method="cluster-balanced", seed=s, n_clusters=2).indices.tolist())
             for s in range(6)]
    assert len(set(picks)) == 6
    assert all(len({i // 40 for i in p}) == 2 for p in picks)  # two from each direction


def test_greedy_reports_its_settings_and_progress():
    x = _unit(30, 6, seed=2)
    calls = []
    chosen = select(x, 4, method="greedy", seed=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert chosen.params == {"alpha": 6 / 4, "lazy": True, "objective": "logdet"}
    assert (chosen.method, chosen.n, chosen.seed) == ("greedy", 30, 3)
    assert chosen.clusters.tolist() == [-1] * 4
    assert chosen.indices[0] == np.random.default_rng(3).integers(30)  # the first pick is the seeded draw
    assert select_greedy(x, 4, lazy=False).params["lazy"] is False


@pytest.mark.parametrize("alpha", [0.0, -1.0, math.nan, math.inf])
def test_greedy_alpha_must_be_positive_and_finite(alpha):
    # k = 1: a greedy that let such an alpha through would return (NaN gains) rather than loop
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        select_greedy(_unit(10, 3), 1, alpha=alpha)


def test_greedy_gains_are_the_objectives_increments_for_raw_rows():
    """Rows of any length: the gains are those of their unit vectors, by brute-force log det."""
    x = _unit(25, 5, seed=4) * np.linspace(0.5, 3.0, 25)[:, None]
    chosen = select_greedy(x, 6, seed=1, alpha=0.7)
    f = [0.0] + [logdet_objective(x[chosen.indices[:t]], 0.7) for t in range(1, 7)]
    np.testing.assert_allclose(chosen.gains, np.diff(f), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("batch_size, refresh", [(1, 1), (3, 2), (7, 1000)])
def test_greedy_batches_and_refresh_sizes_do_not_change_the_picks(batch_size, refresh):
    x, _ = planted(sizes=(40, 20, 10, 5), d=8, seed=6)
    plain = select_greedy(x, 12, seed=4, lazy=False)
    for lazy in (True, False):
        other = select_greedy(x, 12, seed=4, lazy=lazy, refresh=refresh, batch_size=batch_size)
        np.testing.assert_array_equal(other.indices, plain.indices)
        np.testing.assert_allclose(other.gains, plain.gains, rtol=1e-9)


def test_select_passes_options_to_its_method_and_refuses_them_for_random():
    x = _unit(20, 4)
    assert select(x, 3, method="greedy", alpha=0.5).params["alpha"] == 0.5
    assert select(x, 3).method == "greedy"  # the default method
    with pytest.raises(ValueError, match=r"method 'random' takes no options, got \['alpha'\]"):
        select(x, 3, method="random", alpha=0.5)
    with pytest.raises(ValueError, match="'cluster-balanced' only, not 'random'"):
        select(x, 3, method="random", n_clusters=2)
