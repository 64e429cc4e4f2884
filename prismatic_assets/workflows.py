"""The pipeline's steps as plain functions: core algorithms joined to the metadata store.

The Dagster assets and the `prismatic` CLI both call these, so a data set scored from the
command line and one materialized in the UI go through the same code. No Dagster here:
progress is reported through a callback.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from prismatic_assets.core.clustering import Clustering, num_clusters, spherical_kmeans
from prismatic_assets.core.gradients import Embedding, GradientEmbedder, GradientSpec
from prismatic_assets.core.gvendi import GVendiResult, g_vendi
from prismatic_assets.core.loaders import FieldMap, LoadResult, load_samples, split_holdout
from prismatic_assets.core.models import load_causal_lm, model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec
from prismatic_assets.core.samples import Sample
from prismatic_assets.settings import ClusteringSettings, ProjectionSettings, ProxySettings, SeedSettings
from prismatic_assets.store.store import EmbeddingRow, MetadataStore

Progress = Callable[[int, int, Sample, Embedding], None]


def digest(payload: object) -> str:
    """A short stable hash of a JSON-able payload (ids of stored clusterings and scores)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


# -- seed data ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedData:
    result: LoadResult
    pool: list[Sample]
    holdout: list[Sample]


def load_seed(settings: SeedSettings) -> SeedData:
    fields = FieldMap.parse(settings.fields) if settings.fields else None
    result = load_samples(settings.source, fields=fields, limit=settings.limit, max_chars=settings.max_chars)
    if settings.holdout_fraction > 0:
        pool, holdout = split_holdout(result.samples, settings.holdout_fraction, seed=settings.holdout_seed)
    else:
        pool, holdout = list(result.samples), []
    return SeedData(result=result, pool=pool, holdout=holdout)


def store_seed(store: MetadataStore, seed: SeedData, run_id: str | None) -> None:
    splits = {s.sample_id: "holdout" for s in seed.holdout}
    store.replace_samples(source=seed.result.source, origin="seed", samples=seed.result.samples,
                          splits=splits, rejections=seed.result.rejections, run_id=run_id)


# -- gradient embeddings -----------------------------------------------------------------
def build_embedder(proxy: ProxySettings, projection: ProjectionSettings) -> GradientEmbedder:
    """Load the proxy model and freeze everything the vectors depend on."""
    model, tokenizer = load_causal_lm(proxy.model, dtype=proxy.dtype, device=proxy.device)
    spec = ProjectionSpec(kind=projection.kind, dim=projection.dim, seed=projection.seed)
    gradient = GradientSpec(params=proxy.params, autocast=proxy.autocast, max_length=proxy.max_length)
    return GradientEmbedder(model, tokenizer, spec, gradient, model_fingerprint(model, tokenizer))


@dataclass
class EmbeddingReport:
    embedding_key: str
    dim: int
    n_total: int
    n_cached: int = 0
    n_computed: int = 0
    n_truncated: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # sample_id -> reason
    seconds: float = 0.0

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / self.n_computed if self.n_computed else 0.0


def embed_samples(samples: Sequence[Sample], embedder: GradientEmbedder, store: MetadataStore,
                  run_id: str | None = None, progress: Progress | None = None,
                  flush_every: int = 8) -> EmbeddingReport:
    """Compute and store the vectors of samples not yet cached under the embedder's key.

    Results are written every `flush_every` samples, so an interrupted run keeps what it
    paid for and the next run computes only the rest.
    """
    dim = embedder.projector.spec.dim
    report = EmbeddingReport(embedding_key=embedder.key, dim=dim, n_total=len(samples))
    cached = store.cached_hashes([s.content_hash for s in samples], embedder.key)
    todo: list[Sample] = []
    seen: set[str] = set()
    for s in samples:
        if s.content_hash in cached or s.content_hash in seen:
            report.n_cached += 1
        else:
            seen.add(s.content_hash)
            todo.append(s)
    pending: list[EmbeddingRow] = []
    start = time.perf_counter()
    for i, sample in enumerate(todo):
        outcome = embedder.embed(sample.prompt, sample.response)
        pending.append(EmbeddingRow(
            content_hash=sample.content_hash, embedding_key=embedder.key,
            model_fingerprint=embedder.model_fingerprint, projection_key=embedder.projection_key,
            gradient_spec=embedder.gradient.as_dict(), dim=dim, vector=outcome.vector,
            grad_norm=outcome.grad_norm, loss=outcome.loss, n_response_tokens=outcome.n_response_tokens,
            truncated=outcome.truncated, seconds=outcome.seconds, error=outcome.error, run_id=run_id))
        report.n_computed += 1
        report.n_truncated += int(outcome.truncated)
        if progress:
            progress(i + 1, len(todo), sample, outcome)
        if len(pending) >= flush_every:
            store.put_embeddings(pending)
            pending = []
    store.put_embeddings(pending)
    report.seconds = time.perf_counter() - start
    _, _, reasons = store.load_vectors([s.content_hash for s in samples], embedder.key, dim)
    report.errors = {samples[i].sample_id: reason for i, reason in reasons.items()}
    return report


