"""The backbone assets: seed_samples -> gradient_embeddings -> gradient_clusters -> g_vendi.

Each asset reads its inputs, calls the pipeline layer (`prismatic_assets.pipeline`), and
attaches the metadata a user wants at a glance. Assets hand each other small snapshots (ids
and keys); the data itself lives in the metadata store. Settings come from the profile the
resources are bound to; the launchpad's run config can override a few per run.
"""


import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import dagster as dg
import numpy as np
from pydantic import Field

from prismatic_assets.core.gvendi import renyi_entropy
from prismatic_assets.infra.config import ClusteringConfig, with_overrides
from prismatic_assets.orchestration.metadata import chart, constant, figure, rounded
from prismatic_assets.orchestration.progress import StepProgress
from prismatic_assets.orchestration.resources import ProfileResource, ProxyResource, StoreResource
from prismatic_assets.orchestration.retry import TRANSIENT_RETRY, retry_note, retry_transient_only
from prismatic_assets.pipeline.baselines import record_baselines
from prismatic_assets.pipeline.clusters import cluster_pool
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors
from prismatic_assets.pipeline.scores import score_pool
from prismatic_assets.pipeline.seed import load_seed, store_seed
from prismatic_assets.reporting import plots

GROUP = "backbone"
SEED_SCOPE = "seed"


@dataclass(frozen=True)
class SeedSnapshot:
    source: str
    pool_ids: list[str]
    holdout_ids: list[str]
    n_rejected: int


@dataclass(frozen=True)
class EmbeddingSnapshot:
    embedding_key: str
    dim: int
    sample_ids: list[str]  # the pool, valid or not
    n_valid: int
    excluded: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterSnapshot:
    clustering_id: str
    k: int
    sizes: list[int]
    sparse: list[bool]


@dataclass(frozen=True)
class ScoreSnapshot:
    value: float
    q: float
    n: int
    dim: int
    entropy: float
    n_excluded: int


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0].strip()


class ClusterRunConfig(dg.Config):
    """Per-run overrides of the profile's `clustering` block (empty: the profile's value)."""

    ratio: Optional[float] = Field(None, description="K = max(2, round(ratio * N)); the paper uses 0.01")
    niter: Optional[int] = Field(None, description="k-means iterations (the paper: 20)")
    seed: Optional[int] = Field(None, description="k-means seed")
    sparse_ratio: Optional[float] = Field(None, description="clusters smaller than the size at position "
                                          "int(K * sparse_ratio) of the sorted sizes are sparse")

    def resolve(self, profile: ClusteringConfig) -> ClusteringConfig:
        return with_overrides(profile, self.model_dump())


class ScoreRunConfig(dg.Config):
    q: Optional[float] = Field(None, description="Renyi order: 1 = Shannon (the paper), 2, or inf")


@dg.asset(group_name=GROUP, kinds={"python", "duckdb"},
          description="Seed problems with worked solutions, validated; rejected rows are kept with reasons.")
def seed_samples(context: dg.AssetExecutionContext, profile: ProfileResource,
                 store: StoreResource) -> dg.Output[SeedSnapshot]:
    seed = load_seed(profile.config().seed, profile.config().world)
    store_seed(store.open(), seed, context.run_id)
    result = seed.result
    reasons = Counter(_reason_kind(r.reason) for r in result.rejections)
    categories = Counter(s.category or "-" for s in seed.pool)
    context.log.info(result.summary())
    snapshot = SeedSnapshot(result.source, [s.sample_id for s in seed.pool],
                            [s.sample_id for s in seed.holdout], len(result.rejections))
    return dg.Output(snapshot, metadata={
        "source": result.source,
        "n_loaded": len(result.samples),
        "n_pool": len(seed.pool),
        "n_holdout": len(seed.holdout),
        "n_rejected": len(result.rejections),
        "n_duplicates": result.n_duplicates,
        "rejections_by_reason": dg.MetadataValue.json(dict(reasons)),
        "pool_by_category": dg.MetadataValue.json(dict(categories)),
    })


@dg.asset(group_name=GROUP, kinds={"pytorch", "duckdb"}, retry_policy=TRANSIENT_RETRY,
          description="Projected, L2-normalized response-only loss gradients of the pool under the proxy "
                      "model; cached by (content hash, model fingerprint, projection, gradient spec).")
def gradient_embeddings(context: dg.AssetExecutionContext, seed_samples: SeedSnapshot, profile: ProfileResource,
                        proxy: ProxyResource, store: StoreResource) -> dg.Output[EmbeddingSnapshot]:
    db = store.open()
    samples = db.load_samples(seed_samples.pool_ids)
    started = time.perf_counter()
    compute = profile.config().compute
    # compute.backend=ray: Ray Data actors hold the proxy (pipeline/ray_compute.py); a rerun resumes from the cache
    with retry_transient_only(), proxy.open() as embedder:
        about = {"model": profile.config().proxy.model,
                 "model_load_seconds": round(time.perf_counter() - started, 1),
                 "compute": compute.backend if compute.backend == "local" else
                 f"ray: {compute.workers} workers x ({compute.gpus_per_worker:g} GPU, {compute.cpus_per_worker:g} CPU)",
                 "batch_size": compute.batch_size}
        return _embed_pool(context, db, samples, embedder, seed_samples, about,
                           shard_rows=compute.shard_rows, shard_seconds=compute.shard_seconds)


