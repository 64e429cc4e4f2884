"""The score stage of a round on hand-made vectors: G-Vendi before, after and of the random
control against the Vendi-Score package over the rows each must cover, and the control's
draw (as many candidates as were accepted, from all candidates with a gradient)."""

from __future__ import annotations

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.clustering import spherical_kmeans
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.embeddings import PoolVectors
from prismatic_assets.pipeline.round_stages import Embedded, PoolState, score_round
from prismatic_assets.store.synthesis_tables import CandidateRow, DecisionRow
from tests.conftest import sha_seed


def _unit(rng, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _state(n_pool: int = 12, m: int = 7, d: int = 6):
    rng = np.random.default_rng(4)
    ids = [f"seed:{i}" for i in range(n_pool)]
    pool_vectors = _unit(rng, n_pool, d)
    pool = PoolState(samples=[Sample(i, f"p{i}", f"r{i}") for i in ids],
                     vectors=PoolVectors(ids, pool_vectors, {"seed:x": "zero gradient"}), clustering_id="c",
                     clustering=spherical_kmeans(pool_vectors, 3, seed=0), embedding_key="emb", dim=d)
    candidates = [CandidateRow(f"r1:q{i:04d}:o0:p0", 1, f"r1:q{i:04d}", 0, 0, f"problem {i}") for i in range(m)]
    drafts = [Sample(f"syn:r1:{i:012d}", f"problem {i}", f"solution {i}") for i in range(m)]
    return pool, Embedded(candidates, drafts, _unit(rng, m, d))


def _fresh(embedded: Embedded) -> Embedded:
    """The same candidates, none flagged yet (score_round flags the control's rows)."""
    return Embedded([CandidateRow(c.candidate_id, 1, c.request_id, 0, 0, c.problem) for c in embedded.candidates],
                    embedded.drafts, embedded.vectors)


def _gv(rows: np.ndarray) -> float:
    return float(vendi.score_dual(rows.astype(np.float64)))


def test_before_after_and_control_are_the_g_vendi_of_their_rows():
    pool, embedded = _state()
    accepted = [1, 4]
    scores = score_round(pool, embedded, accepted, q=1.0, round=1, seed=0)
    control = scores.control_rows
    assert len(control) == len(accepted) and len(set(control)) == len(control)
    assert [c.in_random_control for c in embedded.candidates] == [i in control for i in range(7)]
    p, v = pool.vectors.vectors, embedded.vectors
    assert scores.before.score == pytest.approx(_gv(p), rel=1e-5)
    assert scores.after.score == pytest.approx(_gv(np.vstack([p, v[accepted]])), rel=1e-5)
    assert scores.random.score == pytest.approx(_gv(np.vstack([p, v[control]])), rel=1e-5)
    before, after, random_row = scores.rows
    assert (before.scope, after.scope, random_row.scope) == ("round:1:before", "round:1:after", "round:1:random")
    assert (before.n, after.n, random_row.n) == (12, 14, 14)
    assert before.value == scores.before.score and after.value == scores.after.score
    assert {r.n_excluded for r in scores.rows} == {1}
    # Nothing accepted: the pool is unchanged, after and control equal before.
    none = score_round(pool, _fresh(embedded), [], q=1.0, round=1, seed=0)
    assert none.after.score == none.random.score == pytest.approx(_gv(p), rel=1e-5) and none.control_rows == []


def test_the_control_is_a_seeded_draw_from_every_candidate_with_a_gradient():
    pool, embedded = _state()
    accepted = [1, 4]
    draws = [tuple(score_round(pool, _fresh(embedded), accepted, 1.0, 1, seed).control_rows) for seed in range(40)]
    assert draws[0] == tuple(score_round(pool, _fresh(embedded), accepted, 1.0, 1, 0).control_rows)  # seeded
    other_round = [tuple(score_round(pool, _fresh(embedded), accepted, 1.0, 2, seed).control_rows)
                   for seed in range(40)]
    assert other_round != draws  # the round enters the seed
    assert set().union(*draws) == set(range(7))  # not confined to the accepted rows
    assert len(set(draws)) > 5


def test_each_sampling_seed_is_the_hash_of_its_stage_seed_round_and_item():
    from prismatic_assets.pipeline.round_stages import request_seed, solution_seed

    assert request_seed(7, 2, 3) == sha_seed("generate", 7, 2, 3)
    assert solution_seed(7, 2, "r2:q0003:o0:p0") == sha_seed("solve", 7, 2, "r2:q0003:o0:p0")
    seeds = {solution_seed(s, r, c) for s in (0, 7) for r in (1, 2) for c in ("r1:q0000:o0:p0", "r1:q0000:o0:p1")}
    assert len(seeds) == 8 and all(0 <= s < 2 ** 31 for s in seeds)


def test_few_shot_targets_are_the_sparse_clusters_that_hold_a_pool_member():
    from types import SimpleNamespace

    from prismatic_assets.pipeline.round_stages import sparse_targets

    clustering = SimpleNamespace(sparse=np.array([True, True, False, True, True]), sizes=np.array([0, 1, 1, 4, 2]))
    assert sparse_targets(clustering) == [1, 3, 4]  # an empty sparse cluster has nothing to draw from


def test_a_rejection_records_its_stage_reason_and_rule():
    from prismatic_assets.pipeline.round_stages import RoundLedger

    ledger = RoundLedger(round=2)
    kept, dropped = (CandidateRow(f"r2:q0000:o0:p{i}", 2, "r2:q0000", 0, i, f"problem {i}") for i in range(2))
    ledger.candidates = [kept, dropped]
    ledger.reject(dropped, "verify", "no majority", {"min_agree": 2, "n_solutions": 3})
    assert ledger.decisions == {dropped.candidate_id: DecisionRow(dropped.candidate_id, 2, "rejected", "verify",
                                                                  "no majority", None,
                                                                  {"min_agree": 2, "n_solutions": 3})}
    assert ledger.undecided() == [kept]


def test_parsing_keeps_up_to_the_configured_count_and_drops_echoed_examples():
    import dataclasses

    from prismatic_assets.core.generation import SamplingConfig
    from prismatic_assets.infra.config import SynthesisConfig
    from prismatic_assets.pipeline.round_services import CallStats
    from prismatic_assets.pipeline.round_stages import Generated, RequestPlan, parse_outputs

    pool, _ = _state()
    shots = ["How many legs do three spiders and two ants have together?",
             "What is the greatest common divisor of 84 and 126?"]
    pool = dataclasses.replace(pool, samples=[Sample("seed:0", shots[0], "r0"), Sample("seed:1", shots[1], "r1")])
    fresh = [f"A farmer has {n} cows and {n + 3} hens. How many legs are there in total?" for n in (4, 5, 6, 7)]
    text = "\n".join(f"<problem>{p}</problem>" for p in [shots[1], *fresh])  # an example echoed, then four new
    plan = RequestPlan("r1:q0000", 0, "random", None, ("seed:0", "seed:1"), [], SamplingConfig(n=1))
    ledger = parse_outputs(1, [plan], Generated(["k0"], [[text, "  "]], CallStats()), pool, "gen",
                           SynthesisConfig(new_per_request=3))
    assert [c.problem for c in ledger.candidates] == fresh[:3]  # the echo dropped; three asked for
    assert [c.candidate_id for c in ledger.candidates] == [f"r1:q0000:o0:p{k}" for k in range(3)]
    assert [(r.output_index, r.status, r.n_problems) for r in ledger.requests] == [(0, "parsed", 3), (1, "empty", 0)]
    garbled = parse_outputs(1, [plan], Generated(["k0"], [["no problems here"]], CallStats()), pool, "gen",
                            SynthesisConfig(new_per_request=3))
    assert [(r.status, r.n_problems) for r in garbled.requests] == [("parse_failed", 0)] and not garbled.candidates


def test_the_vote_keeps_its_evidence_and_answers_with_the_first_majority_solution():
    """Four hand-made candidates: one whose majority is solutions 1 and 2 (so the kept solution
    is the second text), one whose answers disagree, one whose only answer is stated in words
    (read with stated_answers) and one whose box holds code (rejected, the issue with the rule)."""
    from prismatic_assets.core.generation import SamplingConfig
    from prismatic_assets.infra.config import SynthesisConfig
    from prismatic_assets.pipeline.round_services import CallStats
    from prismatic_assets.pipeline.round_stages import RoundLedger, Solved, vote

    ledger = RoundLedger(round=1)
    ledger.candidates = [CandidateRow(f"r1:q0000:o0:p{i}", 1, "r1:q0000", 0, i, f"problem {i}") for i in range(4)]
    solutions = [["So it is \\boxed{5}.", "Adding: \\boxed{4}.", "Counting: \\boxed{4}."],
                 ["\\boxed{1}", "\\boxed{2}", "\\boxed{3}"],
                 ["The answer is 7.", "The answer is 7.", "I give up."],
                 ["\\boxed{import os; os.system('x')}"] * 3]
    samplings = [SamplingConfig(n=3, seed=s) for s in range(4)]
    solved = Solved(samplings, [f"key{i}" for i in range(4)], solutions, CallStats())
    settings = SynthesisConfig(min_agree=2, n_solutions=3, stated_answers=True)
    verified = vote(ledger, ledger.candidates, solved, "teacher-x", settings)
    first, split, stated, code = ledger.candidates
    assert verified == [first, stated]
    assert (first.response, first.majority_answer, first.agreement, first.vote_reason) == (
        "Adding: \\boxed{4}.", "4", 2, "accepted")
    assert first.answers == ["5", "4", "4"] and first.vote_groups == [[1, 2], [0]]
    assert (first.teacher_model, first.solution_gen_key, first.solutions) == ("teacher-x", "key0", solutions[0])
    assert first.solution_sampling == samplings[0].as_dict()
    assert (stated.majority_answer, stated.response) == ("7", "The answer is 7.")
    rule = {"min_agree": 2, "n_solutions": 3}
    assert (split.vote_reason, split.majority_answer) == ("disagreement", None)
    assert ledger.decisions[split.candidate_id] == DecisionRow(split.candidate_id, 1, "rejected", "verification",
                                                               "disagreement", None, rule)
    decided = ledger.decisions[code.candidate_id]
    assert (decided.stage, decided.reason) == ("verification", "unverifiable")
    assert decided.rule["min_agree"] == 2 and decided.rule["n_solutions"] == 3 and decided.rule["issues"]
    assert set(ledger.decisions) == {split.candidate_id, code.candidate_id}


def test_a_derived_seed_ignores_key_order_and_reads_any_part_as_text():
    from datetime import date

    from prismatic_assets.pipeline.round_stages import derive_seed

    assert derive_seed("x", {"b": 1, "a": 2}) == derive_seed("x", {"a": 2, "b": 1})
    assert derive_seed("x", {"b": 1, "a": 2}) == sha_seed("x", {"a": 2, "b": 1})
    assert derive_seed("x", date(2026, 1, 2)) == sha_seed("x", "2026-01-02")


def test_each_score_row_is_the_pools_score_of_its_members_at_q(tmp_path):
    """At q = 2 each row's value is the Vendi score of order 2 of its rows, and its id is the one
    pipeline.scores gives the same members, scope and key (so a rescored set is one row)."""
    from prismatic_assets.pipeline.scores import score_pool
    from prismatic_assets.store.store import MetadataStore

    pool, embedded = _state()
    accepted = [2, 5]
    scores = score_round(pool, embedded, accepted, q=2.0, round=3, seed=9)
    p, v, control = pool.vectors.vectors, embedded.vectors, scores.control_rows
    members = {"before": (pool.vectors.sample_ids, p),
               "after": (pool.vectors.sample_ids + [embedded.drafts[r].sample_id for r in accepted],
                         np.vstack([p, v[accepted]])),
               "random": (pool.vectors.sample_ids + [embedded.drafts[r].sample_id for r in control],
                          np.vstack([p, v[control]]))}
    store = MetadataStore(tmp_path / "m.duckdb")
    for row, (part, (ids, rows)) in zip(scores.rows, members.items(), strict=True):
        assert row.value == pytest.approx(float(vendi.score_dual(rows.astype(np.float64), q=2)), rel=1e-5), part
        assert (row.scope, row.q, row.n, row.dim, row.embedding_key) == (f"round:3:{part}", 2.0, len(ids), 6, "emb")
        score_pool(store, PoolVectors(ids, rows, {}), 2.0, "emb", f"round:3:{part}")
        (stored,) = store.query(f"SELECT score_id FROM scores WHERE scope = 'round:3:{part}'")["score_id"].to_list()
        assert row.score_id == stored, part
    before, after, random_row = scores.rows
    assert before.config == after.config == {"q": 2.0, "round": 3}
    assert random_row.config == {"q": 2.0, "round": 3, "control": "random", "seed": sha_seed("random_control", 9, 3)}


def test_each_request_draws_its_target_and_examples_from_its_own_seed(six_sparse_clusters):
    """The draws are part of a round's reproducibility (a re-run asks the generator the same
    requests, so its outputs come from the cache): the sparse targets in the order of a seeded
    shuffle, request i's examples from the seed of (seed, round, i), shown in a shuffled order."""
    import random

    from prismatic_assets.infra.config import SynthesisConfig
    from prismatic_assets.pipeline.round_stages import plan_requests

    pool = [Sample(f"seed:{i:02d}", f"pool problem {i}", f"solution {i}") for i in range(30)]
    ids = [s.sample_id for s in pool]
    clustering = six_sparse_clusters
    settings = SynthesisConfig(requests_per_round=8, few_shot=2, new_per_request=3, strategy="sparse_cluster", seed=5)
    targets = [1, 2, 3, 4, 5, 6]
    random.Random(sha_seed("targets", 5, 3)).shuffle(targets)
    plans = plan_requests(3, pool, ids, clustering, settings)  # type: ignore[arg-type]
    assert [p.target_cluster for p in plans] == [targets[i % 6] for i in range(8)]
    drawn = plan_requests(3, pool, ids, clustering, settings.model_copy(update={"strategy": "random"}))  # type: ignore[arg-type]
    for p in drawn:
        rng = random.Random(sha_seed("few_shot", 5, 3, p.index))
        shown = rng.sample(ids, 2)
        rng.shuffle(shown)
        assert list(p.few_shot_ids) == shown


@pytest.mark.parametrize("round", [True, 0, 1.0, "1"])
def test_a_round_is_numbered_by_a_positive_integer(tmp_path, round):
    from prismatic_assets.pipeline.round_stages import check_round_order
    from prismatic_assets.store.store import MetadataStore

    with pytest.raises(ValueError, match="rounds are numbered 1, 2, 3"):
        check_round_order(MetadataStore(tmp_path / "m.duckdb"), round)
