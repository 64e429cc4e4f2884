"""Arms: the diversity filter against controls, round by round, at an equal acceptance budget.

A round generates candidates once (`source_candidates`: reasoning-gym problems spread over
task families and levels, each checked by its task's own scorer, duplicates and evaluation
overlaps rejected with their reason) and embeds them once with the proxy. Each arm then
accepts `budget` of the verified candidates into its own pool (seed pool + what the arm
accepted in earlier rounds):

- prismatic: the sparse-cluster filter. The arm's pool is clustered; the candidates whose
  nearest centroid is a sparse cluster pass (the paper's filter), and `budget` of them are
  drawn at random; if fewer than `budget` pass, the candidates of the smallest other
  clusters fill the budget (`n_in_sparse` says how many passed the filter). The draw makes
  the filter the only difference from the random arm.
- random: `budget` verified candidates drawn at random (the control).
- naive: the first `budget` verified candidates in generation order.

The arms differ only in what they accept. G-Vendi of each arm's pool before and after is
stored per round (`arm_rounds`). A round is written in one transaction and replaces its own
rows: a rerun adds nothing. No Dagster here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from prismatic_assets.infra.config import ArmsConfig, Config
from prismatic_assets.core.decontamination import NGramIndex
from prismatic_assets.core.procedural import PROCEDURAL_SOURCE, TaskItem, task_items, verify_item
from prismatic_assets.core.samples import Sample, normalize_text
from prismatic_assets.pipeline.clusters import cluster_pool
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors
from prismatic_assets.pipeline.round import ProxyOpener
from prismatic_assets.pipeline.round_services import judge_candidates, load_pool
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import pool_digest

#: The store lock a running arm round holds.
ARM_ROUND_LOCK = "arm-round"
Progress = Callable[[str, int, int], None]


class ArmRoundOrderError(RuntimeError):
    """Round r of the arms asked for before round r-1 is complete."""


# -- stage 1: candidates -------------------------------------------------------------------
@dataclass(frozen=True)
class ArmCandidates:
    items: list[TaskItem]  # generation order
    reasons: list[str | None]  # None: verified; else why rejected

    @property
    def verified(self) -> list[TaskItem]:
        return [item for item, why in zip(self.items, self.reasons) if why is None]


def candidate_prefix(round: int) -> str:
    return f"arm-r{round}"


def source_candidates(store: MetadataStore, round: int, arms: ArmsConfig, seed_pool: Sequence[Sample],
                      eval_texts: Mapping[str, Sequence[str]] | None = None, ngram: int = 10,
                      held_out: Sequence[Sample] = ()) -> ArmCandidates:
    """The round's candidates, each verified or rejected with its reason.

    Rejected: a problem seen before (seed pool, an earlier round, earlier in this round or a
    held-out problem: exact normalized text), an n-gram overlap with an evaluation text,
    or a response the task's scorer does not accept."""
    src = arms.source
    items = task_items(src.families, src.levels, src.candidates_per_round, src.seed, id_prefix=candidate_prefix(round))
    earlier = store.query(f"SELECT problem_key FROM {S.ARM_CANDIDATES} WHERE round < ?", [round])
    seen = {normalize_text(s.prompt): "duplicate_pool" for s in seed_pool}
    seen.update({key: "duplicate_earlier_round" for key in earlier["problem_key"].to_list()})
    seen.update({normalize_text(s.prompt): "duplicate_held_out" for s in held_out})
    index = NGramIndex(n=ngram)
    for label, texts in (eval_texts or {}).items():
        index.add(texts, label)
    reasons: list[str | None] = []
    for item in items:
        key = normalize_text(item.sample.prompt)
        why = seen.get(key)
        if why is None and index.is_contaminated(item.sample.prompt) is not None:
            why = "contaminated"
        why = why or verify_item(item)
        seen.setdefault(key, "duplicate_candidate")
        reasons.append(why)
    return ArmCandidates(items, reasons)


# -- stage 2: each arm's pool and choice -----------------------------------------------------
def _sample_from_row(row: dict) -> Sample:
    return Sample(sample_id=row["sample_id"], prompt=row["prompt"], response=row["response"], answer=row["answer"],
                  category=row["family"], source=PROCEDURAL_SOURCE, source_ref=row["source_ref"],
                  meta={"family": row["family"], "level": row["level"], "round": row["round"]})


