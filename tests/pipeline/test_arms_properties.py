"""Properties of the arms' choice functions (Hypothesis).

- random: a seeded uniform draw that reads no judgement: the same picks whatever the
  clustering says, and the draw a direct call of numpy's generator gives for that seed;
- naive: the first `budget` candidates in generation order;
- prismatic: only candidates whose nearest centroid is sparse while any are left, then the
  rest from the smallest clusters up; the same random draw among passing candidates as
  long as they last.

Beside them, on hand-made cases: the arguments `choose` needs; each request's target,
exemplars and seed; the reason each candidate is rejected for; the seed pool the arms refuse.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic_assets.pipeline.arms import FILTERED_ARMS, choose
from tests.conftest import sha_seed


class Judged:
    """A verdict on n candidates: each one's nearest cluster's pool size and whether it is sparse."""

    def __init__(self, cluster_sizes: np.ndarray, accepted: np.ndarray):
        self.cluster_sizes, self.accepted = cluster_sizes, accepted

    def kwargs(self) -> dict:
        return {"cluster_sizes": self.cluster_sizes.tolist(), "in_sparse": self.accepted.tolist()}


@st.composite
def judgements(draw, n: int) -> Judged:
    """Any verdict on n candidates: a cluster, its pool size and whether it is sparse."""
    clusters = draw(st.integers(1, 6))
    assignments = np.array(draw(st.lists(st.integers(0, clusters - 1), min_size=n, max_size=n)), dtype=np.int64)
    sizes = np.array(draw(st.lists(st.integers(0, 20), min_size=clusters, max_size=clusters)), dtype=np.int64)
    sparse = np.array(draw(st.lists(st.booleans(), min_size=clusters, max_size=clusters)), dtype=bool)
    return Judged(sizes[assignments], sparse[assignments])


@st.composite
def cases(draw):
    n = draw(st.integers(0, 40))
    return n, draw(st.integers(1, 45)), draw(st.integers(0, 2**32 - 1)), draw(judgements(n)), draw(judgements(n))


@settings(max_examples=100, deadline=None)
@given(case=cases())
def test_random_is_a_seeded_draw_that_reads_no_judgement(case):
    n, budget, seed, one, other = case
    picks = choose("random", n, budget, rng_seed=seed, **one.kwargs())
    assert picks == choose("random", n, budget, rng_seed=seed, **other.kwargs())
    assert picks == choose("random", n, budget, rng_seed=seed)
    take = min(budget, n)
    assert picks == sorted(np.random.default_rng(seed).choice(n, size=take, replace=False).tolist())
    assert len(set(picks)) == take


@settings(max_examples=100, deadline=None)
@given(case=cases())
def test_naive_takes_the_first_candidates_in_generation_order(case):
    n, budget, seed, one, _ = case
    assert choose("naive", n, budget, rng_seed=seed, **one.kwargs()) == list(range(min(budget, n)))


@settings(max_examples=100, deadline=None)
@given(case=cases(), arm=st.sampled_from(sorted(FILTERED_ARMS)))
def test_the_filtered_arms_take_passing_candidates_while_they_last(case, arm):
    n, budget, seed, judged, _ = case
    picks = choose(arm, n, budget, rng_seed=seed, **judged.kwargs())
    take = min(budget, n)
    assert len(picks) == take == len(set(picks)) and all(0 <= i < n for i in picks)
    passing = [i for i in range(n) if judged.accepted[i]]
    n_pass = min(take, len(passing))
    assert all(judged.accepted[i] for i in picks[:n_pass])  # the filter first ...
    assert set(picks[n_pass:]).isdisjoint(passing)  # ... the rest only once none is left
    if len(passing) >= take:
        assert set(picks) <= set(passing)
    fill = [int(judged.cluster_sizes[i]) for i in picks[n_pass:]]
    assert fill == sorted(fill)  # the rest from the smallest clusters up
    if len(passing) < take:
        rest = sorted(int(judged.cluster_sizes[i]) for i in range(n) if not judged.accepted[i])
        assert fill == rest[:len(fill)]


def test_prismatic_draws_at_random_among_passing_candidates():
    # Ten passing candidates among dense ones, a budget of one, 300 seeds: each passing
    # candidate is drawn about 30 times (not the first passing one every time).
    n = 20
    judged = Judged(np.arange(n, dtype=np.int64), np.arange(n) % 2 == 1)
    first = [choose("prismatic", n, 1, rng_seed=seed, **judged.kwargs())[0] for seed in range(300)]
    counts = np.bincount(first, minlength=n)
    assert counts[::2].sum() == 0 and (counts[1::2] >= 12).all() and (counts[1::2] <= 55).all(), counts


def test_a_filtered_arm_reads_any_truthy_mask_and_needs_both_judgements():
    sizes, mask = [5, 1, 3, 1, 9, 2], [0, 1, 0, 1, 0, 1]  # a 0/1 mask, as a verdict loaded from a table reads
    for arm in sorted(FILTERED_ARMS):
        assert choose(arm, 6, 4, rng_seed=3, cluster_sizes=sizes, in_sparse=mask) == \
            choose(arm, 6, 4, rng_seed=3, cluster_sizes=sizes, in_sparse=[bool(v) for v in mask])
        for missing in ({"in_sparse": mask}, {"cluster_sizes": sizes}, {}):
            with pytest.raises(ValueError, match=f"arm '{arm}' needs each candidate's cluster size and sparse flag"):
                choose(arm, 6, 4, rng_seed=3, **missing)
    with pytest.raises(ValueError, match="unknown arm 'best'"):
        choose("best", 6, 4, rng_seed=3)


def test_the_targeted_arm_takes_the_sparse_clusters_in_its_seeded_order_and_the_others_take_none(six_sparse_clusters):
    """Request i of prismatic_targeted draws from targets[i mod n], targets the non-empty sparse
    clusters shuffled by the seed of (world seed, round, arm): written out here with `random`."""
    import random

    from prismatic_assets.core.samples import Sample
    from prismatic_assets.core.world import world_seed
    from prismatic_assets.infra.config import ARM_NAMES, build_config
    from prismatic_assets.pipeline.arms import plan_requests
    from prismatic_assets.pipeline.embeddings import PoolVectors

    pool = [Sample(f"w:{i:02d}", f"problem {i}", "r", meta={"family": "sum", "level": 1}) for i in range(30)]
    clustering = six_sparse_clusters
    vecs = PoolVectors([s.sample_id for s in pool], np.zeros((30, 2), dtype=np.float32), {})
    config = build_config({"world": {"seed": 11}, "arms": {"requests_per_round": 8, "budget": 4}})
    targets = [1, 2, 3, 4, 5, 6]
    random.Random(world_seed("targets", 11, 2, "prismatic_targeted")).shuffle(targets)
    planned = plan_requests("prismatic_targeted", 2, pool, vecs, clustering, config)  # type: ignore[arg-type]
    assert [q.target_cluster for q in planned] == [targets[i % 6] for i in range(8)]
    for arm in sorted(set(ARM_NAMES) - {"prismatic_targeted"}):
        others = plan_requests(arm, 2, pool, vecs, clustering, config)  # type: ignore[arg-type]
        assert {(q.strategy, q.target_cluster) for q in others} == {("random", None)}, arm


def test_each_request_shows_exemplars_drawn_by_its_own_seed(six_sparse_clusters):
    """Request i: the generator's seed is the hash of ("request", world seed, round, i), the same in
    every arm; its exemplars are `few_shot` pool members drawn by the seed of ("exemplars", world
    seed, round, i), written out here with `random` and the hash."""
    import random

    from prismatic_assets.core.samples import Sample
    from prismatic_assets.infra.config import build_config
    from prismatic_assets.pipeline.arms import acceptance_seed, plan_requests
    from prismatic_assets.pipeline.embeddings import PoolVectors

    pool = [Sample(f"w:{i:02d}", f"problem {i}", "r", meta={"family": f"f{i % 3}", "level": i % 2}) for i in range(30)]
    vecs = PoolVectors([s.sample_id for s in pool], np.zeros((30, 2), dtype=np.float32), {})
    config = build_config({"world": {"seed": 5}, "arms": {"requests_per_round": 4, "budget": 4}})
    k = config.world.generator.few_shot
    assert 1 < k < len(pool)
    planned = plan_requests("random", 3, pool, vecs, six_sparse_clusters, config)  # type: ignore[arg-type]
    for i, q in enumerate(planned):
        rng = random.Random(sha_seed("exemplars", 5, 3, i))
        ids = [pool[j].sample_id for j in rng.sample(range(len(pool)), k)]
        assert (q.request, q.seed) == (i, sha_seed("request", 5, 3, i))
        assert [(e.sample_id, e.family, e.level) for e in q.exemplars] == \
            [(sid, f"f{int(sid[2:]) % 3}", int(sid[2:]) % 2) for sid in ids]
    assert [q.seed for q in plan_requests("naive", 3, pool, vecs, six_sparse_clusters, config)] == \
        [q.seed for q in planned]  # type: ignore[arg-type]
    assert acceptance_seed(5, 3, "random") == sha_seed("accept", 5, 3, "random", 0)
    assert acceptance_seed(5, 3, "random", 2) == sha_seed("accept", 5, 3, "random", 2)


def test_each_candidate_gets_the_first_reason_that_applies():
    import dataclasses

    from prismatic_assets.core.decontamination import NGramIndex
    from prismatic_assets.core.samples import normalize_text
    from prismatic_assets.core.world import Written, world_item
    from prismatic_assets.pipeline.arms import Candidate, verify_candidates

    items = [world_item("gcd", 0, i, sample_id=f"w:{i}") for i in range(3)]
    held, leaked, good = items
    eval_text = world_item("leg_counting", 0, 0, sample_id="e").sample.prompt
    leaked = dataclasses.replace(leaked, sample=dataclasses.replace(leaked.sample, prompt=eval_text))

    def answered(text: str):
        return dataclasses.replace(good, sample=dataclasses.replace(good.sample, response=text))
    wrong = answered(f"So the answer is \\boxed{{{int(good.sample.answer) + 1}}}.")
    unanswered = answered("I cannot tell.")
    written = [None, held, leaked, wrong, unanswered, good]
    candidates = [Candidate(0, j, Written(j, "same_cell", "x", "gcd", 0, 1, item)) for j, item in enumerate(written)]
    index = NGramIndex(n=8)
    index.add([eval_text], "test")
    verify_candidates(candidates, {normalize_text(held.sample.prompt)}, index)
    assert [c.reason for c in candidates] == ["no_fresh_problem", "duplicate_held_out", "contaminated",
                                              "scorer_rejects_answer", "no_answer_in_response", None]
    verify_candidates(candidates[2:3], set(), None)  # no eval set: nothing is contaminated
    assert candidates[2].reason is None


def test_a_seed_pool_cell_needs_both_family_and_level():
    from prismatic_assets.core.samples import Sample
    from prismatic_assets.core.world import WorldError
    from prismatic_assets.pipeline.arms import check_world_pool

    def sample(i: int, **meta) -> Sample:
        return Sample(f"s:{i}", f"problem {i}", "r", meta=meta)
    check_world_pool([sample(0, family="gcd", level=1)], "world")
    refused = r"source 'mine' has no \(family, level\) for 1 problems, e\.g\. \['s:1'\]"
    for meta in ({"family": "gcd"}, {"level": 1}, {}):
        with pytest.raises(WorldError, match=refused):
            check_world_pool([sample(0, family="gcd", level=1), sample(1, **meta)], "mine")
