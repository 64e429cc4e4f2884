"""One synthesis round: the sparse-cluster filter, request planning, a whole round with a
tiny random-init proxy and scripted LLMs (parse / hygiene / vote / filter plumbing, provenance,
idempotent re-runs, resume after a crash, round order), and one round on the real vLLM engine.

The scripted generator and teacher are test data for the plumbing: they answer by the
per-request seed and by markers in the problem text, deterministically, like a seeded LLM.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from prismatic_assets.core.clustering import Clustering, sparse_cluster_mask, spherical_kmeans
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.samples import Sample, content_hash
from prismatic_assets.infra.config import EngineConfig, SynthesisConfig, build_config
from prismatic_assets.infra.engines import EngineSet
from prismatic_assets.pipeline.baselines import BASELINE_METRICS
from prismatic_assets.pipeline.embeddings import embed_samples
from prismatic_assets.pipeline.round import STAGES, lend, run_round
from prismatic_assets.pipeline.round_services import judge_candidates
from prismatic_assets.pipeline.round_stages import RoundOrderError, plan_requests, request_seed, solution_seed
from prismatic_assets.store import schema as S
from prismatic_assets.store.lineage import lineage
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import completed_rounds, round_summary

# -- (a) the sparse-cluster filter on constructed gradients ------------------------------


def _blob(rng, direction: np.ndarray, n: int, noise: float = 0.05) -> np.ndarray:
    x = direction[None, :] + noise * rng.standard_normal((n, direction.size))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_only_candidates_near_sparse_centroids_are_accepted():
    rng = np.random.default_rng(0)
    d = 16
    eye = np.eye(d)
    # A pool of one big cluster and four small ones, around known directions. The clustering
    # is the exact one (centroid = normalized blob mean), so the right answer is known:
    # sorted sizes 2 3 4 5 30, threshold = sorted[int(5 * 0.5)] = 4, so the blobs of 2 and 3 are sparse.
    sizes = [30, 2, 3, 4, 5]
    blobs = [_blob(rng, eye[i], n) for i, n in enumerate(sizes)]
    centroids = np.stack([b.mean(0) / np.linalg.norm(b.mean(0)) for b in blobs])
    sparse = sparse_cluster_mask(np.array(sizes), 0.5)
    assert sparse.tolist() == [False, True, True, False, False]
    # Two candidates near each centroid: both near a sparse one are accepted (no update between them).
    candidates = np.concatenate([_blob(rng, eye[i], 2, noise=0.02) for i in range(5)])
    judged = judge_candidates(candidates, centroids, sparse, np.array(sizes))
    assert judged.assignments.tolist() == np.repeat(np.arange(5), 2).tolist()
    assert judged.accepted.tolist() == np.repeat(sparse, 2).tolist()
    assert judged.cluster_sizes.tolist() == np.repeat(sizes, 2).tolist()
    assert (judged.similarities > 0.9).all()
    # The same decision with the centroids spherical k-means finds on this pool.
    clustering = spherical_kmeans(np.concatenate(blobs), k=5, niter=20, seed=0, sparse_ratio=0.5)
    again = judge_candidates(candidates, clustering.centroids, clustering.sparse, clustering.sizes)
    assert again.accepted.tolist() == clustering.sparse[again.assignments].tolist()
    assert (again.cluster_sizes < np.sort(clustering.sizes)[2]).tolist() == again.accepted.tolist()


def test_judge_candidates_edge_cases():
    centroids = np.eye(3, 4)
    empty = judge_candidates(np.zeros((0, 4)), centroids, [True, False, False])
    assert empty.accepted.shape == (0,)
    with pytest.raises(ValueError, match="one flag per cluster"):
        judge_candidates(np.ones((1, 4)), centroids, [True, False])
    with pytest.raises(ValueError, match="width"):
        judge_candidates(np.ones((1, 4)), np.eye(3, 5), [True, False, False])
    # Raw (unnormalized) vectors are fine: cosine decides.
    judged = judge_candidates(np.array([[0.0, 5.0, 0.1, 0.0]]), centroids, [False, True, False])
    assert judged.assignments.tolist() == [1] and judged.accepted.tolist() == [True]


# -- request planning ----------------------------------------------------------------------


def _pool_samples(n: int) -> list[Sample]:
    return [Sample(f"seed:{i:02d}", f"pool problem number {i} about integers", f"solution {i}") for i in range(n)]


def _clustering(assignments: list[int], sparse: list[bool]) -> Clustering:
    a = np.array(assignments)
    sizes = np.bincount(a, minlength=len(sparse))
    return Clustering(centroids=np.eye(len(sparse), 4, dtype=np.float32), assignments=a,
                      similarities=np.ones(len(a), dtype=np.float32), sizes=sizes, sparse=np.array(sparse),
                      k=len(sparse), niter=20, seed=0, sparse_ratio=0.5)


def test_plan_requests_strategies_and_seeds():
    pool = _pool_samples(20)
    ids = [s.sample_id for s in pool]
    # clusters: 0 big (12), 1 small (5), 2 small (3), 3 empty and sparse
    clustering = _clustering([0] * 12 + [1] * 5 + [2] * 3, [False, True, True, True])
    members = {c: {i for i, a in zip(ids, clustering.assignments) if a == c} for c in range(4)}
    settings = SynthesisConfig(requests_per_round=6, few_shot=3, new_per_request=3, strategy="sparse_cluster")
    plans = plan_requests(1, pool, ids, clustering, settings)
    assert [p.strategy for p in plans] == ["sparse_cluster"] * 6
    assert {p.target_cluster for p in plans} == {1, 2}  # the empty sparse cluster is never a target
    for p in plans:
        assert set(p.few_shot_ids) <= members[p.target_cluster] and len(p.few_shot_ids) == 3
        assert p.sampling.seed == request_seed(settings.seed, 1, p.index)
        assert "3 new math problems" in p.messages[-1]["content"]
        shown = _examples(p.messages)
        assert shown == [pool[ids.index(i)].prompt for i in p.few_shot_ids]  # recorded in the order shown
    assert plans == plan_requests(1, pool, ids, clustering, settings)  # deterministic

    rand = plan_requests(1, pool, ids, clustering, settings.model_copy(update={"strategy": "random"}))
    assert all(p.strategy == "random" and p.target_cluster is None for p in rand)
    assert any(not set(p.few_shot_ids) <= members[1] | members[2] for p in rand)
    other_seed = plan_requests(1, pool, ids, clustering, settings.model_copy(update={"strategy": "random", "seed": 1}))
    other_round = plan_requests(2, pool, ids, clustering, settings.model_copy(update={"strategy": "random"}))
    assert [p.few_shot_ids for p in other_seed] != [p.few_shot_ids for p in rand]
    assert [p.few_shot_ids for p in other_round] != [p.few_shot_ids for p in rand]
    assert len({p.sampling.seed for p in rand + other_seed + other_round}) == 18

    no_sparse = _clustering([0] * 10 + [1] * 10, [False, False])
    fallback = plan_requests(1, pool, ids, no_sparse, settings)
    assert all(p.strategy == "random" and p.target_cluster is None for p in fallback)


@pytest.mark.parametrize("changes, match", [
    ({"strategy": "nearest"}, "strategy"),
    ({"few_shot": 0}, "few_shot"),
    ({"min_agree": 4}, "min_agree=4 > n_solutions=3"),
])
def test_round_settings_are_validated(changes, match):
    with pytest.raises(ValueError, match=match):
        SynthesisConfig(**changes)


# -- (b) a whole round with a tiny proxy and scripted LLMs --------------------------------

TOPICS = ["integers", "primes", "polynomials", "triangles", "sequences", "inequalities"]
POOL_PROBLEMS = [
    f"Find the number of positive {TOPICS[i % 6]} below {40 + 7 * i} whose digit sum equals {3 + i % 5}."
    if i % 2 else
    f"Let a, b be real numbers with a + b = {i + 2} and ab = {i}. Compute the value of a^2 + b^2 for case {i}."
    for i in range(24)
]
EVAL_TEXT = ("Let f be a real function with f(x) + f(1 - x) = 1 for every real number x. "
             "Compute the sum of f(k/100) for k from 1 to 99.")
CONTAMINATED = ("Let f be a real function with f(x) + f(1 - x) = 1 for every real number x. "
                "Find the value of f(1/2) for this function.")


def _novel(tag: str, marker: str = "") -> str:
    n = int(hashlib.sha256(tag.encode()).hexdigest()[:4], 16) % 90 + 10
    return (f"A {marker}garden path number {tag} has {n} stones, and every second stone is painted red. "
            f"How many red stones does path {tag} have?")


def _tags(*problems: str) -> str:
    return "Here are the new problems.\n" + "\n".join(f"<problem>\n{p}\n</problem>" for p in problems)


def _examples(messages) -> list[str]:
    """The few-shot problems shown in a request (its <problem> blocks, without the format's placeholders)."""
    return [p for p in re.findall(r"<problem>\n(.*)\n</problem>", messages[-1]["content"]) if p != "..."]


def _script(round: int, seed: int = 0) -> dict:
    """Problem-generator outputs of round `round`, by per-request sampling seed."""
    def pool_copy(messages):  # a pool problem that is not among the shown examples (those are dropped by the parser)
        return next(p for p in POOL_PROBLEMS if p not in _examples(messages))

    outputs = [
        lambda m: _tags(_novel("0a"), _novel("0b")),
        lambda m: _tags(_novel("1a"), pool_copy(m)),  # duplicate of the pool
        lambda m: _tags(_novel("2a"), "  " + _novel("0a").upper() + " "),  # normalized duplicate of 0a
        lambda m: _tags(_novel("3a"), CONTAMINATED),  # 10-gram overlap with the evaluation text
        lambda m: "I am not able to write new problems today, sorry.",  # unparsable
        lambda m: "",  # empty
        lambda m: _tags(_novel("6a", "tricky "), _novel("6b", "vague ")),  # disagreement, no answer
        lambda m: _tags(_novel("7a"), _novel("7b", "split ")),  # 2 of 3 agree
    ]
    return {request_seed(seed, round, i): out for i, out in enumerate(outputs)}


class ScriptedLLM:
    """A Generator that answers from a script; records every conversation it is asked."""

    def __init__(self, model_name: str, respond, fingerprint: str | None = None) -> None:
        self.model_name = model_name
        self.fingerprint = fingerprint or f"{model_name}-weights-v1"
        self.respond = respond
        self.calls: list[int] = []
        self.asked: list[list[dict]] = []

    def chat(self, conversations, sampling):
        samplings = [sampling] * len(conversations) if isinstance(sampling, SamplingConfig) else list(sampling)
        self.calls.append(len(conversations))
        self.asked.extend(conversations)
        return [[self.respond(conv, s, j) for j in range(s.n)] for conv, s in zip(conversations, samplings)]

    def close(self) -> None:
        pass


class Crashing:
    """Wraps a generator; raises on call number `at` (1-based)."""

    def __init__(self, inner, at: int) -> None:
        self.inner, self.at, self.n = inner, at, 0
        self.model_name = inner.model_name
        self.fingerprint = inner.fingerprint

    def chat(self, conversations, sampling):
        self.n += 1
        if self.n == self.at:
            raise RuntimeError("injected crash")
        return self.inner.chat(conversations, sampling)

    def close(self) -> None:
        pass


def make_generator(seed: int = 0) -> ScriptedLLM:
    scripts: dict = {}
    for r in (1, 2, 3):
        scripts.update(_script(r, seed))

    def respond(messages, sampling, j):
        out = scripts.get(sampling.seed)
        if out is None:
            return _tags(_novel(f"s{sampling.seed}a"), _novel(f"s{sampling.seed}b"))
        return out(messages)
    return ScriptedLLM("scripted-generator", respond)


def make_teacher() -> ScriptedLLM:
    def respond(messages, sampling, j):
        problem = messages[-1]["content"]
        stones = int(re.search(r"has (\d+) stones", problem).group(1)) if "stones" in problem else 7
        if "tricky" in problem:
            return f"Counting carefully gives \\boxed{{{stones + j}}}."
        if "vague" in problem:
            return "It depends on how the stones are painted."
        if "split" in problem and j == 2:
            return f"Half of them, so \\boxed{{{stones}}}."
        return f"Every second stone of {stones} is red, so there are \\boxed{{{stones // 2}}} red stones."
    return ScriptedLLM("scripted-teacher", respond)


def _seed_store(path) -> MetadataStore:
    store = MetadataStore(path)
    samples = [Sample(f"unit:{i:02d}", p, f"Work it out step by step: the answer is \\boxed{{{i}}}.", answer=str(i),
                      source="unit", source_ref=f"unit.jsonl:{i + 1}") for i, p in enumerate(POOL_PROBLEMS)]
    held = [Sample(f"unit:h{i}", f"A held-out problem {i} about squares and cubes.", "done", source="unit")
            for i in range(3)]
    store.replace_samples(source="unit", origin="seed", samples=samples + held,
                          splits={s.sample_id: "holdout" for s in held}, rejections=[], run_id="seed-run")
    return store


@pytest.fixture(scope="module")
def embedder(tiny_embedder):
    return tiny_embedder


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, embedder):
    """Copies of one seeded store whose pool gradients are already cached (saves ~6 s a store)."""
    template = tmp_path_factory.mktemp("template") / "seeded.duckdb"
    store = _seed_store(template)
    embed_samples(store.load_samples(where="origin = 'seed' AND split = 'pool'"), embedder, store)

    def copy(path) -> MetadataStore:
        shutil.copyfile(template, path)
        return MetadataStore(path)
    return copy


