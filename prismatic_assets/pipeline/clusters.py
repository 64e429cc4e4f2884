"""Gradient clusters: spherical k-means of a pool's vectors, stored with the sparse clusters marked."""

from __future__ import annotations

from typing import Any

import numpy as np

from prismatic_assets.core.clustering import Clustering, num_clusters, spherical_kmeans
from prismatic_assets.core.ids import digest
from prismatic_assets.infra.config import ClusteringConfig
from prismatic_assets.pipeline.embeddings import PoolVectors
from prismatic_assets.store.store import MetadataStore


def cluster_pool(store: MetadataStore, pool: PoolVectors, settings: ClusteringConfig, embedding_key: str,
                 scope: str, run_id: str | None = None) -> tuple[str, Clustering]:
    """Spherical k-means of the pool's vectors, stored under a content-derived id."""
    n = len(pool.sample_ids)
    if n < 2:
        raise ValueError(f"clustering needs at least 2 samples with a valid gradient, got {n} "
                         f"({len(pool.excluded)} excluded: {list(pool.excluded.values())[:3]})")
    k = num_clusters(n, settings.ratio)
    clustering = spherical_kmeans(pool.vectors, k, niter=settings.niter, seed=settings.seed,
                                  sparse_ratio=settings.sparse_ratio,
                                  max_points_per_centroid=settings.max_points_per_centroid,
                                  method=settings.method, coarse=settings.coarse, refine=settings.refine,
                                  probe=settings.probe, assign=settings.assign)
    config: dict[str, Any] = {"ratio": settings.ratio, "niter": settings.niter, "seed": settings.seed,
              "sparse_ratio": settings.sparse_ratio}
    # Settings at their defaults are left out, so the ids of earlier clusterings stay valid.
    if settings.max_points_per_centroid is not None:
        config["max_points_per_centroid"] = settings.max_points_per_centroid
    if settings.method != "flat":
        config.update(method=settings.method, coarse=settings.coarse, refine=settings.refine, probe=settings.probe)
    if settings.assign != "exact":
        config["assign"] = settings.assign
    clustering_id = digest({"scope": scope, "members": pool.sample_ids, "key": embedding_key, "config": config})
    sorted_sizes = np.sort(clustering.sizes)
    threshold = int(sorted_sizes[int(k * settings.sparse_ratio)])  # K >= 2: num_clusters' minimum
    store.replace_clustering(
        clustering_id=clustering_id, scope=scope, embedding_key=embedding_key, k=k, n=n,
        niter=settings.niter, seed=settings.seed, sparse_ratio=settings.sparse_ratio, threshold_size=threshold,
        sizes=clustering.sizes, sparse=clustering.sparse, centroids=clustering.centroids,
        member_ids=pool.sample_ids, assignments=clustering.assignments, similarities=clustering.similarities,
        config=config, run_id=run_id)
    return clustering_id, clustering
