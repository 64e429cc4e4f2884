"""Score a data set's gradient diversity without Dagster.

    >>> from prismatic_assets.api import score_dataset
    >>> result = score_dataset("data.jsonl", model="Qwen/Qwen2.5-0.5B-Instruct", device="cuda")
    >>> result.g_vendi, result.n

Vectors are cached in a DuckDB file (~/.cache/prismatic/score-cache.duckdb by default),
keyed by sample text, model fingerprint, projection and gradient settings: scoring the same
file again, or a file that shares samples with it, computes only what is new.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from prismatic_assets.pipeline.embeddings import build_embedder, default_cache_store, embed_samples, pool_vectors
from prismatic_assets.pipeline.scores import score_pool
from prismatic_assets.core.loaders import FieldMap, load_samples
from prismatic_assets.core.models import PACKAGED_MODEL
from prismatic_assets.core.samples import Rejection, Sample
from prismatic_assets.config import ProjectionConfig, ProxyConfig
from prismatic_assets.store.store import MetadataStore


@dataclass
class DatasetScore:
    g_vendi: float
    q: float
    n: int  # samples with a valid gradient vector
    dim: int
    model: str
    model_fingerprint: str
    projection: str
    embedding_key: str
    n_loaded: int
    n_rejected: int
    n_cached: int
    n_computed: int
    seconds: float
    errors: dict[str, str] = field(default_factory=dict)  # sample_id -> reason (excluded from the score)
    rejections: list[Rejection] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"g_vendi": self.g_vendi, "q": self.q, "n": self.n, "dim": self.dim, "model": self.model,
                "model_fingerprint": self.model_fingerprint, "projection": self.projection,
                "embedding_key": self.embedding_key, "n_loaded": self.n_loaded, "n_rejected": self.n_rejected,
                "n_errors": len(self.errors), "n_cached": self.n_cached, "n_computed": self.n_computed,
                "seconds": round(self.seconds, 2), "errors": self.errors,
                "rejections": [{"ref": r.source_ref, "reason": r.reason} for r in self.rejections]}


def score_samples(samples: Sequence[Sample], *, model: str = PACKAGED_MODEL, device: str = "cpu",
                  dtype: str = "float32", params: str | None = None, autocast: str | None = None,
                  max_length: int = 2048, projection: str = "countsketch", dim: int = 1024, seed: int = 0,
                  q: float = 1.0, cache: MetadataStore | str | Path | None | bool = True,
                  progress: Callable | None = None, rejections: Sequence[Rejection] = (),
                  trust_remote_code: bool = False) -> DatasetScore:
    """G-Vendi of in-memory samples. `cache`: True (the shared cache), False, a path or a store."""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="prismatic-") as tmp:
        if cache is True:
            store = default_cache_store()
        elif cache is False or cache is None:
            store = MetadataStore(Path(tmp) / "scratch.duckdb")
        elif isinstance(cache, MetadataStore):
            store = cache
        else:
            store = MetadataStore(cache)
        embedder = build_embedder(
            ProxyConfig(model=model, device=device, dtype=dtype, params=params, autocast=autocast,
                        max_length=max_length, trust_remote_code=trust_remote_code),
            ProjectionConfig(kind=projection, dim=dim, seed=seed))
        report = embed_samples(samples, embedder, store, progress=progress)
        pool = pool_vectors(store, samples, report.embedding_key, report.dim)
        result = score_pool(None, pool, q, report.embedding_key, scope="api")
    return DatasetScore(
        g_vendi=result.score, q=q, n=result.n, dim=result.dim, model=model,
        model_fingerprint=embedder.model_fingerprint, projection=embedder.projection_key,
        embedding_key=report.embedding_key, n_loaded=len(samples), n_rejected=len(rejections),
        n_cached=report.n_cached, n_computed=report.n_computed, seconds=time.perf_counter() - started,
        errors=pool.excluded, rejections=list(rejections))


def score_dataset(source: str | Path, *, fields: FieldMap | str | None = None, limit: int | None = None,
                  **options) -> DatasetScore:
    """G-Vendi of a JSONL/Parquet file, "champ", or "hf:owner/name[:split]" (see `score_samples`)."""
    if isinstance(fields, str):
        fields = FieldMap.parse(fields)
    loaded = load_samples(str(source), fields=fields, limit=limit)
    return score_samples(loaded.samples, rejections=loaded.rejections, **options)