SETTINGS = build_config({"synthesis": {"requests_per_round": 8, "chunk_size": 2}, "clustering": {"ratio": 0.25}})


def _with(config, **synthesis):
    """`config` with some synthesis settings changed (validated like a profile)."""
    values = config.model_dump()
    values["synthesis"].update(synthesis)
    return build_config(values)
EVAL = {"heldout": [EVAL_TEXT]}


def _run(store, embedder, round=1, generator=None, teacher=None, settings=SETTINGS, **kw):
    engines = EngineSet.of(generator=generator or make_generator(), teacher=teacher or make_teacher())
    return run_round(store, round, engines=engines, proxy=lend(embedder), config=settings, eval_texts=EVAL,
                     seed_source="unit", run_id=f"run-{round}", **kw)


def _table(store, table: str, order: str):
    return store.query(f"SELECT * EXCLUDE (run_id) FROM {table} ORDER BY {order}")


def _counts(store) -> dict[str, int]:
    tables = [S.SAMPLES, S.EMBEDDINGS, S.CLUSTERINGS, S.CLUSTERS, S.CLUSTER_MEMBERS, S.SCORES, S.GENERATIONS,
              S.SYNTHESIS_REQUESTS, S.SYNTHESIS_CANDIDATES, S.SYNTHESIS_DECISIONS, S.SYNTHESIS_ROUNDS]
    return {t: int(store.query(f"SELECT count(*) AS n FROM {t}")["n"][0]) for t in tables}


