"""cluster_pool: the clustering settings reach the k-means and the stored clustering."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from prismatic_assets.core.clustering import spherical_kmeans
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


def _id(payload: dict) -> str:
    """The stored id, computed here from its documented form: sha256 of sorted JSON, 24 hex digits."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def test_the_stored_row_config_and_id_are_pinned_and_the_settings_reach_the_kmeans(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    pool = _pool(200)
    settings = ClusteringConfig(ratio=0.05, niter=2, seed=3, sparse_ratio=0.3)
    clustering_id, clustering = cluster_pool(store, pool, settings, "emb", "round:2", run_id="run-1")
    config = {"ratio": 0.05, "niter": 2, "seed": 3, "sparse_ratio": 0.3}  # defaults left out: old ids stay valid
    assert clustering_id == _id({"scope": "round:2", "members": pool.sample_ids, "key": "emb", "config": config})
    row = store.query("SELECT scope, embedding_key, k, n, niter, seed, sparse_ratio, threshold_size, n_sparse, "
                      "config, run_id FROM clusterings WHERE clustering_id = ?", [clustering_id]).row(0)
    threshold = int(sorted(clustering.sizes)[3])  # K = round(0.05 * 200) = 10; the size at int(10 * 0.3)
    assert threshold > 0
    assert row[:9] == ("round:2", "emb", 10, 200, 2, 3, 0.3, threshold, int(clustering.sparse.sum()))
    assert json.loads(row[9]) == config and row[10] == "run-1"
    direct = spherical_kmeans(pool.vectors, 10, niter=2, seed=3, sparse_ratio=0.3)
    assert np.array_equal(clustering.centroids, direct.centroids)
    assert np.array_equal(clustering.sparse, direct.sparse)
    for other in ({"niter": 20, "seed": 3}, {"niter": 2, "seed": 0}):  # each setting makes a difference here
        assert not np.array_equal(spherical_kmeans(pool.vectors, 10, **other).centroids, direct.centroids), other


def test_non_default_settings_join_the_config_and_reach_the_kmeans(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    pool = _pool(600)
    given = dict(max_points_per_centroid=4, method="two_level", coarse=3, refine=1, probe=1, assign="probe")
    settings = ClusteringConfig(ratio=0.05, **given)
    clustering_id, clustering = cluster_pool(store, pool, settings, "emb", "round:1")
    config = {"ratio": 0.05, "niter": 20, "seed": 0, "sparse_ratio": 0.5, **given}
    assert clustering_id == _id({"scope": "round:1", "members": pool.sample_ids, "key": "emb", "config": config})
    stored = store.query("SELECT config FROM clusterings WHERE clustering_id = ?", [clustering_id]).item()
    assert json.loads(stored) == config
    direct = spherical_kmeans(pool.vectors, 30, **given)
    assert np.array_equal(clustering.centroids, direct.centroids)
    assert np.array_equal(clustering.assignments, direct.assignments)
    for name, value in [("max_points_per_centroid", None), ("coarse", None), ("refine", 3), ("probe", 16),
                        ("assign", "exact")]:
        other = spherical_kmeans(pool.vectors, 30, **{**given, name: value})
        assert not (np.array_equal(other.centroids, direct.centroids)
                    and np.array_equal(other.assignments, direct.assignments)), f"{name} makes no difference here"


def test_two_samples_are_enough_and_one_is_refused(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    two = _pool(2)
    _, clustering = cluster_pool(store, two, ClusteringConfig(), "emb", "pool")
    assert sorted(clustering.sizes.tolist()) == [1, 1]  # K = 2 at least, one sample each
    one = PoolVectors(["s:0"], two.vectors[:1], {"s:1": "no gradient"})
    refused = r"at least 2 samples with a valid gradient, got 1 \(1 excluded: \['no gradient'\]\)"
    with pytest.raises(ValueError, match=refused):
        cluster_pool(store, one, ClusteringConfig(), "emb", "pool")
