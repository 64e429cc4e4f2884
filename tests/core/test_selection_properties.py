"""Properties of the balanced quotas and of the cluster-balanced draw (Hypothesis).

A quota vector is right when it sums to k, never exceeds a cluster's size, and is as even
as the sizes allow: a cluster that could take more never has two or more picks fewer than
another cluster (water-filling). These three facts determine the quotas up to which of the
largest clusters get the leftover picks.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic_assets.core.selection import balanced_quotas, select_cluster_balanced


@st.composite
def sizes_and_k(draw):
    sizes = draw(st.lists(st.integers(0, 25), min_size=1, max_size=30).filter(lambda s: sum(s) > 0))
    k = draw(st.integers(1, sum(sizes)))
    return sizes, k


@settings(max_examples=100, deadline=None)
@given(case=sizes_and_k(), seed=st.integers(0, 2**31 - 1))
def test_quotas_sum_to_k_stay_within_each_cluster_and_are_even(case, seed):
    sizes, k = case
    quotas = balanced_quotas(sizes, k, seed)
    assert quotas.shape == (len(sizes),)
    assert int(quotas.sum()) == k
    for q, size in zip(quotas.tolist(), sizes):
        assert 0 <= q <= size
    for i, (qi, si) in enumerate(zip(quotas.tolist(), sizes)):
        if qi < si:  # cluster i could take more: nobody may have 2+ more than it
            assert max(quotas.tolist()) <= qi + 1, (i, sizes, quotas.tolist())
    np.testing.assert_array_equal(balanced_quotas(sizes, k, seed), quotas)  # seeded


@settings(max_examples=100, deadline=None)
@given(case=sizes_and_k())
def test_quotas_reach_the_water_level_of_a_direct_search(case):
    sizes, k = case
    # The level by linear search: the largest L with sum(min(size, L)) <= k.
    level = max(level for level in range(max(sizes) + 1) if sum(min(s, level) for s in sizes) <= k)
    quotas = balanced_quotas(sizes, k, 0).tolist()
    for q, size in zip(quotas, sizes):
        assert q == size if size <= level else q in (level, level + 1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 60), d=st.integers(2, 5), data=st.data(), seed=st.integers(0, 1000))
def test_the_cluster_balanced_draw_takes_each_clusters_quota_and_interleaves(n, d, data, seed):
    k = data.draw(st.integers(1, n))
    vectors = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    sel = select_cluster_balanced(vectors, k, seed=seed, niter=5)
    picks = sel.indices.tolist()
    assert len(picks) == k == len(set(picks)) and all(0 <= i < n for i in picks)
    per_cluster = np.bincount(sel.clusters, minlength=len(sel.quotas))
    np.testing.assert_array_equal(per_cluster, sel.quotas)
    assert int(sel.quotas.sum()) == k and (sel.quotas <= sel.cluster_sizes).all()
    # Every prefix is balanced too: after the first j picks, no cluster that still had
    # members to give trails another by more than one.
    for j in range(1, k + 1):
        counts = np.bincount(sel.clusters[:j], minlength=len(sel.quotas))
        open_ = counts < sel.quotas
        if open_.any():
            assert counts.max() <= counts[open_].min() + 1