@pytest.fixture(scope="module")
def round_one(tmp_path_factory, seeded, embedder):
    """Round 1 run once, uninterrupted; shared by the read-only tests below."""
    store = seeded(tmp_path_factory.mktemp("round1") / "m.duckdb")
    events: list[tuple[str, int, int]] = []
    generator, teacher = make_generator(), make_teacher()
    report = _run(store, embedder, generator=generator, teacher=teacher,
                  progress=lambda *e: events.append(e))
    return store, report, events, generator, teacher


def test_the_pool_stage_embeds_and_clusters_only_the_seed_source_under_its_run(tmp_path, embedder):
    """On a store whose pool has no gradients yet, holding a second seed source: the pool is the
    chosen source's, its gradients are computed (counted as the pool stage's progress) and the
    gradients and the clustering are recorded under the round's run."""
    from prismatic_assets.pipeline.round_stages import prepare_pool

    store = _seed_store(tmp_path / "m.duckdb")
    other = [Sample(f"other:{i}", f"Another source's problem {i}: what is {i} + {i}?", f"It is {2 * i}.",
                    source="other") for i in range(3)]
    store.replace_samples(source="other", origin="seed", samples=other, splits={}, rejections=[], run_id="seed-run")
    events: list[tuple] = []
    pool = prepare_pool(store, 1, embedder, SETTINGS.clustering, "unit", "run-p", progress=lambda *e: events.append(e))
    assert {s.source for s in pool.samples} == {"unit"} and len(pool.samples) == 24
    assert (pool.seed_source, pool.dim, pool.embedding_key) == ("unit", embedder.dim, embedder.key)
    assert {e[0] for e in events} == {"pool"} and events[-1] == ("pool", 24, 24)
    assert len(events) > 1 and all(total == 24 for _, _, total in events)  # the gradients stage counted
    assert [done for _, done, _ in events] == sorted(done for _, done, _ in events)
    embedded = store.query(f"SELECT DISTINCT run_id FROM {S.EMBEDDINGS}")["run_id"].to_list()
    clustered = store.query(f"SELECT run_id FROM {S.CLUSTERINGS} WHERE clustering_id = ?",
                            [pool.clustering_id])["run_id"].to_list()
    assert embedded == ["run-p"] and clustered == ["run-p"]


def test_round_counts_per_stage(round_one):
    store, report, events, generator, teacher = round_one
    assert report.round == 1 and report.n_pool == 24 and report.k == 6  # holdout excluded; K = 0.25 * 24
    assert report.run_id == "run-1"
    members = store.query(f"SELECT count(*) AS n FROM {S.CLUSTER_MEMBERS} WHERE clustering_id = ?",
                          [report.clustering_id])["n"][0]
    assert report.n_pool_excluded == 24 - members  # pool samples without a gradient are not clustered
    assert report.requests == 8 and report.outputs == 8 and report.outputs_cached == 0
    assert report.problems_asked == 16 and report.problems_parsed == 12
    assert report.parse_failures == 2 and report.empty_outputs == 1
    assert (report.duplicates, report.duplicates_pool, report.duplicates_batch) == (2, 1, 1)
    assert report.contaminated == 1
    assert report.sent_to_teacher == 9
    assert report.vote_failures == {"disagreement": 1, "no_answer": 1}
    assert report.verified == 7
    assert report.accepted >= 1, "the fixture should exercise acceptance; adjust the pool if this fails"
    assert report.llm_requests == {"generator": 8, "teacher": 9}
    assert generator.calls == [2, 2, 2, 2] and sum(teacher.calls) == 9  # chunk_size=2
    assert report.acceptance_rate["hygiene"] == pytest.approx(9 / 12)
    assert report.acceptance_rate["verification"] == pytest.approx(7 / 9)
    assert report.n_random_control == report.accepted
    assert set(report.seconds) == set(STAGES)
    assert {e[0] for e in events} >= {"pool", "generate", "solve", "gradients", "write"}
    assert events[-1] == ("write", 1, 1)
    # The gradients stage counts the verified candidates up to all of them.
    gradients = [e[1:] for e in events if e[0] == "gradients"]
    assert gradients[-1] == (7, 7) and all(total == 7 for _, total in gradients)
    assert [e for e in events if e[0] == "pool"] == [("pool", 24, 24)]  # the pool's gradients were cached
    assert [done for done, _ in gradients] == sorted(done for done, _ in gradients)


def test_a_stage_nothing_entered_passes_nothing():
    from prismatic_assets.pipeline.round import _rate

    assert (_rate(0, 0), _rate(3, 4), _rate(4, 4)) == (0.0, 0.75, 1.0)


