"""One Prismatic Synthesis round: `run_round` runs the stages of `round_stages` in order.

A round (SPEC, "Prismatic Synthesis, the loop"): cluster the pool (seed + earlier rounds)
and mark the sparse clusters; ask the generator for new problems showing pool problems;
parse them; reject duplicates and evaluation overlaps; solve each `n_solutions` times with
the teacher and keep the majority-verified; embed them and keep those whose nearest pool
centroid is sparse; score G-Vendi before, after and for a random control; write the round
in one transaction (re-running a round replaces its rows); then store the baseline metrics
of the pool after the round beside its G-Vendi (`pipeline.baselines`).

Each engine is opened for its stage and closed after it (`engines.EngineSet`), and the
proxy is held only while gradients are computed, so on GPUs each of them finds its devices
free. LLM outputs are stored as they arrive: a crashed round, run again, asks only for
what is missing. No Dagster here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

from prismatic_assets.core.ids import digest
from prismatic_assets.core.tracking import Tracker
from prismatic_assets.infra.config import Config
from prismatic_assets.infra.engines import EngineSet
from prismatic_assets.pipeline.baselines import record_baselines
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.round_services import StageProgress
from prismatic_assets.pipeline.round_stages import (
    Embedded,
    PoolState,
    RoundLedger,
    RoundScores,
    check_round_order,
    decontaminate,
    embed_candidates,
    filter_candidates,
    generate_problems,
    parse_outputs,
    plan_requests,
    prepare_pool,
    score_round,
    solve_problems,
    vote,
)
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import (
    RoundRecord,
    RoundRow,
    pool_digest,
    round_history,
    round_scope,
    write_round,
)

#: The store lock a running round holds (one round at a time per store).
ROUND_LOCK = "synthesis-round"

#: Stage names, in order, as passed to the progress callback and keyed in RoundReport.seconds.
STAGES = ("pool", "generate", "parse", "hygiene", "solve", "vote", "gradients", "filter", "score", "write",
          "baselines")

#: Opens the proxy for a stage: a context manager yielding the embedder, released on exit.
ProxyOpener = Callable[[], ContextManager[Embedder]]


def lend(embedder: Embedder) -> ProxyOpener:
    """A ProxyOpener for an embedder the caller owns (kept loaded)."""
    return lambda: contextlib.nullcontext(embedder)


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


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - began


def run_round(store: MetadataStore, round: int, *, engines: EngineSet, proxy: ProxyOpener, config: Config,
              eval_texts: Mapping[str, Sequence[str]] | None = None, seed_source: str | None = None,
              run_id: str | None = None, progress: StageProgress | None = None) -> RoundReport:
    """Run synthesis round `round` (>= 1; rounds 1..round-1 must be complete) and store it.

    engines: serves the "generator" and "teacher" roles. proxy: opens the gradient embedder
    (the pool's embedding key). eval_texts: {label: texts} that new problems must not share
    a `synthesis.ngram`-gram with. seed_source: the seed samples' `source` (None: all).

    One round at a time per store: a second `run_round` while one runs (another process, a
    second Dagster run of the same partition) raises `StoreBusy` before doing anything.
    """
    with store.exclusive(ROUND_LOCK, f"round {round}", round=round, run_id=run_id):
        return _run_round(store, round, engines=engines, proxy=proxy, config=config, eval_texts=eval_texts,
                          seed_source=seed_source, run_id=run_id, progress=progress)


def _run_round(store: MetadataStore, round: int, *, engines: EngineSet, proxy: ProxyOpener, config: Config,
               eval_texts: Mapping[str, Sequence[str]] | None, seed_source: str | None, run_id: str | None,
               progress: StageProgress | None) -> RoundReport:
    syn = config.synthesis
    check_round_order(store, round)
    timer = _Timer()
    with timer("pool"), proxy() as embedder:
        pool = prepare_pool(store, round, embedder, config.clustering, seed_source, run_id, progress)
    plans = plan_requests(round, pool.samples, pool.vectors.sample_ids, pool.clustering, syn)
    with timer("generate"), engines.open("generator") as generator:
        generated = generate_problems(store, generator, plans, syn.chunk_size, run_id, progress)
        models = {"generator": generator.model_name}
    with timer("parse"):
        ledger = parse_outputs(round, plans, generated, pool, models["generator"], syn)
    with timer("hygiene"):
        clean = decontaminate(ledger, pool, eval_texts, syn.ngram)
    with timer("solve"), engines.open("teacher") as teacher:
        solved = solve_problems(store, teacher, clean, round, syn, run_id, progress)
        models["teacher"] = teacher.model_name
    with timer("vote"):
        verified = vote(ledger, clean, solved, models["teacher"], syn)
    with timer("gradients"), proxy() as embedder:
        embedded = embed_candidates(store, embedder, ledger, verified, run_id, progress)
    with timer("filter"):
        accepted = filter_candidates(ledger, embedded, pool, plans, models, config.clustering.sparse_ratio)
    with timer("score"):
        scores = score_round(pool, embedded, accepted, config.score.q, round, syn.seed)
    report = build_report(ledger, pool, plans, generated.stats.cached, generated.stats.called, clean, solved,
                          verified, embedded, accepted, scores, syn.strategy, syn.new_per_request, run_id)
    with timer("write"):
        commit_round(store, ledger, pool, embedded, accepted, scores, report, config, models, run_id)
    with timer("baselines"), proxy() as embedder:  # beside G-Vendi "after", after the commit replaced the round's rows
        after = [x for x in pool.samples if x.sample_id not in pool.vectors.excluded]
        record_baselines(store, after + [embedded.drafts[r] for r in accepted], scope=round_scope(round, "after"),
                         embedder=embedder, run_id=run_id)
    report.seconds = timer.seconds
    if progress:
        progress("write", 1, 1)
    return report


def build_report(ledger: RoundLedger, pool: PoolState, plans, outputs_cached: int, generator_calls: int, clean,
                 solved, verified, embedded: Embedded, accepted: Sequence[int], scores: RoundScores, strategy: str,
                 new_per_request: int, run_id: str | None) -> RoundReport:
    """The round's counts, rates and scores, from what the stages recorded."""
    clustering = pool.clustering
    sparse_ids = {int(c) for c, s in enumerate(clustering.sparse) if s}
    clusters = set()
    for r in accepted:
        cluster = embedded.candidates[r].cluster
        assert cluster is not None  # filter_candidates gives every accepted candidate its cluster
        clusters.add(int(cluster))
    filled = sorted(clusters)
    reasons = ledger.reasons()
    vote_failures: dict[str, int] = {}
    for c in clean:
        if c.vote_reason and c.vote_reason != "accepted":
            vote_failures[c.vote_reason] = vote_failures.get(c.vote_reason, 0) + 1
    n_outputs, n_candidates = len(ledger.requests), len(ledger.candidates)
    problems_asked = n_outputs * new_per_request
    return RoundReport(
        round=ledger.round, run_id=run_id, clustering_id=pool.clustering_id, embedding_key=pool.embedding_key,
        n_pool=len(pool.samples), n_pool_excluded=len(pool.vectors.excluded), k=int(clustering.k),
        n_sparse=len(sparse_ids), strategy=strategy,
        strategy_fallbacks=sum(1 for p in plans if p.strategy != strategy),
        requests=len(plans), outputs=n_outputs, outputs_cached=outputs_cached, problems_asked=problems_asked,
        problems_parsed=n_candidates, parse_failures=sum(1 for r in ledger.requests if r.status != "parsed"),
        empty_outputs=sum(1 for r in ledger.requests if r.status == "empty"),
        duplicates=reasons.count("duplicate_pool") + reasons.count("duplicate_batch"),
        duplicates_pool=reasons.count("duplicate_pool"), duplicates_batch=reasons.count("duplicate_batch"),
        contaminated=reasons.count("contaminated"), sent_to_teacher=len(clean),
        solutions_cached=solved.stats.cached, verified=len(verified), vote_failures=vote_failures,
        gradient_failures=len(verified) - len(embedded.candidates), in_dense=len(embedded.candidates) - len(accepted),
        accepted=len(accepted),
        acceptance_rate={
            "parse": _rate(n_candidates, problems_asked), "hygiene": _rate(len(clean), n_candidates),
            "verification": _rate(len(verified), len(clean)),
            "gradient": _rate(len(embedded.candidates), len(verified)),
            "cluster": _rate(len(accepted), len(embedded.candidates)),
            "overall": _rate(len(accepted), n_candidates),
        },
        llm_requests={"generator": generator_calls, "teacher": solved.stats.called},
        g_vendi_before=scores.before.score, g_vendi_after=scores.after.score, g_vendi_random=scores.random.score,
        n_random_control=len(scores.control_rows), sparse_fraction=_rate(len(sparse_ids), int(clustering.k)),
        sparse_coverage=_rate(len(set(filled) & sparse_ids), len(sparse_ids)), clusters_filled=filled, seconds={})


def commit_round(store: MetadataStore, ledger: RoundLedger, pool: PoolState, embedded: Embedded,
                 accepted: Sequence[int], scores: RoundScores, report: RoundReport, config: Config,
                 models: Mapping[str, str], run_id: str | None) -> None:
    """Write the round's requests, candidates, decisions, accepted samples and scores in one
    transaction, replacing any earlier run of the same round."""
    settings = config.synthesis.model_dump(mode="json", exclude={"generator", "teacher"})
    settings.update(clustering=config.clustering.model_dump(mode="json"), q=config.score.q)
    n_verified = report.verified
    row = RoundRow(
        round=ledger.round, settings=settings,
        settings_hash=digest({"settings": settings, "generator": models["generator"], "teacher": models["teacher"],
                              "embedding_key": pool.embedding_key}),
        generator_model=models["generator"], teacher_model=models["teacher"], embedding_key=pool.embedding_key,
        clustering_id=pool.clustering_id, pool_digest=pool_digest([s.sample_id for s in pool.samples]),
        n_pool=len(pool.samples), k=int(pool.clustering.k), n_sparse=report.n_sparse, n_requests=report.requests,
        n_candidates=len(ledger.candidates), n_verified=n_verified, n_accepted=len(accepted),
        g_vendi_before=scores.before.score, g_vendi_after=scores.after.score, g_vendi_random=scores.random.score,
        report=report.as_dict(), seed_source=pool.seed_source)
    write_round(store, RoundRecord(
        round=ledger.round, requests=ledger.requests, candidates=ledger.candidates,
        decisions=[ledger.decisions[c.candidate_id] for c in ledger.candidates],
        samples=[embedded.drafts[r] for r in accepted], scores=scores.rows, row=row, run_id=run_id))


def track_round(tracker: Tracker, run_id: str, config: Config, report: RoundReport,
                store: MetadataStore) -> dict[str, bytes]:
    """Log a finished round's settings, figures and charts to its MLflow run; return the charts
    ({"g_vendi_per_round": png, "accepted_per_round": png}), also written under data/plots/."""
    from prismatic_assets.reporting import plots

    syn = config.synthesis
    history = round_history(store)
    charts = {
        "g_vendi_per_round": plots.series_png(history["round"].to_list(), {
            "after (gradient filter)": history["g_vendi_after"].to_list(),
            "random control": history["g_vendi_random"].to_list(),
            "before": history["g_vendi_before"].to_list()}, "round", "G-Vendi", "G-Vendi per round"),
        "accepted_per_round": plots.bars_png([str(r) for r in history["round"].to_list()],
                                             history["accepted"].to_list(), "accepted samples",
                                             "Accepted per round"),
    }
    tracker.log_params(run_id, {"round": report.round, "generator": syn.generator.model,
                                "teacher": syn.teacher.model,
                                **syn.model_dump(mode="json", exclude={"generator", "teacher", "problem_sampling",
                                                                       "solution_sampling"}),
                                "problem_sampling": syn.problem_sampling.key(),
                                "solution_sampling": syn.solution_sampling.key()})
    tracker.log_metrics(run_id, {
        "g_vendi/before": report.g_vendi_before, "g_vendi/after": report.g_vendi_after,
        "g_vendi/random_control": report.g_vendi_random, "pool/before": report.n_pool,
        "pool/after": report.n_pool + report.accepted, "count/requests": report.requests,
        "count/parsed": report.problems_parsed, "count/duplicates": report.duplicates,
        "count/contaminated": report.contaminated, "count/verified": report.verified,
        "count/accepted": report.accepted, "clusters/k": report.k, "clusters/sparse": report.n_sparse,
        "clusters/sparse_coverage": report.sparse_coverage,
        **{f"acceptance/{k}": v for k, v in report.acceptance_rate.items()}}, step=report.round)
    for name, png in charts.items():
        path = config.data_path / "plots" / f"round-{report.round}-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        tracker.log_artifact(run_id, path, "plots")
    return charts
