"""Store functions for synthesis rounds: the generation cache and a round's provenance rows.

Two kinds of writes, with different lifetimes:
- `put_generations` adds LLM outputs to the generation cache as they arrive, keyed by a
  hash of (model fingerprint, messages, sampling key incl. seed). The cache is never cleared by a
  round: a retried round reads it back and calls the LLM only for what is missing.
- `write_round` replaces everything one round produced (requests, candidates, decisions,
  accepted samples, the three G-Vendi scores, stale clusterings of its scope and the
  rounds row) in ONE transaction, so a crash leaves the previous state, and a re-run never
  duplicates rows.

This module knows tables and rows; the round itself is computed in
`prismatic_assets.pipeline.round`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import polars as pl
import pyarrow as pa

from prismatic_assets.core.ids import digest
from prismatic_assets.core.samples import Sample, problem_key
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

SYNTHETIC_ORIGIN = "synthetic"
SYNTHESIS_SOURCE = "synthesis"


def round_scope(round: int, suffix: str | None = None) -> str:
    """The scope of a round's clustering ('round:3') and scores ('round:3:before')."""
    return f"round:{round}" if suffix is None else f"round:{round}:{suffix}"


# -- generation cache --------------------------------------------------------------------
def generation_key(model_fingerprint: str, messages: Sequence[Mapping[str, str]], sampling_key: str) -> str:
    """The cache key of one chat request: same model, messages and sampling -> same outputs.

    `model_fingerprint` is the generator's `fingerprint` (derived from the weights, not the
    name), so a changed model under an unchanged name misses the cache.
    """
    payload = json.dumps({"model": model_fingerprint, "messages": list(messages), "sampling": sampling_key},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class GenerationRow:
    gen_key: str
    model: str
    messages: list[dict[str, str]]
    sampling: dict[str, Any]
    outputs: list[str]
    seconds: float | None = None
    run_id: str | None = None


def get_generations(store: MetadataStore, gen_keys: Sequence[str]) -> dict[str, list[str]]:
    """Cached outputs for the keys that have them."""
    if not gen_keys:
        return {}
    with store.connect() as con:
        con.register("wanted", pa.table({"gen_key": list(dict.fromkeys(gen_keys))}))
        rows = con.execute(f"SELECT g.gen_key, g.outputs FROM {S.GENERATIONS} g JOIN wanted USING (gen_key)"
                           ).fetchall()
    return {key: list(outputs) for key, outputs in rows}


def put_generations(store: MetadataStore, rows: Sequence[GenerationRow]) -> None:
    """Add (or overwrite) cached outputs; one transaction per call."""
    if not rows:
        return
    table = pa.table({
        "gen_key": [r.gen_key for r in rows],
        "model": [r.model for r in rows],
        "messages": [json.dumps(r.messages, ensure_ascii=False) for r in rows],
        "sampling": [json.dumps(r.sampling, sort_keys=True) for r in rows],
        "outputs": pa.array([list(r.outputs) for r in rows], type=pa.list_(pa.string())),
        "seconds": pa.array([r.seconds for r in rows], type=pa.float64()),
        "run_id": pa.array([r.run_id for r in rows], type=pa.string()),
    })
    with store.transaction() as con:
        con.register("incoming", table)
        con.execute(f"INSERT OR REPLACE INTO {S.GENERATIONS} (gen_key, model, messages, sampling, outputs, "
                    f"seconds, run_id) SELECT gen_key, model, messages::JSON, sampling::JSON, outputs, seconds, "
                    f"run_id FROM incoming")


# -- a round's rows ----------------------------------------------------------------------
@dataclass(frozen=True)
class RequestRow:
    """One generated output of one problem request, parsed or not."""

    round: int
    request_id: str
    output_index: int
    request_index: int
    strategy: str
    target_cluster: int | None
    few_shot_ids: list[str]
    clustering_id: str
    generator_model: str
    sampling: dict[str, Any]
    gen_key: str
    raw_output: str | None
    n_problems: int
    parse_issues: list[str]
    status: str  # 'parsed' | 'parse_failed' | 'empty'


@dataclass
class CandidateRow:
    """The evidence gathered for one parsed problem; filled stage by stage."""

    candidate_id: str
    round: int
    request_id: str
    output_index: int
    problem_index: int
    problem: str
    duplicate_kind: str | None = None
    duplicate_source: str | None = None
    duplicate_of: str | None = None
    contamination_label: str | None = None
    contamination_ngram: str | None = None
    teacher_model: str | None = None
    solution_sampling: dict[str, Any] | None = None
    solution_gen_key: str | None = None
    solutions: list[str] | None = None
    answers: list[str | None] | None = None
    vote_groups: list[list[int]] | None = None
    agreement: int | None = None
    vote_reason: str | None = None
    majority_answer: str | None = None
    response: str | None = None
    content_hash: str | None = None
    embedding_key: str | None = None
    embedding_error: str | None = None
    cluster: int | None = None
    similarity: float | None = None
    cluster_is_sparse: bool | None = None
    cluster_size: int | None = None
    in_random_control: bool = False

    @property
    def problem_key(self) -> str:
        return problem_key(self.problem)


@dataclass(frozen=True)
class DecisionRow:
    candidate_id: str
    round: int
    decision: str  # 'accepted' | 'rejected'
    stage: str
    reason: str
    sample_id: str | None = None
    rule: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreRow:
    score_id: str
    scope: str
    q: float
    value: float
    entropy: float
    n: int
    dim: int
    n_excluded: int
    embedding_key: str
    config: dict[str, Any]


@dataclass(frozen=True)
class RoundRow:
    round: int
    settings: dict[str, Any]
    settings_hash: str
    generator_model: str
    teacher_model: str
    embedding_key: str
    clustering_id: str
    pool_digest: str
    n_pool: int
    k: int
    n_sparse: int
    n_requests: int
    n_candidates: int
    n_verified: int
    n_accepted: int
    g_vendi_before: float
    g_vendi_after: float
    g_vendi_random: float | None
    report: dict[str, Any]
    seed_source: str | None = None  # the seed samples' source the pool was drawn from (None: all)


@dataclass(frozen=True)
class RoundRecord:
    """Everything `write_round` replaces for one round."""

    round: int
    requests: Sequence[RequestRow]
    candidates: Sequence[CandidateRow]
    decisions: Sequence[DecisionRow]
    samples: Sequence[Sample]
    scores: Sequence[ScoreRow]
    row: RoundRow
    run_id: str | None = None


def _requests_table(rows: Sequence[RequestRow], run_id: str | None) -> pa.Table:
    return pa.table({
        "round": pa.array([r.round for r in rows], type=pa.int32()),
        "request_id": pa.array([r.request_id for r in rows], type=pa.string()),
        "output_index": pa.array([r.output_index for r in rows], type=pa.int32()),
        "request_index": pa.array([r.request_index for r in rows], type=pa.int32()),
        "strategy": pa.array([r.strategy for r in rows], type=pa.string()),
        "target_cluster": pa.array([r.target_cluster for r in rows], type=pa.int32()),
        "few_shot_ids": pa.array([list(r.few_shot_ids) for r in rows], type=pa.list_(pa.string())),
        "clustering_id": pa.array([r.clustering_id for r in rows], type=pa.string()),
        "generator_model": pa.array([r.generator_model for r in rows], type=pa.string()),
        "sampling": pa.array([json.dumps(r.sampling, sort_keys=True) for r in rows], type=pa.string()),
        "gen_key": pa.array([r.gen_key for r in rows], type=pa.string()),
        "raw_output": pa.array([r.raw_output for r in rows], type=pa.string()),
        "n_problems": pa.array([r.n_problems for r in rows], type=pa.int32()),
        "parse_issues": pa.array([list(r.parse_issues) for r in rows], type=pa.list_(pa.string())),
        "status": pa.array([r.status for r in rows], type=pa.string()),
        "run_id": pa.array([run_id] * len(rows), type=pa.string()),
    })


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def _candidates_table(rows: Sequence[CandidateRow], run_id: str | None) -> pa.Table:
    def col(name: str, typ: pa.DataType) -> pa.Array:
        return pa.array([getattr(r, name) for r in rows], type=typ)

    strings = pa.list_(pa.string())
    return pa.table({
        "candidate_id": col("candidate_id", pa.string()),
        "round": col("round", pa.int32()),
        "request_id": col("request_id", pa.string()),
        "output_index": col("output_index", pa.int32()),
        "problem_index": col("problem_index", pa.int32()),
        "problem": col("problem", pa.string()),
        "problem_key": pa.array([r.problem_key for r in rows], type=pa.string()),
        "duplicate_kind": col("duplicate_kind", pa.string()),
        "duplicate_source": col("duplicate_source", pa.string()),
        "duplicate_of": col("duplicate_of", pa.string()),
        "contamination_label": col("contamination_label", pa.string()),
        "contamination_ngram": col("contamination_ngram", pa.string()),
        "teacher_model": col("teacher_model", pa.string()),
        "solution_sampling": pa.array([_json_or_none(r.solution_sampling) for r in rows], type=pa.string()),
        "solution_gen_key": col("solution_gen_key", pa.string()),
        "solutions": col("solutions", strings),
        "answers": col("answers", strings),
        "vote_groups": pa.array([_json_or_none(r.vote_groups) for r in rows], type=pa.string()),
        "agreement": col("agreement", pa.int32()),
        "vote_reason": col("vote_reason", pa.string()),
        "majority_answer": col("majority_answer", pa.string()),
        "response": col("response", pa.string()),
        "content_hash": col("content_hash", pa.string()),
        "embedding_key": col("embedding_key", pa.string()),
        "embedding_error": col("embedding_error", pa.string()),
        "cluster": col("cluster", pa.int32()),
        "similarity": col("similarity", pa.float64()),
        "cluster_is_sparse": col("cluster_is_sparse", pa.bool_()),
        "cluster_size": col("cluster_size", pa.int32()),
        "in_random_control": col("in_random_control", pa.bool_()),
        "run_id": pa.array([run_id] * len(rows), type=pa.string()),
    })


def _decisions_table(rows: Sequence[DecisionRow], run_id: str | None) -> pa.Table:
    return pa.table({
        "candidate_id": pa.array([r.candidate_id for r in rows], type=pa.string()),
        "round": pa.array([r.round for r in rows], type=pa.int32()),
        "decision": pa.array([r.decision for r in rows], type=pa.string()),
        "stage": pa.array([r.stage for r in rows], type=pa.string()),
        "reason": pa.array([r.reason for r in rows], type=pa.string()),
        "sample_id": pa.array([r.sample_id for r in rows], type=pa.string()),
        "rule": pa.array([json.dumps(r.rule, sort_keys=True) for r in rows], type=pa.string()),
        "run_id": pa.array([run_id] * len(rows), type=pa.string()),
    })


def _samples_table(samples: Sequence[Sample], round: int, run_id: str | None) -> pa.Table:
    # Same columns as MetadataStore.replace_samples, which cannot join this transaction.
    return pa.table({
        "sample_id": pa.array([s.sample_id for s in samples], type=pa.string()),
        "content_hash": pa.array([s.content_hash for s in samples], type=pa.string()),
        "dedup_key": pa.array([s.dedup_key for s in samples], type=pa.string()),
        "problem_key": pa.array([problem_key(s.prompt) for s in samples], type=pa.string()),
        "prompt": pa.array([s.prompt for s in samples], type=pa.string()),
        "response": pa.array([s.response for s in samples], type=pa.string()),
        "answer": pa.array([s.answer for s in samples], type=pa.string()),
        "category": pa.array([s.category for s in samples], type=pa.string()),
        "source": pa.array([s.source or SYNTHESIS_SOURCE for s in samples], type=pa.string()),
        "source_ref": pa.array([s.source_ref for s in samples], type=pa.string()),
        "origin": pa.array([SYNTHETIC_ORIGIN] * len(samples), type=pa.string()),
        "split": pa.array(["pool"] * len(samples), type=pa.string()),
        "round": pa.array([round] * len(samples), type=pa.int32()),
        "meta": pa.array([json.dumps(s.meta, sort_keys=True, default=str) for s in samples], type=pa.string()),
        "run_id": pa.array([run_id] * len(samples), type=pa.string()),
    })


def write_round(store: MetadataStore, record: RoundRecord) -> None:
    """Replace everything round `record.round` produced, in one transaction.

    Deleted first: the round's requests, candidates, decisions, synthetic samples, its
    before/after/random scores, clusterings of its scope other than the one this run used,
    and its rounds row. Embeddings and cached generations are content-keyed caches and stay.
    """
    r = record.round
    run_id = record.run_id
    score_scopes = [round_scope(r, s) for s in ("before", "after", "random")]
    with store.transaction() as con:
        for table in (S.SYNTHESIS_REQUESTS, S.SYNTHESIS_CANDIDATES, S.SYNTHESIS_DECISIONS, S.SYNTHESIS_ROUNDS):
            con.execute(f"DELETE FROM {table} WHERE round = ?", [r])
        con.execute(f"DELETE FROM {S.SAMPLES} WHERE origin = ? AND round = ?", [SYNTHETIC_ORIGIN, r])
        con.execute(f"DELETE FROM {S.SCORES} WHERE scope IN (?, ?, ?)", score_scopes)
        stale = [row[0] for row in con.execute(
            f"SELECT clustering_id FROM {S.CLUSTERINGS} WHERE scope = ? AND clustering_id <> ?",
            [round_scope(r), record.row.clustering_id]).fetchall()]
        for clustering_id in stale:
            for table in (S.CLUSTERINGS, S.CLUSTERS, S.CLUSTER_MEMBERS):
                con.execute(f"DELETE FROM {table} WHERE clustering_id = ?", [clustering_id])

        con.register("incoming_requests", _requests_table(record.requests, run_id))
        con.execute(f"INSERT INTO {S.SYNTHESIS_REQUESTS} BY NAME SELECT * REPLACE (sampling::JSON AS sampling) "
                    f"FROM incoming_requests")
        con.register("incoming_candidates", _candidates_table(record.candidates, run_id))
        con.execute(f"INSERT INTO {S.SYNTHESIS_CANDIDATES} BY NAME SELECT * REPLACE (solution_sampling::JSON AS "
                    f"solution_sampling, vote_groups::JSON AS vote_groups) FROM incoming_candidates")
        con.register("incoming_decisions", _decisions_table(record.decisions, run_id))
        con.execute(f"INSERT INTO {S.SYNTHESIS_DECISIONS} BY NAME SELECT * REPLACE (rule::JSON AS rule) "
                    f"FROM incoming_decisions")
        con.register("incoming_samples", _samples_table(record.samples, r, run_id))
        con.execute(f"INSERT INTO {S.SAMPLES} BY NAME SELECT * REPLACE (meta::JSON AS meta) FROM incoming_samples")
        for sc in record.scores:
            con.execute(f"DELETE FROM {S.SCORES} WHERE score_id = ?", [sc.score_id])
            con.execute(f"INSERT INTO {S.SCORES} (score_id, scope, metric, q, value, entropy, n, dim, n_excluded, "
                        f"embedding_key, config, run_id) VALUES (?, ?, 'g_vendi', ?, ?, ?, ?, ?, ?, ?, ?::JSON, ?)",
                        [sc.score_id, sc.scope, float(sc.q), float(sc.value), float(sc.entropy), sc.n, sc.dim,
                         sc.n_excluded, sc.embedding_key, json.dumps(sc.config, sort_keys=True), run_id])
        row = record.row
        con.execute(
            f"INSERT INTO {S.SYNTHESIS_ROUNDS} (round, status, settings, settings_hash, generator_model, "
            f"teacher_model, embedding_key, clustering_id, pool_digest, n_pool, k, n_sparse, n_requests, "
            f"n_candidates, n_verified, n_accepted, g_vendi_before, g_vendi_after, g_vendi_random, report, run_id, "
            f"seed_source, stale_reason) "
            f"VALUES (?, 'complete', ?::JSON, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::JSON, ?, ?, NULL)",
            [r, json.dumps(row.settings, sort_keys=True, default=str), row.settings_hash, row.generator_model,
             row.teacher_model, row.embedding_key, row.clustering_id, row.pool_digest, row.n_pool, row.k,
             row.n_sparse, row.n_requests, row.n_candidates, row.n_verified, row.n_accepted,
             float(row.g_vendi_before), float(row.g_vendi_after),
             None if row.g_vendi_random is None else float(row.g_vendi_random),
             json.dumps(row.report, sort_keys=True, default=str), run_id, row.seed_source])
        _mark_stale(con)  # later rounds built on what this round replaced


# -- pools and staleness -------------------------------------------------------------------
def pool_where(round: int, seed_source: str | None) -> tuple[str, list[Any]]:
    """The SQL condition (and its parameters) selecting round `round`'s pool from the samples
    table: the seed pool (of `seed_source`, else every seed source) plus every sample
    accepted in an earlier round. Round stages load the pool with it; staleness checks
    recompute the pool's digest with it."""
    seed_clause = "origin = 'seed' AND split = 'pool'" + (" AND source = ?" if seed_source else "")
    params: list[Any] = ([seed_source] if seed_source else []) + [round]
    return f"({seed_clause}) OR (origin = '{SYNTHETIC_ORIGIN}' AND round < ?)", params


def pool_samples(store: MetadataStore, round: int, seed_source: str | None = None) -> list[Sample]:
    """Round `round`'s pool (see `pool_where`), ordered by sample_id."""
    where, params = pool_where(round, seed_source)
    return store.load_samples(where=where, params=params)


def accepted_samples(store: MetadataStore, rounds: Sequence[int]) -> list[Sample]:
    """The samples accepted in `rounds` (none for an empty list), ordered by sample_id."""
    if not rounds:
        return []
    marks = ",".join("?" for _ in rounds)
    return store.load_samples(where=f"origin = '{SYNTHETIC_ORIGIN}' AND round IN ({marks})",
                              params=[int(r) for r in rounds])


def pool_digest(sample_ids: Sequence[str]) -> str:
    """The digest stored with a round: which samples its pool held (in sample_id order)."""
    return digest(sorted(sample_ids))


def _mark_stale(con: Any) -> dict[int, str]:
    """Recompute every complete round's staleness and store it; return {round: reason}.

    Round r is stale when the pool it would start from now differs from the one it was
    built on (an earlier round was re-run, or the seed pool changed), or when an earlier
    round is stale (it was built on that round's accepted samples)."""
    rows = con.execute(f"SELECT round, pool_digest, seed_source, stale_reason FROM {S.SYNTHESIS_ROUNDS} "
                       f"WHERE status = 'complete' ORDER BY round").fetchall()
    stale: dict[int, str] = {}
    first_stale: int | None = None
    for round, stored, seed_source, previous in rows:
        where, params = pool_where(round, seed_source)
        ids = [r[0] for r in con.execute(f"SELECT sample_id FROM {S.SAMPLES} WHERE {where}", params).fetchall()]
        if first_stale is not None:
            reason = (f"round {round} was built on round {first_stale}, which is stale: re-materialize rounds "
                      f"{first_stale}..{round} in order")
        elif pool_digest(ids) != stored:
            reason = (f"round {round} was built on a pool that no longer exists (an earlier round was re-run, or the "
                      f"seed pool changed; the pool now holds {len(ids)} samples): re-materialize round {round} and "
                      f"every round after it, in order")
        else:
            reason = None
        if reason is not None:
            first_stale = round if first_stale is None else first_stale
            stale[round] = reason
        if reason != previous:
            con.execute(f"UPDATE {S.SYNTHESIS_ROUNDS} SET stale_reason = ? WHERE round = ?", [reason, round])
    return stale


def refresh_staleness(store: MetadataStore) -> dict[int, str]:
    """Check every complete round against the current pool; store and return {stale round: reason}."""
    with store.transaction() as con:
        return _mark_stale(con)


def stale_rounds(store: MetadataStore) -> dict[int, str]:
    """The stored staleness: {round: reason} for rounds marked stale (see `refresh_staleness`)."""
    rows = store.query(f"SELECT round, stale_reason FROM {S.SYNTHESIS_ROUNDS} WHERE status = 'complete' "
                       f"AND stale_reason IS NOT NULL ORDER BY round")
    return dict(zip(rows["round"].to_list(), rows["stale_reason"].to_list()))


# -- reading rounds ----------------------------------------------------------------------
def completed_rounds(store: MetadataStore) -> list[int]:
    """The rounds with a rounds row (written only when a round finished), ascending."""
    return store.query(f"SELECT round FROM {S.SYNTHESIS_ROUNDS} WHERE status = 'complete' ORDER BY round"
                       )["round"].to_list()


def round_history(store: MetadataStore) -> pl.DataFrame:
    """Every complete round's pool size, accepted count and G-Vendi before/after/random, by round."""
    return store.query(f"SELECT round, n_pool, n_accepted AS accepted, g_vendi_before, g_vendi_after, "
                       f"g_vendi_random FROM {S.SYNTHESIS_ROUNDS} WHERE status = 'complete' ORDER BY round")


def round_summary(store: MetadataStore, round: int) -> dict[str, Any] | None:
    """The rounds row of one round as a dict (report and settings parsed), None if absent."""
    df = store.query(f"SELECT * FROM {S.SYNTHESIS_ROUNDS} WHERE round = ?", [round])
    if df.height == 0:
        return None
    row = df.row(0, named=True)
    for key in ("settings", "report"):
        if isinstance(row[key], str):
            row[key] = json.loads(row[key])
    return row