def test_build_report_counts_a_hand_made_round():
    """build_report on a round written out by hand: every count and rate is the one read off it."""
    from types import SimpleNamespace as NS

    from prismatic_assets.pipeline.round import build_report

    requests = [NS(status=s) for s in ("parsed", "parsed", "parsed", "empty", "unparsed")]  # 5 outputs
    reasons = ["accepted"] * 4 + ["duplicate_pool", "duplicate_batch", "duplicate_batch", "contaminated"]
    ledger = NS(round=3, requests=requests, candidates=[object()] * 8, reasons=lambda: reasons)
    clustering = NS(k=4, sparse=np.array([True, False, True, False]))
    pool = NS(samples=[object()] * 10, vectors=NS(excluded=[7, 9]), clustering=clustering,
              clustering_id="c-3", embedding_key="e-3")
    plans = [NS(strategy="sparse_cluster"), NS(strategy="random"), NS(strategy="random")]
    clean = [NS(vote_reason=r) for r in ("accepted", "accepted", "accepted", "no_answer")]
    solved = NS(stats=NS(cached=1, called=3))
    embedded = NS(candidates=[NS(cluster=2), NS(cluster=1)])  # one of the three verified has no gradient
    scores = NS(before=NS(score=5.0), after=NS(score=6.5), random=NS(score=5.5), control_rows=[0])
    report = build_report(ledger, pool, plans, outputs_cached=2, generator_calls=4, clean=clean, solved=solved,
                          verified=[object()] * 3, embedded=embedded, accepted=[0], scores=scores,
                          strategy="sparse_cluster", new_per_request=2, run_id="r-3")
    assert (report.round, report.run_id, report.clustering_id, report.embedding_key) == (3, "r-3", "c-3", "e-3")
    assert (report.n_pool, report.n_pool_excluded, report.k, report.n_sparse) == (10, 2, 4, 2)
    assert (report.strategy, report.strategy_fallbacks, report.requests) == ("sparse_cluster", 2, 3)
    assert (report.outputs, report.outputs_cached, report.problems_asked, report.problems_parsed) == (5, 2, 10, 8)
    assert (report.parse_failures, report.empty_outputs) == (2, 1)
    assert (report.duplicates, report.duplicates_pool, report.duplicates_batch, report.contaminated) == (3, 1, 2, 1)
    assert (report.sent_to_teacher, report.solutions_cached, report.verified) == (4, 1, 3)
    assert report.vote_failures == {"no_answer": 1}
    assert (report.gradient_failures, report.in_dense, report.accepted) == (1, 1, 1)
    assert report.acceptance_rate == pytest.approx({"parse": 8 / 10, "hygiene": 4 / 8, "verification": 3 / 4,
                                                    "gradient": 2 / 3, "cluster": 1 / 2, "overall": 1 / 8})
    assert report.llm_requests == {"generator": 4, "teacher": 3}
    assert (report.g_vendi_before, report.g_vendi_after, report.g_vendi_random) == (5.0, 6.5, 5.5)
    assert report.n_random_control == 1
    assert (report.sparse_fraction, report.sparse_coverage, report.clusters_filled) == (0.5, 0.5, [2])
    assert report.seconds == {}  # run_round fills it from its stage timer


def recompute_round(store, report, dim: int, n_parsed: int) -> dict:
    """A round's acceptances, stage counts, coverage and three G-Vendi scores, recomputed from
    the stored vectors and centroids: nearest centroid by a numpy argmax, sparse clusters by
    the paper's rule, G-Vendi by the Vendi-Score package. Checks the stored membership and
    accepted samples on the way; returns the figures the report must show."""
    from vendi_score import vendi

    key = report.embedding_key
    pool = store.load_samples(where="origin = 'seed' AND split = 'pool'")
    valid, pool_vectors, _ = store.load_vectors([s.content_hash for s in pool], key, dim)
    assert valid.all()
    clusters = store.query(f"SELECT centroid FROM {S.CLUSTERS} WHERE clustering_id = ? ORDER BY cluster",
                           [report.clustering_id])
    centroids = np.array(clusters["centroid"].to_list(), dtype=np.float64)  # (K, d)
    # Each pool member is stored in its nearest centroid's cluster; the sizes count them.
    nearest_pool = np.argmax(pool_vectors @ centroids.T, axis=1)
    members = store.query(f"SELECT sample_id, cluster FROM {S.CLUSTER_MEMBERS} WHERE clustering_id = ?",
                          [report.clustering_id])
    stored = dict(zip(members["sample_id"].to_list(), members["cluster"].to_list()))
    assert [stored[s.sample_id] for s in pool] == nearest_pool.tolist()
    sizes = np.bincount(nearest_pool, minlength=len(centroids)).tolist()
    threshold = sorted(sizes)[int(len(sizes) * SETTINGS.clustering.sparse_ratio)]
    sparse = {c for c, size in enumerate(sizes) if size < threshold}
    # The verified candidates, those with a vector, and their nearest centroids.
    cands = store.query(f"SELECT candidate_id, content_hash, in_random_control FROM {S.SYNTHESIS_CANDIDATES} "
                        f"WHERE round = ? AND vote_reason = 'accepted' ORDER BY candidate_id", [report.round])
    has_vector, vectors, _ = store.load_vectors(cands["content_hash"].to_list(), key, dim)  # (m_valid, d)
    with_vector = [cid for cid, ok in zip(cands["candidate_id"].to_list(), has_vector) if ok]
    hashes = [h for h, ok in zip(cands["content_hash"].to_list(), has_vector) if ok]
    nearest = np.argmax(vectors @ centroids.T, axis=1)
    passed = np.array([int(c) in sparse for c in nearest], dtype=bool)
    decided = store.query(f"SELECT candidate_id FROM {S.SYNTHESIS_DECISIONS} WHERE round = ? AND "
                          f"decision = 'accepted' ORDER BY candidate_id", [report.round])["candidate_id"].to_list()
    assert decided == [cid for cid, p in zip(with_vector, passed) if p]
    synthetic = store.query(f"SELECT prompt, response FROM {S.SAMPLES} WHERE origin = 'synthetic' AND round = ?",
                            [report.round])
    assert sorted(content_hash(p, r) for p, r in synthetic.rows()) == sorted(h for h, p in zip(hashes, passed) if p)
    # The random control: the candidates flagged as its draw, all of them with a vector.
    flags = dict(zip(cands["candidate_id"].to_list(), cands["in_random_control"].to_list()))
    control = np.array([flags[cid] for cid in with_vector], dtype=bool)
    flagged = store.query(f"SELECT count(*) AS n FROM {S.SYNTHESIS_CANDIDATES} WHERE round = ? AND "
                          f"in_random_control", [report.round])["n"][0]
    assert control.sum() == flagged == passed.sum()
    n_verified, n_vector, n_accepted = cands.height, len(with_vector), int(passed.sum())
    filled = {int(c) for c in nearest[passed]}
    assert report.clusters_filled == sorted(filled)
    pool_vectors, vectors = pool_vectors.astype(np.float64), vectors.astype(np.float64)
    return {
        "accepted": n_accepted, "in_dense": n_vector - n_accepted, "gradient_failures": n_verified - n_vector,
        "k": len(centroids), "n_sparse": len(sparse), "sparse_fraction": len(sparse) / len(centroids),
        "sparse_coverage": len(filled & sparse) / len(sparse),
        "rate_gradient": n_vector / n_verified, "rate_cluster": n_accepted / n_vector,
        "rate_overall": n_accepted / n_parsed,
        "g_vendi_before": vendi.score_dual(pool_vectors),
        "g_vendi_after": vendi.score_dual(np.vstack([pool_vectors, vectors[passed]])),
        "g_vendi_random": vendi.score_dual(np.vstack([pool_vectors, vectors[control]])),
    }


def _reported(report) -> dict:
    rates = {f"rate_{stage}": report.acceptance_rate[stage] for stage in ("gradient", "cluster", "overall")}
    names = ("accepted", "in_dense", "gradient_failures", "k", "n_sparse", "sparse_fraction", "sparse_coverage",
             "g_vendi_before", "g_vendi_after", "g_vendi_random")
    return {**{name: getattr(report, name) for name in names}, **rates}


