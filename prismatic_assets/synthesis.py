"""One Prismatic Synthesis round as a plain function: `run_round(store, round, ...)`.

A round (SPEC, "Prismatic Synthesis, the loop"):
1. pool = seed pool + samples accepted in earlier rounds; missing gradients are computed
   (cached), the pool is clustered from scratch and the smaller clusters marked sparse;
2. `requests_per_round` problem requests, each showing `few_shot` pool problems (drawn at
   random, or from one sparse cluster) and asking for `new_per_request` new problems;
3. every output is parsed; unparsable ones are kept with their raw text and issues;
4. hygiene: duplicates of the pool or of earlier candidates, and n-gram overlap with the
   evaluation texts, are rejected;
5. the teacher solves each survivor `n_solutions` times; a majority vote verifies it;
6. verified candidates get gradients (same embedder, same cache) and are assigned to the
   nearest pool centroid; only those landing in a sparse cluster are accepted;
7. accepted samples join the samples table; G-Vendi before, after, and for a random
   control (the pool plus as many verified candidates drawn at random) is stored.

Every candidate keeps its provenance and evidence (`synthesis_candidates`) apart from
its decision (`synthesis_decisions`); `LINEAGE_QUERIES` answer lineage questions in one
SQL query each. LLM outputs are persisted as they arrive in the generation cache, so a
crashed round, run again, calls the LLM only for what is missing; the round's rows are
written at the end in one transaction, replacing any earlier run of the same round.

No Dagster here, and nothing is loaded: the generator, teacher, embedder and store are
passed in. Progress goes to an optional callback(stage, done, total).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from prismatic_assets.core.answers import majority_vote
from prismatic_assets.core.clustering import Clustering, assign_to_centroids
from prismatic_assets.core.decontamination import NGramIndex, find_duplicates
from prismatic_assets.core.generation import PROBLEM_SAMPLING, SOLUTION_SAMPLING, Generator, SamplingConfig
from prismatic_assets.core.gradients import GradientEmbedder
from prismatic_assets.core.gvendi import GVendiResult, g_vendi
from prismatic_assets.core.prompts import (FEW_SHOT_STRATEGIES, build_problem_request, build_solution_request,
                                           draw_few_shot, parse_problems)
from prismatic_assets.core.samples import Sample
from prismatic_assets.settings import ClusteringSettings
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import (SYNTHESIS_SOURCE, CandidateRow, DecisionRow, GenerationRow,
                                                     RequestRow, RoundRecord, RoundRow, ScoreRow, completed_rounds,
                                                     generation_key, get_generations, put_generations,
                                                     round_scope, write_round)
from prismatic_assets.core.ids import digest
from prismatic_assets.pipeline.clusters import cluster_pool
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors

StageProgress = Callable[[str, int, int], None]

#: Stage names, in order, as passed to the progress callback and keyed in RoundReport.seconds.
STAGES = ("pool", "generate", "parse", "hygiene", "solve", "vote", "gradients", "filter", "score", "write")


# -- settings ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundSettings:
    """The method's parameters for one round. Defaults are the local (CPU) profile's."""

    requests_per_round: int = 8
    few_shot: int = 5
    new_per_request: int = 2
    strategy: str = "random"  # "random" (the paper) or "sparse_cluster"
    n_solutions: int = 3
    min_agree: int = 2
    stated_answers: bool = False  # also read "The answer is X" from solutions without \boxed{}
    problem_sampling: SamplingConfig = field(
        default_factory=lambda: dataclasses.replace(PROBLEM_SAMPLING, max_tokens=256))
    solution_sampling: SamplingConfig = field(
        default_factory=lambda: dataclasses.replace(SOLUTION_SAMPLING, max_tokens=384))
    ngram: int = 10
    clustering: ClusteringSettings = field(default_factory=ClusteringSettings)
    q: float = 1.0
    seed: int = 0
    chunk_size: int = 4  # requests per LLM call; each call's outputs are persisted at once

    def __post_init__(self) -> None:
        if self.strategy not in FEW_SHOT_STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r}: choose one of {FEW_SHOT_STRATEGIES}")
        for name in ("requests_per_round", "few_shot", "new_per_request", "n_solutions", "min_agree", "ngram",
                     "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a positive integer")
        if self.min_agree > self.n_solutions:
            raise ValueError(f"min_agree={self.min_agree} > n_solutions={self.n_solutions}: no problem could "
                             f"ever be verified; lower min_agree or raise n_solutions")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
    """Round r was asked for before round r-1 completed."""


def check_round_order(store: MetadataStore, round: int) -> list[int]:
    """Raise unless every round before `round` is complete; return the completed rounds."""
    if isinstance(round, bool) or not isinstance(round, int) or round < 1:
        raise ValueError(f"round={round!r}: rounds are numbered 1, 2, 3, ...")
    done = completed_rounds(store)
    missing = [r for r in range(1, round) if r not in done]
    if missing:
        raise RoundOrderError(
            f"round {round} needs rounds 1..{round - 1} complete (each round's pool includes the samples "
            f"accepted before it), but round {missing[0]} is not (completed: {done or 'none'}): "
            f"run round {missing[0]} first")
    return done


# -- the cluster filter ------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterJudgement:
    """Where each candidate falls in the pool clustering, and the decision derived from it."""

    assignments: np.ndarray  # (m,) nearest centroid by cosine
    similarities: np.ndarray  # (m,) cosine to it
    cluster_sizes: np.ndarray  # (m,) pool size of that cluster
    accepted: np.ndarray  # (m,) bool: the cluster is sparse


def judge_candidates(vectors: np.ndarray, centroids: np.ndarray, sparse: np.ndarray,
                     sizes: np.ndarray | None = None) -> ClusterJudgement:
    """Assign (m, d) candidate vectors to the nearest of the (K, d) pool centroids; accept
    those whose cluster is sparse. All candidates of a round are judged against the same
    clustering: accepting one does not change the clusters the next one is judged against."""
    sparse = np.asarray(sparse, dtype=bool)  # (K,)
    centroids = np.asarray(centroids)
    if sparse.shape != (centroids.shape[0],):
        raise ValueError(f"sparse has shape {sparse.shape} but there are {centroids.shape[0]} centroids: "
                         "pass one flag per cluster")
    vectors = np.asarray(vectors, dtype=np.float32)  # (m, d)
    if vectors.size == 0:
        vectors = vectors.reshape(0, centroids.shape[1])
    assignments, similarities = assign_to_centroids(vectors, centroids)
    sizes = np.zeros(len(sparse), dtype=np.int64) if sizes is None else np.asarray(sizes, dtype=np.int64)
    return ClusterJudgement(assignments=assignments, similarities=similarities,
                            cluster_sizes=sizes[assignments], accepted=sparse[assignments])


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
                  settings: RoundSettings) -> list[RequestPlan]:
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
        sampling = dataclasses.replace(settings.problem_sampling,
                                       seed=request_seed(settings.seed, round, i))
        plans.append(RequestPlan(request_id(round, i), i, draw.strategy, draw.cluster, tuple(shown),
                                 messages, sampling))
    return plans


# -- LLM calls through the generation cache ----------------------------------------------
@dataclass
class _CallStats:
    cached: int = 0
    called: int = 0


def _sampling_dict(sampling: SamplingConfig) -> dict[str, Any]:
    return sampling.as_dict()


def _chat(generator: Generator, conversations: list[list[dict[str, str]]],
          samplings: list[SamplingConfig]) -> list[list[str]]:
    """One chunk of conversations in one call, each with its own sampling (its own seed).

    Generators draw completion j of a conversation with seed + j whatever else is in the
    batch, so chunking does not change the outputs, only how many are lost to a crash."""
    outputs = generator.chat(conversations, samplings)
    if len(outputs) != len(conversations):
        raise RuntimeError(f"generator {generator.model_name!r} returned {len(outputs)} results for "
                           f"{len(conversations)} conversations: a Generator returns one list per conversation")
    return [[str(o) for o in out] for out in outputs]


def generate_cached(store: MetadataStore, generator: Generator, requests: Sequence[tuple[list[dict], SamplingConfig]],
                    *, chunk_size: int, run_id: str | None, stage: str,
                    progress: StageProgress | None = None) -> tuple[list[str], list[list[str]], _CallStats]:
    """Outputs for each (messages, sampling), from the generation cache or the generator.

    Missing requests go to the generator `chunk_size` at a time, and each chunk is stored
    before the next is asked for, so a crash loses at most one chunk. Returns the cache
    keys and the outputs, in request order, and how many came from where.
    """
    keys = [generation_key(generator.model_name, messages, sampling.key()) for messages, sampling in requests]
    found = get_generations(store, keys)
    stats = _CallStats(cached=sum(1 for k in keys if k in found))
    todo: list[int] = []
    pending: set[str] = set()
    for i, k in enumerate(keys):
        if k not in found and k not in pending:  # identical requests are asked once
            pending.add(k)
            todo.append(i)
    total = len(keys)
    if progress:
        progress(stage, stats.cached, total)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        began = time.perf_counter()
        outputs = _chat(generator, [requests[i][0] for i in chunk], [requests[i][1] for i in chunk])
        seconds = time.perf_counter() - began
        rows = [GenerationRow(gen_key=keys[i], model=generator.model_name, messages=requests[i][0],
                              sampling=_sampling_dict(requests[i][1]), outputs=out, seconds=seconds, run_id=run_id)
                for i, out in zip(chunk, outputs)]
        put_generations(store, rows)
        found.update({keys[i]: out for i, out in zip(chunk, outputs)})
        stats.called += len(chunk)
        if progress:
            progress(stage, stats.cached + stats.called, total)
    return keys, [found[k] for k in keys], stats


# -- report ------------------------------------------------------------------------------
@dataclass
class RoundReport:
    """What one round did, stage by stage. Counts are of candidates (parsed problems) unless named."""

    round: int
    run_id: str | None
    clustering_id: str
    embedding_key: str
    n_pool: int  # pool samples (seed pool + earlier rounds)
    n_pool_excluded: int  # pool samples without a valid gradient (not clustered)
    k: int
    n_sparse: int
    strategy: str
    strategy_fallbacks: int  # "sparse_cluster" requests drawn at random: no non-empty sparse cluster
    requests: int
    outputs: int  # generated outputs (requests x problem_sampling.n)
    outputs_cached: int  # of which read from the generation cache
    problems_asked: int  # outputs x new_per_request
    problems_parsed: int  # candidates
    parse_failures: int  # outputs with no usable problem (empty included)
    empty_outputs: int
    duplicates: int  # of the pool or of an earlier candidate
    duplicates_pool: int
    duplicates_batch: int
    contaminated: int
    sent_to_teacher: int
    solutions_cached: int  # teacher requests served by the generation cache
    verified: int
    vote_failures: dict[str, int]  # reason -> count ("no_answer", "disagreement", "tie")
    gradient_failures: int
    in_dense: int  # verified, with a gradient, nearest centroid dense
    accepted: int
    acceptance_rate: dict[str, float]  # stage -> passed / entered
    llm_requests: dict[str, int]  # conversations sent this run: {"generator": n, "teacher": n}
    g_vendi_before: float
    g_vendi_after: float
    g_vendi_random: float
    n_random_control: int
    sparse_fraction: float  # sparse clusters / K
    sparse_coverage: float  # sparse clusters that received >= 1 accepted sample / sparse clusters
    clusters_filled: list[int]
    seconds: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _rate(passed: int, entered: int) -> float:
    return passed / entered if entered else 0.0


# -- the round ---------------------------------------------------------------------------
def load_pool(store: MetadataStore, round: int, seed_source: str | None = None) -> list[Sample]:
    """Seed pool samples (of `seed_source`, or every seed source) plus samples accepted before `round`."""
    seed_clause = "origin = 'seed' AND split = 'pool'" + (" AND source = ?" if seed_source else "")
    params: list[Any] = ([seed_source] if seed_source else []) + [round]
    pool = store.load_samples(where=f"({seed_clause}) OR (origin = 'synthetic' AND round < ?)", params=params)
    if not any(s.source != SYNTHESIS_SOURCE for s in pool):
        where = f" of source {seed_source!r}" if seed_source else ""
        raise RuntimeError(f"no seed pool samples{where} in {store.path}: materialize seed_samples first "
                           "(or pass the seed source the store was filled from)")
    return pool


def _score_row(scope: str, result: GVendiResult, member_ids: Sequence[str], q: float, embedding_key: str,
               n_excluded: int, config: dict[str, Any]) -> ScoreRow:
    # Same id payload as pipeline.scores.score_pool, so identical members give identical ids.
    score_id = digest({"scope": scope, "metric": "g_vendi", "q": q, "members": list(member_ids),
                       "key": embedding_key})
    return ScoreRow(score_id=score_id, scope=scope, q=q, value=result.score, entropy=result.entropy, n=result.n,
                    dim=result.dim, n_excluded=n_excluded, embedding_key=embedding_key, config=config)


def run_round(store: MetadataStore, round: int, *, generator: Generator, teacher: Generator,
              embedder: GradientEmbedder, settings: RoundSettings = RoundSettings(),
              eval_texts: Mapping[str, Sequence[str]] | None = None, seed_source: str | None = None,
              run_id: str | None = None, progress: StageProgress | None = None) -> RoundReport:
    """Run synthesis round `round` (>= 1; rounds 1..round-1 must be complete) and store it.

    generator / teacher: objects with the Generator protocol (`model_name`, `chat`).
    embedder: the pool's gradient embedder (same cache key as the pool's vectors).
    eval_texts: {label: texts} that new problems must not share a `settings.ngram`-gram with.
    seed_source: the seed samples' `source` (None: every seed pool sample).
    Re-running a round replaces its rows; outputs already in the generation cache are reused.
    """
    check_round_order(store, round)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = seconds.get(stage, 0.0) + now - clock
        clock = now

    def report_progress(stage: str, done: int, total: int) -> None:
        if progress:
            progress(stage, done, total)

    key, dim = embedder.key, embedder.projector.spec.dim

    # 1. pool, gradients, clustering --------------------------------------------------------
    pool = load_pool(store, round, seed_source)
    by_id = {s.sample_id: s for s in pool}
    embed_samples(pool, embedder, store, run_id=run_id,
                  progress=lambda i, n, *_: report_progress("pool", i, n))
    pv = pool_vectors(store, pool, key, dim)
    clustering_id, clustering = cluster_pool(store, pv, settings.clustering, key, round_scope(round), run_id)
    report_progress("pool", len(pool), len(pool))
    lap("pool")

    # 2. problem requests -------------------------------------------------------------------
    plans = plan_requests(round, pool, pv.sample_ids, clustering, settings)
    gen_keys, gen_outputs, gen_stats = generate_cached(
        store, generator, [(p.messages, p.sampling) for p in plans], chunk_size=settings.chunk_size,
        run_id=run_id, stage="generate", progress=progress)
    lap("generate")

    # 3. parse ------------------------------------------------------------------------------
    requests: list[RequestRow] = []
    candidates: list[CandidateRow] = []
    plan_of: dict[str, RequestPlan] = {}
    n_outputs = 0
    for plan, gen_key, outputs in zip(plans, gen_keys, gen_outputs):
        plan_of[plan.request_id] = plan
        shown = [by_id[sid].prompt for sid in plan.few_shot_ids]
        for j, text in enumerate(outputs):
            n_outputs += 1
            parsed = parse_problems(text, n_expected=settings.new_per_request, few_shot=shown)
            status = "empty" if not (text or "").strip() else ("parsed" if parsed.problems else "parse_failed")
            requests.append(RequestRow(
                round=round, request_id=plan.request_id, output_index=j, request_index=plan.index,
                strategy=plan.strategy, target_cluster=plan.target_cluster, few_shot_ids=list(plan.few_shot_ids),
                clustering_id=clustering_id, generator_model=generator.model_name,
                sampling=_sampling_dict(plan.sampling), gen_key=gen_key, raw_output=text,
                n_problems=len(parsed.problems), parse_issues=list(parsed.issues), status=status))
            for k, problem in enumerate(parsed.problems):
                candidates.append(CandidateRow(candidate_id=f"{plan.request_id}:o{j}:p{k}", round=round,
                                               request_id=plan.request_id, output_index=j, problem_index=k,
                                               problem=problem))
    report_progress("parse", len(requests), len(requests))
    lap("parse")

    decisions: dict[str, DecisionRow] = {}

    def reject(c: CandidateRow, stage: str, reason: str, rule: dict[str, Any]) -> None:
        decisions[c.candidate_id] = DecisionRow(c.candidate_id, round, "rejected", stage, reason, None, rule)

    # 4. hygiene: duplicates and contamination (evidence for every candidate) ---------------
    duplicates = find_duplicates([c.problem for c in candidates], [s.prompt for s in pool],
                                 pool_ids=[s.sample_id for s in pool])
    index = NGramIndex(n=settings.ngram)
    for label, texts in (eval_texts or {}).items():
        index.add(texts, label)
    hygiene_rule = {"ngram": settings.ngram, "eval_sets": sorted((eval_texts or {}).keys())}
    for c, dup in zip(candidates, duplicates):
        if dup is not None:
            c.duplicate_kind, c.duplicate_source = dup.kind, dup.source
            c.duplicate_of = dup.pool_id if dup.source == "pool" else candidates[dup.index].candidate_id
        match = index.is_contaminated(c.problem)
        if match is not None:
            c.contamination_label, c.contamination_ngram = match.label, match.ngram
        if dup is not None:
            reject(c, "hygiene", f"duplicate_{dup.source}", hygiene_rule)
        elif match is not None:
            reject(c, "hygiene", "contaminated", hygiene_rule)
    clean = [c for c in candidates if c.candidate_id not in decisions]
    report_progress("hygiene", len(candidates), len(candidates))
    lap("hygiene")

    # 5. solve ------------------------------------------------------------------------------
    solve_requests = [(build_solution_request(c.problem),
                       dataclasses.replace(settings.solution_sampling, n=settings.n_solutions,
                                           seed=solution_seed(settings.seed, round, c.candidate_id)))
                      for c in clean]
    sol_keys, sol_outputs, sol_stats = generate_cached(
        store, teacher, solve_requests, chunk_size=settings.chunk_size, run_id=run_id, stage="solve",
        progress=progress)
    lap("solve")

    # 6. vote -------------------------------------------------------------------------------
    vote_rule = {"min_agree": settings.min_agree, "n_solutions": settings.n_solutions}
    verified: list[CandidateRow] = []
    for n, (c, (_, sampling), gen_key, solutions) in enumerate(zip(clean, solve_requests, sol_keys, sol_outputs)):
        vote = majority_vote(solutions, min_agree=settings.min_agree, stated_answers=settings.stated_answers)
        c.teacher_model, c.solution_sampling, c.solution_gen_key = teacher.model_name, _sampling_dict(sampling), gen_key
        c.solutions, c.answers = list(solutions), list(vote.answers)
        c.vote_groups = [list(g) for g in vote.groups]
        c.agreement, c.vote_reason = vote.agreement, vote.reason
        if vote.accepted:
            c.majority_answer = vote.majority_answer
            c.response = solutions[vote.majority[0]]
            verified.append(c)
        else:
            reject(c, "verification", vote.reason, vote_rule)
        report_progress("vote", n + 1, len(clean))
    lap("vote")

    # 7. gradients of the verified candidates -----------------------------------------------
    drafts = [Sample(sample_id="", prompt=c.problem, response=c.response or "", answer=c.majority_answer,
                     source=SYNTHESIS_SOURCE, source_ref=c.candidate_id) for c in verified]
    drafts = [dataclasses.replace(d, sample_id=f"syn:r{round}:{d.content_hash[:12]}") for d in drafts]
    embed_samples(drafts, embedder, store, run_id=run_id,
                  progress=lambda i, n, *_: report_progress("gradients", i, n))
    valid, vectors, reasons = store.load_vectors([d.content_hash for d in drafts], key, dim)  # (m_valid, d)
    with_vector: list[tuple[CandidateRow, Sample]] = []
    for i, (c, d) in enumerate(zip(verified, drafts)):
        c.content_hash, c.embedding_key = d.content_hash, key
        if valid[i]:
            with_vector.append((c, d))
        else:
            c.embedding_error = reasons.get(i, "no vector")
            reject(c, "gradient", "no_gradient", {"embedding_key": key})
    lap("gradients")

    # 8. the sparse-cluster filter ------------------------------------------------------------
    judged = judge_candidates(vectors, clustering.centroids, clustering.sparse, clustering.sizes)
    cluster_rule = {"clustering_id": clustering_id, "sparse_ratio": settings.clustering.sparse_ratio,
                    "k": int(clustering.k)}
    accepted: list[Sample] = []
    accepted_rows: list[int] = []
    for row, ((c, d), cluster, sim, size, ok) in enumerate(zip(
            with_vector, judged.assignments, judged.similarities, judged.cluster_sizes, judged.accepted)):
        c.cluster, c.similarity, c.cluster_size, c.cluster_is_sparse = int(cluster), float(sim), int(size), bool(ok)
        if ok:
            plan = plan_of[c.request_id]
            meta = {"candidate_id": c.candidate_id, "request_id": c.request_id, "round": round,
                    "few_shot_ids": list(plan.few_shot_ids), "strategy": plan.strategy,
                    "target_cluster": plan.target_cluster, "generator_model": generator.model_name,
                    "teacher_model": teacher.model_name, "agreement": c.agreement, "clustering_id": clustering_id,
                    "cluster": c.cluster, "similarity": c.similarity}
            sample = dataclasses.replace(d, meta=meta)
            accepted.append(sample)
            accepted_rows.append(row)
            decisions[c.candidate_id] = DecisionRow(c.candidate_id, round, "accepted", "cluster",
                                                    "sparse_cluster", sample.sample_id, cluster_rule)
        else:
            reject(c, "cluster", "dense_cluster", cluster_rule)
    report_progress("filter", len(with_vector), len(with_vector))
    lap("filter")

    # 9. G-Vendi before, after, and the random control --------------------------------------
    q = settings.q
    n_excluded = len(pv.excluded)
    before = g_vendi(pv.vectors, q=q)
    after = g_vendi(np.concatenate([pv.vectors, vectors[accepted_rows]]), q=q) if accepted_rows else before
    control_rng = random.Random(derive_seed("random_control", settings.seed, round))
    control_rows = sorted(control_rng.sample(range(len(with_vector)), len(accepted_rows)))
    control = g_vendi(np.concatenate([pv.vectors, vectors[control_rows]]), q=q) if control_rows else before
    for row in control_rows:
        with_vector[row][0].in_random_control = True
    config = {"q": q, "round": round}
    scores = [
        _score_row(round_scope(round, "before"), before, pv.sample_ids, q, key, n_excluded, config),
        _score_row(round_scope(round, "after"), after, pv.sample_ids + [s.sample_id for s in accepted], q, key,
                   n_excluded, config),
        _score_row(round_scope(round, "random"), control,
                   pv.sample_ids + [with_vector[r][1].sample_id for r in control_rows], q, key, n_excluded,
                   {**config, "control": "random", "seed": derive_seed("random_control", settings.seed, round)}),
    ]
    report_progress("score", 3, 3)
    lap("score")

    # 10. report and the one final write ----------------------------------------------------
    sparse_ids = set(int(c) for c in np.flatnonzero(clustering.sparse))
    filled = sorted({int(c.cluster) for c, _ in (with_vector[r] for r in accepted_rows)})
    reasons_of = [decisions[c.candidate_id].reason for c in candidates]
    vote_failures: dict[str, int] = {}
    for c in clean:
        if c.vote_reason and c.vote_reason != "accepted":
            vote_failures[c.vote_reason] = vote_failures.get(c.vote_reason, 0) + 1
    n_parse_failed = sum(1 for r in requests if r.status != "parsed")
    problems_asked = n_outputs * settings.new_per_request
    report = RoundReport(
        round=round, run_id=run_id, clustering_id=clustering_id, embedding_key=key, n_pool=len(pool),
        n_pool_excluded=n_excluded, k=int(clustering.k), n_sparse=len(sparse_ids), strategy=settings.strategy,
        strategy_fallbacks=sum(1 for p in plans if p.strategy != settings.strategy),
        requests=len(plans), outputs=n_outputs, outputs_cached=gen_stats.cached, problems_asked=problems_asked,
        problems_parsed=len(candidates), parse_failures=n_parse_failed,
        empty_outputs=sum(1 for r in requests if r.status == "empty"),
        duplicates=reasons_of.count("duplicate_pool") + reasons_of.count("duplicate_batch"),
        duplicates_pool=reasons_of.count("duplicate_pool"), duplicates_batch=reasons_of.count("duplicate_batch"),
        contaminated=reasons_of.count("contaminated"), sent_to_teacher=len(clean),
        solutions_cached=sol_stats.cached, verified=len(verified), vote_failures=vote_failures,
        gradient_failures=len(verified) - len(with_vector), in_dense=len(with_vector) - len(accepted),
        accepted=len(accepted),
        acceptance_rate={
            "parse": _rate(len(candidates), problems_asked),
            "hygiene": _rate(len(clean), len(candidates)),
            "verification": _rate(len(verified), len(clean)),
            "gradient": _rate(len(with_vector), len(verified)),
            "cluster": _rate(len(accepted), len(with_vector)),
            "overall": _rate(len(accepted), len(candidates)),
        },
        llm_requests={"generator": gen_stats.called, "teacher": sol_stats.called},
        g_vendi_before=before.score, g_vendi_after=after.score, g_vendi_random=control.score,
        n_random_control=len(control_rows),
        sparse_fraction=_rate(len(sparse_ids), int(clustering.k)),
        sparse_coverage=_rate(len(set(filled) & sparse_ids), len(sparse_ids)),
        clusters_filled=filled, seconds=seconds)

    settings_dict = settings.as_dict()
    record = RoundRecord(
        round=round, requests=requests, candidates=candidates,
        decisions=[decisions[c.candidate_id] for c in candidates], samples=accepted, scores=scores,
        row=RoundRow(
            round=round, settings=settings_dict,
            settings_hash=digest({"settings": settings_dict, "generator": generator.model_name,
                                  "teacher": teacher.model_name, "embedding_key": key}),
            generator_model=generator.model_name, teacher_model=teacher.model_name, embedding_key=key,
            clustering_id=clustering_id, pool_digest=digest([s.sample_id for s in pool]), n_pool=len(pool),
            k=int(clustering.k), n_sparse=len(sparse_ids), n_requests=len(plans), n_candidates=len(candidates),
            n_verified=len(verified), n_accepted=len(accepted), g_vendi_before=before.score,
            g_vendi_after=after.score, g_vendi_random=control.score, report={}),
        run_id=run_id)
    write_round(store, dataclasses.replace(record, row=dataclasses.replace(record.row, report=report.as_dict())))
    lap("write")
    report_progress("write", 1, 1)
    return report


# -- lineage -----------------------------------------------------------------------------
#: One SQL query per lineage question (DuckDB, named parameters). Run with
#: `store.query(LINEAGE_QUERIES[name], {"sample_id": ...})`.
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
