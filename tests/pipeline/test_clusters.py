"""cluster_pool: the clustering settings reach the k-means and the stored clustering."""

from __future__ import annotations

import json

import numpy as np

from prismatic_assets.infra.config import ClusteringConfig
from prismatic_assets.pipeline.clusters import cluster_pool
from prismatic_assets.pipeline.embeddings import PoolVectors
from prismatic_assets.store.store import MetadataStore


def _pool(n: int = 1500, d: int = 16) -> PoolVectors:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((12, d))
    x = centers[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return PoolVectors([f"s:{i}" for i in range(n)], x.astype(np.float32), {})


def test_method_and_coarse_change_the_stored_clustering(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    pool = _pool()
    stored = {}
    for name, settings in {"flat": ClusteringConfig(ratio=0.02, niter=10),
                           "two_level": ClusteringConfig(ratio=0.02, niter=10, method="two_level"),
                           "coarse": ClusteringConfig(ratio=0.02, niter=10, method="two_level", coarse=3)}.items():
        clustering_id, clustering = cluster_pool(store, pool, settings, "key", "test")
        row = store.query("SELECT k, config FROM clusterings WHERE clustering_id = ?", [clustering_id]).row(0)
        stored[name] = (clustering_id, clustering, row)
    assert len({cid for cid, _, _ in stored.values()}) == 3  # each setting its own clustering id
    (_, flat, flat_row), (_, two, two_row), (_, coarse, coarse_row) = stored.values()
    assert flat_row[0] == two_row[0] == 30  # K = 2% of 1,500 either way
    assert "method" not in json.loads(flat_row[1])  # the default leaves earlier ids as they were
    assert json.loads(two_row[1])["method"] == "two_level" and json.loads(coarse_row[1])["coarse"] == 3
    assert not np.allclose(flat.centroids, two.centroids) and not np.allclose(two.centroids, coarse.centroids)
    # Exact assignment whatever the training: sizes add up and members sit at their nearest centroid.
    for c in (flat, two, coarse):
        assert c.sizes.sum() == 1500
        assert np.array_equal(c.assignments, np.argmax(pool.vectors @ c.centroids.T, axis=1))