def accepted_samples(store: MetadataStore, arm: str, before_round: int) -> list[Sample]:
    """What `arm` accepted in rounds before `before_round`, in the order it accepted them."""
    rows = store.query(f"SELECT c.*, a.rank FROM {S.ARM_ACCEPTED} a JOIN {S.ARM_CANDIDATES} c "
                       f"USING (round, sample_id) WHERE a.arm = ? AND a.round < ? ORDER BY a.round, a.rank",
                       [arm, before_round])
    return [_sample_from_row(r) for r in rows.iter_rows(named=True)]


def arm_pool(store: MetadataStore, arm: str, round: int, seed_pool: Sequence[Sample]) -> list[Sample]:
    """The pool `arm` starts round `round` from: the seed pool and its own earlier acceptances."""
    return list(seed_pool) + accepted_samples(store, arm, round)


def prismatic_order(cluster_sizes: np.ndarray, in_sparse: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Candidates in the order the sparse-cluster filter takes them under a budget: those whose
    nearest centroid is sparse first, in random order (the paper's filter, then a random draw
    to the budget); then the rest, smallest cluster first, random order within a cluster."""
    sparse = np.flatnonzero(in_sparse)
    dense = np.flatnonzero(~np.asarray(in_sparse, dtype=bool))
    dense = dense[np.lexsort((rng.random(len(dense)), np.asarray(cluster_sizes)[dense]))]
    return rng.permutation(sparse).tolist() + dense.tolist()


def choose(arm: str, n: int, budget: int, *, rng_seed: int, judgement=None) -> list[int]:
    """Indices (into the verified candidates) that `arm` accepts, in acceptance order."""
    take = min(budget, n)
    if arm == "naive":
        return list(range(take))
    rng = np.random.default_rng(rng_seed)
    if arm == "random":
        return sorted(rng.choice(n, size=take, replace=False).tolist())
    if arm == "prismatic":
        return prismatic_order(judgement.cluster_sizes, judgement.accepted, rng)[:take]
    raise ValueError(f"unknown arm {arm!r}: use prismatic, random or naive")


@dataclass
class ArmResult:
    arm: str
    n_pool_before: int
    k: int
    n_sparse: int
    clustering_id: str
    pool_digest: str
    accepted: list[str]  # sample ids, in acceptance order
    clusters: list[int]
    cluster_sizes: list[int]
    in_sparse: list[bool]
    g_vendi_before: float
    g_vendi_after: float

    @property
    def gain(self) -> float:
        return self.g_vendi_after - self.g_vendi_before


def run_arm(store: MetadataStore, arm: str, round: int, pool: Sequence[Sample], cand_vectors: np.ndarray,
            verified: Sequence[TaskItem], *, key: str, dim: int, config: Config, run_id: str | None) -> ArmResult:
    """Cluster the arm's pool, judge the shared candidates against it, accept `budget`, score."""
    pv = pool_vectors(store, pool, key, dim)
    clustering_id, clustering = cluster_pool(store, pv, config.clustering, key, f"arm:{arm}:round:{round}", run_id)
    judgement = judge_candidates(cand_vectors, clustering.centroids, clustering.sparse, clustering.sizes)
    picks = choose(arm, len(verified), config.arms.budget, rng_seed=config.arms.source.seed * 1_000 + round,
                   judgement=judgement)
    before = score_vectors(pv.vectors, config.score.q).score
    after = score_vectors(np.vstack([pv.vectors, cand_vectors[picks]]), config.score.q).score
    return ArmResult(arm, len(pool), len(clustering.sizes), int(np.sum(clustering.sparse)), clustering_id,
                     pool_digest([s.sample_id for s in pool]), [verified[i].sample.sample_id for i in picks],
                     [int(judgement.assignments[i]) for i in picks], [int(judgement.cluster_sizes[i]) for i in picks],
                     [bool(judgement.accepted[i]) for i in picks], before, after)


# -- the round ---------------------------------------------------------------------------------
@dataclass
class ArmRoundReport:
    round: int
    n_candidates: int
    n_verified: int
    rejected: dict[str, int]
    arms: dict[str, ArmResult]
    embedding_key: str
    removed_rounds: list[int] = field(default_factory=list)  # later rounds built on this round's old pools
    seconds: dict[str, float] = field(default_factory=dict)


def completed_arm_rounds(store: MetadataStore, arms: Sequence[str]) -> list[int]:
    """Rounds written for every one of `arms`."""
    rows = store.query(f"SELECT round, count(DISTINCT arm) AS n FROM {S.ARM_ROUNDS} WHERE arm IN "
                       f"({','.join('?' for _ in arms)}) GROUP BY round ORDER BY round", list(arms))
    return [r for r, n in zip(rows["round"].to_list(), rows["n"].to_list()) if n == len(arms)]


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
    """Generate and embed the round's candidates once; let every arm accept its budget; write.

    One arm round at a time per store: a second one is refused at once (`StoreBusy`)."""
    with store.exclusive(ARM_ROUND_LOCK, f"arm round {round}", round=round, run_id=run_id):
        return _run_arm_round(store, round, proxy=proxy, config=config, seed_source=seed_source,
                              eval_texts=eval_texts, held_out=held_out, run_id=run_id, progress=progress)


def _run_arm_round(store: MetadataStore, round: int, *, proxy: ProxyOpener, config: Config,
                   seed_source: str | None, eval_texts: Mapping[str, Sequence[str]] | None,
                   held_out: Sequence[Sample], run_id: str | None, progress: Progress | None) -> ArmRoundReport:
    arms, seconds = config.arms.arms, {}
    check_arm_round_order(store, round, arms)
    began = time.perf_counter()
    seed_pool = load_pool(store, 1, seed_source)  # the seed pool alone
    candidates = source_candidates(store, round, config.arms, seed_pool, eval_texts, config.synthesis.ngram,
                                   held_out)
    verified = candidates.verified
    pools = {arm: arm_pool(store, arm, round, seed_pool) for arm in arms}
    seconds["candidates"] = time.perf_counter() - began
    began = time.perf_counter()
    with proxy() as embedder:
        key, dim = embedder.key, embedder.dim
        everything = list({s.sample_id: s for p in pools.values() for s in p}.values()) + [i.sample for i in verified]
        embed_samples(everything, embedder, store, run_id=run_id,
                      progress=lambda i, n, *_: progress and progress("gradients", i, n))
    cand = pool_vectors(store, [i.sample for i in verified], key, dim)
    failed = set(cand.excluded)
    if failed:  # a candidate without a valid gradient cannot be judged: rejected with the reason
        reasons = {i.sample.sample_id: r for i, r in zip(candidates.items, candidates.reasons)}
        reasons.update({sid: f"no_gradient: {why}"[:200] for sid, why in cand.excluded.items()})
        candidates = ArmCandidates(candidates.items, [reasons[i.sample.sample_id] for i in candidates.items])
        verified = candidates.verified
    seconds["gradients"] = time.perf_counter() - began
    began = time.perf_counter()
    results = {arm: run_arm(store, arm, round, pools[arm], cand.vectors, verified, key=key, dim=dim, config=config,
                            run_id=run_id) for arm in arms}
    seconds["arms"] = time.perf_counter() - began
    rejected: dict[str, int] = {}
    for why in candidates.reasons:
        if why is not None:
            rejected[why.split(":")[0]] = rejected.get(why.split(":")[0], 0) + 1
    report = ArmRoundReport(round, len(candidates.items), len(verified), rejected, results, key, seconds=seconds)
    began = time.perf_counter()
    report.removed_rounds = write_arm_round(store, report, candidates, config.arms, run_id)
    seconds["write"] = time.perf_counter() - began
    return report


# -- writing -----------------------------------------------------------------------------------
def _candidates_table(round: int, candidates: ArmCandidates, run_id: str | None) -> pa.Table:
    items = candidates.items
    return pa.table({
        "round": [round] * len(items), "sample_id": [i.sample.sample_id for i in items],
        "position": list(range(len(items))), "family": [i.family for i in items], "level": [i.level for i in items],
        "prompt": [i.sample.prompt for i in items], "response": [i.sample.response for i in items],
        "answer": pa.array([i.sample.answer for i in items], type=pa.string()),
        "source_ref": [i.sample.source_ref for i in items], "content_hash": [i.sample.content_hash for i in items],
        "problem_key": [normalize_text(i.sample.prompt) for i in items],
        "status": ["verified" if r is None else "rejected" for r in candidates.reasons],
        "reason": pa.array(candidates.reasons, type=pa.string()), "run_id": pa.array([run_id] * len(items),
                                                                                     type=pa.string())})


def _accepted_table(round: int, results: Mapping[str, ArmResult]) -> pa.Table:
    rows = [(arm, sid, round, rank, c, size, sparse) for arm, r in results.items()
            for rank, (sid, c, size, sparse) in enumerate(zip(r.accepted, r.clusters, r.cluster_sizes, r.in_sparse))]
    names = ["arm", "sample_id", "round", "rank", "cluster", "cluster_size", "in_sparse"]
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)},
                    schema=pa.schema([("arm", pa.string()), ("sample_id", pa.string()), ("round", pa.int32()),
                                      ("rank", pa.int32()), ("cluster", pa.int32()), ("cluster_size", pa.int32()),
                                      ("in_sparse", pa.bool_())]))


