"""Spherical k-means at its edges: K split among coarse groups (largest remainders, checked
against a hand computation and as properties), given starting centroids, inputs as torch
tensors, the names in input errors, empty and mismatched inputs, the documented defaults, a
single-member centroid in a refine step, and a pinned two-level clustering (the same seed
must give the same clusters in every version)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic_assets.core import clustering as C
from prismatic_assets.core.clustering import assign_to_centroids, spherical_kmeans, split_clusters


@pytest.mark.parametrize("sizes, k, want", [
    ([5, 3, 2], 5, [3, 1, 1]),  # shares 2.5, 1.5, 1.0: the tied remainders go to the lower index
    ([0, 4, 4], 2, [0, 1, 1]),  # an empty group gets none
    ([10, 1, 1], 3, [1, 1, 1]),  # every non-empty group at least one: taken from the over-served
    ([1, 1, 8], 5, [1, 1, 3]),
    ([1, 2, 7], 7, [1, 1, 5]),  # shares .7, 1.4, 4.9: the full first group takes no more
    ([2, 2, 6], 9, [2, 2, 5]),
    ([3, 1, 1], 5, [3, 1, 1]),  # one cluster per point
    ([4, 3, 9, 10, 1], 6, [1, 1, 1, 2, 1]),  # one too many: taken from the group of 2 most over its share
    ([1, 1, 1, 13, 13], 7, [1, 1, 1, 2, 2]),  # shares .24 x3, 3.14 x2: 3 + 3 is 2 too many, one from each
])
def test_k_is_split_by_largest_remainders_within_each_groups_size(sizes, k, want):
    assert split_clusters(sizes, k).tolist() == want


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 30), min_size=1, max_size=8), data=st.data())
def test_a_split_sums_to_k_and_gives_each_group_between_one_and_its_size(sizes, data):
    nonempty = sum(s > 0 for s in sizes)
    if nonempty == 0:
        return
    k = data.draw(st.integers(nonempty, sum(sizes)))
    counts = split_clusters(sizes, k)
    assert counts.dtype == np.int64 and counts.sum() == k
    for s, c in zip(sizes, counts.tolist()):
        assert (c == 0) if s == 0 else (1 <= c <= s)


def _blobs(n: int = 60, d: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[rng.integers(0, d, n)]
    return (centers + 0.2 * rng.normal(size=(n, d))).astype(np.float32)


def test_given_starting_centroids_one_iteration_is_one_lloyd_step_from_them():
    x = _blobs()
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    init = u[[0, 1, 2]] * 3.0  # any length: normalized like the rows
    got = spherical_kmeans(x, 3, niter=1, init_centroids=init)
    nearest = np.argmax(u @ (init / 3.0).T, axis=1)
    want = np.stack([u[nearest == j].sum(axis=0) for j in range(3)])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.allclose(got.centroids, want, atol=1e-5)


def test_input_errors_name_the_argument_and_the_row():
    x = _blobs(10)
    bad = x.copy()
    bad[2] = 0
    with pytest.raises(ValueError, match=r"^vectors row 2 is all zeros"):
        spherical_kmeans(bad, 2)
    init = x[:2].copy()
    init[1] = np.nan
    with pytest.raises(ValueError, match=r"^init_centroids row 1 has a NaN"):
        spherical_kmeans(x, 2, init_centroids=init)
    with pytest.raises(ValueError, match=r"^init_centroids must have shape \(k, d\) = \(3, 5\), got \(2, 5\)"):
        spherical_kmeans(x, 3, init_centroids=x[:2])
    with pytest.raises(ValueError, match=r"^vectors must be a 2-D \(n, d\) array, got shape \(4, 0\)"):
        spherical_kmeans(np.zeros((4, 0), np.float32), 2)


def test_rows_too_large_for_float32_squares_are_still_unit_rows():
    got = C._unit_rows(np.full((2, 4), 1e20, np.float32), "vectors")
    assert np.allclose(got, 0.5)


def test_a_width_mismatch_is_named_before_any_row_is_read():
    with pytest.raises(ValueError, match=r"^vectors have width 5 but centroids have 4: project both"):
        assign_to_centroids(np.zeros((3, 5), np.float32), np.eye(4, dtype=np.float32)[:2])


def test_one_dimensional_vectors_are_valid():
    got = spherical_kmeans(np.array([[1.0], [2.0], [-1.0], [-3.0]], np.float32), 2, seed=0)
    assert sorted(got.sizes.tolist()) == [2, 2]


def test_torch_tensors_are_read_even_with_gradients_or_in_bfloat16():
    x = _blobs(20)
    want = spherical_kmeans(x, 2, seed=3)
    for tensor in (torch.tensor(x, requires_grad=True), torch.tensor(x).to(torch.bfloat16)):
        got = spherical_kmeans(tensor, 2, seed=3)
        assert got.sizes.sum() == 20
        if tensor.dtype == torch.float32:
            assert got.assignments.tolist() == want.assignments.tolist()
    ids, _ = assign_to_centroids(torch.tensor(x, requires_grad=True), torch.tensor(want.centroids))
    assert ids.tolist() == want.assignments.tolist()


def test_assigning_no_rows_gives_empty_results_but_still_checks_the_width():
    centroids = np.eye(4, dtype=np.float32)[:2]
    ids, sims = assign_to_centroids(np.zeros((0, 4), np.float32), centroids)
    assert (ids.dtype, sims.dtype, len(ids), len(sims)) == (np.int64, np.float32, 0, 0)
    with pytest.raises(ValueError) as err:
        assign_to_centroids(np.zeros((0, 5), np.float32), centroids)
    assert str(err.value) == "vectors have width 5 but centroids have 4"
    ids, _ = assign_to_centroids([[1.0, 0, 0, 0], [0, 0.5, 0, 0]], centroids)  # a list: no .shape
    assert ids.tolist() == [0, 1]


def test_the_defaults_are_the_documented_ones():
    x = _blobs(80, seed=2)
    flat = spherical_kmeans(x, 4)
    same = spherical_kmeans(x, 4, niter=20, seed=0)
    assert np.array_equal(flat.centroids, same.centroids) and (flat.niter, flat.seed) == (20, 0)
    two = spherical_kmeans(x, 9, method="two_level", coarse=3)
    spelled = spherical_kmeans(x, 9, method="two_level", coarse=3, refine=3, probe=16, niter=20, seed=0)
    assert np.array_equal(two.centroids, spelled.centroids)


def test_two_level_takes_the_largest_seed_and_one_group_is_the_flat_k_means():
    x = _blobs(120, d=6, seed=5)
    top = spherical_kmeans(x, 8, method="two_level", coarse=2, seed=2**31 - 1)  # group seeds wrap to 0, 1
    assert top.sizes.sum() == 120
    one = spherical_kmeans(x, 4, method="two_level", coarse=1, seed=3, max_points_per_centroid=5)
    flat = spherical_kmeans(x, 4, seed=3, max_points_per_centroid=5)
    assert np.array_equal(one.centroids, flat.centroids)
    assert not np.array_equal(flat.centroids, spherical_kmeans(x, 4, seed=3).centroids)  # the cap matters here


def test_one_gpu_is_enough_to_use_it(monkeypatch):
    monkeypatch.setattr(C, "gpu_count", lambda: 1)
    assert C._use_gpu(None) is True and C._use_gpu(False) is False
    monkeypatch.setattr(C, "gpu_count", lambda: 0)
    assert C._use_gpu(None) is False


def test_a_refine_step_moves_a_centroid_with_one_member_onto_it():
    v = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    centroids = np.array([[0.8, -0.6], [0.6, 0.8]], np.float32)  # point 0 alone nearest the first
    out = C._lloyd_step(v, centroids, np.array([[1.0, 0.0]], np.float32), probe=1,
                        point_groups=np.zeros(3, np.int64))
    assert out[0].tolist() == [1.0, 0.0]
    mean = v[1] + v[2]
    assert np.allclose(out[1], mean / np.linalg.norm(mean))


def test_a_probe_search_gives_float32_similarities_like_the_exact_one():
    x = _blobs(200, d=8, seed=4)
    got = spherical_kmeans(x, 16, method="two_level", coarse=4, assign="probe")
    exact = spherical_kmeans(x, 16, method="two_level", coarse=4)
    assert got.similarities.dtype == exact.similarities.dtype == np.float32


def test_an_empty_coarse_group_between_others_still_gives_k_centroids():
    # Three distinct directions, four coarse groups: with seed 1 the coarse k-means leaves its
    # group 1 empty, and the groups after it must still get their clusters.
    rng = np.random.default_rng(1)
    x = np.repeat(np.eye(8, dtype=np.float32)[:3], 30, axis=0)[rng.permutation(90)]
    _, _, groups = C._two_level_centroids(x, 12, 20, 1, 4, None, False, 0, 1)
    assert np.bincount(groups, minlength=4).tolist() == [30, 0, 30, 30]
    got = spherical_kmeans(x, 12, method="two_level", coarse=4, seed=1, refine=0)
    assert got.centroids.shape == (12, 8) and got.sizes.sum() == 90
    assert {int(a) for a in got.assignments} <= set(range(12))


def test_probed_groups_that_tie_go_to_the_lower_index():
    # 20 orthogonal coarse centroids: every other group is equally near group 5, so its three
    # probed groups are 5 itself, then 0 and 1 (not any other pair of the tied ones). One
    # centroid is listed under each group but 5, each leaning towards e5 a little more than
    # the one before, so the row e5 lands on the best centroid of groups 0 and 1: group 1's.
    coarse = np.eye(20, dtype=np.float32)
    others = [j for j in range(20) if j != 5]
    centroids = np.stack([0.8 * coarse[j] + (0.1 + 0.02 * j) * coarse[5] for j in others])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    ids, _ = C._probe_search(coarse[5:6], centroids, coarse, probe=3)
    assert others[int(ids[0])] == 1


def test_a_pinned_two_level_clustering_stays_the_same_for_the_same_seed():
    x = _blobs(400, d=8, seed=7)
    got = spherical_kmeans(x, 12, method="two_level", coarse=3, seed=5, max_points_per_centroid=20)
    digest = hashlib.sha256(got.assignments.astype(np.int64).tobytes()).hexdigest()[:16]
    assert (got.sizes.tolist(), digest) == PINNED_TWO_LEVEL


PINNED_TWO_LEVEL = ([38, 29, 32, 12, 50, 18, 19, 51, 53, 24, 24, 50], "f95f3404e6201b39")
