"""Lineage questions about synthesis rounds, one SQL query each (DuckDB, named parameters).

    lineage(store, "sample_origin", sample_id="syn:r1:...")   # round, request, parents, votes, cluster
    lineage(store, "round_funnel", round=1)                   # rejections per stage and reason

`LINEAGE_QUERIES` holds the SQL, to read or to run elsewhere (`duckdb data/prismatic.duckdb`).
This module reads; the rounds are written by `store.synthesis_tables.write_round`.
"""

from __future__ import annotations

import polars as pl

from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

#: One query per lineage question, with its parameter in `$name` form.
LINEAGE_QUERIES: dict[str, str] = {
    # Where did this accepted sample come from? Round, request, few-shot parents, strategy,
    # target cluster, generator and sampling, raw output, teacher and votes, cluster.
    "sample_origin": f"""
        SELECT s.sample_id, s.round, c.candidate_id, c.request_id, q.strategy, q.target_cluster,
               q.few_shot_ids, q.generator_model, q.sampling, q.raw_output, c.problem,
               c.teacher_model, c.solution_sampling, c.solutions, c.answers, c.agreement,
               c.majority_answer, c.cluster, c.similarity, c.cluster_is_sparse, c.cluster_size,
               q.clustering_id, d.decision, d.reason
        FROM {S.SAMPLES} s
        JOIN {S.SYNTHESIS_DECISIONS} d ON d.sample_id = s.sample_id
        JOIN {S.SYNTHESIS_CANDIDATES} c ON c.candidate_id = d.candidate_id
        JOIN {S.SYNTHESIS_REQUESTS} q
          ON q.round = c.round AND q.request_id = c.request_id AND q.output_index = c.output_index
        WHERE s.sample_id = $sample_id""",
    # The few-shot parents of a sample, and where each parent came from (seed or a round).
    "sample_parents": f"""
        SELECT d.sample_id AS child_id, p.position, p.parent_id, par.origin AS parent_origin,
               par.source AS parent_source, par.round AS parent_round, par.prompt AS parent_prompt
        FROM {S.SYNTHESIS_DECISIONS} d
        JOIN {S.SYNTHESIS_CANDIDATES} c ON c.candidate_id = d.candidate_id
        JOIN {S.SYNTHESIS_REQUESTS} q
          ON q.round = c.round AND q.request_id = c.request_id AND q.output_index = c.output_index
        CROSS JOIN LATERAL (SELECT unnest(q.few_shot_ids) AS parent_id,
                                   generate_subscripts(q.few_shot_ids, 1) AS position) p
        LEFT JOIN {S.SAMPLES} par ON par.sample_id = p.parent_id
        WHERE d.sample_id = $sample_id
        ORDER BY p.position""",
    # How many candidates each stage of a round rejected, and why.
    "round_funnel": f"""
        SELECT stage, decision, reason, count(*) AS n
        FROM {S.SYNTHESIS_DECISIONS}
        WHERE round = $round
        GROUP BY stage, decision, reason
        ORDER BY list_position(['hygiene', 'verification', 'gradient', 'cluster'], stage), reason""",
    # Every rejected candidate of a round with the evidence behind its rejection.
    "round_rejections": f"""
        SELECT c.candidate_id, d.stage, d.reason, c.problem, c.duplicate_of, c.duplicate_kind,
               c.contamination_label, c.contamination_ngram, c.answers, c.agreement, c.vote_reason,
               c.embedding_error, c.cluster, c.similarity, c.cluster_is_sparse
        FROM {S.SYNTHESIS_CANDIDATES} c
        JOIN {S.SYNTHESIS_DECISIONS} d USING (candidate_id)
        WHERE c.round = $round AND d.decision = 'rejected'
        ORDER BY c.candidate_id""",
    # Which sparse clusters of a round's pool clustering received accepted samples.
    "cluster_fill": f"""
        SELECT k.cluster, k.size, k.is_sparse, count(d.sample_id) AS accepted,
               count(c.candidate_id) AS candidates_assigned
        FROM {S.SYNTHESIS_ROUNDS} r
        JOIN {S.CLUSTERS} k ON k.clustering_id = r.clustering_id
        LEFT JOIN {S.SYNTHESIS_CANDIDATES} c ON c.round = r.round AND c.cluster = k.cluster
        LEFT JOIN {S.SYNTHESIS_DECISIONS} d ON d.candidate_id = c.candidate_id AND d.decision = 'accepted'
        WHERE r.round = $round
        GROUP BY ALL
        ORDER BY k.cluster""",
}
#: The parameter each question takes.
_PARAMETER = {"sample_origin": "sample_id", "sample_parents": "sample_id", "round_funnel": "round",
              "round_rejections": "round", "cluster_fill": "round"}


def lineage(store: MetadataStore, question: str, **params: str | int) -> pl.DataFrame:
    """The answer to one lineage question (a name of `LINEAGE_QUERIES`) as a DataFrame."""
    if question not in LINEAGE_QUERIES:
        raise KeyError(f"lineage question {question!r}: choose one of {sorted(LINEAGE_QUERIES)}")
    wanted = _PARAMETER[question]
    if set(params) != {wanted}:
        raise TypeError(f"lineage question {question!r} takes {wanted}=..., got {sorted(params) or 'nothing'}")
    return store.query(LINEAGE_QUERIES[question], params)
