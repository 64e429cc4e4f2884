"""The stages of one Prismatic Synthesis round, each a plain function with typed inputs and results.

    prepare_pool -> plan_requests -> generate_problems -> parse_outputs -> decontaminate
      -> solve_problems -> vote -> embed_candidates -> filter_candidates -> score_round

(`pipeline/round.py` runs them in that order and commits the result.) The LLM stages go
through the generation cache (`round_services.generate_cached`: a crashed round, run again,
asks the engine only for what is missing), the gradient stages through the vector cache, and
the cluster filter is `round_services.judge_candidates`. Candidates carry their evidence;
decisions are kept apart in a `RoundLedger`. No Dagster, no model loading: engines and the
embedder are passed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from prismatic_assets.core.answers import majority_vote
from prismatic_assets.core.clustering import Clustering
from prismatic_assets.core.decontamination import NGramIndex, find_duplicates
from prismatic_assets.core.generation import Generator, SamplingConfig
from prismatic_assets.core.gvendi import GVendiResult
from prismatic_assets.core.ids import digest
from prismatic_assets.core.prompts import build_problem_request, build_solution_request, draw_few_shot, parse_problems
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import ClusteringConfig, SynthesisConfig
from prismatic_assets.pipeline.clusters import cluster_pool
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import PoolVectors, embed_samples, pool_vectors
from prismatic_assets.pipeline.round_services import (
    CallStats,
    StageProgress,
    generate_cached,
    judge_candidates,
    load_pool,
)
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import (
    SYNTHESIS_SOURCE,
    CandidateRow,
    DecisionRow,
    RequestRow,
    ScoreRow,
    completed_rounds,
    refresh_staleness,
    round_scope,
)


# -- determinism -------------------------------------------------------------------------
def derive_seed(*parts: object) -> int:
    """A seed in [0, 2**31) that depends only on `parts` (stable across processes and machines)."""
    payload = json.dumps(list(parts), sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:4], "little") & 0x7FFFFFFF


def request_id(round: int, index: int) -> str:
    return f"r{round}:q{index:04d}"


def request_seed(seed: int, round: int, index: int) -> int:
    """The sampling seed of problem request `index` of `round`."""
    return derive_seed("generate", seed, round, index)


def solution_seed(seed: int, round: int, candidate_id: str) -> int:
    """The sampling seed of the teacher's solutions to one candidate."""
    return derive_seed("solve", seed, round, candidate_id)


# -- errors ------------------------------------------------------------------------------
class RoundOrderError(RuntimeError):
    """Round r was asked for before round r-1 completed, or on top of a stale round."""


def check_round_order(store: MetadataStore, round: int) -> list[int]:
    """Raise unless every round before `round` is complete and current; return the completed rounds.

    Staleness is recomputed first (`refresh_staleness`): a round built on a pool that no
    longer exists (an earlier round re-run after it) must be re-run before anything builds
    on it."""
    if isinstance(round, bool) or not isinstance(round, int) or round < 1:
        raise ValueError(f"round={round!r}: rounds are numbered 1, 2, 3, ...")
    done = completed_rounds(store)
    missing = [r for r in range(1, round) if r not in done]
    if missing:
        raise RoundOrderError(
            f"round {round} needs rounds 1..{round - 1} complete (each round's pool includes the samples "
            f"accepted before it), but round {missing[0]} is not (completed: {done or 'none'}): "
            f"run round {missing[0]} first")
    stale = {r: why for r, why in refresh_staleness(store).items() if r < round}
    if stale:
        first = min(stale)
        raise RoundOrderError(
            f"round {round} would build on round {first}, which is stale ({stale[first]}). Re-run round {first} "
            f"first (materialize partition {first} of synthesis_round, or `prismatic rounds`), then the rounds "
            f"after it in order")
    return done


# -- request planning --------------------------------------------------------------------
@dataclass(frozen=True)
class RequestPlan:
    request_id: str
    index: int
    strategy: str  # the strategy used ("random" when "sparse_cluster" had no non-empty sparse cluster)
    target_cluster: int | None
    few_shot_ids: tuple[str, ...]  # in the order shown
    messages: list[dict[str, str]]
    sampling: SamplingConfig


