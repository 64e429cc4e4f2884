"""Arms: the sparse-cluster filter against controls, each arm growing its own pool in the procedural world.

Every arm starts from the world's seed pool (`seed.source: world`). In round r, each arm:

1. clusters the gradients of its own pool (seed pool + what it accepted before r) with
   spherical k-means, K = `clustering.ratio` x pool size, and marks the sparse clusters;
2. sends `arms.requests_per_round` requests to the pool-conditioned generator
   (`core/world.py`), each showing `world.generator.few_shot` exemplars drawn from its own
   pool (prismatic_targeted: all of a request's exemplars from one sparse cluster, the
   paper's variant), and gets `world.generator.new_per_request` new problems per request;
3. verifies them: a held-out problem (exact normalized text) or an n-gram overlap with an
   evaluation text is rejected with its reason, and each response is graded by its task's
   scorer;
4. embeds the verified ones (one pass for all arms; identical texts share one cached vector)
   and assigns each to its nearest centroid of the arm's own clustering;
5. accepts `arms.budget` of them: naive in generation order; random at random (the
   control); prismatic and prismatic_targeted first those whose nearest cluster is sparse
   (the paper's filter), at random among them, then the smallest other clusters.
   Fewer verified candidates than the budget is a recorded shortfall.

Recorded per arm per round: G-Vendi of the pool before and after, and the proxy-free
coverage: the number and entropy of (family, level) cells, before and after.

Arms never read each other's pools: an arm's pool, exemplars, seen problems and
clustering come from its own rows. Requests use the same seeds in every arm (common random
numbers), so two arms with equal pools are offered the same problems: the arms differ by
their pools and their acceptance rule, not by generator noise. A round is written in one
transaction and replaces its own rows; a rerun of a killed round writes the same rows.
No Dagster here.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from prismatic_assets.core.clustering import Clustering
from prismatic_assets.core.decontamination import NGramIndex
from prismatic_assets.core.procedural import verify_item
from prismatic_assets.core.samples import Sample, normalize_text
from prismatic_assets.core.world import (
    WORLD_SOURCE,
    Exemplar,
    GeneratorMix,
    WorldError,
    Written,
    cell_coverage,
    check_world,
    world_seed,
    write_problems,
)
from prismatic_assets.infra.config import Config
from prismatic_assets.pipeline.clusters import cluster_pool
from prismatic_assets.pipeline.embeddings import PoolVectors, embed_samples, pool_vectors
from prismatic_assets.pipeline.round import ProxyOpener
from prismatic_assets.pipeline.round_services import judge_candidates, load_pool
from prismatic_assets.pipeline.round_stages import sparse_targets
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.store.arms_tables import (
    ArmCandidateRow,
    ArmRequestRow,
    ArmRoundRecord,
    ArmRoundRow,
    accepted_candidates,
    arm_history,
    completed_arm_rounds,
    earlier_problem_keys,
    write_arm_round,
)
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import pool_digest

#: The store lock a running arm round holds.
ARM_ROUND_LOCK = "arm-round"
#: Arms whose acceptance is the paper's sparse-cluster filter.
FILTERED_ARMS = ("prismatic", "prismatic_targeted")
Progress = Callable[[str, int, int], None]


class ArmRoundOrderError(RuntimeError):
    """Round r of the arms asked for before round r-1 is complete."""


def acceptance_seed(world_seed_value: int, round: int, arm: str, draw: int = 0) -> int:
    """The seed of an arm's acceptance draw (draw 0: the round's own; others: replays)."""
    return world_seed("accept", world_seed_value, round, arm, draw)


def request_seed(world_seed_value: int, round: int, request: int) -> int:
    """The generator's seed for request `request` of `round`: the same in every arm."""
    return world_seed("request", world_seed_value, round, request)


# -- pools -------------------------------------------------------------------------------------
def cell_of(sample: Sample) -> tuple[str, int]:
    return str(sample.meta["family"]), int(sample.meta["level"])


def check_world_pool(seed_pool: Sequence[Sample], seed_source: str | None) -> None:
    """The arms' generator writes from (family, level) cells: refuse a seed pool without them."""
    missing = [s.sample_id for s in seed_pool if "family" not in s.meta or "level" not in s.meta]
    if missing:
        raise WorldError(f"the arms need a seed pool from the procedural world (seed.source: {WORLD_SOURCE}); the "
                         f"seed pool of source {seed_source!r} has no (family, level) for {len(missing)} problems, "
                         f"e.g. {missing[:3]}: set seed.source: {WORLD_SOURCE} in the profile and materialize "
                         "seed_samples again")


