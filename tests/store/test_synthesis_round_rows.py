"""A round's rows read back value by value, the generation cache's stable keys, round pools and staleness.

Expected values are built in the tests from the rows handed in (field by field, canonical
JSON by `json.dumps(..., sort_keys=True)`), never read from the code under test.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

import pytest

from prismatic_assets.core.samples import Sample, content_hash, dedup_key, problem_key
from prismatic_assets.store import schema
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import (
    CandidateRow,
    DecisionRow,
    GenerationRow,
    RequestRow,
    RoundRecord,
    RoundRow,
    ScoreRow,
    accepted_samples,
    generation_key,
    get_generations,
    pool_digest,
    pool_samples,
    put_generations,
    refresh_staleness,
    round_history,
    round_scope,
    round_summary,
    stale_rounds,
    write_round,
)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _rows(store: MetadataStore, table: str, where: str, order: str) -> list[dict[str, Any]]:
    return store.query(f"SELECT * FROM {table} WHERE {where} ORDER BY {order}").to_dicts()


# -- a round with every field set, and one with every optional field empty ------------------
FULL_REQUEST = RequestRow(round=3, request_id="r3:q0007", output_index=1, request_index=7, strategy="sparse_cluster",
                          target_cluster=4, few_shot_ids=["seed:9", "seed:2"], clustering_id="clu-3",
                          generator_model="gen-fp", sampling={"temperature": 0.7, "seed": 11, "n": 2},
                          gen_key="g-full", raw_output="<problem>Wie viel ist 2+2? ü</problem>", n_problems=1,
                          parse_issues=["no answer tag", "trailing text"], status="parsed")
EMPTY_REQUEST = RequestRow(round=3, request_id="r3:q0008", output_index=0, request_index=8, strategy="random",
                           target_cluster=None, few_shot_ids=[], clustering_id="clu-3", generator_model="gen-fp",
                           sampling={}, gen_key="g-empty", raw_output=None, n_problems=0, parse_issues=[],
                           status="empty")
FULL_CANDIDATE = CandidateRow(
    candidate_id="r3:q0007:o1:p0", round=3, request_id="r3:q0007", output_index=1, problem_index=2,
    problem="  What is 2+2?  ", duplicate_kind="normalized", duplicate_source="pool", duplicate_of="seed:5",
    contamination_label="gsm8k", contamination_ngram="what is two plus", teacher_model="teacher-fp",
    solution_sampling={"top_p": 0.9, "seed": 5}, solution_gen_key="g-sol", solutions=["s1 \\boxed{4}", "s2"],
    answers=["4", None], vote_groups=[[0], [1]], agreement=1, vote_reason="tie", majority_answer="4",
    response="s1 \\boxed{4}", content_hash="hash-1", embedding_key="emb-1", embedding_error="too long",
    cluster=6, similarity=0.25, cluster_is_sparse=True, cluster_size=3, in_random_control=True)
EMPTY_CANDIDATE = CandidateRow(candidate_id="r3:q0007:o1:p1", round=3, request_id="r3:q0007", output_index=1,
                               problem_index=3, problem="Name a prime.")
FULL_DECISION = DecisionRow(candidate_id=FULL_CANDIDATE.candidate_id, round=3, decision="accepted", stage="cluster",
                            reason="sparse_cluster", sample_id="syn:r3:0", rule={"threshold": 2, "k": 8})
EMPTY_DECISION = DecisionRow(candidate_id=EMPTY_CANDIDATE.candidate_id, round=3, decision="rejected", stage="parse",
                             reason="no_problem")
SAMPLE = Sample("syn:r3:0", "What is 2+2?", "s1 \\boxed{4}", answer="4", category="arithmetic", source="",
                source_ref="r3:q0007:o1:p0", meta={"zeta": 1, "alpha": PurePosixPath("/runs/a")})
SAMPLE_WITH_SOURCE = Sample("syn:r3:1", "Name a prime.", "7", source="teacher-b", source_ref="r3:q0008:o0:p0")
SCORE = ScoreRow(score_id="score-before", scope=round_scope(3, "before"), q=1.0, value=2.5, entropy=0.9163, n=10,
                 dim=8, n_excluded=1, embedding_key="emb-1", config={"q": 1, "dim": 8})
ROUND_ROW = RoundRow(round=3, settings={"zeta": [1, 2], "alpha": PurePosixPath("/cfg")}, settings_hash="sh",
                     generator_model="gen-fp", teacher_model="teacher-fp", embedding_key="emb-1",
                     clustering_id="clu-3", pool_digest="pd", n_pool=40, k=8, n_sparse=3, n_requests=2,
                     n_candidates=2, n_verified=1, n_accepted=1, g_vendi_before=2.5, g_vendi_after=2.75,
                     g_vendi_random=None, report={"z": 1, "a": PurePosixPath("/r")}, seed_source="seeds-a")
RECORD = RoundRecord(round=3, requests=[FULL_REQUEST, EMPTY_REQUEST], candidates=[FULL_CANDIDATE, EMPTY_CANDIDATE],
                     decisions=[FULL_DECISION, EMPTY_DECISION], samples=[SAMPLE, SAMPLE_WITH_SOURCE],
                     scores=[SCORE], row=ROUND_ROW, run_id="run-42")


@pytest.fixture
def written(tmp_path) -> MetadataStore:
    # Function-scoped on purpose: mutation testing picks the tests that run a function, and a
    # shared fixture's write would count for the first test only.
    store = MetadataStore(tmp_path / "m.duckdb")
    write_round(store, RECORD)
    return store


def test_requests_read_back_field_by_field(written):
    rows = _rows(written, schema.SYNTHESIS_REQUESTS, "round = 3", "request_id")
    assert len(rows) == 2
    for got, want in zip(rows, (FULL_REQUEST, EMPTY_REQUEST)):
        assert got == {"round": 3, "request_id": want.request_id, "output_index": want.output_index,
                       "request_index": want.request_index, "strategy": want.strategy,
                       "target_cluster": want.target_cluster, "few_shot_ids": want.few_shot_ids,
                       "clustering_id": want.clustering_id, "generator_model": want.generator_model,
                       "sampling": _canonical(want.sampling), "gen_key": want.gen_key,
                       "raw_output": want.raw_output, "n_problems": want.n_problems,
                       "parse_issues": want.parse_issues, "status": want.status, "run_id": "run-42"}
    assert rows[0]["sampling"] == '{"n": 2, "seed": 11, "temperature": 0.7}'  # canonical: keys sorted


def test_candidates_read_back_field_by_field(written):
    rows = _rows(written, schema.SYNTHESIS_CANDIDATES, "round = 3", "candidate_id")
    assert len(rows) == 2
    full, empty = rows
    want = {name: getattr(FULL_CANDIDATE, name) for name in FULL_CANDIDATE.__dataclass_fields__}
    want.update(solution_sampling='{"seed": 5, "top_p": 0.9}', vote_groups="[[0], [1]]",
                problem_key=problem_key(FULL_CANDIDATE.problem), run_id="run-42")
    assert full == want
    assert full["problem_key"] == problem_key("what is 2+2?")  # the normalized problem, not the raw text
    optional = set(FULL_CANDIDATE.__dataclass_fields__) - {"candidate_id", "round", "request_id", "output_index",
                                                            "problem_index", "problem", "in_random_control"}
    assert {name: empty[name] for name in optional} == dict.fromkeys(optional)
    assert empty["in_random_control"] is False
    assert empty["problem_key"] == problem_key("Name a prime.") and empty["run_id"] == "run-42"


def test_decisions_read_back_field_by_field(written):
    rows = _rows(written, schema.SYNTHESIS_DECISIONS, "round = 3", "candidate_id")
    assert rows == [
        {"candidate_id": FULL_DECISION.candidate_id, "round": 3, "decision": "accepted", "stage": "cluster",
         "reason": "sparse_cluster", "sample_id": "syn:r3:0", "rule": '{"k": 8, "threshold": 2}', "run_id": "run-42"},
        {"candidate_id": EMPTY_DECISION.candidate_id, "round": 3, "decision": "rejected", "stage": "parse",
         "reason": "no_problem", "sample_id": None, "rule": "{}", "run_id": "run-42"}]


def test_accepted_samples_are_stored_like_seed_samples_and_load_back_unchanged(written, tmp_path):
    rows = _rows(written, schema.SAMPLES, "origin = 'synthetic'", "sample_id")
    assert [r["sample_id"] for r in rows] == ["syn:r3:0", "syn:r3:1"]
    for got, sample in zip(rows, (SAMPLE, SAMPLE_WITH_SOURCE)):
        assert got["content_hash"] == content_hash(sample.prompt, sample.response)
        assert got["dedup_key"] == dedup_key(sample.prompt, sample.response)
        assert got["problem_key"] == problem_key(sample.prompt)
        assert (got["origin"], got["split"], got["round"], got["run_id"]) == ("synthetic", "pool", 3, "run-42")
    assert [r["source"] for r in rows] == ["synthesis", "teacher-b"]  # a sample's own source is kept
    assert rows[0]["meta"] == '{"alpha": "/runs/a", "zeta": 1}'
    assert accepted_samples(written, [3]) == [replace(SAMPLE, source="synthesis"), SAMPLE_WITH_SOURCE]
    assert [s.meta for s in accepted_samples(written, [3])] == [{"alpha": "/runs/a", "zeta": 1}, {}]

    # The same sample put in by the seed path gets the same derived columns.
    seeds = MetadataStore(tmp_path / "seeds.duckdb")
    seeds.replace_samples(source="synthesis", origin="seed", samples=[SAMPLE], splits={}, rejections=[], run_id="x")
    seed_row = _rows(seeds, schema.SAMPLES, "TRUE", "sample_id")[0]
    for column in ("content_hash", "dedup_key", "problem_key", "prompt", "response", "answer", "category", "source",
                   "source_ref"):
        assert rows[0][column] == seed_row[column], column


def test_scores_and_the_rounds_row_read_back_field_by_field(written):
    (score,) = _rows(written, schema.SCORES, "TRUE", "score_id")
    score.pop("created_at")
    assert score == {"score_id": "score-before", "scope": "round:3:before", "metric": "g_vendi", "q": 1.0,
                     "value": 2.5, "entropy": 0.9163, "n": 10, "dim": 8, "n_excluded": 1, "embedding_key": "emb-1",
                     "config": '{"dim": 8, "q": 1}', "run_id": "run-42"}
    (row,) = _rows(written, schema.SYNTHESIS_ROUNDS, "TRUE", "round")
    row.pop("finished_at")
    assert row == {"round": 3, "status": "complete", "settings": '{"alpha": "/cfg", "zeta": [1, 2]}',
                   "settings_hash": "sh", "generator_model": "gen-fp", "teacher_model": "teacher-fp",
                   "embedding_key": "emb-1", "clustering_id": "clu-3", "pool_digest": "pd", "n_pool": 40, "k": 8,
                   "n_sparse": 3, "n_requests": 2, "n_candidates": 2, "n_verified": 1, "n_accepted": 1,
                   "g_vendi_before": 2.5, "g_vendi_after": 2.75, "g_vendi_random": None,
                   "report": '{"a": "/r", "z": 1}', "run_id": "run-42", "seed_source": "seeds-a",
                   # its pool digest "pd" is not the digest of the (empty) seed pool: the round is marked stale
                   "stale_reason": row["stale_reason"]}
    assert row["stale_reason"].startswith("round 3 was built on a pool that no longer exists")


def test_round_summary_parses_its_json_and_the_history_lists_complete_rounds(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    assert round_summary(store, 3) is None and round_history(store).height == 0
    write_round(store, replace(RECORD, row=replace(ROUND_ROW, g_vendi_random=2.625)))
    summary = round_summary(store, 3)
    assert summary["settings"] == {"alpha": "/cfg", "zeta": [1, 2]} and summary["report"] == {"a": "/r", "z": 1}
    assert summary["g_vendi_random"] == 2.625 and summary["n_pool"] == 40
    assert round_history(store).to_dicts() == [{"round": 3, "n_pool": 40, "accepted": 1, "g_vendi_before": 2.5,
                                                "g_vendi_after": 2.75, "g_vendi_random": 2.625}]


def test_a_round_without_rows_writes_only_its_rounds_row(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    write_round(store, RoundRecord(5, [], [], [], [], [], replace(ROUND_ROW, round=5), run_id=None))
    for table in (schema.SYNTHESIS_REQUESTS, schema.SYNTHESIS_CANDIDATES, schema.SYNTHESIS_DECISIONS):
        assert store.query(f"SELECT count(*) AS n FROM {table}")["n"][0] == 0
    assert round_history(store)["round"].to_list() == [5]
    assert round_summary(store, 5)["run_id"] is None


# -- the generation cache ----------------------------------------------------------------
def test_generation_keys_are_stable_across_versions():
    # A changed key orphans every cached (paid) generation, so the key of a fixed request is pinned.
    messages = [{"role": "system", "content": "Sé breve."}, {"role": "user", "content": "2+2?"}]
    assert generation_key("fp-1", messages, "seed=3;t=0.7") == "4f7877661e0d1fe78f78d5163cb508f2"
    payload = json.dumps({"sampling": "seed=3;t=0.7", "messages": messages, "model": "fp-1"}, sort_keys=True,
                         ensure_ascii=False)
    assert hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32] == "4f7877661e0d1fe78f78d5163cb508f2"


def test_cached_generations_store_readable_canonical_json(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    messages = [{"role": "user", "content": "¿Cuánto es 2+2?"}]
    put_generations(store, [GenerationRow("k1", "fp", messages, {"top_p": 1.0, "seed": 3}, ["4", "cuatro"], 1.5,
                                          "run-7"),
                            GenerationRow("k2", "fp", [], {}, [], None, None)])
    rows = _rows(store, schema.GENERATIONS, "TRUE", "gen_key")
    for row in rows:
        row.pop("created_at")
    assert rows == [{"gen_key": "k1", "model": "fp", "messages": '[{"role": "user", "content": "¿Cuánto es 2+2?"}]',
                     "sampling": '{"seed": 3, "top_p": 1.0}', "outputs": ["4", "cuatro"], "seconds": 1.5,
                     "run_id": "run-7"},
                    {"gen_key": "k2", "model": "fp", "messages": "[]", "sampling": "{}", "outputs": [],
                     "seconds": None, "run_id": None}]
    assert get_generations(store, ["k2", "k1", "k1"]) == {"k1": ["4", "cuatro"], "k2": []}


# -- pools and staleness -------------------------------------------------------------------
def _seed(store: MetadataStore, source: str, ids: list[str], holdout: tuple[str, ...] = ()) -> None:
    store.replace_samples(source=source, origin="seed", samples=[Sample(i, f"p {i}", "r", source=source) for i in ids],
                          splits={i: "holdout" for i in holdout}, rejections=[], run_id="seed")


def _round(store: MetadataStore, round: int, accepted: list[str], seed_source: str | None = None) -> None:
    """Write round `round` as built on its current pool, accepting new samples `accepted`."""
    pool = [s.sample_id for s in pool_samples(store, round, seed_source)]
    samples = [Sample(i, f"p {i}", "r") for i in accepted]
    row = replace(ROUND_ROW, round=round, pool_digest=pool_digest(pool), seed_source=seed_source, n_pool=len(pool))
    write_round(store, RoundRecord(round, [], [], [], samples, [], row))


def test_a_rounds_pool_is_the_seed_pool_and_every_earlier_rounds_samples(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    _seed(store, "a", ["a1", "a2", "a3"], holdout=("a3",))
    _seed(store, "b", ["b1"])
    _round(store, 1, ["s1"])
    _round(store, 2, ["s2"])
    _round(store, 3, ["s3"])

    def ids(samples: list[Sample]) -> list[str]:
        return [s.sample_id for s in samples]

    assert ids(pool_samples(store, 1)) == ["a1", "a2", "b1"]  # the holdout split is never in a pool
    assert ids(pool_samples(store, 3)) == ["a1", "a2", "b1", "s1", "s2"]
    assert ids(pool_samples(store, 3, "a")) == ["a1", "a2", "s1", "s2"]
    assert ids(pool_samples(store, 2, "b")) == ["b1", "s1"]
    assert ids(pool_samples(store, 1, "missing")) == []
    assert ids(accepted_samples(store, [3, 1])) == ["s1", "s3"]
    assert ids(accepted_samples(store, [2])) == ["s2"]
    assert accepted_samples(store, []) == [] and accepted_samples(store, [9]) == []


def test_round_scopes_name_the_round_and_the_score():
    assert round_scope(3) == "round:3"
    assert [round_scope(12, s) for s in ("before", "after", "random")] == [
        "round:12:before", "round:12:after", "round:12:random"]


def test_pool_digest_is_the_digest_of_the_sorted_ids():
    assert pool_digest(["b", "a", "c"]) == pool_digest(["c", "b", "a"])
    assert len({pool_digest(["a", "b"]), pool_digest(["a"]), pool_digest([]), pool_digest(["a", "b", "c"])}) == 4


def test_rounds_built_on_a_replaced_round_are_stale_until_rebuilt_in_order(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    _seed(store, "a", ["a1", "a2"])
    for r, accepted in ((1, ["s1"]), (2, ["s2"]), (3, ["s3"]), (4, ["s4"])):
        _round(store, r, accepted)
    assert stale_rounds(store) == {} and refresh_staleness(store) == {}

    _round(store, 1, ["s1", "s1b"])  # round 1 again, accepting more: rounds 2 to 4 started from the old pool
    stale = {2: ("round 2 was built on a pool that no longer exists (an earlier round was re-run, or the seed pool "
                 "changed; the pool now holds 4 samples): re-materialize round 2 and every round after it, in order"),
             3: "round 3 was built on round 2, which is stale: re-materialize rounds 2..3 in order",
             4: "round 4 was built on round 2, which is stale: re-materialize rounds 2..4 in order"}
    assert stale_rounds(store) == stale and refresh_staleness(store) == stale

    _round(store, 2, ["s2"])  # rebuilt on the new pool; round 3's pool (seeds, s1, s1b, s2) is still not its own
    assert stale_rounds(store) == {
        3: ("round 3 was built on a pool that no longer exists (an earlier round was re-run, or the seed pool "
            "changed; the pool now holds 5 samples): re-materialize round 3 and every round after it, in order"),
        4: "round 4 was built on round 3, which is stale: re-materialize rounds 3..4 in order"}
    _round(store, 3, ["s3"])
    _round(store, 4, ["s4"])
    assert stale_rounds(store) == {} and refresh_staleness(store) == {}


def test_staleness_follows_the_seed_pool_of_the_rounds_own_source(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    _seed(store, "a", ["a1", "a2"])
    _seed(store, "b", ["b1"])
    _round(store, 1, ["s1"], seed_source="a")
    _round(store, 2, ["s2"], seed_source="a")
    _seed(store, "b", ["b1", "b2"])  # another source changed: not in these rounds' pools
    assert refresh_staleness(store) == {}
    _seed(store, "a", ["a1"])  # their own source changed
    assert set(refresh_staleness(store)) == {1, 2}
    assert stale_rounds(store)[1].startswith("round 1 was built on a pool that no longer exists")
    assert stale_rounds(store)[2] == "round 2 was built on round 1, which is stale: re-materialize rounds 1..2 in order"
    _seed(store, "a", ["a1", "a2"])  # restored: the rounds match their pools again, and say so
    assert refresh_staleness(store) == {} and stale_rounds(store) == {}