def _embed_pool(context: dg.AssetExecutionContext, db, samples, embedder: Embedder, seed_samples: SeedSnapshot,
                about: dict, *, shard_rows: int, shard_seconds: float) -> dg.Output[EmbeddingSnapshot]:
    retried = retry_note(context)
    step = StepProgress(context.log.info)

    def progress(i: int, n: int, sample, outcome) -> None:
        if outcome.error:
            context.log.info(f"gradient of {sample.sample_id} failed: {outcome.error} (excluded from the score)")
        step("gradients", i, n)

    report = embed_samples(samples, embedder, db, context.run_id, progress=progress, shard_rows=shard_rows,
                           shard_seconds=shard_seconds)
    vectors = pool_vectors(db, samples, report.embedding_key, report.dim)
    snapshot = EmbeddingSnapshot(report.embedding_key, report.dim, seed_samples.pool_ids,
                                 len(vectors.sample_ids), vectors.excluded)
    return dg.Output(snapshot, metadata={
        "n": len(samples),
        "n_valid": len(vectors.sample_ids),
        "n_errors": len(vectors.excluded),
        "errors": dg.MetadataValue.json(dict(list(vectors.excluded.items())[:50])),
        "n_cached": report.n_cached,
        "n_computed": report.n_computed,
        "n_truncated": report.n_truncated,
        "seconds_per_sample": figure(report.seconds_per_sample),
        "n_shards": report.n_shards,
        "n_resumed": report.n_resumed,
        "store_insert_seconds": figure(report.ingest_seconds, 2),
        "model_fingerprint": embedder.model_fingerprint,
        "projection": embedder.projection_key,
        "gradient_params": embedder.gradient.params or "all",
        "parameters": constant(embedder.input_dim),
        "dim": constant(report.dim),
        "embedding_key": report.embedding_key,
        **{k: figure(v, 1) if isinstance(v, float) else constant(v) for k, v in about.items()},
        **retried,
    })


@dg.asset(group_name=GROUP, kinds={"python", "duckdb"},
          description="Spherical k-means of the pool's gradient vectors, with the sparse clusters marked.")
def gradient_clusters(context: dg.AssetExecutionContext, config: ClusterRunConfig,
                      gradient_embeddings: EmbeddingSnapshot, seed_samples: SeedSnapshot,
                      profile: ProfileResource, store: StoreResource) -> dg.Output[ClusterSnapshot]:
    db = store.open()
    samples = db.load_samples(gradient_embeddings.sample_ids)
    pool = pool_vectors(db, samples, gradient_embeddings.embedding_key, gradient_embeddings.dim)
    settings_ = config.resolve(profile.config().clustering)
    clustering_id, clustering = cluster_pool(db, pool, settings_, gradient_embeddings.embedding_key,
                                                       scope=SEED_SCOPE, run_id=context.run_id)
    sizes = clustering.sizes.tolist()
    png = plots.cluster_sizes_png(sizes, clustering.sparse)
    context.log.info(f"K={clustering.k}, sizes={sorted(sizes, reverse=True)}")
    snapshot = ClusterSnapshot(clustering_id, clustering.k, sizes, clustering.sparse.tolist())
    return dg.Output(snapshot, metadata={
        "clustering_id": clustering_id,
        "n": len(pool.sample_ids),
        "k": clustering.k,
        "n_sparse": int(clustering.sparse.sum()),
        "largest": int(max(sizes)),
        "smallest": int(min(sizes)),
        "empty_clusters": int(sum(1 for s in sizes if s == 0)),
        "mean_similarity": figure(float(np.mean(clustering.similarities))),
        "sizes": dg.MetadataValue.json(sizes),
        "cluster_sizes": chart(context, png, "cluster_sizes", "cluster sizes (sparse clusters in orange)"),
    })


@dg.asset(group_name=GROUP, kinds={"python", "duckdb"},
          description="G-Vendi: exp(entropy) of the eigenvalues of the pool's gradient second-moment "
                      "matrix, with the cluster-size entropy beside it.")
def g_vendi(context: dg.AssetExecutionContext, config: ScoreRunConfig, gradient_embeddings: EmbeddingSnapshot,
            gradient_clusters: ClusterSnapshot, profile: ProfileResource, store: StoreResource,
            proxy: ProxyResource) -> dg.Output[ScoreSnapshot]:
    db = store.open()
    samples = db.load_samples(gradient_embeddings.sample_ids)
    pool = pool_vectors(db, samples, gradient_embeddings.embedding_key, gradient_embeddings.dim)
    q = config.q if config.q is not None else profile.config().score.q
    result = score_pool(db, pool, q, gradient_embeddings.embedding_key, scope=SEED_SCOPE,
                                  run_id=context.run_id)
    sizes = np.asarray(gradient_clusters.sizes, dtype=float)
    cluster_vendi = float(np.exp(renyi_entropy(sizes / sizes.sum(), 1.0)))
    context.log.info(f"G-Vendi = {result.score:.3f} (N={result.n}, d={result.dim}, q={q})")
    with proxy.open() as embedder:  # baselines beside it: embedding Vendi, distinct-n, compression ratio
        baselines = record_baselines(db, [x for x in samples if x.sample_id not in pool.excluded], scope=SEED_SCOPE,
                                     embedder=embedder, run_id=context.run_id)
    snapshot = ScoreSnapshot(result.score, q, result.n, result.dim, result.entropy,
                             len(pool.excluded))
    return dg.Output(snapshot, metadata={
        "g_vendi": figure(result.score),
        "entropy": figure(result.entropy, 4),
        "q": constant(q),
        "n": constant(result.n),
        "dim": constant(result.dim),
        "n_excluded": len(pool.excluded),
        "g_vendi_per_sample": figure(result.score / result.n, 4),
        "cluster_size_vendi": figure(cluster_vendi),
        "embedding_key": gradient_embeddings.embedding_key,
        "baselines": dg.MetadataValue.json(rounded(baselines)),
    })


BACKBONE_ASSETS = [seed_samples, gradient_embeddings, gradient_clusters, g_vendi]