def sparse_targets(clustering: Clustering) -> list[int]:
    """Sparse clusters with at least one pool member: the clusters few-shot draws can come from."""
    return [int(c) for c in np.flatnonzero(np.asarray(clustering.sparse) & (np.asarray(clustering.sizes) > 0))]


def plan_requests(round: int, pool: Sequence[Sample], clustered_ids: Sequence[str], clustering: Clustering,
                  settings: SynthesisConfig) -> list[RequestPlan]:
    """The round's problem requests: few-shot draws, messages and per-request sampling.

    Deterministic in (settings.seed, round, request index). Strategy "random" draws from
    the whole pool; "sparse_cluster" draws request i from sparse cluster
    targets[i mod n], where targets is a seeded permutation of the non-empty sparse
    clusters (so requests spread over them).
    """
    text_of = {s.sample_id: s.prompt for s in pool}
    pool_ids = [s.sample_id for s in pool]
    targets = sparse_targets(clustering) if settings.strategy == "sparse_cluster" else []
    random.Random(derive_seed("targets", settings.seed, round)).shuffle(targets)
    plans = []
    for i in range(settings.requests_per_round):
        rng = random.Random(derive_seed("few_shot", settings.seed, round, i))
        if targets:
            draw = draw_few_shot("sparse_cluster", clustered_ids, settings.few_shot, rng,
                                 assignments=clustering.assignments, cluster=targets[i % len(targets)])
        else:
            draw = draw_few_shot("random", pool_ids, settings.few_shot, rng)
        shown = list(draw.ids)
        rng.shuffle(shown)  # the order shown is recorded, so shuffle here, not in build_problem_request
        messages = build_problem_request([text_of[sid] for sid in shown], n_new=settings.new_per_request)
        sampling = settings.problem_sampling_for(request_seed(settings.seed, round, i))
        plans.append(RequestPlan(request_id(round, i), i, draw.strategy, draw.cluster, tuple(shown),
                                 messages, sampling))
    return plans


# -- pool and scores ------------------------------------------------------------------
def _score_row(scope: str, result: GVendiResult, member_ids: Sequence[str], q: float, embedding_key: str,
               n_excluded: int, config: dict[str, Any]) -> ScoreRow:
    # Same id payload as pipeline.scores.score_pool, so identical members give identical ids.
    score_id = digest({"scope": scope, "metric": "g_vendi", "q": q, "members": list(member_ids),
                       "key": embedding_key})
    return ScoreRow(score_id=score_id, scope=scope, q=q, value=result.score, entropy=result.entropy, n=result.n,
                    dim=result.dim, n_excluded=n_excluded, embedding_key=embedding_key, config=config)


# -- stage 1: pool ------------------------------------------------------------------------
@dataclass(frozen=True)
class PoolState:
    """The round's pool, its vectors and the one clustering every candidate is judged against."""

    samples: list[Sample]
    vectors: PoolVectors
    clustering_id: str
    clustering: Clustering
    embedding_key: str
    dim: int
    seed_source: str | None = None  # the seed samples' source the pool was drawn from (None: all)

    @property
    def by_id(self) -> dict[str, Sample]:
        return {s.sample_id: s for s in self.samples}


def prepare_pool(store: MetadataStore, round: int, embedder: Embedder, clustering: ClusteringConfig,
                 seed_source: str | None, run_id: str | None, progress: StageProgress | None = None) -> PoolState:
    """Pool = seed pool + earlier rounds; compute missing gradients; cluster from scratch."""
    key, dim = embedder.key, embedder.dim
    pool = load_pool(store, round, seed_source)
    embed_samples(pool, embedder, store, run_id=run_id,
                  progress=lambda i, n, *_: progress and progress("pool", i, n))
    pv = pool_vectors(store, pool, key, dim)
    clustering_id, result = cluster_pool(store, pv, clustering, key, round_scope(round), run_id)
    if progress:
        progress("pool", len(pool), len(pool))
    return PoolState(pool, pv, clustering_id, result, key, dim, seed_source)


