"""Training sets by design: equal sizes, disjoint where asked, spans as designed, clear errors.

Pure functions on labels and synthetic unit vectors (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from prismatic_assets.core.study_sets import PoolTooSmall, draw_label_sets, draw_vector_sets, parse_designs

FAMILIES = ["a", "b", "c", "d"]
LEVELS = [0, 1]


def _pool(per_pair: int):
    fam = [f for f in FAMILIES for lv in LEVELS for _ in range(per_pair)]
    lvl = [lv for f in FAMILIES for lv in LEVELS for _ in range(per_pair)]
    return fam, lvl


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in 4 tight groups (rows i % 4), so clusters are known."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[:4]
    v = centres[np.arange(n) % 4] + 0.05 * rng.standard_normal((n, 16))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


DESIGNS = ["span:1:1", "span:2:1", "span:all:all", "random:0", "random:1", "cluster-balanced", "greedy",
           "single-cluster"]


def _draw(designs, fam, lvl, set_size, disjoint, seed=0, vectors=None):
    parsed = parse_designs(designs)
    drawn = draw_label_sets(parsed, fam, lvl, set_size, disjoint=disjoint, seed=seed)
    vectors = _vectors(len(fam)) if vectors is None else vectors
    return draw_vector_sets(parsed, drawn, len(fam), lambda rows: (rows, vectors[rows]), set_size,
                            disjoint=disjoint, seed=seed)


def test_sets_are_equal_in_size_disjoint_and_in_design_order():
    fam, lvl = _pool(per_pair=20)  # 160 samples
    sets = _draw(DESIGNS, fam, lvl, set_size=16, disjoint=True)
    assert [s.name for s in sets] == DESIGNS
    for s in sets:
        assert s.members.size == 16 and np.unique(s.members).size == 16
    union = np.concatenate([s.members for s in sets])
    assert np.unique(union).size == 16 * len(DESIGNS)  # pairwise disjoint


def test_spans_cover_exactly_the_designed_families_and_levels():
    fam, lvl = _pool(per_pair=20)
    sets = {s.name: s for s in _draw(DESIGNS, fam, lvl, set_size=16, disjoint=True)}
    pairs = {name: {(fam[i], lvl[i]) for i in s.members} for name, s in sets.items()}
    assert len(pairs["span:1:1"]) == 1
    assert len({f for f, _ in pairs["span:2:1"]}) == 2 and len({lv for _, lv in pairs["span:2:1"]}) == 1
    assert pairs["span:all:all"] == {(f, lv) for f in FAMILIES for lv in LEVELS}
    counts = np.unique([(fam[i], lvl[i]) for i in sets["span:all:all"].members], axis=0, return_counts=True)[1]
    assert sorted(counts.tolist()) == [2] * 8  # 16 spread evenly over 8 pairs
    # the narrow span and the widest one do not take from the same slice first
    assert pairs["span:1:1"] != pairs["span:2:1"]


def test_single_cluster_is_one_group_and_cluster_balanced_spreads():
    fam, lvl = _pool(per_pair=20)  # 160 samples, 40 per vector group; about 32 per group left for the last draw
    sets = {s.name: s for s in _draw(["random:0", "cluster-balanced", "single-cluster"], fam, lvl, set_size=16,
                                     disjoint=True)}
    groups = lambda s: np.bincount(s.members % 4, minlength=4)  # noqa: E731 (the vectors' true group)
    assert groups(sets["single-cluster"]).max() == 16  # all from one tight group
    assert groups(sets["cluster-balanced"]).min() >= 1  # every group represented


def test_without_disjoint_sets_may_share_samples_and_are_drawn_from_the_whole_pool():
    fam, lvl = _pool(per_pair=16)  # 128 samples: span:1:1 empties a slice that span:all:all needs when disjoint
    sets = _draw(DESIGNS, fam, lvl, set_size=16, disjoint=False)
    assert all(s.members.size == 16 for s in sets)
    union = np.concatenate([s.members for s in sets])
    assert np.unique(union).size < union.size
    with pytest.raises(PoolTooSmall, match="raise study.pool_size"):
        _draw(DESIGNS, fam, lvl, set_size=16, disjoint=True)


def test_draws_are_deterministic_and_the_seed_changes_them():
    fam, lvl = _pool(per_pair=20)
    a = _draw(DESIGNS, fam, lvl, 16, True, seed=0)
    b = _draw(DESIGNS, fam, lvl, 16, True, seed=0)
    c = _draw(DESIGNS, fam, lvl, 16, True, seed=1)
    assert all(np.array_equal(x.members, y.members) for x, y in zip(a, b))
    assert any(not np.array_equal(x.members, y.members) for x, y in zip(a, c))


def test_a_pool_too_small_names_the_design_and_the_slice():
    fam, lvl = _pool(per_pair=10)  # 10 per (family, level)
    with pytest.raises(PoolTooSmall, match=r"'span:1:1' needs 12 samples of \(\w, level \d\) but only 10"):
        draw_label_sets(parse_designs(["span:1:1"]), fam, lvl, 12, disjoint=True, seed=0)
    # the slice is emptied by earlier sets: the message says which sets came before
    with pytest.raises(PoolTooSmall, match=r"after the sets drawn before it \(span:1:1"):
        draw_label_sets(parse_designs(["span:1:1", "span:all:1"]), ["a"] * 20, [0] * 20, 12, disjoint=True, seed=0)
    # gradient designs are checked before any gradient is computed
    with pytest.raises(PoolTooSmall, match=r"\['cluster-balanced', 'greedy'\] need 32 samples but only 24"):
        draw_label_sets(parse_designs(["random:0", "cluster-balanced", "greedy"]), ["a"] * 40, [0] * 40, 16,
                        disjoint=True, seed=0)


@pytest.mark.parametrize("specs, match", [
    (["span:2"], "write span:F:L"),
    (["span:0:1"], "positive integer or 'all'"),
    (["bogus"], "unknown design 'bogus'"),
    (["random:0", "random:0"], "appear more than once"),
])
def test_bad_designs_are_refused_with_the_valid_forms(specs, match):
    with pytest.raises(ValueError, match=match):
        parse_designs(specs)


def test_span_requests_the_pool_cannot_meet():
    fam, lvl = _pool(per_pair=20)
    with pytest.raises(ValueError, match="asks for 5 families x 1 levels, but the pool has 4 families"):
        draw_label_sets(parse_designs(["span:5:1"]), fam, lvl, 16, disjoint=True, seed=0)
    with pytest.raises(ValueError, match="fewer than one sample each"):
        draw_label_sets(parse_designs(["span:all:all"]), fam, lvl, 4, disjoint=True, seed=0)
    with pytest.raises(ValueError, match="have no family"):
        draw_label_sets(parse_designs(["span:1:1"]), [None] * 10, [None] * 10, 4, disjoint=True, seed=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        draw_label_sets(parse_designs(["random:0"]), fam, lvl, 1, disjoint=True, seed=0)


def test_rows_without_a_vector_are_never_picked_by_gradient_designs():
    fam, lvl = _pool(per_pair=10)
    vectors = _vectors(len(fam))
    missing = set(range(0, len(fam), 3))  # every third row has no gradient vector

    def vectors_of(rows):
        kept = np.array([r for r in rows if r not in missing], dtype=np.int64)
        return kept, vectors[kept]
    parsed = parse_designs(["cluster-balanced", "single-cluster", "greedy"])
    drawn = draw_label_sets(parsed, fam, lvl, 12, disjoint=True, seed=0)
    sets = draw_vector_sets(parsed, drawn, len(fam), vectors_of, 12, disjoint=True, seed=0)
    for s in sets:
        assert s.members.size == 12 and not set(s.members.tolist()) & missing
