"""Tests for prismatic_assets.core.clustering: K, the sparse rule, spherical k-means, assignment."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from prismatic_assets.core.clustering import (
    Clustering,
    assign_to_centroids,
    num_clusters,
    sparse_cluster_mask,
    spherical_kmeans,
)


def _blobs(k: int = 4, per: int = 25, d: int = 16, noise: float = 0.05, seed: int = 0):
    """k well-separated directions (orthogonal) with `per` noisy unit-ish points each."""
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[:k]
    labels = np.repeat(np.arange(k), per)
    x = centers[labels] + noise * rng.standard_normal((k * per, d))
    return x * rng.uniform(0.5, 2.0, (k * per, 1)), labels  # norms vary: spherical ignores them


def _random(n: int = 600, d: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


# ----------------------------------------------------------------------------- num_clusters


@pytest.mark.parametrize(
    "n, ratio, minimum, expected",
    [
        (1000, 0.01, 2, 10),
        (100, 0.01, 2, 2),  # 1 -> minimum 2
        (250, 0.01, 2, 3),  # 2.5 rounds half up
        (149, 0.01, 1, 1),
        (150, 0.01, 1, 2),
        (1000, 0.1, 2, 100),  # the reference code's ratio
        (1, 0.5, 2, 1),  # capped at n
        (3, 1.0, 2, 3),
        (10, 0.01, 5, 5),  # minimum changes the result
        (10, 0.01, 20, 10),
    ],
)
def test_num_clusters(n, ratio, minimum, expected):
    assert num_clusters(n, ratio, minimum) == expected


def test_num_clusters_default_minimum_is_2():
    assert num_clusters(10, 0.01) == 2


@pytest.mark.parametrize(
    "n, ratio, minimum",
    [(0, 0.1, 2), (-5, 0.1, 2), (10.0, 0.1, 2), (10, 0.0, 2), (10, 1.5, 2), (10, -0.1, 2), (10, 0.1, 0),
     (True, 0.1, 2)],
)
def test_num_clusters_rejects_bad_arguments(n, ratio, minimum):
    with pytest.raises(ValueError):
        num_clusters(n, ratio, minimum)


# ----------------------------------------------------------------------------- sparse rule


@pytest.mark.parametrize(
    "sizes, ratio, expected",
    [
        ([5, 1, 3, 2], 0.5, [False, True, False, True]),  # sorted 1 2 3 5, threshold 3
        ([4, 4, 4, 4], 0.5, [False, False, False, False]),  # all equal: none sparse
        ([0, 0, 5, 7], 0.5, [True, True, False, False]),  # empty clusters count and are sparse
        ([0, 0, 0, 1], 0.5, [False, False, False, False]),  # threshold 0: nothing is below it
        ([1, 2, 2, 2, 3], 0.5, [True, False, False, False, False]),  # ties at the threshold stay dense
        ([3, 1, 2], 0.5, [False, True, False]),  # odd K: int(1.5) = 1, threshold 2
        ([7], 0.5, [False]),  # one cluster is never sparse
        ([1, 2, 3, 4], 0.0, [False, False, False, False]),  # ratio 0: threshold is the minimum
        ([1, 2, 3, 4], 0.75, [True, True, True, False]),  # ratio changes the result
        ([1, 2, 3, 4], 0.25, [True, False, False, False]),
        (np.array([2.0, 1.0]), 0.5, [False, True]),  # integral floats are fine
    ],
)
def test_sparse_cluster_mask(sizes, ratio, expected):
    mask = sparse_cluster_mask(sizes, ratio)
    assert mask.dtype == bool and mask.tolist() == expected


def test_sparse_cluster_mask_default_ratio_is_half():
    assert sparse_cluster_mask([5, 1, 3, 2]).tolist() == [False, True, False, True]


@pytest.mark.parametrize(
    "sizes, ratio",
    [
        ([1, 2], 1.0),
        ([1, 2], -0.1),
        ([1, 2], 1.5),
        ([], 0.5),
        ([[1, 2]], 0.5),
        ([1, -2], 0.5),
        ([1.5, 2], 0.5),
        ([np.nan, 2], 0.5),
    ],
)
def test_sparse_cluster_mask_rejects_bad_arguments(sizes, ratio):
    with pytest.raises(ValueError):
        sparse_cluster_mask(sizes, ratio)


# ----------------------------------------------------------------------------- assign_to_centroids


def test_assign_to_centroids_known_answers():
    centroids = np.eye(3)
    x = np.array(
        [
            [2.0, 0.1, 0.0],  # clearly centroid 0
            [0.0, -1.0, 0.5],  # cosines 0, -0.894, 0.447 -> 2
            [0.0, 5.0, 4.9],  # 1 by a hair
            [-1.0, -1.0, -1.0],  # all equal (-0.577): the lowest index wins
            [-1.0, 0.0, 0.0],  # cosines -1, 0, 0: tie between 1 and 2
        ]
    )
    ids, sims = assign_to_centroids(x, centroids)
    assert ids.dtype == np.int64 and sims.dtype == np.float32
    assert ids.tolist() == [0, 2, 1, 0, 1]
    expected = [2 / np.sqrt(4.01), 0.5 / np.sqrt(1.25), 5 / np.sqrt(25 + 4.9**2), -1 / np.sqrt(3), 0.0]
    assert np.allclose(sims, expected, atol=1e-6)


def test_assign_to_centroids_normalizes_both_sides():
    x = _random(200, 8, seed=1)
    c = _random(10, 8, seed=2)
    ids, sims = assign_to_centroids(x * 7.0, c * np.arange(1, 11)[:, None])
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    cos = xn @ cn.T  # (200, 10)
    assert ids.tolist() == cos.argmax(axis=1).tolist()
    assert np.allclose(sims, cos.max(axis=1), atol=1e-6)


def test_assign_to_centroids_accepts_torch_and_empty_input():
    c = np.eye(4)
    ids, _ = assign_to_centroids(torch.tensor([[0.0, 0.0, 3.0, 0.0]]), torch.from_numpy(c))
    assert ids.tolist() == [2]
    ids, sims = assign_to_centroids(np.zeros((0, 4)), c)
    assert ids.shape == sims.shape == (0,)


@pytest.mark.parametrize(
    "x, centroids, match",
    [
        (np.ones((2, 3)), np.eye(4), "width"),
        (np.zeros((0, 3)), np.eye(4), "width"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), np.eye(2), "vectors row 1 is all zeros"),
        (np.array([[1.0, np.nan]]), np.eye(2), "vectors row 0 has a NaN"),
        (np.ones((2, 2)), np.array([[1.0, 0.0], [0.0, 0.0]]), "centroids row 1"),
        (np.ones(3), np.eye(3), "2-D"),
    ],
)
def test_assign_to_centroids_errors(x, centroids, match):
    with pytest.raises(ValueError, match=match):
        assign_to_centroids(x, centroids)


# ----------------------------------------------------------------------------- spherical_kmeans


def test_recovers_well_separated_clusters():
    x, labels = _blobs()
    c = spherical_kmeans(x, 4, seed=0)
    assert adjusted_rand_score(labels, c.assignments) == 1.0
    assert sorted(c.sizes.tolist()) == [25, 25, 25, 25]
    assert not c.sparse.any()  # all sizes equal


def test_clustering_fields_are_consistent():
    x = _random()
    c = spherical_kmeans(x, 20, niter=5, seed=3, sparse_ratio=0.4)
    assert isinstance(c, Clustering)
    assert (c.k, c.niter, c.seed, c.sparse_ratio) == (20, 5, 3, 0.4)
    assert c.centroids.shape == (20, 12) and c.centroids.dtype == np.float32
    assert np.allclose(np.linalg.norm(c.centroids, axis=1), 1.0, atol=1e-5)
    assert c.assignments.shape == c.similarities.shape == (600,)
    assert c.sizes.shape == (20,) and c.sizes.sum() == 600
    assert c.sizes.tolist() == np.bincount(c.assignments, minlength=20).tolist()
    assert c.sparse.tolist() == sparse_cluster_mask(c.sizes, 0.4).tolist()
    ids, sims = assign_to_centroids(x, c.centroids)
    assert np.array_equal(ids, c.assignments) and np.allclose(sims, c.similarities)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert np.allclose(c.similarities, np.sum(xn * c.centroids[c.assignments], axis=1), atol=1e-5)


def test_deterministic_for_a_seed():
    x = _random()
    a = spherical_kmeans(x, 15, seed=7)
    b = spherical_kmeans(x, 15, seed=7)
    assert np.array_equal(a.centroids, b.centroids) and np.array_equal(a.assignments, b.assignments)


@pytest.mark.parametrize("change", [{"seed": 8}, {"niter": 1}])
def test_seed_and_niter_change_the_clustering(change):
    x = _random()
    base = {"k": 15, "niter": 20, "seed": 7}
    a = spherical_kmeans(x, **base)
    b = spherical_kmeans(x, **{**base, **change})
    assert a.centroids.shape == b.centroids.shape
    assert not np.allclose(a.centroids, b.centroids)


def test_k_changes_which_points_share_a_cluster():
    x = _random()
    a = spherical_kmeans(x, 15, niter=20, seed=7)
    b = spherical_kmeans(x, 14, niter=20, seed=7)
    assert b.centroids.shape == (14, x.shape[1]) and b.sizes.sum() == len(x) and b.assignments.max() < 14
    # The partitions differ: some pair of points is together under one k and apart under the other.
    together_a = a.assignments[:, None] == a.assignments[None, :]
    together_b = b.assignments[:, None] == b.assignments[None, :]
    assert (together_a != together_b).any()


def test_sparse_ratio_changes_the_sparse_flags_only():
    x = _random()
    a = spherical_kmeans(x, 15, seed=7, sparse_ratio=0.5)
    b = spherical_kmeans(x, 15, seed=7, sparse_ratio=0.8)
    assert np.array_equal(a.assignments, b.assignments)
    assert b.sparse.sum() > a.sparse.sum()


def test_row_norms_do_not_matter():
    x = _random()
    a = spherical_kmeans(x, 10, seed=1)
    b = spherical_kmeans(x * np.linspace(0.1, 10, 600)[:, None].astype(np.float32), 10, seed=1)
    assert np.array_equal(a.assignments, b.assignments)


@pytest.mark.parametrize("n, k", [(1, 1), (5, 5), (10, 3), (40, 2), (3, 1)])
def test_small_inputs_work_without_faiss_warnings(n, k, capfd):
    c = spherical_kmeans(_random(n, 6, seed=n), k, seed=0)
    assert c.sizes.sum() == n and c.centroids.shape == (k, 6)
    assert "WARNING" not in capfd.readouterr().err


def test_duplicate_points_and_k_equal_n():
    x = np.repeat(np.eye(3), 2, axis=0)  # 6 points, 3 directions
    c = spherical_kmeans(x, 3, seed=0)
    assert sorted(c.sizes.tolist()) == [2, 2, 2]
    assert np.allclose(c.similarities, 1.0, atol=1e-6)


def test_accepts_torch_input():
    x = _random(100, 6)
    a = spherical_kmeans(torch.from_numpy(x), 4, seed=2)
    b = spherical_kmeans(x, 4, seed=2)
    assert np.array_equal(a.assignments, b.assignments)


@pytest.mark.parametrize(
    "x, kwargs, match",
    [
        (np.ones((3, 4)), {"k": 4}, "k=4 clusters from 3 vectors"),
        (np.ones((3, 4)), {"k": 0}, "k must"),
        (np.ones((3, 4)), {"k": 2, "niter": 0}, "niter"),
        (np.ones((3, 4)), {"k": 2, "seed": -1}, "seed"),
        (np.ones((3, 4)), {"k": 2, "sparse_ratio": 1.0}, "sparse ratio"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), {"k": 1}, "row 1 is all zeros"),
        (np.array([[1.0, 0.0], [np.inf, 0.0]]), {"k": 1}, "row 1 has a NaN"),
        (np.ones(4), {"k": 1}, "2-D"),
    ],
)
def test_spherical_kmeans_errors(x, kwargs, match):
    with pytest.raises(ValueError, match=match):
        spherical_kmeans(x, **kwargs)


def _groups(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, d))
    return (centers[rng.integers(0, 8, n)] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)


def test_training_on_a_sample_still_assigns_every_point():
    from prismatic_assets.core.clustering import assign_to_centroids, spherical_kmeans

    x = _groups(3000)
    full = spherical_kmeans(x, 20, niter=5, seed=1)
    sampled = spherical_kmeans(x, 20, niter=5, seed=1, max_points_per_centroid=10)  # trains on 200 points
    assert not np.allclose(full.centroids, sampled.centroids)  # the parameter reaches faiss
    assert sampled.assignments.shape == (3000,) and sampled.sizes.sum() == 3000
    ids, sims = assign_to_centroids(x, sampled.centroids)
    assert np.array_equal(ids, sampled.assignments) and np.allclose(sims, sampled.similarities)
    with pytest.raises(ValueError, match="max_points_per_centroid"):
        spherical_kmeans(x, 20, max_points_per_centroid=0)


def test_assignment_in_batches_equals_one_search():
    from prismatic_assets.core.clustering import assign_to_centroids

    x = _groups(1000, seed=2)
    centroids = _groups(30, seed=3)
    one = assign_to_centroids(x, centroids, batch_size=10**6)
    batched = assign_to_centroids(x, centroids, batch_size=77)
    assert np.array_equal(one[0], batched[0]) and np.array_equal(one[1], batched[1])
    bad = x.copy()
    bad[500, 2] = np.inf
    with pytest.raises(ValueError, match="row 500 "):  # the row's index in the whole input, not in its batch
        assign_to_centroids(bad, centroids, batch_size=77)


def test_gpu_is_used_only_where_faiss_sees_one():
    from prismatic_assets.core.clustering import gpu_count, spherical_kmeans

    x = _groups(200)
    if gpu_count() == 0:
        with pytest.raises(ValueError, match="faiss-gpu"):
            spherical_kmeans(x, 4, gpu=True)
    assert spherical_kmeans(x, 4, gpu=False).sizes.sum() == 200


@pytest.mark.skipif(__import__("prismatic_assets.core.clustering", fromlist=["gpu_count"]).gpu_count() == 0,
                    reason="needs CUDA and faiss-gpu")
def test_gpu_and_cpu_clusterings_agree():
    from prismatic_assets.core.clustering import assign_to_centroids

    x = _groups(5000)
    centroids = _groups(50, seed=9)
    cpu = assign_to_centroids(x, centroids, gpu=False)
    gpu = assign_to_centroids(x, centroids, gpu=True)
    assert (cpu[0] == gpu[0]).mean() > 0.999 and np.allclose(cpu[1], gpu[1], atol=1e-4)


def test_unit_float32_rows_are_used_in_place_and_others_normalized_in_a_copy():
    from prismatic_assets.core.clustering import _unit_rows

    x = _groups(100)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert _unit_rows(unit, "vectors") is unit  # no (n, d) copy for vectors that are unit already
    before = x.copy()
    out = _unit_rows(x, "vectors")
    assert np.array_equal(x, before) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)


# ----------------------------------------------------------------------------- two-level k-means


@pytest.mark.parametrize("sizes, k, expected", [
    ([50, 30, 20], 10, [5, 3, 2]),  # exact shares
    ([50, 30, 20, 0], 10, [5, 3, 2, 0]),  # an empty group gets none
    ([60, 25, 15], 7, [4, 2, 1]),  # 4.2, 1.75, 1.05: the spare one to the largest remainder (0.75)
    ([97, 1, 1, 1], 5, [2, 1, 1, 1]),  # one per non-empty group first
    ([3, 3, 3], 9, [3, 3, 3]),  # one per point at most
    ([10, 1], 11, [10, 1]),
])
def test_split_clusters(sizes, k, expected):
    from prismatic_assets.core.clustering import split_clusters

    assert split_clusters(sizes, k).tolist() == expected


@pytest.mark.parametrize("sizes, k", [([5, 5, 5], 2), ([2, 1], 4)])
def test_split_clusters_refuses_impossible_splits(sizes, k):
    from prismatic_assets.core.clustering import split_clusters

    with pytest.raises(ValueError, match="cannot split"):
        split_clusters(sizes, k)


def test_two_level_recovers_well_separated_clusters():
    x, labels = _blobs(k=9, per=20, d=24)
    c = spherical_kmeans(x, 9, seed=0, method="two_level")  # 3 coarse groups, k split among them
    assert adjusted_rand_score(labels, c.assignments) == 1.0


@pytest.mark.parametrize("kwargs", [{"method": "two_level"}, {"method": "two_level", "coarse": 5},
                                    {"method": "two_level", "max_points_per_centroid": 8},
                                    {"max_points_per_centroid": 8}])
def test_cheaper_training_gives_unit_centroids_and_exact_nearest_assignments(kwargs):
    x = _groups(4000, d=16, seed=4)
    c = spherical_kmeans(x, 60, niter=8, seed=2, **kwargs)
    assert c.centroids.shape == (60, 16)
    np.testing.assert_allclose(np.linalg.norm(c.centroids, axis=1), 1.0, atol=1e-5)
    # Every point sits at its exact nearest centroid: checked by brute force in float64.
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn.astype(np.float64) @ c.centroids.astype(np.float64).T  # (N, K)
    best = sims.max(1)
    assert np.allclose(sims[np.arange(len(x)), c.assignments], best, atol=1e-5)
    assert np.allclose(c.similarities, best, atol=1e-5)
    assert c.sizes.tolist() == np.bincount(c.assignments, minlength=60).tolist()
    again = spherical_kmeans(x, 60, niter=8, seed=2, **kwargs)
    assert np.array_equal(again.centroids, c.centroids) and np.array_equal(again.assignments, c.assignments)


@pytest.mark.parametrize("change", [{"seed": 3}, {"coarse": 4}, {"niter": 2}, {"method": "flat"}, {"refine": 0},
                                    {"probe": 1}])
def test_two_level_settings_change_the_clustering(change):
    x = _groups(2000, seed=5)
    base = {"niter": 8, "seed": 2, "method": "two_level", "coarse": 6}
    a = spherical_kmeans(x, 40, **base)
    b = spherical_kmeans(x, 40, **{**base, **change})
    assert not np.allclose(a.centroids, b.centroids)


def test_two_level_objective_is_close_to_flat_and_refining_helps():
    from benchmarks.bench_kmeans import synthetic_pool

    x = synthetic_pool(6000, 64, seed=0)  # clusters of Zipf-like sizes, many cut by the coarse groups
    flat = spherical_kmeans(x, 60, niter=20, seed=0).similarities.mean()
    unrefined = spherical_kmeans(x, 60, niter=20, seed=0, method="two_level", refine=0).similarities.mean()
    refined = spherical_kmeans(x, 60, niter=20, seed=0, method="two_level").similarities.mean()
    # Mean cosine to the assigned centroid, relative to the flat k-means.
    assert refined > unrefined
    assert refined > 0.98 * flat


@pytest.mark.parametrize("kwargs, match", [({"method": "kmeans++"}, "method="), ({"coarse": 0}, "coarse"),
                                           ({"refine": -1}, "refine must"), ({"probe": 0}, "probe must"),
                                           ({"method": "two_level", "init_centroids": np.eye(4)[:2]}, "flat. only")])
def test_two_level_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spherical_kmeans(np.eye(4)[[0, 1, 2, 3, 0, 1]], 2, **kwargs)


def _brute_force_best(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, K) float64 cosines of the rows of x to the (unit) centroids."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    return xn.astype(np.float64) @ centroids.astype(np.float64).T


def test_probe_assignment_probing_every_group_is_the_exact_assignment():
    x = _groups(3000, d=16, seed=7)
    exact = spherical_kmeans(x, 48, niter=6, seed=1, method="two_level", coarse=6)
    probed = spherical_kmeans(x, 48, niter=6, seed=1, method="two_level", coarse=6, probe=6, assign="probe")
    sims = _brute_force_best(x, probed.centroids)
    np.testing.assert_allclose(probed.similarities, sims.max(1), atol=1e-5)
    assert np.array_equal(probed.sizes, np.bincount(sims.argmax(1), minlength=48))
    assert np.array_equal(exact.centroids, probed.centroids)  # the assignment does not change the training


def test_probe_assignment_is_approximate_but_consistent():
    x = _random(3000, d=12, seed=3)  # no cluster structure: many points sit near a group's edge
    exact = spherical_kmeans(x, 60, niter=6, seed=1, method="two_level", coarse=8, probe=1)
    probed = spherical_kmeans(x, 60, niter=6, seed=1, method="two_level", coarse=8, probe=1, assign="probe")
    assert np.array_equal(exact.centroids, probed.centroids)
    sims = _brute_force_best(x, probed.centroids)
    own = sims[np.arange(len(x)), probed.assignments]
    np.testing.assert_allclose(probed.similarities, own, atol=1e-5)  # the figure is the assigned centroid's
    assert (own <= sims.max(1) + 1e-6).all()
    missed = own < sims.max(1) - 1e-6  # points whose nearest centroid is listed under a group they did not probe
    assert 0 < missed.sum() < 0.5 * len(x)
    assert np.array_equal(missed, probed.assignments != exact.assignments)
    assert np.array_equal(probed.sizes, np.bincount(probed.assignments, minlength=60))
    assert np.array_equal(probed.sparse, sparse_cluster_mask(probed.sizes))


@pytest.mark.parametrize("kwargs, match", [({"assign": "ivf"}, "assign="),
                                           ({"assign": "probe"}, "needs method='two_level'")])
def test_probe_assignment_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spherical_kmeans(np.eye(4)[[0, 1, 2, 3, 0, 1]], 2, **kwargs)


@pytest.mark.parametrize("probe", [1, 2, 5])
def test_probe_search_takes_the_best_centroid_listed_under_the_groups_probed(probe):
    from prismatic_assets.core.clustering import _probe_search

    rng = np.random.default_rng(0)

    def unit(n, d=8):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    v, centroids, coarse = unit(400), unit(30), unit(5)
    ids, sims = _probe_search(v, centroids, coarse, probe)
    # Brute force, row by row: the row's group, the groups nearest to it (itself first), and
    # the best centroid among those whose nearest coarse centroid is one of them.
    for i, row in enumerate(v.astype(np.float64)):
        group = int(np.argmax(coarse @ row))
        nearness = coarse.astype(np.float64) @ coarse[group]
        nearness[group] = np.inf
        probed = set(np.argsort(-nearness, kind="stable")[:probe].tolist())
        listed = [j for j in range(30) if int(np.argmax(coarse @ centroids[j])) in probed]
        best = max(listed, key=lambda j: (float(centroids[j] @ row), -j))
        assert ids[i] == best, i
        assert sims[i] == pytest.approx(float(centroids[best] @ row), abs=1e-5)
    if probe == 5:  # every group probed: the exact nearest centroid
        assert np.array_equal(ids, np.argmax(v @ centroids.T, axis=1))


# ---- edges the mutation run found

def _unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class _FakeGpus:
    """faiss as a GPU build would look with `count` GPUs: the CPU does the work, the calls are recorded."""

    def __init__(self, monkeypatch, count: int):
        import faiss

        self.moved, self.kmeans_gpu = 0, []
        real_kmeans = faiss.Kmeans

        def to_gpus(index):
            self.moved += 1
            return index

        def kmeans(d, k, **kw):
            self.kmeans_gpu.append(kw.pop("gpu"))
            return real_kmeans(d, k, **kw)

        monkeypatch.setattr(faiss, "get_num_gpus", lambda: count, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_gpus, raising=False)
        monkeypatch.setattr(faiss, "Kmeans", kmeans)


def test_gpu_count_is_what_faiss_reports_and_0_without_gpu_support(monkeypatch):
    import faiss

    from prismatic_assets.core.clustering import gpu_count

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 3, raising=False)
    assert gpu_count() == 3
    monkeypatch.delattr(faiss, "get_num_gpus")
    assert gpu_count() == 0


def test_gpus_are_used_by_default_when_faiss_sees_some_and_never_with_gpu_false(monkeypatch):
    fake = _FakeGpus(monkeypatch, 2)
    x = _unit(60, 4)
    spherical_kmeans(x, 3, niter=2, seed=0)  # gpu=None: the GPUs faiss sees
    assert fake.kmeans_gpu == [True] and fake.moved == 1  # training, then the exact assignment
    assign_to_centroids(x, x[:3], gpu=True)
    assert fake.moved == 2
    spherical_kmeans(x, 3, niter=2, seed=0, gpu=False)
    assign_to_centroids(x, x[:3], gpu=False)
    assert fake.kmeans_gpu == [True, False] and fake.moved == 2


def test_without_gpus_the_default_runs_on_the_cpu(monkeypatch):
    fake = _FakeGpus(monkeypatch, 0)
    spherical_kmeans(_unit(60, 4), 3, niter=2, seed=0)
    assert fake.kmeans_gpu == [False] and fake.moved == 0


@pytest.mark.parametrize("n, ratio, minimum, expected", [
    (np.int64(1000), np.float32(0.01), np.int64(2), 10), (1000, 1, 2, 1000), (40, 0.0125, 1, 1), (50, 0.01, 1, 1),
    (7, 0.5, 1, 4),  # 3.5 rounds up
])
def test_num_clusters_accepts_numpy_numbers_and_rounds_half_up(n, ratio, minimum, expected):
    assert num_clusters(n, ratio, minimum) == expected
    assert type(num_clusters(n, ratio, minimum)) is int


@pytest.mark.parametrize("n, ratio, minimum, match", [
    (10, True, 2, "ratio must be in"), (10, "0.1", 2, "ratio must be in"), (10, 0.1, True, "minimum must be"),
    (10, 0.1, 1.0, "minimum must be"), (10, 0.1, -1, "minimum must be"), (True, 0.1, 2, "n must be"),
    (0, 0.1, 2, "n must be"),
])
def test_num_clusters_errors_name_the_argument(n, ratio, minimum, match):
    with pytest.raises(ValueError, match=match):
        num_clusters(n, ratio, minimum)


@pytest.mark.parametrize("sizes, ratio, expected", [
    ([5, 1, 3, 2], np.float64(0.5), [False, True, False, True]),
    ([5, 1, 3, 2], 0, [False, False, False, False]),
    (np.array([3, 1], dtype=np.uint8), 0.5, [False, True]),
    (np.array([3.0, 1.0], dtype=np.float32), 0.5, [False, True]),
])
def test_sparse_cluster_mask_accepts_numpy_counts_and_ratios(sizes, ratio, expected):
    assert sparse_cluster_mask(sizes, ratio).tolist() == expected


@pytest.mark.parametrize("sizes, ratio, match", [
    ([1, 2], True, "sparse ratio must be in"), ([1, 2], "0.5", "sparse ratio must be in"),
    ([np.inf, 2.0], 0.5, "integer counts"), (np.array([True, False]), 0.5, "integer counts"),
    (["1", "2"], 0.5, "integer counts"), ([-1.0, 2.0], 0.5, "non-negative"),
    ([[1, 2]], 0.5, "non-empty 1-D"), ([], 0.5, "non-empty 1-D"),
])
def test_sparse_cluster_mask_errors_name_the_problem(sizes, ratio, match):
    with pytest.raises(ValueError, match=match):
        sparse_cluster_mask(sizes, ratio)


def test_unit_rows_normalizes_rows_off_by_more_than_1e_6_and_keeps_the_callers_array():
    from prismatic_assets.core.clustering import _unit_rows

    x = _unit(50, 6).astype(np.float64) * (1 + 1e-5)  # float64: normalized in the float32 copy
    out = _unit_rows(x, "vectors")
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=2e-7)
    np.testing.assert_array_equal(x, _unit(50, 6).astype(np.float64) * (1 + 1e-5))
    y = _unit(50, 6) * np.float32(3.0)  # float32 C-contiguous: scaled into a new array
    before = y.copy()
    np.testing.assert_allclose(np.linalg.norm(_unit_rows(y, "vectors"), axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(y, before)
    fortran = np.asfortranarray(_unit(50, 6) * np.float32(2.0))
    assert _unit_rows(fortran, "vectors").flags.c_contiguous


def test_unit_rows_names_the_first_bad_row_and_the_input():
    from prismatic_assets.core.clustering import _unit_rows

    x = _unit(6, 3)
    x[2] = 0.0
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="init_centroids row 14 has a NaN"):  # non-finite is checked first
        _unit_rows(x, "init_centroids", offset=10)
    x[4] = 1.0
    with pytest.raises(ValueError, match="vectors row 2 is all zeros"):
        _unit_rows(x, "vectors")


def test_assign_to_centroids_takes_lists_and_empty_arrays_keep_their_dtypes():
    ids, sims = assign_to_centroids([[0.0, 2.0], [3.0, 0.1]], [[1.0, 0.0], [0.0, 1.0]])
    assert ids.tolist() == [1, 0] and ids.dtype == np.int64 and sims.dtype == np.float32
    ids, sims = assign_to_centroids(np.zeros((0, 2), dtype=np.float32), np.eye(2))
    assert ids.dtype == np.int64 and sims.dtype == np.float32
    with pytest.raises(ValueError, match="vectors have width 3 but centroids have 2"):
        assign_to_centroids([[1.0, 0.0, 0.0]], np.eye(2))


@pytest.mark.parametrize("kwargs", [
    {"k": np.int64(2)}, {"k": 6}, {"k": 2, "niter": 1}, {"k": 2, "seed": 2**31 - 1}, {"k": 2, "seed": np.int64(3)},
    {"k": 2, "max_points_per_centroid": 1}, {"k": 2, "method": "two_level", "coarse": 1},
    {"k": 4, "method": "two_level", "coarse": 2, "refine": 0, "probe": 1},
    {"k": 4, "method": "two_level", "refine": np.int64(1), "probe": np.int64(2), "coarse": np.int64(2)},
])
def test_spherical_kmeans_accepts_each_settings_least_value_and_numpy_integers(kwargs):
    x = _unit(6, 3)
    c = spherical_kmeans(x, **kwargs)
    assert c.sizes.sum() == 6 and c.centroids.shape == (int(kwargs["k"]), 3)
    assert (type(c.k), type(c.niter), type(c.seed), type(c.sparse_ratio)) == (int, int, int, float)


@pytest.mark.parametrize("kwargs, match", [
    ({"k": True}, "k must"), ({"k": 2.0}, "k must"),
    ({"k": 2, "niter": True}, "niter"), ({"k": 2, "niter": 2.0}, "niter"),
    ({"k": 2, "seed": 2**31}, "seed"), ({"k": 2, "seed": True}, "seed"), ({"k": 2, "seed": 1.0}, "seed"),
    ({"k": 2, "max_points_per_centroid": True}, "max_points_per_centroid"),
    ({"k": 2, "max_points_per_centroid": 2.0}, "max_points_per_centroid"),
    ({"k": 2, "coarse": True}, "coarse"), ({"k": 2, "coarse": 2.0}, "coarse"),
    ({"k": 2, "refine": True}, "refine must be a non-negative integer, got True"),
    ({"k": 2, "refine": 1.0}, "refine must"), ({"k": 2, "probe": True}, "probe must be a positive integer, got True"),
    ({"k": 2, "probe": 1.0}, "probe must"), ({"k": 2, "probe": -1}, "probe must"),
])
def test_spherical_kmeans_refuses_bools_floats_and_out_of_range_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        spherical_kmeans(_unit(6, 3), **kwargs)


def test_spherical_kmeans_prints_nothing(capfd):
    spherical_kmeans(_unit(300, 4), 3, niter=3, seed=0)
    spherical_kmeans(_unit(300, 4), 9, niter=3, seed=0, method="two_level")
    out, err = capfd.readouterr()
    assert out == "" and "WARNING" not in err


def test_training_uses_every_point_by_default_even_above_256_per_centroid():
    """The paper's k-means: at convergence each centroid is the normalized mean of all its members,
    also when faiss would subsample (it keeps 256 points per centroid unless told otherwise)."""
    x, _ = _blobs(k=2, per=700, d=6, noise=0.6, seed=3)
    c = spherical_kmeans(x, 2, niter=60, seed=0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    for j in range(2):
        mean = unit[c.assignments == j].mean(axis=0)
        np.testing.assert_allclose(c.centroids[j], mean / np.linalg.norm(mean), atol=1e-4)


def test_two_level_with_one_cluster_per_point_makes_each_point_a_centroid():
    x = _unit(12, 5, seed=2)
    c = spherical_kmeans(x, 12, method="two_level", coarse=3, refine=0)
    assert sorted(c.sizes.tolist()) == [1] * 12
    np.testing.assert_allclose(c.similarities, 1.0, atol=1e-6)
    np.testing.assert_allclose(np.sort(c.centroids, axis=0), np.sort(x, axis=0), atol=1e-6)


def test_two_level_default_coarse_groups_are_about_sqrt_k(monkeypatch):
    import prismatic_assets.core.clustering as clustering

    trained = []
    real = clustering._train

    def record(v, k, *args, **kw):
        trained.append(k)
        return real(v, k, *args, **kw)

    monkeypatch.setattr(clustering, "_train", record)
    x = _groups(2000, seed=1)
    spherical_kmeans(x, 2, niter=2, method="two_level")  # round(sqrt(2)) = 1 group: one flat k-means
    assert trained == [2]
    trained.clear()
    spherical_kmeans(x, 16, niter=2, method="two_level", refine=0)  # 4 groups, then 16 split among them
    assert trained[0] == 4 and sum(trained[1:]) == 16
    trained.clear()
    spherical_kmeans(x, 3, niter=2, method="two_level", coarse=10, refine=0)  # at most k groups
    assert trained[0] == 3


def _lloyd_reference(v, centroids):
    """One spherical Lloyd step by brute force in float64: nearest centroid, then the normalized mean."""
    v64 = v.astype(np.float64)
    nearest = np.argmax(v64 @ centroids.astype(np.float64).T, axis=1)
    out = centroids.astype(np.float64).copy()
    for j in range(len(centroids)):
        if (nearest == j).any():
            mean = v64[nearest == j].sum(axis=0)
            out[j] = mean / np.linalg.norm(mean)
    return out


def test_lloyd_step_moves_each_centroid_to_its_members_normalized_mean_and_keeps_an_empty_one(monkeypatch):
    import prismatic_assets.core.clustering as clustering

    v = _unit(300, 5, seed=4)
    centroids = np.concatenate([_unit(6, 5, seed=5), -np.ones((1, 5), dtype=np.float32) / np.sqrt(5)])
    v = v[(v @ centroids[:6].T).max(axis=1) > v @ centroids[6] + 1e-3]  # no point nearest the last centroid
    coarse = _unit(3, 5, seed=6)
    groups, _ = assign_to_centroids(v, coarse)
    expected = _lloyd_reference(v, centroids)
    assert np.array_equal(expected[6], centroids[6].astype(np.float64))
    stepped = clustering._lloyd_step(v, centroids, coarse, 3, groups)  # probing every group: exact
    np.testing.assert_allclose(stepped, expected, atol=1e-6)
    monkeypatch.setattr(clustering, "ASSIGN_BATCH", 7)  # the sums in several batches: the same result
    np.testing.assert_allclose(clustering._lloyd_step(v, centroids, coarse, 3, groups), expected, atol=1e-6)


def test_probe_search_in_small_blocks_gives_the_same_answer(monkeypatch):
    import prismatic_assets.core.clustering as clustering

    v, centroids, coarse = _unit(500, 6, seed=7), _unit(40, 6, seed=8), _unit(4, 6, seed=9)
    whole = clustering._probe_search(v, centroids, coarse, 2)
    monkeypatch.setattr(clustering, "PROBE_BLOCK", 50)  # a few rows at a time (50 // candidates)
    blocked = clustering._probe_search(v, centroids, coarse, 2)
    assert np.array_equal(whole[0], blocked[0])
    np.testing.assert_allclose(whole[1], blocked[1], atol=1e-6)  # BLAS may round a block differently
    monkeypatch.setattr(clustering, "PROBE_BLOCK", 1)  # fewer similarities than candidates: one row at a time
    one = clustering._probe_search(v, centroids, coarse, 4)
    assert np.array_equal(one[0], np.argmax(v @ centroids.T, axis=1))


def test_probe_search_of_a_group_without_listed_centroids_searches_them_all():
    from prismatic_assets.core.clustering import _probe_search

    coarse = np.eye(3, dtype=np.float32)
    centroids = np.array([[1.0, 0.2, 0.0], [1.0, -0.2, 0.0]], dtype=np.float32)  # both listed under group 0
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    v = np.array([[0.0, 1.0, 0.1], [0.1, -0.2, 1.0]], dtype=np.float32)  # groups 1 and 2, probing only themselves
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids, sims = _probe_search(v, centroids, coarse, 1)
    assert ids.tolist() == [0, 1]
    np.testing.assert_allclose(sims, (v @ centroids.T).max(axis=1), atol=1e-6)