# -- the ledger: every candidate and its decision ------------------------------------------
@dataclass
class RoundLedger:
    """What the stages learn about a round's outputs and candidates, and what they decide.

    Evidence goes on the candidate rows, decisions into `decisions` (one per candidate),
    so thresholds can change without recomputation."""

    round: int
    requests: list[RequestRow] = field(default_factory=list)
    candidates: list[CandidateRow] = field(default_factory=list)
    decisions: dict[str, DecisionRow] = field(default_factory=dict)

    def reject(self, c: CandidateRow, stage: str, reason: str, rule: dict[str, Any]) -> None:
        self.decisions[c.candidate_id] = DecisionRow(c.candidate_id, self.round, "rejected", stage, reason, None,
                                                     rule)

    def undecided(self) -> list[CandidateRow]:
        return [c for c in self.candidates if c.candidate_id not in self.decisions]

    def reasons(self) -> list[str]:
        return [self.decisions[c.candidate_id].reason for c in self.candidates]


# -- stage 2: generate ---------------------------------------------------------------------
@dataclass(frozen=True)
class Generated:
    keys: list[str]
    outputs: list[list[str]]
    stats: CallStats


def generate_problems(store: MetadataStore, generator: Generator, plans: Sequence[RequestPlan], chunk_size: int,
                      run_id: str | None, progress: StageProgress | None = None) -> Generated:
    """The problem requests' outputs, through the generation cache."""
    keys, outputs, stats = generate_cached(store, generator, [(p.messages, p.sampling) for p in plans],
                                           chunk_size=chunk_size, run_id=run_id, stage="generate", progress=progress)
    return Generated(keys, outputs, stats)


# -- stage 3: parse ------------------------------------------------------------------------
def parse_outputs(round: int, plans: Sequence[RequestPlan], generated: Generated, pool: PoolState,
                  generator_model: str, settings: SynthesisConfig) -> RoundLedger:
    """One request row per output (raw text kept) and one candidate per parsed problem."""
    ledger = RoundLedger(round)
    by_id = pool.by_id
    for plan, gen_key, outputs in zip(plans, generated.keys, generated.outputs):
        shown = [by_id[sid].prompt for sid in plan.few_shot_ids]
        for j, text in enumerate(outputs):
            parsed = parse_problems(text, n_expected=settings.new_per_request, few_shot=shown)
            status = "empty" if not (text or "").strip() else ("parsed" if parsed.problems else "parse_failed")
            ledger.requests.append(RequestRow(
                round=round, request_id=plan.request_id, output_index=j, request_index=plan.index,
                strategy=plan.strategy, target_cluster=plan.target_cluster, few_shot_ids=list(plan.few_shot_ids),
                clustering_id=pool.clustering_id, generator_model=generator_model,
                sampling=plan.sampling.as_dict(), gen_key=gen_key, raw_output=text,
                n_problems=len(parsed.problems), parse_issues=list(parsed.issues), status=status))
            ledger.candidates += [CandidateRow(candidate_id=f"{plan.request_id}:o{j}:p{k}", round=round,
                                               request_id=plan.request_id, output_index=j, problem_index=k,
                                               problem=problem) for k, problem in enumerate(parsed.problems)]
    return ledger


# -- stage 4: decontaminate ----------------------------------------------------------------
def decontaminate(ledger: RoundLedger, pool: PoolState, eval_texts: Mapping[str, Sequence[str]] | None,
                  ngram: int) -> list[CandidateRow]:
    """Reject duplicates (of the pool or an earlier candidate) and n-gram overlaps with every
    evaluation set; the evidence is kept on every candidate. Returns the clean candidates."""
    candidates = ledger.candidates
    duplicates = find_duplicates([c.problem for c in candidates], [s.prompt for s in pool.samples],
                                 pool_ids=[s.sample_id for s in pool.samples])
    index = NGramIndex(n=ngram)
    for label, texts in (eval_texts or {}).items():
        index.add(texts, label)
    rule = {"ngram": ngram, "eval_sets": sorted((eval_texts or {}).keys())}
    for c, dup in zip(candidates, duplicates):
        if dup is not None:
            c.duplicate_kind, c.duplicate_source = dup.kind, dup.source
            c.duplicate_of = dup.pool_id if dup.source == "pool" else candidates[dup.index].candidate_id
        match = index.is_contaminated(c.problem)
        if match is not None:
            c.contamination_label, c.contamination_ngram = match.label, match.ngram
        if dup is not None:
            ledger.reject(c, "hygiene", f"duplicate_{dup.source}", rule)
        elif match is not None:
            ledger.reject(c, "hygiene", "contaminated", rule)
    return ledger.undecided()


