"""Embedding writes: Parquet shards loaded with one insert, resume from finished shards."""

from __future__ import annotations

import numpy as np
import pytest

from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig
from prismatic_assets.pipeline.embedder import build_embedder
from prismatic_assets.pipeline.embeddings import embed_samples, shard_folder
from prismatic_assets.store.store import MetadataStore


def make_samples(n: int) -> list[Sample]:
    """n distinct short problems with worked answers (lengths vary, so batches pad)."""
    return [Sample(sample_id=f"s{i}", prompt=f"What is {i} + {i % 7}?" + " Explain." * (i % 3),
                   response=f"{i} + {i % 7} = {i + i % 7}." + " Check: it adds up." * (i % 4), source="test")
            for i in range(n)]


class Stop(Exception):
    pass


def _vectors(store: MetadataStore, samples, key: str, dim: int) -> np.ndarray:
    valid, matrix, reasons = store.load_vectors([s.content_hash for s in samples], key, dim)
    assert valid.all(), reasons
    return matrix


def test_interrupted_run_resumes_from_finished_shards(tmp_path, tiny_model_dir):
    samples = make_samples(24)
    embedder = build_embedder(ProxyConfig(model=tiny_model_dir), ProjectionConfig(dim=32))
    store = MetadataStore(tmp_path / "a" / "prismatic.duckdb")

    def stop_after_20(i, n, sample, outcome):
        if i == 20:
            raise Stop

    with pytest.raises(Stop):
        # Local chunks of 8 batches of 2: a shard is written after the first chunk (16 rows,
        # over shard_rows=8), and the run stops inside the second one.
        embedder.gradients.batch_size = 2
        embed_samples(samples, embedder, store, progress=stop_after_20, shard_rows=8)
    finished = shard_folder(store, embedder.key).finished()
    assert len(finished) == 1  # the first chunk of 16, written atomically; nothing in the store yet
    assert store.cached_hashes([s.content_hash for s in samples], embedder.key) == set()
    (finished[0].parent / "half-written.parquet.tmp").write_bytes(b"PAR1")  # a writer that died mid-file

    report = embed_samples(samples, embedder, store, shard_rows=8)
    assert (report.n_resumed, report.n_cached, report.n_computed) == (16, 16, 8)
    assert shard_folder(store, embedder.key).finished() == []
    assert not list(finished[0].parent.glob("*.tmp"))

    fresh = MetadataStore(tmp_path / "b" / "prismatic.duckdb")
    again = embed_samples(samples, embedder, fresh, shard_rows=1000)
    assert (again.n_computed, again.n_shards) == (24, 1)
    np.testing.assert_allclose(_vectors(store, samples, embedder.key, 32), _vectors(fresh, samples, embedder.key, 32),
                               rtol=1e-5, atol=1e-6)
    # Re-running stores nothing twice.
    assert embed_samples(samples, embedder, fresh).n_computed == 0
    assert fresh.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 24


def test_errors_are_reported_by_sample_id(tmp_path, tiny_model_dir):
    samples = make_samples(3) + [Sample(sample_id="long", prompt="x " * 200, response="y", source="test")]
    embedder = build_embedder(ProxyConfig(model=tiny_model_dir, max_length=64), ProjectionConfig(dim=32))
    report = embed_samples(samples, embedder, MetadataStore(tmp_path / "prismatic.duckdb"))
    assert list(report.errors) == ["long"] and "prompt alone" in report.errors["long"]


def test_local_and_batched_paths_store_the_same_vectors_as_one_at_a_time(tmp_path, tiny_model_dir):
    samples = make_samples(12)
    embedder = build_embedder(ProxyConfig(model=tiny_model_dir), ProjectionConfig(dim=32),
                              batch_size=ComputeConfig(batch_size=5).batch_size)
    store = MetadataStore(tmp_path / "prismatic.duckdb")
    embed_samples(samples, embedder, store)
    one = np.stack([embedder.gradients.embed(s.prompt, s.response).vector for s in samples])
    np.testing.assert_allclose(_vectors(store, samples, embedder.key, 32), one, rtol=1e-5, atol=1e-5)