def _accepted_sample(row: Mapping) -> Sample:
    return Sample(sample_id=row["sample_id"], prompt=row["prompt"], response=row["response"], answer=row["answer"],
                  category=row["family"], source=f"arm:{row['arm']}", source_ref=row["source_ref"] or "",
                  meta={"family": row["family"], "level": row["level"], "round": row["round"]})


def accepted_samples(store: MetadataStore, arm: str, before_round: int) -> list[Sample]:
    """What `arm` accepted in rounds before `before_round`, in the order it accepted them."""
    return [_accepted_sample(row) for row in accepted_candidates(store, arm, before_round)]


def arm_pool(store: MetadataStore, arm: str, round: int, seed_pool: Sequence[Sample]) -> list[Sample]:
    """The pool `arm` starts round `round` from: the seed pool and its own earlier acceptances."""
    return list(seed_pool) + accepted_samples(store, arm, round)


# -- requests and candidates ---------------------------------------------------------------------
@dataclass(frozen=True)
class ArmRequest:
    request: int
    seed: int
    strategy: str  # 'random' | 'sparse_cluster'
    target_cluster: int | None
    exemplars: tuple[Exemplar, ...]


def plan_requests(arm: str, round: int, pool: Sequence[Sample], pool_vecs: PoolVectors, clustering: Clustering,
                  config: Config) -> list[ArmRequest]:
    """The arm's requests: exemplars drawn from its own pool, uniformly (every arm but
    prismatic_targeted) or all from one sparse cluster of its pool (prismatic_targeted: request
    i takes cluster targets[i mod n], targets a seeded order of the non-empty sparse clusters;
    a cluster smaller than `few_shot` shows all its members). Deterministic in (world.seed,
    round, request index, the pool)."""
    k, world = config.world.generator.few_shot, config.world
    by_id = {s.sample_id: s for s in pool}
    targets = sparse_targets(clustering) if arm == "prismatic_targeted" else []
    random.Random(world_seed("targets", world.seed, round, arm)).shuffle(targets)
    members: dict[int, list[str]] = {}
    for sid, c in zip(pool_vecs.sample_ids, np.asarray(clustering.assignments).tolist()):
        members.setdefault(int(c), []).append(sid)
    requests = []
    for i in range(config.arms.requests_per_round):
        rng = random.Random(world_seed("exemplars", world.seed, round, i))
        if targets:
            cluster = targets[i % len(targets)]
            ids = rng.sample(members[cluster], min(k, len(members[cluster])))
            strategy, target = "sparse_cluster", cluster
        else:
            ids = [pool[j].sample_id for j in rng.sample(range(len(pool)), min(k, len(pool)))]
            strategy, target = "random", None
        exemplars = tuple(Exemplar(sid, *cell_of(by_id[sid])) for sid in ids)
        requests.append(ArmRequest(i, request_seed(world.seed, round, i), strategy, target, exemplars))
    return requests


@dataclass
class Candidate:
    """A written problem of one arm, with its verification and (once embedded) its judgement."""

    request: int
    position: int
    written: Written
    reason: str | None = None  # None: verified
    cluster: int | None = None
    similarity: float | None = None
    cluster_size: int | None = None
    in_sparse: bool | None = None

    @property
    def sample(self) -> Sample:
        assert self.written.item is not None
        return self.written.item.sample


def write_candidates(arm: str, round: int, requests: Sequence[ArmRequest], seen: set[str],
                     config: Config) -> list[Candidate]:
    """Every request's problems, in generation order. `seen` (the arm's normalized problems so
    far) grows with each one written."""
    g, world = config.world.generator, config.world
    mix = GeneratorMix(g.same_cell, g.neighbour_level, g.new_family)
    candidates: list[Candidate] = []
    for req in requests:
        written = write_problems(req.exemplars, g.new_per_request, families=world.families, levels=world.levels,
                                 mix=mix, request_seed=req.seed, seen=seen,
                                 id_prefix=f"arm:{arm}:r{round}:q{req.request:03d}", max_attempts=g.max_attempts)
        candidates += [Candidate(req.request, len(candidates) + j, w) for j, w in enumerate(written)]
    return candidates


def verify_candidates(candidates: Sequence[Candidate], held_out_keys: set[str], index: NGramIndex | None) -> None:
    """Set each candidate's reason: no_fresh_problem, duplicate_held_out, contaminated, or the
    scorer's verdict on its response (None: verified)."""
    for c in candidates:
        item = c.written.item
        if item is None:
            c.reason = "no_fresh_problem"
        elif normalize_text(item.sample.prompt) in held_out_keys:
            c.reason = "duplicate_held_out"
        elif index is not None and index.is_contaminated(item.sample.prompt) is not None:
            c.reason = "contaminated"
        else:
            c.reason = verify_item(item)


