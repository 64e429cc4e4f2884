"""Study set draws at their edges: the parsed designs, the drawing order, which families and
levels a span takes (most rows left first, the minimum over the chosen families for levels),
quotas, exact-size pools, overlapping draws, the vector designs against the selection
functions they call, and each PoolTooSmall message word for word. A pinned draw guards
reproducibility: the same study seed must give the same sets in every version."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from prismatic_assets.core.selection import cluster_in_batches, select_cluster_balanced, select_greedy
from prismatic_assets.core.study_sets import (
    Design,
    PoolTooSmall,
    _order,
    draw_label_sets,
    draw_vector_sets,
    parse_designs,
)

FORMS = "span:F:L (F, L: a count or 'all'), random:S, cluster-balanced, greedy, single-cluster"


def test_designs_parse_case_and_space_insensitively_into_their_kinds():
    assert parse_designs([" SPAN:2:all ", "Random", "random:7", "greedy", "span:1:1", "single-cluster",
                          "cluster-balanced"]) == [
        Design("span:2:all", "span", 2, None), Design("random", "random", seed=0), Design("random:7", "random", seed=7),
        Design("greedy", "greedy"), Design("span:1:1", "span", 1, 1), Design("single-cluster", "single-cluster"),
        Design("cluster-balanced", "cluster-balanced")]


@pytest.mark.parametrize("specs, key, message", [
    (["span:0:1"], None, "study.designs: 'span:0:1': the number of families must be a positive integer or 'all'; "
                         f"forms: {FORMS}"),
    (["span:1:x"], None, f"study.designs: 'span:1:x': the number of levels must be a positive integer or 'all'; "
                         f"forms: {FORMS}"),
    (["span:2:0"], "arms.sets", f"arms.sets: 'span:2:0': the number of levels must be a positive integer or 'all'; "
                                f"forms: {FORMS}"),
    (["spin"], None, f"study.designs: unknown design 'spin'; forms: {FORMS}"),
])
def test_bad_designs_name_the_setting_the_text_and_the_forms(specs, key, message):
    with pytest.raises(ValueError) as err:
        parse_designs(specs) if key is None else parse_designs(specs, key=key)
    assert str(err.value) == message


def test_drawing_order_is_narrow_spans_first_then_random_then_gradient_designs():
    designs = parse_designs(["greedy", "span:1:3", "random:2", "span:2:1", "span:all:all", "random", "single-cluster"])
    # spans by F x L: span:2:1 (2) < span:1:3 (3) < span:all:all (3 x 2 = 6); then random, then gradients, each
    # in the order written
    assert _order(designs, 3, 2) == [3, 1, 4, 2, 5, 0, 6]


def _pool():
    """18 rows. Families by rows: zeta 10, mid 6, alpha 2 (names sort against counts); levels 0 and 3:
    (zeta, 3): 7, (zeta, 0): 3, (mid, 0): 4, (mid, 3): 2, (alpha, 0): 1, (alpha, 3): 1."""
    cells = [("zeta", 3)] * 7 + [("zeta", 0)] * 3 + [("mid", 0)] * 4 + [("mid", 3)] * 2 + [("alpha", 0), ("alpha", 3)]
    order = np.random.default_rng(1).permutation(len(cells))
    cells = [cells[i] for i in order]
    return [c[0] for c in cells], [c[1] for c in cells]


def _cells(families, levels, members) -> Counter:
    return Counter((families[i], levels[i]) for i in members)


def test_a_span_takes_the_families_with_most_rows_and_the_levels_all_of_them_can_fill():
    families, levels = _pool()
    one, two, wide = draw_label_sets(parse_designs(["span:1:1", "span:2:1", "span:2:2"]), families, levels, 4,
                                     disjoint=False, seed=0)
    assert one.details == {"families": ["zeta"], "levels": [3]}  # zeta has 10 rows, its level 3 has 7
    assert _cells(families, levels, one.members) == {("zeta", 3): 4}
    # zeta and mid; level 0 leaves min(3, 4) = 3 in both, level 3 min(7, 2) = 2: level 0
    assert two.details == {"families": ["zeta", "mid"], "levels": [0]}
    assert _cells(families, levels, two.members) == {("zeta", 0): 2, ("mid", 0): 2}
    # 4 samples over 4 pairs: one each (pairs == set_size is allowed)
    assert wide.details == {"families": ["zeta", "mid"], "levels": [0, 3]}
    assert _cells(families, levels, wide.members) == {("zeta", 0): 1, ("zeta", 3): 1, ("mid", 0): 1, ("mid", 3): 1}


def test_a_spans_remainder_goes_to_the_slices_with_most_rows_left():
    families, levels = _pool()
    (drawn,) = draw_label_sets(parse_designs(["span:2:1"]), families, levels, 5, disjoint=False, seed=0)
    assert len(drawn.members) == len(set(drawn.members.tolist())) == 5
    assert _cells(families, levels, drawn.members) == {("mid", 0): 3, ("zeta", 0): 2}  # mid has 4 left, zeta 3


def test_disjoint_spans_take_what_the_earlier_ones_left():
    families, levels = _pool()
    first, second = draw_label_sets(parse_designs(["span:1:1", "span:1:all"]),
                                    families, levels, 5, disjoint=True, seed=0)
    assert first.details == {"families": ["zeta"], "levels": [3]}
    # drawn second (1 x 2 pairs): zeta keeps 2 + 3 rows, mid 6: mid, 3 from level 0 (4 left), 2 from level 3
    assert second.details == {"families": ["mid"], "levels": [0, 3]}
    assert _cells(families, levels, second.members) == {("mid", 0): 3, ("mid", 3): 2}
    assert not set(first.members.tolist()) & set(second.members.tolist())


def test_rows_without_a_level_count_as_level_0():
    (drawn,) = draw_label_sets(parse_designs(["span:1:all"]), ["a"] * 3 + ["b"] * 2, [None] * 5, 2,
                               disjoint=False, seed=0)
    assert drawn.details == {"families": ["a"], "levels": [0]}


def test_pinned_draws_stay_the_same_for_the_same_seed():
    families, levels = _pool()
    drawn = draw_label_sets(parse_designs(["span:2:2", "random:3", "span:1:1", "random"]), families, levels, 4,
                            disjoint=True, seed=9)
    assert {d.name: d.members.tolist() for d in drawn} == PINNED
    other = draw_label_sets(parse_designs(["span:2:2", "random:3", "span:1:1", "random"]), families, levels, 4,
                            disjoint=True, seed=10)
    assert {d.name: d.members.tolist() for d in other} != PINNED


PINNED = {"span:1:1": [9, 10, 12, 17], "span:2:2": [1, 5, 7, 16], "random:3": [0, 2, 11, 13], "random": [3, 4, 6, 8]}


def test_random_sets_are_seeded_draws_of_the_asked_size_that_may_overlap_without_disjoint():
    designs = parse_designs(["random:1", "random:2", "greedy", "single-cluster"])
    drawn = draw_label_sets(designs, ["f"] * 3, [0] * 3, 3, disjoint=False, seed=0)  # pool = set size: all of it
    assert [(d.name, d.design, d.members.tolist(), d.details) for d in drawn] == [
        ("random:1", designs[0], [0, 1, 2], {"seed": 1}), ("random:2", designs[1], [0, 1, 2], {"seed": 2})]
    assert draw_label_sets(parse_designs(["random"]), ["f"] * 2, [0] * 2, 2, disjoint=True, seed=0)[0].members \
        .tolist() == [0, 1]  # a set of 2 is allowed


def test_gradient_designs_are_checked_against_what_the_label_sets_leave():
    designs = parse_designs(["random", "greedy", "single-cluster"])
    draw_label_sets(designs, ["f"] * 9, [0] * 9, 3, disjoint=True, seed=0)  # 3 + 2 x 3 = 9: exactly enough
    with pytest.raises(PoolTooSmall) as err:
        draw_label_sets(designs, ["f"] * 8, [0] * 8, 3, disjoint=True, seed=0)
    assert str(err.value) == ("designs ['greedy', 'single-cluster'] need 6 samples but only 5 are left after the sets "
                              "drawn before it (random); the pool holds 8 samples: raise study.pool_size or lower "
                              "study.set_size")


@pytest.mark.parametrize("designs, n, disjoint, message", [
    (["random:1"], 2, True, "design 'random:1' needs 3 samples but only 2 are left; the pool holds 2 samples: fix it"),
    (["random:1", "random:2", "random:3"], 7, True,
     "design 'random:3' needs 3 samples but only 1 are left after the sets drawn before it (random:1, random:2); "
     "the pool holds 7 samples: fix it"),
    (["random:1", "random:2"], 2, False, "design 'random:1' needs 3 samples but only 2 are left; the pool holds 2 "
                                         "samples: fix it"),
])
def test_a_pool_too_small_says_which_design_after_which_sets_and_the_fix(designs, n, disjoint, message):
    with pytest.raises(PoolTooSmall) as err:
        draw_label_sets(parse_designs(designs), ["f"] * n, [0] * n, 3, disjoint=disjoint, seed=0, fix="fix it")
    assert str(err.value) == message


def test_labels_that_are_missing_or_too_few_are_refused_with_the_counts():
    with pytest.raises(ValueError) as err:
        draw_label_sets(parse_designs(["span:1:1", "random"]), ["a", None, "b", None, "c"], [0] * 5, 2,
                        disjoint=False, seed=0)
    assert "study.designs ['span:1:1'] draw by family, but 2 of 5 pool samples have no family" in str(err.value)
    with pytest.raises(ValueError, match="study.set_size=1: a set needs at least 2 samples"):
        draw_label_sets(parse_designs(["random"]), ["a"] * 3, [0] * 3, 1, disjoint=False, seed=0)


# --------------------------------------------------------------------------- gradient designs


def _vectors(n: int, d: int = 6, seed: int = 0) -> np.ndarray:
    """Three tight groups of unit vectors, sizes 3 : 2 : 1 of n."""
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[:3]
    group = np.array([0] * (n // 2) + [1] * (n // 3) + [2] * (n - n // 2 - n // 3))
    x = centers[group] + 0.05 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _vectors_of(all_vectors: np.ndarray, without: frozenset = frozenset()):
    def vectors_of(rows: np.ndarray):
        kept = np.array([r for r in rows if r not in without], dtype=np.int64)
        return kept, all_vectors[kept]
    return vectors_of


def test_the_gradient_designs_are_the_selection_functions_on_the_free_candidates():
    x = _vectors(30)
    designs = parse_designs(["random", "cluster-balanced", "greedy", "single-cluster"])
    drawn = draw_label_sets(designs, ["f"] * 30, [0] * 30, 4, disjoint=True, seed=5)
    sets = draw_vector_sets(designs, drawn, 30, _vectors_of(x), 4, disjoint=True, seed=5, n_clusters=3)
    assert [s.name for s in sets] == ["random", "cluster-balanced", "greedy", "single-cluster"]
    assert all(s.design == d for s, d in zip(sets, designs))
    free = np.setdiff1d(np.arange(30), sets[0].members)
    balanced = select_cluster_balanced(x[free], 4, seed=5, n_clusters=3)
    assert balanced.quotas is not None
    assert sets[1].members.tolist() == sorted(free[balanced.indices].tolist())
    assert sets[1].details == {"n_clusters": 3, "quotas": balanced.quotas.tolist()}
    free = np.setdiff1d(free, sets[1].members)
    greedy = select_greedy(x[free], 4, seed=5)
    assert sets[2].members.tolist() == sorted(free[greedy.indices].tolist())
    assert sets[2].details == {"alpha": greedy.params["alpha"]} and greedy.params["alpha"] is not None
    free = np.setdiff1d(free, sets[2].members)
    clustering = cluster_in_batches(x[free], 3, seed=5)
    largest = int(np.argmax(clustering.sizes))
    sim = x[free] @ clustering.centroids[largest]
    nearest = np.argsort(-sim, kind="stable")[:4]
    assert sets[3].members.tolist() == sorted(free[nearest].tolist())
    assert sets[3].details == {"n_clusters": 3, "cluster": largest, "cluster_size": int(clustering.sizes[largest]),
                               "min_similarity": pytest.approx(float(sim[nearest].min()))}
    for s in sets:
        assert s.members.dtype == np.int64 and len(s.members) == 4


def test_the_default_number_of_clusters_is_about_the_root_of_the_candidates_and_at_least_2():
    designs = parse_designs(["cluster-balanced", "single-cluster"])
    for n, k in ((4, 2), (9, 3), (30, 5)):
        sets = draw_vector_sets(designs, [], n, _vectors_of(_vectors(n)), 2, disjoint=False, seed=0)
        assert [s.details["n_clusters"] for s in sets] == [k, k]
        assert len(sets[0].details["quotas"]) == k


def test_a_gradient_design_may_take_exactly_the_candidates_left_and_overlap_without_disjoint():
    x = _vectors(6)
    designs = parse_designs(["greedy", "single-cluster"])
    sets = draw_vector_sets(designs, [], 6, _vectors_of(x, frozenset({0, 1})), 4, disjoint=False, seed=0)
    assert [s.members.tolist() for s in sets] == [[2, 3, 4, 5], [2, 3, 4, 5]]
    with pytest.raises(PoolTooSmall) as err:
        draw_vector_sets(designs, [], 6, _vectors_of(x, frozenset({0, 1})), 4, disjoint=True, seed=0)
    assert str(err.value) == "design 'single-cluster' needs 4 samples with a gradient vector but only 0 are left"


def test_single_cluster_breaks_ties_by_row_among_many():
    labels = np.random.default_rng(0).permutation([0] * 60 + [1] * 40)  # 60 copies of one vector, 40 of another
    x = np.where(labels[:, None] == 0, np.array([1.0, 0, 0, 0]), np.array([0.6, 0.8, 0, 0])).astype(np.float32)
    (s,) = draw_vector_sets(parse_designs(["single-cluster"]), [], 100, _vectors_of(x), 7, disjoint=False, seed=0,
                            n_clusters=2)
    assert s.members.tolist() == np.flatnonzero(labels == 0)[:7].tolist()


def test_a_spans_ties_between_families_are_broken_by_the_study_seed():
    families, levels = ["a"] * 4 + ["b"] * 4 + ["c"] * 4, [0] * 12  # three families of equal size
    picks = [draw_label_sets(parse_designs(["span:1:1"]), families, levels, 2, disjoint=False, seed=s)[0]
             .details["families"][0] for s in range(8)]
    assert picks == ["a", "b", "c", "c", "c", "a", "b", "b"]  # pinned: the same seed, the same family


def test_single_cluster_breaks_ties_by_row():
    x = np.repeat(_vectors(3)[:1], 40, axis=0)  # 40 identical vectors: every similarity ties
    (s,) = draw_vector_sets(parse_designs(["single-cluster"]), [], 40, _vectors_of(x), 5, disjoint=False, seed=0,
                            n_clusters=2)
    assert s.members.tolist() == [0, 1, 2, 3, 4]
