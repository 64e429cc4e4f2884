"""Gradient embeddings: compute and cache the projected gradient vector of each sample.

The vectors live in the metadata store, keyed by (content hash, embedding key); this
module decides what is missing, computes it with a `GradientEmbedder` and writes it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from prismatic_assets.core.gradients import Embedding, GradientEmbedder, GradientSpec
from prismatic_assets.core.models import load_causal_lm, model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec
from prismatic_assets.core.samples import Sample
from prismatic_assets.config import ProjectionConfig, ProxyConfig
from prismatic_assets.store.store import EmbeddingRow, MetadataStore

Progress = Callable[[int, int, Sample, Embedding], None]


def build_embedder(proxy: ProxyConfig, projection: ProjectionConfig) -> GradientEmbedder:
    """Load the proxy model and freeze everything the vectors depend on."""
    model, tokenizer = load_causal_lm(proxy.model, dtype=proxy.dtype, device=proxy.device,
                                      trust_remote_code=proxy.trust_remote_code)
    spec = ProjectionSpec(kind=projection.kind, dim=projection.dim, seed=projection.seed)
    gradient = GradientSpec(params=proxy.params, autocast=proxy.autocast, max_length=proxy.max_length)
    return GradientEmbedder(model, tokenizer, spec, gradient, model_fingerprint(model, tokenizer))


@dataclass
class EmbeddingReport:
    embedding_key: str
    dim: int
    n_total: int
    n_cached: int = 0
    n_computed: int = 0
    n_truncated: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # sample_id -> reason
    seconds: float = 0.0

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / self.n_computed if self.n_computed else 0.0


def embed_samples(samples: Sequence[Sample], embedder: GradientEmbedder, store: MetadataStore,
                  run_id: str | None = None, progress: Progress | None = None,
                  flush_every: int = 8) -> EmbeddingReport:
    """Compute and store the vectors of samples not yet cached under the embedder's key.

    Results are written every `flush_every` samples, so an interrupted run keeps what it
    paid for and the next run computes only the rest.
    """
    dim = embedder.projector.spec.dim
    report = EmbeddingReport(embedding_key=embedder.key, dim=dim, n_total=len(samples))
    cached = store.cached_hashes([s.content_hash for s in samples], embedder.key)
    todo: list[Sample] = []
    seen: set[str] = set()
    for s in samples:
        if s.content_hash in cached or s.content_hash in seen:
            report.n_cached += 1
        else:
            seen.add(s.content_hash)
            todo.append(s)
    pending: list[EmbeddingRow] = []
    start = time.perf_counter()
    for i, sample in enumerate(todo):
        outcome = embedder.embed(sample.prompt, sample.response)
        pending.append(EmbeddingRow(
            content_hash=sample.content_hash, embedding_key=embedder.key,
            model_fingerprint=embedder.model_fingerprint, projection_key=embedder.projection_key,
            gradient_spec=embedder.gradient.as_dict(), dim=dim, vector=outcome.vector,
            grad_norm=outcome.grad_norm, loss=outcome.loss, n_response_tokens=outcome.n_response_tokens,
            truncated=outcome.truncated, seconds=outcome.seconds, error=outcome.error, run_id=run_id))
        report.n_computed += 1
        report.n_truncated += int(outcome.truncated)
        if progress:
            progress(i + 1, len(todo), sample, outcome)
        if len(pending) >= flush_every:
            store.put_embeddings(pending)
            pending = []
    store.put_embeddings(pending)
    report.seconds = time.perf_counter() - start
    _, _, reasons = store.load_vectors([s.content_hash for s in samples], embedder.key, dim)
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
def open_embedder(proxy: ProxyConfig, projection: ProjectionConfig) -> Iterator[GradientEmbedder]:
    """The proxy model for the duration of a stage; its memory (GPU included) freed on exit,
    so an LLM engine that needs the same device can start next."""
    embedder = build_embedder(proxy, projection)
    try:
        yield embedder
    finally:
        del embedder
        gc.collect()
        if proxy.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