def test_round_figures_match_an_independent_computation(round_one, embedder):
    store, report, *_ = round_one
    expected = recompute_round(store, report, embedder.dim, n_parsed=12)
    assert expected["gradient_failures"] == 0 and expected["accepted"] >= 1
    assert _reported(report) == pytest.approx(expected, rel=1e-5)


class FailingOn:
    """The embedder, except that samples whose prompt holds `marker` get no gradient (as a
    non-finite loss gives none)."""

    def __init__(self, inner, marker: str) -> None:
        self.inner, self.marker = inner, marker

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed_chunks(self, samples):
        for chunk, out in self.inner.embed_chunks(samples):
            yield chunk, [dataclasses.replace(e, vector=None, error="non-finite loss (nan)")
                          if self.marker in s.prompt else e for s, e in zip(chunk, out)]


def test_a_verified_candidate_without_a_gradient_is_counted_apart(tmp_path, seeded, embedder):
    store = seeded(tmp_path / "m.duckdb")
    report = _run(store, FailingOn(embedder, "path number 7a"))
    expected = recompute_round(store, report, embedder.dim, n_parsed=12)
    assert expected["gradient_failures"] == 1
    assert _reported(report) == pytest.approx(expected, rel=1e-5)
    (row,) = store.query(f"SELECT d.stage, d.reason, c.embedding_error, d.rule FROM {S.SYNTHESIS_DECISIONS} d JOIN "
                         f"{S.SYNTHESIS_CANDIDATES} c USING (candidate_id) WHERE d.stage = 'gradient'").rows()
    assert row[:3] == ("gradient", "no_gradient", "non-finite loss (nan)")
    assert json.loads(row[3]) == {"embedding_key": embedder.key}


def test_a_round_logs_its_settings_figures_and_charts_to_mlflow(round_one, tmp_path):
    from prismatic_assets.core.tracking import Tracker
    from prismatic_assets.pipeline.round import track_round
    from prismatic_assets.reporting import plots

    store, report, *_ = round_one
    config = build_config({**SETTINGS.model_dump(), "data_dir": str(tmp_path / "data")})
    syn = config.synthesis
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracker.run("round-1") as run:
        charts = track_round(tracker, run, config, report, store)
    logged = tracker.client.get_run(run).data
    assert logged.params["round"] == "1"
    assert (logged.params["generator"], logged.params["teacher"]) == (syn.generator.model, syn.teacher.model)
    assert (logged.params["requests_per_round"], logged.params["chunk_size"]) == ("8", "2")
    assert logged.params["problem_sampling"] == syn.problem_sampling.key()
    assert logged.params["solution_sampling"] == syn.solution_sampling.key()
    # The figures as the store holds them for round 1, under their metric names, at step 1.
    row = store.query(f"SELECT * FROM {S.SYNTHESIS_ROUNDS} WHERE round = 1").row(0, named=True)
    n = {t: int(store.query(f"SELECT count(*) AS n FROM {t} WHERE round = 1{where}")["n"][0]) for t, where in (
        (S.SYNTHESIS_REQUESTS, ""), (S.SYNTHESIS_CANDIDATES, ""),
        (S.SYNTHESIS_DECISIONS, " AND decision = 'accepted'"))}
    expected = {"g_vendi/before": row["g_vendi_before"], "g_vendi/after": row["g_vendi_after"],
                "g_vendi/random_control": row["g_vendi_random"], "pool/before": row["n_pool"],
                "pool/after": row["n_pool"] + n[S.SYNTHESIS_DECISIONS], "count/requests": n[S.SYNTHESIS_REQUESTS],
                "count/parsed": n[S.SYNTHESIS_CANDIDATES], "count/duplicates": report.duplicates,
                "count/contaminated": report.contaminated, "count/verified": report.verified,
                "count/accepted": n[S.SYNTHESIS_DECISIONS], "clusters/k": report.k,
                "clusters/sparse": report.n_sparse, "clusters/sparse_coverage": report.sparse_coverage,
                **{f"acceptance/{stage}": rate for stage, rate in report.acceptance_rate.items()}}
    assert logged.metrics == pytest.approx(expected)
    assert {m.step for name in expected for m in tracker.client.get_metric_history(run, name)} == {1}
    # The charts: the store's history drawn by the plots module, returned, written and logged.
    history = [(1, row["g_vendi_after"], row["g_vendi_random"], row["g_vendi_before"], row["n_accepted"])]
    assert charts == {
        "g_vendi_per_round": plots.series_png([1], {"after (gradient filter)": [history[0][1]],
                                                    "random control": [history[0][2]], "before": [history[0][3]]},
                                              "round", "G-Vendi", "G-Vendi per round"),
        "accepted_per_round": plots.bars_png(["1"], [history[0][4]], "accepted samples", "Accepted per round")}
    for name, png in charts.items():
        assert (tmp_path / "data" / "plots" / f"round-1-{name}.png").read_bytes() == png
    assert {a.path for a in tracker.client.list_artifacts(run, "plots")} == \
        {f"plots/round-1-{name}.png" for name in charts}