def _rounds_table(report: ArmRoundReport, arms: ArmsConfig, run_id: str | None) -> pa.Table:
    settings = json.dumps(arms.model_dump(mode="json", exclude={"experiment"}), sort_keys=True)
    rs = list(report.arms.values())
    return pa.table({
        "round": [report.round] * len(rs), "arm": [r.arm for r in rs], "budget": [arms.budget] * len(rs),
        "n_candidates": [report.n_candidates] * len(rs), "n_verified": [report.n_verified] * len(rs),
        "n_accepted": [len(r.accepted) for r in rs], "n_in_sparse": [sum(r.in_sparse) for r in rs],
        "n_pool_before": [r.n_pool_before for r in rs], "k": [r.k for r in rs], "n_sparse": [r.n_sparse for r in rs],
        "clustering_id": [r.clustering_id for r in rs], "pool_digest": [r.pool_digest for r in rs],
        "embedding_key": [report.embedding_key] * len(rs), "g_vendi_before": [r.g_vendi_before for r in rs],
        "g_vendi_after": [r.g_vendi_after for r in rs], "settings": [settings] * len(rs),
        "run_id": pa.array([run_id] * len(rs), type=pa.string())})


def write_arm_round(store: MetadataStore, report: ArmRoundReport, candidates: ArmCandidates, arms: ArmsConfig,
                    run_id: str | None) -> list[int]:
    """Replace the round's rows in one transaction. Later rounds whose pools came from what this
    round accepted before, and no longer does, are removed (returned): they must run again."""
    r = report.round
    with store.transaction() as con:
        old = {(arm, sid) for arm, sid in con.execute(
            f"SELECT arm, sample_id FROM {S.ARM_ACCEPTED} WHERE round = ?", [r]).fetchall()}
        new = {(arm, sid) for arm, res in report.arms.items() for sid in res.accepted}
        later = [row[0] for row in con.execute(f"SELECT DISTINCT round FROM {S.ARM_ROUNDS} WHERE round > ? "
                                               f"ORDER BY 1", [r]).fetchall()]
        removed = later if (old and old != new) else []
        for table in (S.ARM_CANDIDATES, S.ARM_ACCEPTED, S.ARM_ROUNDS):
            con.execute(f"DELETE FROM {table} WHERE round {'>=' if removed else '='} ?", [r])
        for table, data in ((S.ARM_CANDIDATES, _candidates_table(r, candidates, run_id)),
                            (S.ARM_ACCEPTED, _accepted_table(r, report.arms)),
                            (S.ARM_ROUNDS, _rounds_table(report, arms, run_id))):
            con.register("incoming", data)
            con.execute(f"INSERT INTO {table} ({', '.join(data.column_names)}) "
                        f"SELECT {', '.join(data.column_names)} FROM incoming")
            con.unregister("incoming")
    return removed


