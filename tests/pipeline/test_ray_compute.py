"""compute.backend=ray: a real local Ray, Ray Data actors holding a tiny proxy, results equal to local."""

from __future__ import annotations

import numpy as np
import pytest

from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig
from prismatic_assets.pipeline.embeddings import build_embedder, embed_samples, open_embedder
from prismatic_assets.store.store import MetadataStore
from tests.pipeline.test_embeddings import make_samples


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # Two CPUs, as on CI: one actor with one CPU leaves room for Ray Data's own tasks.
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def test_ray_backend_gives_the_local_vectors(tmp_path, tiny_model_dir, local_ray):
    samples = make_samples(64)
    proxy, projection = ProxyConfig(model=tiny_model_dir), ProjectionConfig(dim=64)
    compute = ComputeConfig(backend="ray", workers=1, cpus_per_worker=1, batch_size=8)

    ray_store = MetadataStore(tmp_path / "ray" / "prismatic.duckdb")
    with open_embedder(proxy, projection, compute) as backend:
        assert type(backend).__name__ == "RayEmbeddingBackend"
        assert backend.map_options() == {"concurrency": 1, "num_cpus": 1.0}
        report = embed_samples(samples, backend, ray_store, run_id="ray-run")
    assert report.n_computed == 64 and not report.errors

    local = build_embedder(proxy, projection, batch_size=8)
    assert local.key == backend.key  # same model, projection and spec: one cache
    local_store = MetadataStore(tmp_path / "local" / "prismatic.duckdb")
    embed_samples(samples, local, local_store)
    hashes = [s.content_hash for s in samples]
    v_ray = ray_store.load_vectors(hashes, backend.key, 64)[1]
    v_local = local_store.load_vectors(hashes, local.key, 64)[1]
    assert v_ray.shape == (64, 64)
    np.testing.assert_allclose(v_ray, v_local, rtol=1e-5, atol=1e-6)
    # A second run finds everything cached and starts no actor.
    with open_embedder(proxy, projection, compute) as backend:
        assert embed_samples(samples, backend, ray_store).n_computed == 0


def test_gpu_workers_ask_ray_for_one_gpu_each(tiny_model_dir):
    from prismatic_assets.pipeline.ray_compute import RayEmbeddingBackend

    compute = ComputeConfig(backend="ray", workers=8, gpus_per_worker=1, batch_size=16)
    backend = RayEmbeddingBackend(ProxyConfig(model=tiny_model_dir, device="cuda:0"), ProjectionConfig(), compute)
    assert backend.map_options() == {"concurrency": 8, "num_cpus": 1.0, "num_gpus": 1}
    assert backend.worker_proxy.device == "cuda"  # each actor sees its own GPU as cuda:0