def test_round_provenance_for_every_candidate(round_one):
    store, report, *_ = round_one
    cands = _table(store, S.SYNTHESIS_CANDIDATES, "candidate_id")
    decisions = _table(store, S.SYNTHESIS_DECISIONS, "candidate_id")
    requests = _table(store, S.SYNTHESIS_REQUESTS, "request_id, output_index")
    assert cands.height == decisions.height == 12
    assert cands["candidate_id"].to_list() == decisions["candidate_id"].to_list()
    assert requests.height == 8 and requests["generator_model"].unique().to_list() == ["scripted-generator"]
    assert requests.filter(requests["status"] != "parsed")["status"].sort().to_list() == ["empty", "parse_failed"]
    failed = requests.filter(requests["status"] == "parse_failed").row(0, named=True)
    assert failed["raw_output"].startswith("I am not able") and failed["parse_issues"]
    assert all(len(ids) == 5 for ids in requests["few_shot_ids"].to_list())

    reasons = dict(zip(decisions["candidate_id"].to_list(), decisions["reason"].to_list()))
    by_reason = {}
    for cid, reason in reasons.items():
        by_reason.setdefault(reason, []).append(cid)
    assert by_reason["duplicate_pool"] == ["r1:q0001:o0:p1"]
    assert by_reason["duplicate_batch"] == ["r1:q0002:o0:p1"]
    assert by_reason["contaminated"] == ["r1:q0003:o0:p1"]
    assert by_reason["disagreement"] == ["r1:q0006:o0:p0"] and by_reason["no_answer"] == ["r1:q0006:o0:p1"]
    row = {r["candidate_id"]: r for r in cands.iter_rows(named=True)}
    assert row["r1:q0001:o0:p1"]["duplicate_of"].startswith("unit:")
    assert row["r1:q0002:o0:p1"]["duplicate_of"] == "r1:q0000:o0:p0"
    assert row["r1:q0002:o0:p1"]["duplicate_kind"] == "normalized"
    assert row["r1:q0003:o0:p1"]["contamination_label"] == "heldout"
    assert row["r1:q0003:o0:p1"]["teacher_model"] is None  # never sent to the teacher
    # The hygiene stage records its rule; every request and teacher call its own seeded sampling.
    hygiene = decisions.filter(decisions["stage"] == "hygiene")
    assert sorted(hygiene["reason"].to_list()) == ["contaminated", "duplicate_batch", "duplicate_pool"]
    assert {json.dumps(json.loads(r), sort_keys=True) for r in hygiene["rule"].to_list()} == {
        json.dumps({"eval_sets": ["heldout"], "ngram": SETTINGS.synthesis.ngram}, sort_keys=True)}
    syn = SETTINGS.synthesis
    for r in requests.iter_rows(named=True):
        index = int(r["request_id"].split(":q")[1])
        assert json.loads(r["sampling"]) == syn.problem_sampling_for(request_seed(syn.seed, 1, index)).as_dict()
    # Each stage's decisions carry that stage's thresholds.
    rules = {"verification": {"min_agree": syn.min_agree, "n_solutions": syn.n_solutions},
             "cluster": {"clustering_id": report.clustering_id, "sparse_ratio": SETTINGS.clustering.sparse_ratio,
                         "k": report.k}}
    for stage, rule in rules.items():
        stored = [json.loads(r) for r in decisions.filter(decisions["stage"] == stage)["rule"].to_list()]
        assert stored and all(r == rule for r in stored), stage
    # The cluster evidence is the pool's own: each candidate's cluster size is the stored size.
    sizes = dict(store.query(f"SELECT cluster, size FROM {S.CLUSTERS} WHERE clustering_id = ?",
                             [report.clustering_id]).rows())
    for r in cands.filter(cands["cluster"].is_not_null()).iter_rows(named=True):
        assert r["cluster_size"] == sizes[r["cluster"]]
    # An accepted sample is its candidate's problem, its first majority solution and answer.
    kept = list(store.query(f"SELECT sample_id, prompt, response, answer, source_ref, meta FROM {S.SAMPLES} "
                            f"WHERE origin = 'synthetic' AND round = 1").iter_rows(named=True))
    assert len(kept) == report.accepted
    decided = dict(zip(decisions["candidate_id"].to_list(), decisions["sample_id"].to_list()))
    request_of = {r["request_id"]: r for r in requests.iter_rows(named=True)}
    for sample in kept:
        c = row[sample["source_ref"]]
        assert decided[c["candidate_id"]] == sample["sample_id"]
        assert sample["sample_id"] == f"syn:r1:{content_hash(c['problem'], c['response'])[:12]}"
        assert (sample["prompt"], sample["response"], sample["answer"]) == (c["problem"], c["response"],
                                                                          c["majority_answer"])
        # Its provenance travels with it: the request, the models, the vote and the cluster it landed in.
        q = request_of[c["request_id"]]
        assert json.loads(sample["meta"]) == {
            "candidate_id": c["candidate_id"], "request_id": c["request_id"], "round": 1,
            "few_shot_ids": list(q["few_shot_ids"]), "strategy": q["strategy"], "target_cluster": q["target_cluster"],
            "generator_model": q["generator_model"], "teacher_model": c["teacher_model"],
            "agreement": c["agreement"], "clustering_id": report.clustering_id, "cluster": c["cluster"],
            "similarity": pytest.approx(c["similarity"], rel=1e-6)}
    sent = cands.filter(cands["teacher_model"].is_not_null())
    assert sent.height == report.sent_to_teacher
    for r in sent.iter_rows(named=True):
        expected = syn.solution_sampling_for(solution_seed(syn.seed, 1, r["candidate_id"])).as_dict()
        assert json.loads(r["solution_sampling"]) == expected
    split = row["r1:q0007:o0:p1"]
    assert split["agreement"] == 2 and split["vote_reason"] == "accepted" and len(split["solutions"]) == 3
    assert split["majority_answer"] == split["answers"][0]
    # Every verified candidate has its cluster evidence; the decision follows it.
    verified = cands.filter(cands["vote_reason"] == "accepted")
    assert verified.height == 7 and verified["cluster"].null_count() == 0
    for r in verified.iter_rows(named=True):
        assert reasons[r["candidate_id"]] == ("sparse_cluster" if r["cluster_is_sparse"] else "dense_cluster")
    clustered = decisions.filter(decisions["stage"] == "cluster")["candidate_id"].to_list()
    assert sorted(clustered) == sorted(verified["candidate_id"].to_list())  # accepted or not, the cluster stage decided

    accepted = store.query(f"SELECT * FROM {S.SAMPLES} WHERE origin = 'synthetic' ORDER BY sample_id")
    assert accepted.height == report.accepted
    assert all(sid.startswith("syn:r1:") for sid in accepted["sample_id"].to_list())
    assert set(accepted["source"].to_list()) == {"synthesis"} and set(accepted["round"].to_list()) == {1}
    scores = store.query(f"SELECT scope, value FROM {S.SCORES} WHERE metric = 'g_vendi' ORDER BY scope")
    assert dict(zip(scores["scope"].to_list(), scores["value"].to_list())) == pytest.approx(
        {"round:1:after": report.g_vendi_after, "round:1:before": report.g_vendi_before,
         "round:1:random": report.g_vendi_random})
    baselines = store.query(f"SELECT metric, n FROM {S.SCORES} WHERE metric != 'g_vendi' AND scope = 'round:1:after'")
    assert sorted(baselines["metric"].to_list()) == sorted(BASELINE_METRICS)
    assert set(baselines["n"].to_list()) == {24 - report.n_pool_excluded + report.accepted}  # the pool after
    assert round_summary(store, 1)["report"]["accepted"] == report.accepted
    assert store.query(f"SELECT count(*) AS n FROM {S.CLUSTERINGS} WHERE scope = 'round:1'")["n"][0] == 1


def test_lineage_queries(round_one):
    store, report, *_ = round_one
    sid = store.query(f"SELECT min(sample_id) AS s FROM {S.SAMPLES} WHERE origin = 'synthetic'")["s"][0]
    origin = lineage(store, "sample_origin", sample_id=sid)
    assert origin.height == 1
    o = origin.row(0, named=True)
    assert o["round"] == 1 and o["decision"] == "accepted" and o["cluster_is_sparse"]
    assert o["generator_model"] == "scripted-generator" and o["teacher_model"] == "scripted-teacher"
    assert len(o["few_shot_ids"]) == 5 and o["strategy"] == "random" and o["raw_output"]
    parents = lineage(store, "sample_parents", sample_id=sid)
    assert parents["position"].to_list() == [1, 2, 3, 4, 5]
    assert parents["parent_id"].to_list() == o["few_shot_ids"]
    assert set(parents["parent_origin"].to_list()) == {"seed"}
    funnel = lineage(store, "round_funnel", round=1)
    assert funnel["n"].sum() == 12 and funnel["stage"][0] == "hygiene"
    rejected = lineage(store, "round_rejections", round=1)
    assert rejected.height == 12 - report.accepted
    fill = lineage(store, "cluster_fill", round=1)
    assert fill.height == report.k and fill["accepted"].sum() == report.accepted
    assert fill.filter(~fill["is_sparse"])["accepted"].sum() == 0
    with pytest.raises(KeyError, match="choose one of"):
        lineage(store, "sample_history", sample_id=sid)
    with pytest.raises(TypeError, match="takes round="):
        lineage(store, "round_funnel", sample_id=sid)


