"""Synthesis tables: migration 2, the generation cache, and the one-transaction round write."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prismatic_assets.core.samples import Sample
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
    completed_rounds,
    generation_key,
    get_generations,
    put_generations,
    round_scope,
    round_summary,
    write_round,
)

SYNTH_TABLES = (schema.GENERATIONS, schema.SYNTHESIS_REQUESTS, schema.SYNTHESIS_CANDIDATES,
                schema.SYNTHESIS_DECISIONS, schema.SYNTHESIS_ROUNDS)


def _count(store: MetadataStore, table: str, where: str = "TRUE") -> int:
    return int(store.query(f"SELECT count(*) AS n FROM {table} WHERE {where}")["n"][0])


def test_later_migrations_upgrade_a_version_1_store(tmp_path, monkeypatch):
    path = tmp_path / "m.duckdb"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS_LIST", schema.MIGRATIONS_LIST[:1])
        m.setattr(schema, "LATEST_VERSION", 1)
        assert MetadataStore(path).schema_version() == 1
    store = MetadataStore(path)
    assert store.schema_version() == schema.LATEST_VERSION
    tables = set(store.query("SELECT table_name FROM information_schema.tables")["table_name"].to_list())
    assert set(SYNTH_TABLES) | {schema.EVAL_RESULTS} <= tables


def test_generation_key_depends_on_model_messages_and_sampling():
    msgs = [{"role": "user", "content": "x"}]
    base = generation_key("m", msgs, "s1")
    assert base == generation_key("m", [dict(msgs[0])], "s1")
    assert len({base, generation_key("m2", msgs, "s1"), generation_key("m", msgs, "s2"),
                generation_key("m", [{"role": "user", "content": "y"}], "s1")}) == 4


def test_generation_cache_round_trip_and_overwrite(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    rows = [GenerationRow(f"k{i}", "m", [{"role": "user", "content": str(i)}], {"seed": i}, [f"out{i}", "b"], 0.5, "r")
            for i in range(3)]
    put_generations(store, rows)
    put_generations(store, rows[:1])  # re-putting does not duplicate
    assert get_generations(store, ["k0", "k2", "missing"]) == {"k0": ["out0", "b"], "k2": ["out2", "b"]}
    assert get_generations(store, []) == {}
    assert _count(store, schema.GENERATIONS) == 3
    sampling = store.query(f"SELECT sampling FROM {schema.GENERATIONS} WHERE gen_key = 'k1'")["sampling"][0]
    assert json.loads(sampling) == {"seed": 1}


def _record(round: int, clustering_id: str, n_candidates: int = 3, n_accepted: int = 1) -> RoundRecord:
    requests = [RequestRow(round, f"r{round}:q0000", 0, 0, "random", None, ["seed:1", "seed:2"], clustering_id, "gen",
                           {"seed": 1}, "g0", "<problem>...</problem>", n_candidates, [], "parsed")]
    candidates = [CandidateRow(f"r{round}:q0000:o0:p{k}", round, f"r{round}:q0000", 0, k, f"problem {round} {k}",
                               solutions=["a \\boxed{1}", "b \\boxed{1}", "c"], answers=["1", "1", None],
                               vote_groups=[[0, 1]], agreement=2, vote_reason="accepted", cluster=k, similarity=0.5,
                               cluster_is_sparse=k < n_accepted)
                  for k in range(n_candidates)]
    samples = [Sample(f"syn:r{round}:{k}", f"problem {round} {k}", "a \\boxed{1}", answer="1", source="synthesis",
                      source_ref=f"r{round}:q0000:o0:p{k}", meta={"round": round}) for k in range(n_accepted)]
    decisions = [DecisionRow(c.candidate_id, round, "accepted" if k < n_accepted else "rejected", "cluster",
                             "sparse_cluster" if k < n_accepted else "dense_cluster",
                             f"syn:r{round}:{k}" if k < n_accepted else None, {"k": 3})
                 for k, c in enumerate(candidates)]
    scores = [ScoreRow(f"{clustering_id}-{s}", round_scope(round, s), 1.0, 2.0, np.log(2.0), 10, 8, 0, "key", {})
              for s in ("before", "after", "random")]
    row = RoundRow(round, {"seed": 0}, "h", "gen", "teach", "key", clustering_id, "pool", 10, 3, 1, 1,
                   n_candidates, n_candidates, n_accepted, 2.0, 2.1, 2.05, {"accepted": n_accepted})
    return RoundRecord(round, requests, candidates, decisions, samples, scores, row, run_id="run")


def _store_clustering(store: MetadataStore, clustering_id: str, scope: str) -> None:
    store.replace_clustering(clustering_id=clustering_id, scope=scope, embedding_key="key", k=2, n=3, niter=20,
                             seed=0, sparse_ratio=0.5, threshold_size=2, sizes=np.array([1, 2]),
                             sparse=np.array([True, False]), centroids=np.eye(2, 4), member_ids=["a", "b", "c"],
                             assignments=np.array([0, 1, 1]), similarities=np.ones(3), config={}, run_id="run")


def test_write_round_replaces_its_own_rows_only(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    store.replace_samples(source="unit", origin="seed", samples=[Sample("seed:1", "p", "r", source="unit")],
                          splits={}, rejections=[], run_id="r")
    _store_clustering(store, "c1", round_scope(1))
    _store_clustering(store, "c2", round_scope(2))
    write_round(store, _record(1, "c1", n_candidates=3, n_accepted=2))
    write_round(store, _record(2, "c2", n_candidates=2, n_accepted=1))
    assert completed_rounds(store) == [1, 2]

    # Round 1 again, with other results and another clustering: old round-1 rows are gone, round 2 untouched.
    _store_clustering(store, "c1b", round_scope(1))
    for _ in range(2):
        write_round(store, _record(1, "c1b", n_candidates=4, n_accepted=1))
    assert _count(store, schema.SYNTHESIS_CANDIDATES, "round = 1") == 4
    assert _count(store, schema.SYNTHESIS_DECISIONS, "round = 1") == 4
    assert _count(store, schema.SYNTHESIS_REQUESTS, "round = 1") == 1
    assert _count(store, schema.SAMPLES, "origin = 'synthetic' AND round = 1") == 1
    assert _count(store, schema.SAMPLES, "origin = 'synthetic' AND round = 2") == 1
    assert _count(store, schema.SAMPLES, "origin = 'seed'") == 1
    assert _count(store, schema.SCORES, "scope LIKE 'round:1:%'") == 3
    assert _count(store, schema.SCORES, "scope LIKE 'round:2:%'") == 3
    assert store.query(f"SELECT clustering_id FROM {schema.CLUSTERINGS} ORDER BY 1")["clustering_id"].to_list() \
        == ["c1b", "c2"]
    assert _count(store, schema.CLUSTERS, "clustering_id = 'c1'") == 0
    summary = round_summary(store, 1)
    assert summary["clustering_id"] == "c1b" and summary["report"] == {"accepted": 1}
    assert round_summary(store, 7) is None
    # Lists and JSON are queryable as such.
    row = store.query(f"SELECT few_shot_ids, list_count(few_shot_ids) AS n FROM {schema.SYNTHESIS_REQUESTS} "
                      f"WHERE round = 2").row(0, named=True)
    assert row["few_shot_ids"] == ["seed:1", "seed:2"] and row["n"] == 2
    answers = store.query(f"SELECT answers FROM {schema.SYNTHESIS_CANDIDATES} WHERE round = 2 LIMIT 1")["answers"][0]
    assert answers.to_list() == ["1", "1", None]


def test_a_failed_round_write_leaves_the_previous_state(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    _store_clustering(store, "c1", round_scope(1))
    write_round(store, _record(1, "c1", n_candidates=3, n_accepted=2))
    bad = _record(1, "c1", n_candidates=3, n_accepted=2)
    dup = list(bad.candidates) + [bad.candidates[0]]  # primary-key violation inside the transaction
    with pytest.raises(Exception, match="(?i)constraint|duplicate"):
        write_round(store, RoundRecord(1, bad.requests, dup, bad.decisions, bad.samples, bad.scores, bad.row, "x"))
    assert _count(store, schema.SYNTHESIS_CANDIDATES) == 3
    assert _count(store, schema.SAMPLES, "origin = 'synthetic'") == 2
    assert completed_rounds(store) == [1]
