"""Score a data set's gradient diversity without Dagster.

    >>> from prismatic_assets.interfaces.api import score_dataset
    >>> result = score_dataset("data.jsonl", model="Qwen/Qwen2.5-0.5B-Instruct", device="cuda")
    >>> result.g_vendi, result.n

Vectors are cached in a DuckDB file (~/.cache/prismatic/score-cache.duckdb by default),
keyed by sample text, model fingerprint, projection and gradient settings: scoring the same
file again, or a file that shares samples with it, computes only what is new.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from prismatic_assets.core.loaders import FieldMap, load_samples
from prismatic_assets.core.models import PACKAGED_MODEL
from prismatic_assets.core.samples import Rejection, Sample
from prismatic_assets.pipeline.datasets import cache_store, proxy_embedder, set_vectors
from prismatic_assets.pipeline.scores import score_pool
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
    with cache_store(cache) as store:
        embedder = proxy_embedder(model=model, device=device, dtype=dtype, params=params, autocast=autocast,
                                  max_length=max_length, projection=projection, dim=dim, seed=seed,
                                  trust_remote_code=trust_remote_code)
        report, pool = set_vectors(samples, embedder, store, progress=progress)
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


def compare_datasets(sources: Sequence[str | Path], *, names: Sequence[str] | None = None,
                     fields: FieldMap | str | Sequence[FieldMap | str | None] | None = None,
                     limit: int | None = None, model: str = PACKAGED_MODEL, device: str = "cpu",
                     dtype: str = "float32", params: str | None = None, autocast: str | None = None,
                     max_length: int = 2048, projection: str = "countsketch", dim: int = 1024, seed: int = 0,
                     qs: Sequence[float] = (1.0, 2.0, float("inf")), clusters: int | None = None,
                     cluster_seed: int = 0, examples: int = 2, batch_size: int = 8,
                     cache: MetadataStore | str | Path | None | bool = True, store_scores: MetadataStore | None = None,
                     progress: Callable | None = None, hidden_progress: Callable | None = None):
    """Compare data sets under one proxy and projection (see `pipeline.compare.compare_sets`).

    >>> report = compare_datasets(["champ", "gsm.jsonl"], limit=30, params=r"model\\.layers\\.29\\.")
    >>> report.sets[0].g_vendi[1.0], report.coverage.exclusive

    `fields`: one mapping for every set or one per set. `seed` is the projection seed,
    `cluster_seed` the coverage clustering's. `store_scores`: also write every set's metrics
    as `scores` rows (scope "compare:<name>") into this metadata store.
    """
    from prismatic_assets.pipeline.compare import compare_sets, store_comparison
    from prismatic_assets.pipeline.datasets import load_sets

    sets = load_sets(sources, names=names, fields=fields, limit=limit)
    with cache_store(cache) as store:
        embedder = proxy_embedder(model=model, device=device, dtype=dtype, params=params, autocast=autocast,
                                  max_length=max_length, projection=projection, dim=dim, seed=seed)
        report = compare_sets(sets, embedder, store, qs=qs, clusters=clusters, cluster_seed=cluster_seed,
                              examples=examples, batch_size=batch_size, model=model,
                              gradient_progress=progress, hidden_progress=hidden_progress)
    if store_scores is not None:
        store_comparison(store_scores, report, sets)
    return report


def select_subset(source: str | Path, *, k: int, method: str = "greedy", seed: int = 0, q: float = 1.0,
                  clusters: int | None = None, out: str | Path | None = None,
                  fields: FieldMap | str | None = None, limit: int | None = None, model: str = PACKAGED_MODEL,
                  device: str = "cpu", dtype: str = "float32", params: str | None = None,
                  autocast: str | None = None, max_length: int = 2048, projection: str = "countsketch",
                  dim: int = 1024, projection_seed: int = 0, cache: MetadataStore | str | Path | None | bool = True,
                  progress: Callable | None = None, step_progress: Callable | None = None):
    """Pick k diverse samples of a data set (see `pipeline.select.select_from_set`); write them to `out`.

    >>> report = select_subset("data.jsonl", k=100, method="greedy", out="subset.jsonl")
    >>> report.g_vendi, report.random_mean, report.random_std
    """
    from prismatic_assets.pipeline.datasets import load_set
    from prismatic_assets.pipeline.select import check_request, select_from_set, write_subset

    loaded = load_set(source, fields=fields, limit=limit)
    check_request(loaded, k, method, q)
    with cache_store(cache) as store:
        embedder = proxy_embedder(model=model, device=device, dtype=dtype, params=params, autocast=autocast,
                                  max_length=max_length, projection=projection, dim=dim, seed=projection_seed)
        report = select_from_set(loaded, embedder, store, k=k, method=method, seed=seed, q=q, clusters=clusters,
                                 model=model, gradient_progress=progress, step_progress=step_progress)
    if out is not None:
        write_subset(report, out)
    return report