def test_rerun_is_idempotent_and_uses_the_cache(tmp_path, seeded, embedder, round_one):
    _, first, *_ = round_one
    store = seeded(tmp_path / "m.duckdb")
    _run(store, embedder)
    counts = _counts(store)
    generator, teacher = make_generator(), make_teacher()
    again = _run(store, embedder, generator=generator, teacher=teacher)
    assert _counts(store) == counts
    assert generator.calls == [] and teacher.calls == []
    assert again.llm_requests == {"generator": 0, "teacher": 0}
    assert again.outputs_cached == 8 and again.solutions_cached == 9

    def strip(r):
        return {k: v for k, v in r.as_dict().items()
                if k not in ("seconds", "llm_requests", "outputs_cached", "solutions_cached", "run_id")}
    assert strip(again) == strip(first)

    # Round 2 builds on round 1's accepted samples; re-running round 1 afterwards keeps round 2's rows.
    second = _run(store, embedder, round=2)
    assert second.n_pool == 24 + first.accepted
    assert completed_rounds(store) == [1, 2]
    n_round2 = store.query(f"SELECT count(*) AS n FROM {S.SYNTHESIS_CANDIDATES} WHERE round = 2")["n"][0]
    _run(store, embedder, round=1)
    assert store.query(f"SELECT count(*) AS n FROM {S.SYNTHESIS_CANDIDATES} WHERE round = 2")["n"][0] == n_round2
    parents = store.query(f"SELECT DISTINCT unnest(few_shot_ids) AS id FROM {S.SYNTHESIS_REQUESTS} WHERE round = 2")
    pool_ids = set(store.query(f"SELECT sample_id FROM {S.SAMPLES} WHERE split = 'pool' AND "
                               f"(origin = 'seed' OR round < 2)")["sample_id"].to_list())
    assert set(parents["id"].to_list()) <= pool_ids


def test_resume_after_crash_calls_only_for_missing_outputs(tmp_path, seeded, embedder, round_one):
    reference_store, reference, *_ = round_one
    store = seeded(tmp_path / "m.duckdb")
    # Crash while generating problems: the first two chunks (4 requests) are persisted.
    with pytest.raises(RuntimeError, match="injected crash"):
        _run(store, embedder, generator=Crashing(make_generator(), at=3))
    assert completed_rounds(store) == []
    assert store.query(f"SELECT count(*) AS n FROM {S.SYNTHESIS_CANDIDATES}")["n"][0] == 0
    assert store.query(f"SELECT count(*) AS n FROM {S.GENERATIONS}")["n"][0] == 4
    # Crash while solving: the generator is asked only for the 4 missing requests; one teacher chunk persists.
    generator = make_generator()
    with pytest.raises(RuntimeError, match="injected crash"):
        _run(store, embedder, generator=generator, teacher=Crashing(make_teacher(), at=2))
    assert generator.calls == [2, 2]
    assert generator.asked == stored_messages(reference_store, request_indices=[4, 5, 6, 7])
    # Resume: only the 7 unsolved problems go to the teacher, nothing to the generator.
    generator, teacher = make_generator(), make_teacher()
    report = _run(store, embedder, generator=generator, teacher=teacher)
    assert generator.calls == [] and sum(teacher.calls) == 7
    assert report.llm_requests == {"generator": 0, "teacher": 7}
    # The result equals the uninterrupted run's.
    for table, order in [(S.SYNTHESIS_REQUESTS, "request_id, output_index"),
                         (S.SYNTHESIS_CANDIDATES, "candidate_id"), (S.SYNTHESIS_DECISIONS, "candidate_id")]:
        assert _table(store, table, order).equals(_table(reference_store, table, order)), table
    sql = f"SELECT sample_id, prompt, response, answer, meta FROM {S.SAMPLES} WHERE origin = 'synthetic' ORDER BY 1"
    assert store.query(sql).equals(reference_store.query(sql))
    for key in ("accepted", "g_vendi_before", "g_vendi_after", "g_vendi_random", "clustering_id", "k"):
        assert getattr(report, key) == getattr(reference, key), key


def test_changed_model_under_the_same_name_does_not_reuse_generations(tmp_path, seeded, embedder, round_one):
    """The generation cache is keyed by the model's fingerprint: new weights, same name -> asked again."""
    store = seeded(tmp_path / "m.duckdb")
    _run(store, embedder)
    n_cached = store.query(f"SELECT count(*) AS n FROM {S.GENERATIONS}")["n"][0]
    same = make_generator()
    _run(store, embedder, generator=same, teacher=make_teacher())
    assert same.calls == []  # same weights: everything from the cache
    retrained = ScriptedLLM("scripted-generator", make_generator().respond, fingerprint="scripted-generator-weights-v2")
    teacher = ScriptedLLM("scripted-teacher", make_teacher().respond, fingerprint="scripted-teacher-weights-v2")
    report = _run(store, embedder, generator=retrained, teacher=teacher)
    assert sum(retrained.calls) == 8 and sum(teacher.calls) == report.sent_to_teacher > 0
    assert report.outputs_cached == 0 and report.solutions_cached == 0
    # Both models' outputs stay cached side by side, under the same model name.
    assert store.query(f"SELECT count(*) AS n FROM {S.GENERATIONS}")["n"][0] == 2 * n_cached
    assert set(store.query(f"SELECT DISTINCT model FROM {S.GENERATIONS}")["model"].to_list()) == \
        {"scripted-generator", "scripted-teacher"}


def stored_messages(store: MetadataStore, request_indices: list[int]) -> list[list[dict]]:
    """The problem-request messages the reference run stored for these request indices."""
    rows = store.query(f"SELECT g.messages FROM {S.SYNTHESIS_REQUESTS} q JOIN {S.GENERATIONS} g USING (gen_key) "
                       f"WHERE q.round = 1 AND q.request_index IN ({','.join(map(str, request_indices))}) "
                       f"ORDER BY q.request_index")
    return [json.loads(m) for m in rows["messages"].to_list()]


def test_round_order_is_enforced(tmp_path, seeded, embedder):
    store = seeded(tmp_path / "m.duckdb")
    generator = make_generator()
    with pytest.raises(RoundOrderError, match="run round 1 first"):
        _run(store, embedder, round=2, generator=generator)
    with pytest.raises(ValueError, match="numbered 1, 2, 3"):
        _run(store, embedder, round=0)
    assert generator.calls == []
    empty = MetadataStore(tmp_path / "empty.duckdb")
    with pytest.raises(RuntimeError, match="materialize seed_samples first"):
        _run(empty, embedder)


