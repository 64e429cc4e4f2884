"""Gradient embeddings: compute and cache the projected gradient vector of each sample.

The vectors live in the metadata store, keyed by (content hash, embedding key); this
module decides what is missing, has a backend compute it, and writes it:

- backends: any `Embedder` (pipeline/embedder.py): `LocalEmbedder` in this process
  (`compute.backend: local`, B samples per step), or `RayEmbeddingBackend`
  (`compute.backend: ray`, pipeline/ray_compute.py), whose Ray Data actors each hold a
  proxy. Both yield results chunk by chunk; `open_embedder` picks one from the config.
- writes: each finished chunk becomes a Parquet shard (store/shards.py), written
  atomically; all shards are loaded with one insert at the end. A run that stops midway
  keeps its finished shards, and the next run loads them before deciding what is missing.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from prismatic_assets.core.gradient_spec import Embedding
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig
from prismatic_assets.pipeline.embedder import Embedder, build_embedder
from prismatic_assets.pipeline.ray_compute import RayEmbeddingBackend
from prismatic_assets.store.shards import ShardFolder, embedding_rows_table
from prismatic_assets.store.store import EmbeddingRow, MetadataStore

Progress = Callable[[int, int, Sample, Embedding], None]
#: A shard is written when this many results are pending, or after SHARD_SECONDS (the
#: defaults of `compute.shard_rows` / `compute.shard_seconds`).
SHARD_ROWS: int = ComputeConfig.model_fields["shard_rows"].default
SHARD_SECONDS: float = ComputeConfig.model_fields["shard_seconds"].default


def shard_folder(store: MetadataStore, embedding_key: str) -> ShardFolder:
    """Where unfinished work of one embedding key waits: next to the store's file."""
    return ShardFolder(store.path.parent / "shards" / "embeddings" / embedding_key)


@dataclass
class EmbeddingReport:
    embedding_key: str
    dim: int
    n_total: int
    n_cached: int = 0
    n_computed: int = 0
    n_truncated: int = 0
    n_resumed: int = 0  # rows found in finished shards of an earlier, interrupted run
    n_shards: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # sample_id -> reason
    seconds: float = 0.0
    ingest_seconds: float = 0.0

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / self.n_computed if self.n_computed else 0.0


def embed_samples(samples: Sequence[Sample], embedder: Embedder, store: MetadataStore,
                  run_id: str | None = None, progress: Progress | None = None,
                  shard_rows: int = SHARD_ROWS, shard_seconds: float = SHARD_SECONDS) -> EmbeddingReport:
    """Compute and store the vectors of samples not yet cached under the embedder's key.

    embedder: any backend of the role (`LocalEmbedder`, `RayEmbeddingBackend`). Results
    go to Parquet shards (one per `shard_rows` results or
    `shard_seconds`), loaded into the store with one insert at the end; an interrupted run
    keeps its finished shards and the next run loads them first.
    """
    key, dim = embedder.key, embedder.dim
    report = EmbeddingReport(embedding_key=key, dim=dim, n_total=len(samples))
    shards = shard_folder(store, key)
    leftover = shards.finished()
    if leftover:
        report.n_resumed = store.ingest_embedding_shards(leftover)
        shards.remove(leftover)
    cached = store.cached_hashes([s.content_hash for s in samples], key)
    todo: list[Sample] = []
    seen: set[str] = set()
    for s in samples:
        if s.content_hash in cached or s.content_hash in seen:
            report.n_cached += 1
        else:
            seen.add(s.content_hash)
            todo.append(s)
    gradient_spec = embedder.gradient.as_dict()
    pending: list[EmbeddingRow] = []
    written: list[Path] = []
    start = last_write = time.perf_counter()
    for chunk, outcomes in embedder.embed_chunks(todo):
        for sample, outcome in zip(chunk, outcomes, strict=True):
            pending.append(EmbeddingRow(
                content_hash=sample.content_hash, embedding_key=key, model_fingerprint=embedder.model_fingerprint,
                projection_key=embedder.projection_key, gradient_spec=gradient_spec, dim=dim,
                vector=outcome.vector, grad_norm=outcome.grad_norm, loss=outcome.loss,
                n_response_tokens=outcome.n_response_tokens, truncated=outcome.truncated,
                seconds=outcome.seconds, error=outcome.error, run_id=run_id))
            report.n_computed += 1
            report.n_truncated += int(outcome.truncated)
            if progress:
                progress(report.n_computed, len(todo), sample, outcome)
        if len(pending) >= shard_rows or time.perf_counter() - last_write >= shard_seconds:
            written.append(shards.write(embedding_rows_table(pending)))
            pending, last_write = [], time.perf_counter()
    if pending:
        written.append(shards.write(embedding_rows_table(pending)))
    report.seconds = time.perf_counter() - start
    began = time.perf_counter()
    store.ingest_embedding_shards(written)  # one insert, one transaction, for the whole set
    shards.remove(written)
    report.ingest_seconds = time.perf_counter() - began
    report.n_shards = len(written)
    reasons = store.missing_or_failed([s.content_hash for s in samples], key)
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


def default_cache_store() -> MetadataStore:
    """The CLI's embedding cache, shared by every `prismatic score` run on this machine."""
    from prismatic_assets.core.models import default_cache_dir

    return MetadataStore(Path(default_cache_dir()) / "score-cache.duckdb")


@contextlib.contextmanager
def open_embedder(proxy: ProxyConfig, projection: ProjectionConfig, compute: ComputeConfig | None = None
                  ) -> Iterator[Embedder]:
    """The proxy for the duration of a stage, on the configured compute backend.

    local: the model in this process, its memory (GPU included) freed on exit, so an LLM
    engine that needs the same device can start next. ray: a RayEmbeddingBackend whose
    actors hold the proxy; they are released when the stage's Ray Data job ends.
    """
    compute = compute or ComputeConfig()
    if compute.backend == "ray":
        yield RayEmbeddingBackend(proxy, projection, compute)
        return
    embedder = build_embedder(proxy, projection, compute.batch_size, compute.memory_gb)
    try:
        yield embedder
    finally:
        del embedder
        gc.collect()
        if proxy.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
