"""Compare several data sets under one proxy and projection: metrics, coverage, examples.

For each set: G-Vendi at several Renyi orders, embedding Vendi, distinct-1/2/3 and the
compression ratio, each with the N it was computed on. Then the union of the sets'
gradient vectors is clustered once, and the report shows each set's share per cluster,
the clusters only one set fills, each set's entropy over the shared clusters, a 2-D map
(PCA) of the vectors, and example samples from the clusters that tell the sets apart most.

No Dagster: the CLI, the API and the `dataset_comparison` asset call `compare_sets`.
Rendering (terminal, HTML) lives in `prismatic_assets.reporting.compare_report`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from prismatic_assets.core.diversity import Coverage, cluster_coverage, pca_2d
from prismatic_assets.core.selection import cluster_in_batches
from prismatic_assets.infra.config import CompareConfig, ComputeConfig
from prismatic_assets.pipeline.baselines import (
    MetricValue,
    StepProgress,
    embedding_metric,
    hidden_vectors,
    store_metric,
    text_metrics,
)
from prismatic_assets.pipeline.datasets import LoadedSet, set_vectors
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import Progress
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.store.store import MetadataStore

_COMPARE = CompareConfig()  # the defaults of the options below
MAP_MAX_POINTS = 5000  # points drawn on the 2-D map (a seeded sample above this)
EXCERPT_CHARS = 240


def default_num_clusters(n: int) -> int:
    """K for the coverage clustering of a union of n samples: about sqrt(n), in [2, 100], at most n."""
    return int(min(n, max(2, min(100, round(math.sqrt(n))))))


@dataclass
class SetSummary:
    name: str
    source: str
    n_loaded: int
    n_rejected: int
    rejections: list[dict]  # first rejections: {"ref", "reason"}
    n_vectors: int  # samples with a valid gradient vector
    excluded: dict[str, str]  # sample_id -> reason (no gradient vector)
    g_vendi: dict[float, float]  # q -> score
    metrics: list[MetricValue]  # embedding Vendi, distinct-n, compression ratio
    n_computed: int = 0
    n_cached: int = 0

    def metric(self, name: str) -> MetricValue | None:
        return next((m for m in self.metrics if m.metric == name), None)


@dataclass
class ClusterExample:
    cluster: int
    contrast: float
    shares: dict[str, float]  # set -> share of that set's samples in this cluster
    set_name: str  # the set that fills it most
    samples: list[dict]  # {"sample_id", "source_ref", "prompt", "response", "similarity"}


@dataclass
class ComparisonReport:
    sets: list[SetSummary]
    coverage: Coverage
    cluster_seed: int
    examples: list[ClusterExample]
    map_xy: np.ndarray  # (m, 2) PCA coordinates of up to MAP_MAX_POINTS vectors
    map_set: np.ndarray  # (m,) set index of each point
    map_cluster: np.ndarray  # (m,) cluster of each point
    model: str
    model_fingerprint: str
    projection: str
    embedding_key: str
    dim: int
    qs: tuple[float, ...]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        def q_name(q: float) -> str:
            return "inf" if math.isinf(q) else f"{q:g}"

        return {
            "model": self.model, "model_fingerprint": self.model_fingerprint, "projection": self.projection,
            "embedding_key": self.embedding_key, "dim": self.dim, "seconds": round(self.seconds, 2),
            "sets": [{
                "name": s.name, "source": s.source, "n_loaded": s.n_loaded, "n_rejected": s.n_rejected,
                "rejections": s.rejections, "n": s.n_vectors, "n_excluded": len(s.excluded), "excluded": s.excluded,
                "g_vendi": {q_name(q): v for q, v in s.g_vendi.items()},
                "metrics": {m.metric: {"value": None if math.isnan(m.value) else m.value, "n": m.n,
                                       **({"dim": m.dim} if m.dim else {}), **m.details} for m in s.metrics},
                "coverage_entropy": self.coverage.entropy[s.name],
                "effective_clusters": self.coverage.effective_clusters(s.name),
                "exclusive_clusters": self.coverage.exclusive.get(s.name, []),
                "vectors": {"computed": s.n_computed, "cached": s.n_cached},
            } for s in self.sets],
            "coverage": {**self.coverage.as_dict(), "cluster_seed": self.cluster_seed},
            "examples": [{"cluster": e.cluster, "contrast": e.contrast, "shares": e.shares, "set": e.set_name,
                          "samples": e.samples} for e in self.examples],
            "notes": self.notes,
        }


def _excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _distinguishing_examples(coverage, clustering, set_index: np.ndarray, vectors, ids, names, samples_by_id,
                             example_clusters: int, examples: int) -> list[ClusterExample]:
    """The samples nearest the centroids of the clusters whose shares differ most between sets."""
    found = []
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in vectors])])
    for c in coverage.distinguishing(example_clusters):
        owner = int(np.argmax(coverage.shares[:, c]))
        rows = np.flatnonzero((clustering.assignments == c) & (set_index == owner))
        rows = rows[np.argsort(-clustering.similarities[rows], kind="stable")][:examples]
        picked = []
        for r in rows:
            sid = ids[owner][r - offsets[owner]]
            sample = samples_by_id[(names[owner], sid)]
            picked.append({"sample_id": sid, "source_ref": sample.source_ref, "prompt": _excerpt(sample.prompt),
                           "response": _excerpt(sample.response),
                           "similarity": round(float(clustering.similarities[r]), 4)})
        found.append(ClusterExample(cluster=int(c), contrast=float(coverage.contrast[c]),
                                    shares={n: float(coverage.shares[i, c]) for i, n in enumerate(names)},
                                    set_name=names[owner], samples=picked))
    return found


def compare_sets(sets: Sequence[LoadedSet], embedder: Embedder, store: MetadataStore, *,
                 qs: Sequence[float] = _COMPARE.qs, clusters: int | None = _COMPARE.clusters,
                 cluster_seed: int = _COMPARE.cluster_seed, examples: int = _COMPARE.examples,
                 example_clusters: int = 3, batch_size: int = ComputeConfig().batch_size,
                 max_length: int | None = None,
                 model: str | None = None, run_id: str | None = None, gradient_progress: Progress | None = None,
                 hidden_progress: StepProgress | None = None,
                 on_stage: Callable[[str], None] | None = None) -> ComparisonReport:
    """The comparison report of already loaded sets; vectors computed where missing, cached in `store`.

    model: how to name the proxy in the report (default: `embedder.model_name`).
    clusters: K of the coverage clustering (default about sqrt(N), `default_num_clusters`).
    examples: samples shown per distinguishing cluster, from the `example_clusters` clusters
    whose shares differ most between the sets.
    """
    started = time.perf_counter()
    if not sets:
        raise ValueError("no data sets to compare: pass at least one")
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"data set names repeat ({names}): give every data set its own name")
    qs = tuple(float(q) for q in qs)
    summaries, vectors, ids, samples_by_id = [], [], [], {}
    for s in sets:
        if on_stage:
            on_stage(f"gradients of {s.name} ({len(s.samples)} samples)")
        report, pool = set_vectors(s.samples, embedder, store, run_id=run_id, progress=gradient_progress)
        if not pool.sample_ids:
            raise ValueError(f"data set {s.name!r} ({s.source}): no sample has a valid gradient vector "
                             f"({len(pool.excluded)} excluded, e.g. {list(pool.excluded.items())[:3]})")
        if on_stage:
            on_stage(f"hidden states of {s.name}")
        hidden = hidden_vectors(s.samples, embedder, store, max_length=max_length, batch_size=batch_size,
                                run_id=run_id, progress=hidden_progress)
        emb = embedding_metric(hidden)
        metrics = ([emb] if emb is not None else []) + text_metrics(s.samples)
        summaries.append(SetSummary(
            name=s.name, source=s.source, n_loaded=len(s.samples), n_rejected=len(s.rejections),
            rejections=[{"ref": r.source_ref, "reason": r.reason} for r in s.rejections[:20]],
            n_vectors=len(pool.sample_ids), excluded=pool.excluded,
            g_vendi={q: score_vectors(pool.vectors, q).score for q in qs}, metrics=metrics,
            n_computed=report.n_computed, n_cached=report.n_cached))
        vectors.append(pool.vectors)
        ids.append(pool.sample_ids)
        samples_by_id.update({(s.name, x.sample_id): x for x in s.samples})

    if on_stage:
        on_stage("coverage clustering")
    union = np.concatenate(vectors)  # (N, d)
    set_index = np.concatenate([np.full(len(v), i) for i, v in enumerate(vectors)])
    k = default_num_clusters(len(union)) if clusters is None else int(clusters)
    clustering = cluster_in_batches(union, k, seed=cluster_seed)
    coverage = cluster_coverage(clustering.assignments, set_index, names, k)

    found = _distinguishing_examples(coverage, clustering, set_index, vectors, ids, names, samples_by_id,
                                     example_clusters, examples) if len(sets) > 1 else []

    rng = np.random.default_rng(cluster_seed)
    shown = np.sort(rng.choice(len(union), MAP_MAX_POINTS, replace=False)) if len(union) > MAP_MAX_POINTS \
        else np.arange(len(union))
    xy = pca_2d(union[shown]) if len(union) > 1 else np.zeros((len(union), 2), dtype=np.float32)
    notes = []
    if len(union) > MAP_MAX_POINTS:
        notes.append(f"the 2-D map shows a random {MAP_MAX_POINTS} of {len(union)} samples")
    return ComparisonReport(
        sets=summaries, coverage=coverage, cluster_seed=cluster_seed, examples=found, map_xy=xy,
        map_set=set_index[shown], map_cluster=clustering.assignments[shown],
        model=model or embedder.model_name,
        model_fingerprint=embedder.model_fingerprint, projection=embedder.projection_key,
        embedding_key=embedder.key, dim=int(union.shape[1]), qs=qs, seconds=time.perf_counter() - started,
        notes=notes)


def store_comparison(store: MetadataStore, report: ComparisonReport, sets: Sequence[LoadedSet], *,
                     scope_prefix: str = "compare", run_id: str | None = None) -> int:
    """Store every set's metrics as `scores` rows of scope '<prefix>:<set name>'; returns the row count.

    G-Vendi rows (one per q) use the same id payload as `pipeline.scores.score_pool`.
    """
    from prismatic_assets.core.ids import digest

    by_name = {s.name: s for s in sets}
    written = 0
    for summary in report.sets:
        scope = f"{scope_prefix}:{summary.name}"
        loaded = by_name[summary.name]
        members = [s.sample_id for s in loaded.samples if s.sample_id not in summary.excluded]
        for q, value in summary.g_vendi.items():
            score_id = digest({"scope": scope, "metric": "g_vendi", "q": q, "members": members,
                               "key": report.embedding_key})
            store.replace_score(score_id=score_id, scope=scope, metric="g_vendi", q=q, value=value,
                                entropy=math.log(value), n=summary.n_vectors, dim=report.dim,
                                n_excluded=len(summary.excluded), embedding_key=report.embedding_key,
                                config={"q": "inf" if math.isinf(q) else q, "source": summary.source},
                                run_id=run_id)
            written += 1
        for m in summary.metrics:
            if math.isnan(m.value):
                continue
            store_metric(store, m, scope=scope, member_ids=[s.sample_id for s in loaded.samples], run_id=run_id)
            written += 1
    return written
