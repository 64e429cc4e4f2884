"""Gradient embeddings: compute and cache the projected gradient vector of each sample.

The vectors live in the metadata store, keyed by (content hash, embedding key); this
module decides what is missing, has a backend compute it, and writes it:

- backends: a `GradientEmbedder` in this process (`compute.backend: local`, B samples per
  step), or `RayEmbeddingBackend` (`compute.backend: ray`, pipeline/ray_compute.py), whose
  Ray Data actors each hold a proxy. Both yield results chunk by chunk.
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
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig
from prismatic_assets.core.gradient_memory import MemoryBudget
from prismatic_assets.core.gradients import Embedding, GradientEmbedder, GradientSpec
from prismatic_assets.core.models import load_causal_lm, model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec
from prismatic_assets.core.samples import Sample
from prismatic_assets.store.shards import ShardFolder, embedding_rows_table
from prismatic_assets.store.store import EmbeddingRow, MetadataStore

Progress = Callable[[int, int, Sample, Embedding], None]
#: A shard is written when this many results are pending, or after SHARD_SECONDS (the
#: defaults of `compute.shard_rows` / `compute.shard_seconds`).
SHARD_ROWS: int = ComputeConfig.model_fields["shard_rows"].default
SHARD_SECONDS: float = ComputeConfig.model_fields["shard_seconds"].default


#: GiB a gradient step may use (`compute.memory_gb`'s default; None: no budget).
MEMORY_GB: float | None = ComputeConfig.model_fields["memory_gb"].default


def build_embedder(proxy: ProxyConfig, projection: ProjectionConfig, batch_size: int = 8,
                   memory_gb: float | None = MEMORY_GB) -> GradientEmbedder:
    """Load the proxy model and freeze everything the vectors depend on; batches are planned
    within `memory_gb` GiB (see core/gradient_memory.py)."""
    model, tokenizer = load_causal_lm(proxy.model, dtype=proxy.dtype, device=proxy.device,
                                      trust_remote_code=proxy.trust_remote_code)
    spec = ProjectionSpec(kind=projection.kind, dim=projection.dim, seed=projection.seed)
    gradient = GradientSpec(params=proxy.params, autocast=proxy.autocast, max_length=proxy.max_length)
    embedder = GradientEmbedder(model, tokenizer, spec, gradient, model_fingerprint(model, tokenizer),
                                memory=None if memory_gb is None else MemoryBudget.gb(memory_gb))
    embedder.batch_size = batch_size
    return embedder


class EmbeddingBackend(Protocol):
    """What `embed_samples` needs: the vectors' identity and results chunk by chunk."""

    key: str
    model_fingerprint: str
    projection_key: str
    gradient: GradientSpec
    input_dim: int

    @property
    def dim(self) -> int: ...

    def embed_chunks(self, samples: Sequence[Sample]) -> Iterator[tuple[list[Sample], list[Embedding]]]: ...


def _local_chunks(embedder: GradientEmbedder, samples: Sequence[Sample]
                  ) -> Iterator[tuple[list[Sample], list[Embedding]]]:
    # Chunks of a few batches: sorting by length inside a chunk keeps padding low.
    step = max(1, embedder.batch_size) * 8
    for start in range(0, len(samples), step):
        chunk = list(samples[start:start + step])
        yield chunk, embedder.embed_many([(s.prompt, s.response) for s in chunk])


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


def embed_samples(samples: Sequence[Sample], embedder: GradientEmbedder | EmbeddingBackend, store: MetadataStore,
                  run_id: str | None = None, progress: Progress | None = None,
                  shard_rows: int = SHARD_ROWS, shard_seconds: float = SHARD_SECONDS) -> EmbeddingReport:
    """Compute and store the vectors of samples not yet cached under the embedder's key.

    embedder: a GradientEmbedder (batches of `embedder.batch_size`) or a backend such as
    RayEmbeddingBackend. Results go to Parquet shards (one per `shard_rows` results or
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
    chunks = (embedder.embed_chunks(todo) if hasattr(embedder, "embed_chunks")
              else _local_chunks(embedder, todo))
    gradient_spec = embedder.gradient.as_dict()
    pending: list[EmbeddingRow] = []
    written: list = []
    start = last_write = time.perf_counter()
    for chunk, outcomes in chunks:
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
                  ) -> Iterator[GradientEmbedder | EmbeddingBackend]:
    """The proxy for the duration of a stage, on the configured compute backend.

    local: the model in this process, its memory (GPU included) freed on exit, so an LLM
    engine that needs the same device can start next. ray: a RayEmbeddingBackend whose
    actors hold the proxy; they are released when the stage's Ray Data job ends.
    """
    compute = compute or ComputeConfig()
    if compute.backend == "ray":
        from prismatic_assets.pipeline.ray_compute import RayEmbeddingBackend

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
