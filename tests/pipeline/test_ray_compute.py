"""The two backends of the `Embedder` role through the same callers: a real local Ray against local.

Every caller of the proxy (the embedding cache, the hidden states and baselines, the data set
comparison) runs unchanged on `compute.backend: local` and on `compute.backend: ray` (two Ray
Data actors with half a CPU each, as on a 2-core CI machine), and the results agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from prismatic_assets.core.diversity import hidden_state_key, mean_pooled_hidden_states
from prismatic_assets.core.models import load_causal_lm
from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig
from prismatic_assets.pipeline.baselines import hidden_vectors, record_baselines
from prismatic_assets.pipeline.compare import compare_sets
from prismatic_assets.pipeline.datasets import LoadedSet
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import embed_samples, open_embedder
from prismatic_assets.pipeline.ray_compute import RayEmbeddingBackend, _GradientActor, _HiddenActor
from prismatic_assets.store.store import MetadataStore
from tests.pipeline.test_embeddings import make_samples

BACKENDS = {
    "local": ComputeConfig(batch_size=4),
    "ray": ComputeConfig(backend="ray", workers=2, cpus_per_worker=0.5, batch_size=4),
}


@pytest.fixture(scope="module")
def local_ray():
    import ray

    # Two CPUs, as on CI: two actors with half a CPU each leave one for Ray Data's own tasks.
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def run_callers(embedder: Embedder, store: MetadataStore) -> dict:
    """Every caller of the role on one embedder; what each returned."""
    samples = make_samples(40)
    report = embed_samples(samples, embedder, store, run_id="run")
    hashes = [s.content_hash for s in samples]
    valid, vectors, _ = store.load_vectors(hashes, embedder.key, embedder.dim)
    hidden = hidden_vectors(samples, embedder, store, max_length=128, batch_size=4)
    baselines = record_baselines(store, samples, scope="seed", embedder=embedder, max_length=128, batch_size=4)
    sets = [LoadedSet("first", "first", samples[:20], []), LoadedSet("second", "second", samples[20:], [])]
    comparison = compare_sets(sets, embedder, store, clusters=3, max_length=128, batch_size=4)
    return {"report": report, "valid": valid, "vectors": vectors, "hidden": hidden, "baselines": baselines,
            "comparison": comparison, "again": embed_samples(samples, embedder, store),
            "hidden_again": hidden_vectors(samples, embedder, store, max_length=128, batch_size=4)}


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_model_dir, local_ray) -> dict[str, dict]:
    proxy, projection = ProxyConfig(model=tiny_model_dir, max_length=128), ProjectionConfig(dim=64)
    out = {}
    for name, compute in BACKENDS.items():
        store = MetadataStore(tmp_path_factory.mktemp(name) / "prismatic.duckdb")
        with open_embedder(proxy, projection, compute) as embedder:
            out[name] = {"type": type(embedder).__name__, "key": embedder.key, **run_callers(embedder, store)}
    return out


def test_each_backend_is_the_one_configured(results):
    assert results["local"]["type"] == "LocalEmbedder" and results["ray"]["type"] == "RayEmbeddingBackend"
    assert results["ray"]["key"] == results["local"]["key"]  # same model, projection and spec: one cache
    for r in results.values():
        assert r["report"].n_computed == 40 and not r["report"].errors and r["valid"].all()
        assert r["again"].n_computed == 0 and r["hidden_again"].n_computed == 0  # a rerun starts no actor


def test_ray_gives_the_local_gradient_vectors(results):
    ray, local = results["ray"]["vectors"], results["local"]["vectors"]
    assert ray.shape == (40, 64)
    np.testing.assert_allclose(ray, local, rtol=1e-5, atol=1e-6)


def test_ray_gives_the_local_hidden_states(results, tiny_model_dir):
    ray, local = results["ray"]["hidden"], results["local"]["hidden"]
    assert ray.key == local.key and ray.dim == local.dim == 32 and ray.n_computed == 40
    np.testing.assert_allclose(ray.vectors, local.vectors, rtol=1e-5, atol=1e-6)
    # Both against the pooling computed here, on a model loaded apart from either backend.
    model, tokenizer = load_causal_lm(tiny_model_dir)
    samples = make_samples(40)
    expected = mean_pooled_hidden_states(model, tokenizer, [s.prompt for s in samples],
                                         [s.response for s in samples], batch_size=1, max_length=128)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(ray.vectors, expected, rtol=1e-4, atol=1e-5)
    assert ray.key == hidden_state_key(results["ray"]["comparison"].model_fingerprint, 128)


def test_baselines_and_comparison_agree_across_backends(results):
    ray, local = results["ray"], results["local"]
    assert set(ray["baselines"]) == set(local["baselines"]) and "embedding_vendi" in ray["baselines"]
    for metric, value in local["baselines"].items():
        assert ray["baselines"][metric] == pytest.approx(value, rel=1e-5), metric
    for r_set, l_set in zip(ray["comparison"].sets, local["comparison"].sets, strict=True):
        for q, value in l_set.g_vendi.items():
            assert r_set.g_vendi[q] == pytest.approx(value, rel=1e-4)
        emb_ray, emb_local = r_set.metric("embedding_vendi"), l_set.metric("embedding_vendi")
        assert emb_ray is not None and emb_local is not None and not math.isnan(emb_ray.value)
        assert emb_ray.value == pytest.approx(emb_local.value, rel=1e-4)
    assert ray["comparison"].model == local["comparison"].model  # both name the proxy as configured


def test_actors_refuse_a_model_other_than_the_drivers(tiny_model_dir):
    proxy = ProxyConfig(model=tiny_model_dir).model_dump()
    with pytest.raises(RuntimeError, match="other model weights"):
        _GradientActor(proxy, ProjectionConfig(dim=8).model_dump(), 2, key="not-this-key", memory_gb=None)
    with pytest.raises(RuntimeError, match="other model weights"):
        _HiddenActor(proxy, fingerprint="not-this-fingerprint", max_length=64, batch_size=2)


def test_workers_ask_ray_for_their_share_of_the_machine(tiny_model_dir):
    half = RayEmbeddingBackend(ProxyConfig(model=tiny_model_dir), ProjectionConfig(), BACKENDS["ray"])
    assert half.map_options() == {"concurrency": 2, "num_cpus": 0.5}
    assert half.map_options(tasks=1)["concurrency"] == 1  # no actor loads the model for nothing
    compute = ComputeConfig(backend="ray", workers=8, gpus_per_worker=1, batch_size=16)
    gpus = RayEmbeddingBackend(ProxyConfig(model=tiny_model_dir, device="cuda:0"), ProjectionConfig(), compute)
    assert gpus.map_options() == {"concurrency": 8, "num_cpus": 1.0, "num_gpus": 1}
    assert gpus.worker_proxy.device == "cuda"  # each actor sees its own GPU as cuda:0