# -- stage 5: solve ------------------------------------------------------------------------
@dataclass(frozen=True)
class Solved:
    samplings: list[SamplingConfig]
    keys: list[str]
    solutions: list[list[str]]
    stats: CallStats


def solve_problems(store: MetadataStore, teacher: Generator, clean: Sequence[CandidateRow], round: int,
                   settings: SynthesisConfig, run_id: str | None, progress: StageProgress | None = None) -> Solved:
    """`n_solutions` teacher solutions per clean candidate, through the generation cache."""
    requests = [(build_solution_request(c.problem),
                 settings.solution_sampling_for(solution_seed(settings.seed, round, c.candidate_id))) for c in clean]
    keys, outputs, stats = generate_cached(store, teacher, requests, chunk_size=settings.chunk_size, run_id=run_id,
                                           stage="solve", progress=progress)
    return Solved([s for _, s in requests], keys, outputs, stats)


# -- stage 6: vote -------------------------------------------------------------------------
def vote(ledger: RoundLedger, clean: Sequence[CandidateRow], solved: Solved, teacher_model: str,
         settings: SynthesisConfig) -> list[CandidateRow]:
    """Majority vote over each candidate's solutions; returns the verified candidates."""
    rule = {"min_agree": settings.min_agree, "n_solutions": settings.n_solutions}
    verified = []
    for c, sampling, gen_key, solutions in zip(clean, solved.samplings, solved.keys, solved.solutions):
        result = majority_vote(solutions, min_agree=settings.min_agree, stated_answers=settings.stated_answers)
        c.teacher_model, c.solution_sampling, c.solution_gen_key = teacher_model, sampling.as_dict(), gen_key
        c.solutions, c.answers = list(solutions), list(result.answers)
        c.vote_groups = [list(g) for g in result.groups]
        c.agreement, c.vote_reason = result.agreement, result.reason
        if result.accepted:
            c.majority_answer = result.majority_answer
            c.response = solutions[result.majority[0]]
            verified.append(c)
        else:
            # What could not be checked (an answer too long, code in a box, math-verify out of
            # time) is kept with the decision, next to the thresholds.
            ledger.reject(c, "verification", result.reason,
                          {**rule, "issues": list(result.issues)} if result.issues else rule)
    return verified


# -- stage 7: embed ------------------------------------------------------------------------
@dataclass(frozen=True)
class Embedded:
    """Verified candidates with a valid gradient, their draft samples and (m, d) vectors."""

    candidates: list[CandidateRow]
    drafts: list[Sample]
    vectors: np.ndarray


def embed_candidates(store: MetadataStore, embedder: Embedder, ledger: RoundLedger,
                     verified: Sequence[CandidateRow], run_id: str | None,
                     progress: StageProgress | None = None) -> Embedded:
    """Gradients of the verified candidates (same embedder and cache as the pool)."""
    round, key, dim = ledger.round, embedder.key, embedder.dim
    drafts = [Sample(sample_id="", prompt=c.problem, response=c.response or "", answer=c.majority_answer,
                     source=SYNTHESIS_SOURCE, source_ref=c.candidate_id) for c in verified]
    drafts = [dataclasses.replace(d, sample_id=f"syn:r{round}:{d.content_hash[:12]}") for d in drafts]
    embed_samples(drafts, embedder, store, run_id=run_id,
                  progress=lambda i, n, *_: progress and progress("gradients", i, n))
    valid, vectors, reasons = store.load_vectors([d.content_hash for d in drafts], key, dim)  # (m_valid, d)
    kept_c, kept_d = [], []
    for i, (c, d) in enumerate(zip(verified, drafts)):
        c.content_hash, c.embedding_key = d.content_hash, key
        if valid[i]:
            kept_c.append(c)
            kept_d.append(d)
        else:
            c.embedding_error = reasons.get(i, "no vector")
            ledger.reject(c, "gradient", "no_gradient", {"embedding_key": key})
    return Embedded(kept_c, kept_d, vectors)