def test_parameters_change_the_round(tmp_path, seeded, embedder, round_one):
    """min_agree, strategy and eval_texts each change the outcome."""
    _, base, *_ = round_one
    store = seeded(tmp_path / "m.duckdb")
    strict = _run(store, embedder, settings=_with(SETTINGS, min_agree=3))
    assert strict.vote_failures == {"disagreement": 2, "no_answer": 1} and strict.verified == base.verified - 1

    store = seeded(tmp_path / "m2.duckdb")
    sparse = _run(store, embedder, settings=_with(SETTINGS, strategy="sparse_cluster"))
    targets = store.query(f"SELECT DISTINCT target_cluster FROM {S.SYNTHESIS_REQUESTS}")["target_cluster"].to_list()
    sparse_clusters = store.query(f"SELECT cluster FROM {S.CLUSTERS} c JOIN {S.CLUSTERINGS} g USING (clustering_id) "
                                  f"WHERE g.scope = 'round:1' AND c.is_sparse AND c.size > 0")["cluster"].to_list()
    assert sparse.strategy == "sparse_cluster" and set(targets) <= set(sparse_clusters) and None not in targets

    store = seeded(tmp_path / "m3.duckdb")
    no_eval = run_round(store, 1, engines=EngineSet.of(generator=make_generator(), teacher=make_teacher()),
                        proxy=lend(embedder), config=SETTINGS, eval_texts=None, seed_source="unit")
    assert no_eval.contaminated == 0 and no_eval.sent_to_teacher == base.sent_to_teacher + 1


# -- (c) the real vLLM CPU engine as generator and teacher --------------------------------


@pytest.mark.integration
def test_round_with_the_real_vllm_engine(tmp_path, seeded, embedder):
    from prismatic_assets.core.models import PACKAGED_MODEL

    store = seeded(tmp_path / "m.duckdb")
    settings = _with(SETTINGS, requests_per_round=2,
                     problem_sampling={"n": 1, "temperature": 1.0, "top_p": 0.95, "max_tokens": 160},
                     solution_sampling={"n": 3, "temperature": 0.75, "top_p": 0.95, "max_tokens": 128})
    # One configuration for both roles: one engine, opened for the generator, reused by the
    # teacher, closed (its processes gone) when the teacher is done.
    cfg = EngineConfig(model=PACKAGED_MODEL, max_model_len=1024)
    engines = EngineSet({"generator": cfg, "teacher": cfg})
    report = run_round(store, 1, engines=engines, proxy=lend(embedder), config=settings, eval_texts=EVAL,
                       seed_source="unit", run_id="vllm")
    assert engines.calls == [("open", "generator"), ("reuse", "teacher"), ("close", "teacher")]
    # SmolLM2-135M rarely writes verifiable problems: check the bookkeeping, not the yield.
    assert report.requests == report.outputs == 2 and report.llm_requests["generator"] == 2
    assert report.problems_parsed == report.duplicates + report.contaminated + report.sent_to_teacher
    assert report.llm_requests["teacher"] == report.sent_to_teacher
    assert report.sent_to_teacher == report.verified + sum(report.vote_failures.values())
    # The stage counts against the stored decisions, one row per candidate with its stage.
    stages = store.query(f"SELECT stage, decision, count(*) AS n FROM {S.SYNTHESIS_DECISIONS} GROUP BY ALL").rows()
    counted = {(stage, decision): n for stage, decision, n in stages}
    assert report.gradient_failures == counted.get(("gradient", "rejected"), 0)
    assert report.in_dense == counted.get(("cluster", "rejected"), 0)
    assert report.accepted == counted.get(("cluster", "accepted"), 0)
    requests = store.query(f"SELECT * FROM {S.SYNTHESIS_REQUESTS}")
    assert requests.height == 2 and set(requests["generator_model"].to_list()) == {PACKAGED_MODEL}
    assert all(r for r in requests["raw_output"].to_list())  # raw text kept, parsed or not
    n_candidates = store.query(f"SELECT count(*) AS n FROM {S.SYNTHESIS_CANDIDATES}")["n"][0]
    n_decisions = store.query(f"SELECT count(*) AS n FROM {S.SYNTHESIS_DECISIONS}")["n"][0]
    assert n_candidates == n_decisions == report.problems_parsed
    solved = store.query(f"SELECT solutions FROM {S.SYNTHESIS_CANDIDATES} WHERE teacher_model IS NOT NULL")
    assert all(len(s) == 3 for s in solved["solutions"].to_list())
    assert completed_rounds(store) == [1]
    # A re-run is served from the generation cache: the engine never starts.
    again = run_round(store, 1, engines=EngineSet({"generator": cfg, "teacher": cfg}), proxy=lend(embedder),
                      config=settings, eval_texts=EVAL, seed_source="unit", run_id="vllm-again")
    assert again.llm_requests == {"generator": 0, "teacher": 0}
    assert again.problems_parsed == report.problems_parsed and again.accepted == report.accepted



def test_every_row_a_round_writes_carries_its_run(round_one):
    store, report, *_ = round_one
    for table in (S.CLUSTERINGS, S.SCORES, S.GENERATIONS, S.SYNTHESIS_REQUESTS, S.SYNTHESIS_CANDIDATES,
                  S.SYNTHESIS_DECISIONS, S.SYNTHESIS_ROUNDS):
        assert store.query(f"SELECT DISTINCT run_id FROM {table}").rows() == [("run-1",)], table
    # Beside the round's rows: the seed's samples (their own run) and the pool's vectors (cached before it).
    samples = dict(store.query(f"SELECT run_id, count(*) AS n FROM {S.SAMPLES} GROUP BY run_id").rows())
    assert samples == {"seed-run": 27, "run-1": report.accepted}
    vectors = dict(store.query(f"SELECT run_id, count(*) AS n FROM {S.EMBEDDINGS} GROUP BY run_id").rows())
    assert set(vectors) == {None, "run-1"} and vectors[None] == 24


def test_the_round_row_holds_its_settings_their_hash_and_its_seed_source(round_one):
    from prismatic_assets.core.ids import digest

    store, report, *_ = round_one
    row = store.query(f"SELECT * FROM {S.SYNTHESIS_ROUNDS} WHERE round = 1").row(0, named=True)
    settings = {**SETTINGS.synthesis.model_dump(mode="json", exclude={"generator", "teacher"}),
                "clustering": SETTINGS.clustering.model_dump(mode="json"), "q": SETTINGS.score.q}
    assert "generator" not in settings and "teacher" not in settings and "min_agree" in settings
    assert json.loads(row["settings"]) == settings
    assert row["settings_hash"] == digest({"settings": settings, "generator": "scripted-generator",
                                           "teacher": "scripted-teacher", "embedding_key": report.embedding_key})
    assert (row["round"], row["seed_source"]) == (1, "unit")
    # The random control's draw is seeded by the round: its seed is recorded with its score.
    (config,) = store.query(f"SELECT config FROM {S.SCORES} WHERE scope LIKE '%random%'")["config"].to_list()
    parts = json.dumps(["random_control", SETTINGS.synthesis.seed, 1]).encode()
    assert json.loads(config)["seed"] == int.from_bytes(hashlib.sha256(parts).digest()[:4], "little") & 0x7FFFFFFF