def arm_history(store: MetadataStore):
    """Every arm round: G-Vendi before/after, accepted counts, as a polars frame."""
    return store.query(f"SELECT round, arm, n_accepted, n_in_sparse, n_pool_before, k, n_sparse, g_vendi_before, "
                       f"g_vendi_after, g_vendi_after - g_vendi_before AS gain FROM {S.ARM_ROUNDS} "
                       f"ORDER BY round, arm")


def summary_lines(store: MetadataStore, arms: Sequence[str]) -> list[str]:
    """The demo's closing table: G-Vendi per arm per round and the prismatic vs random gains."""
    hist = arm_history(store)
    if hist.is_empty():
        return ["no arm round in the store yet"]
    lines = ["| round | " + " | ".join(f"{a}: G-Vendi (gain), accepted" for a in arms) + " | prismatic gain - random gain |",
             "|---|" + "---|" * (len(arms) + 1)]
    for rnd in sorted(set(hist["round"].to_list())):
        rows = {row["arm"]: row for row in hist.filter(hist["round"] == rnd).iter_rows(named=True)}
        cells = [f"{rows[a]['g_vendi_after']:.2f} ({rows[a]['gain']:+.2f}), {rows[a]['n_accepted']}" if a in rows
                 else "-" for a in arms]
        diff = (f"{rows['prismatic']['gain'] - rows['random']['gain']:+.2f}"
                if "prismatic" in rows and "random" in rows else "-")
        lines.append(f"| {rnd} | " + " | ".join(cells) + f" | {diff} |")
    return lines