# -- stage 8: filter -----------------------------------------------------------------------
def filter_candidates(ledger: RoundLedger, embedded: Embedded, pool: PoolState, plans: Sequence[RequestPlan],
                      models: Mapping[str, str], sparse_ratio: float) -> list[int]:
    """Keep the candidates whose nearest pool centroid is sparse; returns their rows in `embedded`."""
    clustering = pool.clustering
    judged = judge_candidates(embedded.vectors, clustering.centroids, clustering.sparse, clustering.sizes)
    rule = {"clustering_id": pool.clustering_id, "sparse_ratio": sparse_ratio, "k": int(clustering.k)}
    plan_of = {p.request_id: p for p in plans}
    accepted_rows = []
    for row, (c, cluster, sim, size, ok) in enumerate(zip(
            embedded.candidates, judged.assignments, judged.similarities, judged.cluster_sizes, judged.accepted)):
        c.cluster, c.similarity, c.cluster_size, c.cluster_is_sparse = int(cluster), float(sim), int(size), bool(ok)
        if not ok:
            ledger.reject(c, "cluster", "dense_cluster", rule)
            continue
        plan = plan_of[c.request_id]
        meta = {"candidate_id": c.candidate_id, "request_id": c.request_id, "round": ledger.round,
                "few_shot_ids": list(plan.few_shot_ids), "strategy": plan.strategy,
                "target_cluster": plan.target_cluster, "generator_model": models["generator"],
                "teacher_model": models["teacher"], "agreement": c.agreement, "clustering_id": pool.clustering_id,
                "cluster": c.cluster, "similarity": c.similarity}
        embedded.drafts[row] = dataclasses.replace(embedded.drafts[row], meta=meta)
        accepted_rows.append(row)
        ledger.decisions[c.candidate_id] = DecisionRow(c.candidate_id, ledger.round, "accepted", "cluster",
                                                       "sparse_cluster", embedded.drafts[row].sample_id, rule)
    return accepted_rows


# -- stage 9: score ------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundScores:
    before: GVendiResult
    after: GVendiResult
    random: GVendiResult
    control_rows: list[int]
    rows: list[ScoreRow]


def score_round(pool: PoolState, embedded: Embedded, accepted_rows: Sequence[int], q: float, round: int,
                seed: int) -> RoundScores:
    """G-Vendi before, after, and for the random control: the pool plus as many candidates
    (of those with a gradient) drawn at random as the filter accepted."""
    pv, vectors = pool.vectors, embedded.vectors
    before = score_vectors(pv.vectors, q)
    after = score_vectors(np.concatenate([pv.vectors, vectors[list(accepted_rows)]]), q) if accepted_rows else before
    control_seed = derive_seed("random_control", seed, round)
    control_rows = sorted(random.Random(control_seed).sample(range(len(embedded.candidates)), len(accepted_rows)))
    control = score_vectors(np.concatenate([pv.vectors, vectors[control_rows]]), q) if control_rows else before
    for row in control_rows:
        embedded.candidates[row].in_random_control = True
    key, n_excluded, config = pool.embedding_key, len(pv.excluded), {"q": q, "round": round}
    accepted_ids = [embedded.drafts[r].sample_id for r in accepted_rows]
    rows = [
        _score_row(round_scope(round, "before"), before, pv.sample_ids, q, key, n_excluded, config),
        _score_row(round_scope(round, "after"), after, pv.sample_ids + accepted_ids, q, key, n_excluded, config),
        _score_row(round_scope(round, "random"), control,
                   pv.sample_ids + [embedded.drafts[r].sample_id for r in control_rows], q, key, n_excluded,
                   {**config, "control": "random", "seed": control_seed}),
    ]
    return RoundScores(before, after, control, control_rows, rows)
