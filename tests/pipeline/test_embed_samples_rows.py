"""embed_samples' bookkeeping with a model-free embedder: what each stored row holds, what the
report counts, when shards are written, and pool_vectors / default_cache_store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pytest

from prismatic_assets.core.gradient_spec import Embedding, GradientSpec
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.embeddings import default_cache_store, embed_samples, pool_vectors, shard_folder
from prismatic_assets.store.store import MetadataStore

DIM = 4


def _outcome(i: int) -> Embedding:
    """A distinct, hand-made outcome per sample; every fifth one failed, every third truncated."""
    if i % 5 == 4:
        return Embedding(None, 0.0, float("nan"), 3 + i, False, 0.25 * i, f"failure {i}")
    vector = np.zeros(DIM, np.float32)
    vector[i % DIM] = 1.0
    return Embedding(vector, 1.5 + i, 0.5 + i, 3 + i, i % 3 == 0, 0.25 * i)


class FakeEmbedder:
    """The Embedder protocol's gradient side: sample i (its id's number) gets `_outcome(i)`."""

    key, dim, model_fingerprint, projection_key = "emb-key", DIM, "fp-1", "proj-1"
    gradient = GradientSpec(max_length=64)

    def __init__(self, chunk: int = 2, drop_last: bool = False) -> None:
        self.chunk, self.drop_last, self.asked = chunk, drop_last, []

    def embed_chunks(self, samples: Sequence[Sample]) -> Iterator[tuple[list[Sample], list[Embedding]]]:
        for c0 in range(0, len(samples), self.chunk):
            chunk = list(samples[c0:c0 + self.chunk])
            self.asked += [s.sample_id for s in chunk]
            outcomes = [_outcome(int(s.sample_id.split(":")[1])) for s in chunk]
            yield chunk, outcomes[:-1] if self.drop_last else outcomes


def _samples(n: int) -> list[Sample]:
    return [Sample(f"s:{i}", f"problem {i}", f"answer {i}") for i in range(n)]


def test_every_stored_row_holds_its_outcome_and_the_embedders_identity(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(10)
    seen = []
    began = time.perf_counter()
    report = embed_samples(samples, FakeEmbedder(), store, run_id="run-7",
                           progress=lambda i, n, sample, outcome: seen.append((i, n, sample.sample_id, outcome.loss)))
    wall = time.perf_counter() - began
    rows = {r["content_hash"]: r for r in store.query("SELECT * FROM embeddings").to_dicts()}
    assert len(rows) == 10
    for i, sample in enumerate(samples):
        row, want = rows[sample.content_hash], _outcome(i)
        assert (row["embedding_key"], row["model_fingerprint"], row["projection_key"], row["dim"], row["run_id"]) \
            == ("emb-key", "fp-1", "proj-1", DIM, "run-7")
        assert json.loads(row["gradient_spec"]) == GradientSpec(max_length=64).as_dict()
        assert (row["n_response_tokens"], row["truncated"], row["seconds"], row["error"]) \
            == (3 + i, want.truncated, 0.25 * i, want.error)
        if want.error is None:
            assert (row["grad_norm"], row["loss"]) == (1.5 + i, 0.5 + i)
            assert row["vector"] == want.vector.tolist()
        else:
            assert row["vector"] is None
    assert seen == [(i + 1, 10, f"s:{i}", pytest.approx(_outcome(i).loss, nan_ok=True)) for i in range(10)]
    assert (report.embedding_key, report.dim, report.n_total, report.n_computed, report.n_cached) \
        == ("emb-key", DIM, 10, 10, 0)
    assert report.n_truncated == 3  # samples 0, 3 and 6 (9 failed, untruncated)
    assert report.errors == {"s:4": "failure 4", "s:9": "failure 9"}
    assert 0 <= report.ingest_seconds <= report.ingest_seconds + report.seconds <= wall


def test_a_repeated_sample_is_embedded_once_and_a_cached_one_not_again(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(3)
    twice = samples + [Sample("s:0", "problem 0", "answer 0")]  # the same content as s:0
    embedder = FakeEmbedder()
    report = embed_samples(twice, embedder, store)
    assert embedder.asked == ["s:0", "s:1", "s:2"] and (report.n_computed, report.n_cached) == (3, 1)
    again = FakeEmbedder()
    report = embed_samples(samples, again, store)
    assert again.asked == [] and (report.n_computed, report.n_cached) == (0, 3)


def test_an_embedder_that_loses_an_outcome_is_an_error_not_a_shifted_row(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    with pytest.raises(ValueError, match="zip"):
        embed_samples(_samples(4), FakeEmbedder(drop_last=True), store)


@pytest.mark.parametrize("shard_rows, shards", [(2, 3), (3, 2), (4, 2), (6, 1)])
def test_a_shard_is_written_once_shard_rows_results_are_pending(tmp_path, shard_rows, shards):
    # chunks of 2 results; 6 samples: a shard when 2, 4 or 6 results wait (>= shard_rows), the rest at the end
    store = MetadataStore(tmp_path / "m.duckdb")
    report = embed_samples(_samples(6), FakeEmbedder(chunk=2), store, shard_rows=shard_rows, shard_seconds=3600)
    assert report.n_shards == shards


def test_unfinished_work_waits_in_shards_beside_the_store(tmp_path):
    store = MetadataStore(tmp_path / "data" / "m.duckdb")
    assert shard_folder(store, "emb-key").path == tmp_path / "data" / "shards" / "embeddings" / "emb-key"


def test_pool_vectors_keeps_pool_order_and_names_each_excluded_sample(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(7)
    embed_samples(samples[:6], FakeEmbedder(), store)  # s:4 fails, s:6 is never computed
    pool = pool_vectors(store, list(reversed(samples)), "emb-key", DIM)
    assert pool.sample_ids == ["s:5", "s:3", "s:2", "s:1", "s:0"]
    expected = np.stack([_outcome(int(i.split(":")[1])).vector for i in pool.sample_ids])
    assert np.array_equal(pool.vectors, expected)
    assert pool.excluded == {"s:6": "not computed", "s:4": "failure 4"}


def test_the_cli_cache_store_lives_in_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMATIC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    assert Path(default_cache_store().path) == tmp_path / "cache" / "score-cache.duckdb"