# -- acceptance ------------------------------------------------------------------------------------
def prismatic_order(cluster_sizes: np.ndarray, in_sparse: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Candidates in the order the sparse-cluster filter takes them under a budget: those whose
    nearest centroid is sparse first, in random order (the paper's filter, then a random draw
    to the budget); then the rest, smallest cluster first, random order within a cluster."""
    sparse = np.flatnonzero(in_sparse)
    dense = np.flatnonzero(~np.asarray(in_sparse, dtype=bool))
    dense = dense[np.lexsort((rng.random(len(dense)), np.asarray(cluster_sizes)[dense]))]
    return rng.permutation(sparse).tolist() + dense.tolist()


def choose(arm: str, n: int, budget: int, *, rng_seed: int,
           cluster_sizes: Sequence[int] | np.ndarray | None = None,
           in_sparse: Sequence[bool] | np.ndarray | None = None) -> list[int]:
    """Indices (into the arm's verified candidates) that `arm` accepts, in acceptance order."""
    take = min(budget, n)
    if arm == "naive":
        return list(range(take))
    rng = np.random.default_rng(rng_seed)
    if arm == "random":
        return sorted(rng.choice(n, size=take, replace=False).tolist())
    if arm in FILTERED_ARMS:
        if cluster_sizes is None or in_sparse is None:
            raise ValueError(f"arm {arm!r} needs each candidate's cluster size and sparse flag")
        return prismatic_order(np.asarray(cluster_sizes), np.asarray(in_sparse, dtype=bool), rng)[:take]
    raise ValueError(f"unknown arm {arm!r}: use prismatic, prismatic_targeted, random or naive")


# -- one round ---------------------------------------------------------------------------------------
@dataclass
class ArmResult:
    arm: str
    requests: list[ArmRequest]
    candidates: list[Candidate]
    accepted: list[str]  # sample ids, in acceptance order
    n_pool_before: int
    k: int
    n_sparse: int
    clustering_id: str
    pool_digest: str
    budget: int
    g_vendi_before: float
    g_vendi_after: float
    cells_before: int
    cells_after: int
    cell_entropy_before: float
    cell_entropy_after: float

    @property
    def gain(self) -> float:
        return self.g_vendi_after - self.g_vendi_before

    @property
    def verified(self) -> list[Candidate]:
        return [c for c in self.candidates if c.reason is None]

    @property
    def shortfall(self) -> int:
        return self.budget - len(self.accepted)

    @property
    def n_in_sparse(self) -> int:
        chosen = set(self.accepted)
        return sum(1 for c in self.verified if c.sample.sample_id in chosen and c.in_sparse)

    @property
    def rejected(self) -> dict[str, int]:
        return dict(Counter(c.reason.split(":")[0] for c in self.candidates if c.reason is not None))

    @property
    def modes(self) -> dict[str, int]:
        return dict(Counter(c.written.mode for c in self.candidates))


@dataclass
class ArmRoundReport:
    round: int
    arms: dict[str, ArmResult]
    embedding_key: str
    removed_rounds: list[int] = field(default_factory=list)  # later rounds built on this round's old pools
    seconds: dict[str, float] = field(default_factory=dict)


def next_arm_round(store: MetadataStore, arms: Sequence[str]) -> int:
    done = completed_arm_rounds(store, arms)
    return next(r for r in range(1, len(done) + 2) if r not in done)


def check_arm_round_order(store: MetadataStore, round: int, arms: Sequence[str]) -> None:
    missing = sorted(set(range(1, round)) - set(completed_arm_rounds(store, arms)))
    if missing:
        raise ArmRoundOrderError(f"arm round {round} needs rounds {missing} first: each arm's pool grows round by "
                                 f"round; run round {missing[0]}")


def run_arm_round(store: MetadataStore, round: int, *, proxy: ProxyOpener, config: Config,
                  seed_source: str | None = None, eval_texts: Mapping[str, Sequence[str]] | None = None,
                  held_out: Sequence[Sample] = (), run_id: str | None = None,
                  progress: Progress | None = None) -> ArmRoundReport:
    """Run round `round` of every arm and write it (one arm round at a time per store: a second
    one is refused at once with `StoreBusy`).

    eval_texts: {label: texts} a problem must not share a `synthesis.ngram`-gram with;
    held_out: problems no arm may accept (exact normalized text), e.g. the students' test set."""
    with store.exclusive(ARM_ROUND_LOCK, f"arm round {round}", round=round, run_id=run_id):
        return _run_arm_round(store, round, proxy=proxy, config=config, seed_source=seed_source,
                              eval_texts=eval_texts, held_out=held_out, run_id=run_id, progress=progress)


@dataclass
class _ArmState:
    pool: list[Sample]
    vectors: PoolVectors
    clustering_id: str
    clustering: Clustering
    candidates: list[Candidate] = field(default_factory=list)
    requests: list[ArmRequest] = field(default_factory=list)


def _run_arm_round(store: MetadataStore, round: int, *, proxy: ProxyOpener, config: Config,
                   seed_source: str | None, eval_texts: Mapping[str, Sequence[str]] | None,
                   held_out: Sequence[Sample], run_id: str | None, progress: Progress | None) -> ArmRoundReport:
    arms, seconds = config.arms.arms, {}
    check_arm_round_order(store, round, arms)
    check_world(config.world.families, config.world.levels)
    seed_pool = load_pool(store, 1, seed_source)  # the seed pool alone
    check_world_pool(seed_pool, seed_source)
    pools = {arm: arm_pool(store, arm, round, seed_pool) for arm in arms}
    held_keys = {normalize_text(s.prompt) for s in held_out}
    index = None
    if eval_texts:
        index = NGramIndex(n=config.synthesis.ngram)
        for label, texts in eval_texts.items():
            index.add(texts, label)
    began = time.perf_counter()
    with proxy() as embedder:
        key, dim = embedder.key, embedder.dim
        unique_pool = list({s.sample_id: s for p in pools.values() for s in p}.values())
        embed_samples(unique_pool, embedder, store, run_id=run_id,
                      progress=lambda i, n, *_: progress and progress("pool gradients", i, n))
        seconds["pool gradients"] = time.perf_counter() - began
        began = time.perf_counter()
        states = {}
        for arm in arms:
            vecs = pool_vectors(store, pools[arm], key, dim)
            clustering_id, clustering = cluster_pool(store, vecs, config.clustering, key,
                                                     f"arm:{arm}:round:{round}", run_id)
            state = _ArmState(pools[arm], vecs, clustering_id, clustering)
            state.requests = plan_requests(arm, round, state.pool, vecs, clustering, config)
            seen = {normalize_text(s.prompt) for s in state.pool} | earlier_problem_keys(store, arm, round)
            state.candidates = write_candidates(arm, round, state.requests, seen, config)
            verify_candidates(state.candidates, held_keys, index)
            if all(c.reason == "no_fresh_problem" for c in state.candidates):
                raise WorldError(f"arm {arm}, round {round}: the generator found no new problem for any of its "
                                 f"{len(state.candidates)} slots in world.generator.max_attempts="
                                 f"{config.world.generator.max_attempts} tries each: the cells it writes from are "
                                 "exhausted; widen world.levels or world.families, or raise max_attempts")
            states[arm] = state
        seconds["generate"] = time.perf_counter() - began
        began = time.perf_counter()
        verified = list({c.sample.content_hash: c.sample for s in states.values() for c in s.candidates
                         if c.reason is None}.values())
        embed_samples(verified, embedder, store, run_id=run_id,
                      progress=lambda i, n, *_: progress and progress("candidate gradients", i, n))
        seconds["candidate gradients"] = time.perf_counter() - began
    began = time.perf_counter()
    results: dict[str, ArmResult] = {arm: _decide(store, arm, round, states[arm], key, dim, config) for arm in arms}
    seconds["arms"] = time.perf_counter() - began
    report = ArmRoundReport(round, results, key, seconds=seconds)
    began = time.perf_counter()
    report.removed_rounds = write_arm_round(store, _record(report, config, run_id))
    seconds["write"] = time.perf_counter() - began
    return report


def _decide(store: MetadataStore, arm: str, round: int, state: _ArmState, key: str, dim: int,
            config: Config) -> ArmResult:
    """Judge the arm's verified candidates against its own clustering, accept its budget, score."""
    verified = [c for c in state.candidates if c.reason is None]
    vecs = pool_vectors(store, [c.sample for c in verified], key, dim)
    for c in verified:  # a candidate without a valid gradient cannot be judged: rejected with the reason
        if c.sample.sample_id in vecs.excluded:
            c.reason = f"no_gradient: {vecs.excluded[c.sample.sample_id]}"[:200]
    judged = [c for c in verified if c.reason is None]
    clustering = state.clustering
    judgement = judge_candidates(vecs.vectors, clustering.centroids, clustering.sparse, clustering.sizes)
    for i, c in enumerate(judged):
        c.cluster, c.similarity = int(judgement.assignments[i]), float(judgement.similarities[i])
        c.cluster_size, c.in_sparse = int(judgement.cluster_sizes[i]), bool(judgement.accepted[i])
    picks = choose(arm, len(judged), config.arms.budget, rng_seed=acceptance_seed(config.world.seed, round, arm),
                   cluster_sizes=judgement.cluster_sizes, in_sparse=judgement.accepted)
    before = score_vectors(state.vectors.vectors, config.score.q).score
    after = score_vectors(np.vstack([state.vectors.vectors, vecs.vectors[picks]]), config.score.q).score
    pool_cells = [cell_of(s) for s in state.pool]
    cells_before, entropy_before = cell_coverage(pool_cells)
    cells_after, entropy_after = cell_coverage(pool_cells + [(judged[i].written.family, judged[i].written.level)
                                                             for i in picks])
    return ArmResult(arm, state.requests, state.candidates, [judged[i].sample.sample_id for i in picks],
                     len(state.pool), int(clustering.k), int(np.sum(clustering.sparse)), state.clustering_id,
                     pool_digest([s.sample_id for s in state.pool]), config.arms.budget, before, after,
                     cells_before, cells_after, entropy_before, entropy_after)


def _record(report: ArmRoundReport, config: Config, run_id: str | None) -> ArmRoundRecord:
    settings = {"arms": config.arms.model_dump(mode="json", exclude={"experiment"}),
                "world": config.world.model_dump(mode="json"),
                "clustering": config.clustering.model_dump(mode="json")}
    r = report.round
    requests, candidates, rounds = [], [], []
    for arm, res in report.arms.items():
        requests += [ArmRequestRow(r, arm, q.request, q.seed, q.strategy, q.target_cluster,
                                   [e.sample_id for e in q.exemplars], [f"{e.family}:{e.level}" for e in q.exemplars],
                                   res.clustering_id) for q in res.requests]
        for c in res.candidates:
            w, s = c.written, (c.written.item.sample if c.written.item is not None else None)
            candidates.append(ArmCandidateRow(
                r, arm, s.sample_id if s else f"arm:{arm}:r{r}:q{c.request:03d}:p{w.slot}", c.request, w.slot,
                c.position, w.mode, w.exemplar_id, w.family, w.level, w.attempts,
                s.prompt if s else None, s.response if s else None, s.answer if s else None,
                s.source_ref if s else None, s.content_hash if s else None, normalize_text(s.prompt) if s else None,
                "verified" if c.reason is None else "rejected", c.reason, c.cluster, c.similarity, c.cluster_size,
                c.in_sparse))
        verified = res.verified
        rounds.append(ArmRoundRow(
            r, arm, res.budget, len(res.requests), len(res.candidates), len(verified),
            sum(1 for c in verified if c.in_sparse), len(res.accepted), res.shortfall, res.n_in_sparse,
            res.n_pool_before, res.k, res.n_sparse, res.clustering_id, res.pool_digest, report.embedding_key,
            res.g_vendi_before, res.g_vendi_after, res.cells_before, res.cells_after, res.cell_entropy_before,
            res.cell_entropy_after, res.rejected, res.modes, settings))
    return ArmRoundRecord(r, requests, candidates, {arm: res.accepted for arm, res in report.arms.items()}, rounds,
                          run_id)


# -- reporting ----------------------------------------------------------------------------------------
def summary_lines(store: MetadataStore, arms: Sequence[str]) -> list[str]:
    """The demo's closing table: per round and arm, what it accepted, G-Vendi and cell coverage."""
    hist = arm_history(store)
    if hist.is_empty():
        return ["no arm round in the store yet"]
    lines = ["| round | arm | accepted (shortfall) | passed the filter | G-Vendi before -> after (gain) | "
             "cells before -> after | cell entropy before -> after |", "|---|---|---|---|---|---|---|"]
    for row in hist.iter_rows(named=True):
        if row["arm"] not in arms:
            continue
        lines.append(f"| {row['round']} | {row['arm']} | {row['n_accepted']} ({row['shortfall']}) | "
                     f"{row['n_passed_filter']} of {row['n_verified']} | {row['g_vendi_before']:.2f} -> "
                     f"{row['g_vendi_after']:.2f} ({row['gain']:+.2f}) | "
                     f"{row['cells_before']} -> {row['cells_after']} | "
                     f"{row['cell_entropy_before']:.3f} -> {row['cell_entropy_after']:.3f} |")
    return lines
