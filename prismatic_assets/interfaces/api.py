"""Score, compare and select data sets by gradient diversity, without Dagster.

    >>> from prismatic_assets.interfaces.api import score_dataset
    >>> result = score_dataset("data.jsonl", model="Qwen/Qwen2.5-0.5B-Instruct", device="cuda")
    >>> result.g_vendi, result.n

Vectors are cached in a DuckDB file (~/.cache/prismatic/score-cache.duckdb by default),
keyed by sample text, model fingerprint, projection and gradient settings: scoring the same
file again, or a file that shares samples with it, computes only what is new.

Every default is the profile default of the same setting (`infra/config.py`): `max_length`
is `proxy.max_length`, `dim` is `projection.dim`, `projection_seed` is `projection.seed`,
`cluster_seed` is `compare.cluster_seed`, and so on, so the API, the CLI and the Dagster
assets share cached vectors when nobody changes a setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.records import FieldMap
from prismatic_assets.core.samples import Rejection, Sample
from prismatic_assets.core.selection import DEFAULT_METHOD, DEFAULT_SEED
from prismatic_assets.infra.config import (
    Autocast,
    CompareConfig,
    ComputeConfig,
    Dtype,
    ProjectionConfig,
    ProjectionKind,
    ProxyConfig,
    ScoreConfig,
)
from prismatic_assets.pipeline.compare import ComparisonReport
from prismatic_assets.pipeline.datasets import Cache, cache_store, set_vectors
from prismatic_assets.pipeline.embedder import LocalEmbedder, build_embedder
from prismatic_assets.pipeline.embeddings import Progress
from prismatic_assets.pipeline.scores import score_pool
from prismatic_assets.pipeline.select import SubsetReport
from prismatic_assets.store.store import MetadataStore

#: The defaults of every option below: the config's own (one home per default).
PROXY, PROJECTION, SCORE = ProxyConfig(), ProjectionConfig(), ScoreConfig()
COMPARE, COMPUTE = CompareConfig(), ComputeConfig()
StepProgress = Callable[[int, int], None]


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


def proxy_embedder(*, model: str = PROXY.model, device: str = PROXY.device, dtype: Dtype = PROXY.dtype,
                   params: str | None = PROXY.params, autocast: Autocast | None = PROXY.autocast,
                   max_length: int = PROXY.max_length, projection: ProjectionKind = PROJECTION.kind,
                   dim: int = PROJECTION.dim, projection_seed: int = PROJECTION.seed,
                   trust_remote_code: bool = PROXY.trust_remote_code) -> LocalEmbedder:
    """The proxy loaded in this process with these gradient and projection settings.

    A setting outside its allowed values is a ValueError naming it (the config's validation)."""
    return build_embedder(
        ProxyConfig(model=model, device=device, dtype=dtype, params=params, autocast=autocast, max_length=max_length,
                    trust_remote_code=trust_remote_code),
        ProjectionConfig(kind=projection, dim=dim, seed=projection_seed))


def score_samples(samples: Sequence[Sample], *, model: str = PROXY.model, device: str = PROXY.device,
                  dtype: Dtype = PROXY.dtype, params: str | None = PROXY.params,
                  autocast: Autocast | None = PROXY.autocast, max_length: int = PROXY.max_length,
                  projection: ProjectionKind = PROJECTION.kind, dim: int = PROJECTION.dim,
                  projection_seed: int = PROJECTION.seed, q: float = SCORE.q, cache: Cache = True,
                  progress: Progress | None = None, rejections: Sequence[Rejection] = (),
                  trust_remote_code: bool = PROXY.trust_remote_code) -> DatasetScore:
    """G-Vendi of in-memory samples. `cache`: True (the shared cache), False, a path or a store."""
    started = time.perf_counter()
    with cache_store(cache) as store:
        embedder = proxy_embedder(model=model, device=device, dtype=dtype, params=params, autocast=autocast,
                                  max_length=max_length, projection=projection, dim=dim,
                                  projection_seed=projection_seed, trust_remote_code=trust_remote_code)
        report, pool = set_vectors(samples, embedder, store, progress=progress)
        result = score_pool(None, pool, q, report.embedding_key, scope="api")
    return DatasetScore(
        g_vendi=result.score, q=q, n=result.n, dim=result.dim, model=model,
        model_fingerprint=embedder.model_fingerprint, projection=embedder.projection_key,
        embedding_key=report.embedding_key, n_loaded=len(samples), n_rejected=len(rejections),
        n_cached=report.n_cached, n_computed=report.n_computed, seconds=time.perf_counter() - started,
        errors=pool.excluded, rejections=list(rejections))


def score_dataset(source: str | Path, *, fields: FieldMap | str | None = None, limit: int | None = None,
                  model: str = PROXY.model, device: str = PROXY.device, dtype: Dtype = PROXY.dtype,
                  params: str | None = PROXY.params, autocast: Autocast | None = PROXY.autocast,
                  max_length: int = PROXY.max_length, projection: ProjectionKind = PROJECTION.kind,
                  dim: int = PROJECTION.dim, projection_seed: int = PROJECTION.seed, q: float = SCORE.q,
                  cache: Cache = True, progress: Progress | None = None,
                  trust_remote_code: bool = PROXY.trust_remote_code) -> DatasetScore:
    """G-Vendi of a JSONL/Parquet file, "champ", or "hf:owner/name[:split]" (see `score_samples`)."""
    loaded = load_samples(str(source), fields=FieldMap.parse(fields) if isinstance(fields, str) else fields,
                          limit=limit)
    return score_samples(loaded.samples, rejections=loaded.rejections, model=model, device=device, dtype=dtype,
                         params=params, autocast=autocast, max_length=max_length, projection=projection, dim=dim,
                         projection_seed=projection_seed, q=q, cache=cache, progress=progress,
                         trust_remote_code=trust_remote_code)


def compare_datasets(sources: Sequence[str | Path], *, names: Sequence[str] | None = None,
                     fields: FieldMap | str | Sequence[FieldMap | str | None] | None = None,
                     limit: int | None = None, model: str = PROXY.model, device: str = PROXY.device,
                     dtype: Dtype = PROXY.dtype, params: str | None = PROXY.params,
                     autocast: Autocast | None = PROXY.autocast, max_length: int = PROXY.max_length,
                     projection: ProjectionKind = PROJECTION.kind, dim: int = PROJECTION.dim,
                     projection_seed: int = PROJECTION.seed, qs: Sequence[float] = COMPARE.qs,
                     clusters: int | None = COMPARE.clusters, cluster_seed: int = COMPARE.cluster_seed,
                     examples: int = COMPARE.examples, batch_size: int = COMPUTE.batch_size, cache: Cache = True,
                     store_scores: MetadataStore | None = None, progress: Progress | None = None,
                     hidden_progress: StepProgress | None = None,
                     trust_remote_code: bool = PROXY.trust_remote_code) -> ComparisonReport:
    """Compare data sets under one proxy and projection (see `pipeline.compare.compare_sets`).

    >>> report = compare_datasets(["champ", "gsm.jsonl"], limit=30, params=r"model\\.layers\\.29\\.")
    >>> report.sets[0].g_vendi[1.0], report.coverage.exclusive

    `fields`: one mapping for every set or one per set. `store_scores`: also write every
    set's metrics as `scores` rows (scope "compare:<name>") into this metadata store.
    """
    from prismatic_assets.pipeline.compare import compare_sets, store_comparison
    from prismatic_assets.pipeline.datasets import load_sets

    sets = load_sets(sources, names=names, fields=fields, limit=limit)
    with cache_store(cache) as store:
        embedder = proxy_embedder(model=model, device=device, dtype=dtype, params=params, autocast=autocast,
                                  max_length=max_length, projection=projection, dim=dim,
                                  projection_seed=projection_seed, trust_remote_code=trust_remote_code)
        report = compare_sets(sets, embedder, store, qs=qs, clusters=clusters, cluster_seed=cluster_seed,
                              examples=examples, batch_size=batch_size, model=model,
                              gradient_progress=progress, hidden_progress=hidden_progress)
    if store_scores is not None:
        store_comparison(store_scores, report, sets)
    return report


def select_subset(source: str | Path, *, k: int, method: str = DEFAULT_METHOD,
                  selection_seed: int = DEFAULT_SEED,
                  q: float = SCORE.q, clusters: int | None = None, out: str | Path | None = None,
                  fields: FieldMap | str | None = None, limit: int | None = None, model: str = PROXY.model,
                  device: str = PROXY.device, dtype: Dtype = PROXY.dtype, params: str | None = PROXY.params,
                  autocast: Autocast | None = PROXY.autocast, max_length: int = PROXY.max_length,
                  projection: ProjectionKind = PROJECTION.kind, dim: int = PROJECTION.dim,
                  projection_seed: int = PROJECTION.seed, cache: Cache = True, progress: Progress | None = None,
                  step_progress: StepProgress | None = None,
                  trust_remote_code: bool = PROXY.trust_remote_code) -> SubsetReport:
    """Pick k diverse samples of a data set (see `pipeline.select.select_from_set`); write them to `out`.

    `selection_seed` seeds the method (greedy's first pick, cluster-balanced's clustering and
    draws, random's draw) and the random subsets it is compared with.

    >>> report = select_subset("data.jsonl", k=100, method="greedy", out="subset.jsonl")
    >>> report.g_vendi, report.random_mean, report.random_std
    """
    from prismatic_assets.pipeline.datasets import load_set
    from prismatic_assets.pipeline.select import check_request, select_from_set, write_subset

    loaded = load_set(source, fields=fields, limit=limit)
    check_request(loaded, k, method, q)
    with cache_store(cache) as store:
        embedder = proxy_embedder(model=model, device=device, dtype=dtype, params=params, autocast=autocast,
                                  max_length=max_length, projection=projection, dim=dim,
                                  projection_seed=projection_seed, trust_remote_code=trust_remote_code)
        report = select_from_set(loaded, embedder, store, k=k, method=method, seed=selection_seed, q=q,
                                 clusters=clusters, model=model, gradient_progress=progress,
                                 step_progress=step_progress)
    if out is not None:
        write_subset(report, out)
    return report