@dataclass(frozen=True)
class PoolVectors:
    sample_ids: list[str]  # ids with a valid vector, in pool order
    vectors: np.ndarray  # (n, d) unit rows
    excluded: dict[str, str]  # sample_id -> reason (error or not computed)


def pool_vectors(store: MetadataStore, samples: Sequence[Sample], embedding_key: str, dim: int) -> PoolVectors:
    valid, matrix, reasons = store.load_vectors([s.content_hash for s in samples], embedding_key, dim)
    ids = [s.sample_id for s, ok in zip(samples, valid) if ok]
    return PoolVectors(ids, matrix, {samples[i].sample_id: r for i, r in reasons.items()})


# -- clusters and score ------------------------------------------------------------------
def cluster_pool(store: MetadataStore, pool: PoolVectors, settings: ClusteringSettings, embedding_key: str,
                 scope: str, run_id: str | None = None) -> tuple[str, Clustering]:
    """Spherical k-means of the pool's vectors, stored under a content-derived id."""
    n = len(pool.sample_ids)
    if n < 2:
        raise ValueError(f"clustering needs at least 2 samples with a valid gradient, got {n} "
                         f"({len(pool.excluded)} excluded: {list(pool.excluded.values())[:3]})")
    k = num_clusters(n, settings.ratio)
    clustering = spherical_kmeans(pool.vectors, k, niter=settings.niter, seed=settings.seed,
                                  sparse_ratio=settings.sparse_ratio)
    config = {"ratio": settings.ratio, "niter": settings.niter, "seed": settings.seed,
              "sparse_ratio": settings.sparse_ratio}
    clustering_id = digest({"scope": scope, "members": pool.sample_ids, "key": embedding_key, "config": config})
    sorted_sizes = np.sort(clustering.sizes)
    threshold = int(sorted_sizes[int(k * settings.sparse_ratio)]) if k else 0
    store.replace_clustering(
        clustering_id=clustering_id, scope=scope, embedding_key=embedding_key, k=k, n=n,
        niter=settings.niter, seed=settings.seed, sparse_ratio=settings.sparse_ratio, threshold_size=threshold,
        sizes=clustering.sizes, sparse=clustering.sparse, centroids=clustering.centroids,
        member_ids=pool.sample_ids, assignments=clustering.assignments, similarities=clustering.similarities,
        config=config, run_id=run_id)
    return clustering_id, clustering


def score_pool(store: MetadataStore | None, pool: PoolVectors, q: float, embedding_key: str, scope: str,
               run_id: str | None = None) -> GVendiResult:
    """G-Vendi of the pool's valid vectors; stored when a store is given."""
    if not pool.sample_ids:
        raise ValueError(f"no sample has a valid gradient vector ({len(pool.excluded)} excluded, e.g. "
                         f"{list(pool.excluded.items())[:3]}): nothing to score")
    result = g_vendi(pool.vectors, q=q)
    if store is not None:
        score_id = digest({"scope": scope, "metric": "g_vendi", "q": q, "members": pool.sample_ids,
                           "key": embedding_key})
        store.replace_score(score_id=score_id, scope=scope, metric="g_vendi", q=q, value=result.score,
                            entropy=result.entropy, n=result.n, dim=result.dim, n_excluded=len(pool.excluded),
                            embedding_key=embedding_key, config={"q": q}, run_id=run_id)
    return result


def default_cache_store() -> MetadataStore:
    """The CLI's embedding cache, shared by every `prismatic score` run on this machine."""
    from prismatic_assets.core.models import default_cache_dir

    return MetadataStore(Path(default_cache_dir()) / "score-cache.duckdb")
