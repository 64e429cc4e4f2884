"""Baseline diversity metrics beside G-Vendi: compute, cache and store them.

`record_baselines` writes one `scores` row per metric for a scored pool (the seed pool, a
round's pool), so users can check the paper's claim that G-Vendi tracks generalization
better than these on their own data:

    metric             value                                   q     embedding_key
    embedding_vendi    Vendi of mean-pooled last hidden states  1     hidden-... (model, pooling)
    distinct_1/2/3     distinct n-grams / all n-grams          NaN   text-v1
    compression_ratio  text bytes / gzip bytes (higher = more redundant)  NaN  text-v1

Hidden-state embeddings come from the embedder's `hidden_chunks` (in this process or on
the Ray workers, pipeline/embedder.py) and are cached in the embeddings table like gradient
vectors, under their own key (model fingerprint, pooling version, token budget), so a round
recomputes only its new samples. Metrics without a Renyi order store q and entropy as NaN.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from prismatic_assets.core.diversity import (
    TEXT_METRICS_VERSION,
    compression_ratio,
    distinct_ns,
    embedding_vendi,
    hidden_state_key,
    sample_text,
)
from prismatic_assets.core.ids import digest
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import ComputeConfig
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.store.store import EmbeddingRow, MetadataStore

#: embedding_key of the text metrics' score rows (they read text, not vectors).
TEXT_METRICS_KEY = f"text-v{TEXT_METRICS_VERSION}"
BASELINE_METRICS = ("embedding_vendi", "distinct_1", "distinct_2", "distinct_3", "compression_ratio")

StepProgress = Callable[[int, int], None]  # (done, total)
#: Samples per forward pass of the hidden-state pass: the gradient batch size's default.
BATCH_SIZE = ComputeConfig().batch_size


@dataclass
class HiddenVectors:
    """Mean-pooled hidden states of some samples, read back from the cache."""

    key: str
    dim: int
    sample_ids: list[str]  # with a vector, in input order
    vectors: np.ndarray  # (n, h) unit rows
    excluded: dict[str, str]  # sample_id -> reason
    n_cached: int = 0
    n_computed: int = 0


def hidden_vectors(samples: Sequence[Sample], embedder: Embedder, store: MetadataStore, *,
                   max_length: int | None = None, batch_size: int = BATCH_SIZE, run_id: str | None = None,
                   progress: StepProgress | None = None) -> HiddenVectors:
    """Mean-pooled last hidden states of the proxy (`embedder.hidden_chunks`), computed where missing.

    Written to the store chunk by chunk as the embedder returns them, so an interrupted run
    keeps its work. max_length defaults to the embedder's gradient token budget.
    """
    max_length = int(max_length or embedder.gradient.max_length)
    key = hidden_state_key(embedder.model_fingerprint, max_length)
    dim = embedder.hidden_dim
    hashes = [s.content_hash for s in samples]
    cached = store.cached_hashes(hashes, key)
    todo, seen = [], set()
    for s in samples:
        if s.content_hash not in cached and s.content_hash not in seen:
            seen.add(s.content_hash)
            todo.append(s)
    spec = {"kind": "mean_last_hidden_state", "text": "chat-formatted prompt and response",
            "max_length": max_length}
    done = 0
    began = time.perf_counter()
    for part, pooled in embedder.hidden_chunks(todo, max_length=max_length, batch_size=batch_size):  # (n, h)
        seconds = (time.perf_counter() - began) / max(len(part), 1)
        rows = []
        for sample, vector in zip(part, pooled, strict=True):
            norm = float(np.linalg.norm(vector.astype(np.float64)))
            error = None
            if not np.isfinite(vector).all():
                error = "non-finite hidden state"
            elif norm == 0.0:
                error = "zero hidden state"
            rows.append(EmbeddingRow(
                content_hash=sample.content_hash, embedding_key=key, model_fingerprint=embedder.model_fingerprint,
                projection_key="none", gradient_spec=spec, dim=dim,
                vector=None if error else (vector / norm).astype(np.float32), grad_norm=norm, loss=float("nan"),
                n_response_tokens=None, truncated=None, seconds=seconds, error=error, run_id=run_id))
        store.put_embeddings(rows)
        done += len(part)
        began = time.perf_counter()
        if progress:
            progress(done, len(todo))
    valid, matrix, reasons = store.load_vectors(hashes, key, dim)
    return HiddenVectors(key=key, dim=dim, sample_ids=[s.sample_id for s, ok in zip(samples, valid) if ok],
                         vectors=matrix, excluded={samples[i].sample_id: r for i, r in reasons.items()},
                         n_cached=len(samples) - len(todo), n_computed=len(todo))


@dataclass(frozen=True)
class MetricValue:
    """One baseline metric of one set: the value, how many samples it read, and its details."""

    metric: str
    value: float
    n: int
    q: float = float("nan")
    dim: int = 0
    n_excluded: int = 0
    key: str = TEXT_METRICS_KEY
    details: dict = field(default_factory=dict)

    @property
    def entropy(self) -> float:
        return math.log(self.value) if not math.isnan(self.q) and self.value > 0 else float("nan")


#: Text metrics read at most this many samples (a seeded random sample of larger sets).
MAX_TEXTS = 20_000


def text_metrics(samples: Sequence[Sample], max_texts: int | None = MAX_TEXTS, seed: int = 0) -> list[MetricValue]:
    """distinct-1/2/3 and the compression ratio of the samples' prompt + response texts.

    Sets larger than `max_texts` are read through a seeded random sample of that size (N in
    the result says how many were read): tokenizing a million samples in Python takes long,
    and distinct-n falls with set size anyway, so equal-size samples compare better.
    """
    chosen = list(samples)
    sampled_from = None
    if max_texts is not None and len(chosen) > max_texts:
        rows = np.sort(np.random.default_rng(seed).choice(len(chosen), size=max_texts, replace=False))
        sampled_from, chosen = len(chosen), [chosen[i] for i in rows]
    texts = [sample_text(s.prompt, s.response) for s in chosen]
    extra = {"sampled_from": sampled_from, "sample_seed": seed} if sampled_from else {}
    out = []
    for n, d in distinct_ns(texts, (1, 2, 3)).items():
        out.append(MetricValue(f"distinct_{n}", d.value, len(texts),
                               details={"ngram": n, "unique": d.unique, "total": d.total,
                                        "tokens": "lowercased words and punctuation marks", **extra}))
    c = compression_ratio(texts)
    out.append(MetricValue("compression_ratio", c.value, len(texts),
                           details={"raw_bytes": c.raw_bytes, "compressed_bytes": c.compressed_bytes,
                                    "codec": "gzip level 9", "reading": "higher = more redundant", **extra}))
    return out


def embedding_metric(hidden: HiddenVectors, q: float = 1.0) -> MetricValue | None:
    """Embedding Vendi of cached hidden states; None when no sample has one."""
    if not hidden.sample_ids:
        return None
    result = embedding_vendi(hidden.vectors, q=q)
    return MetricValue("embedding_vendi", result.score, result.n, q=float(q), dim=result.dim,
                       n_excluded=len(hidden.excluded), key=hidden.key,
                       details={"pooling": "mean of the last hidden state over the chat-formatted sample"})


def store_metric(store: MetadataStore, metric: MetricValue, *, scope: str, member_ids: Sequence[str],
                 run_id: str | None = None) -> str:
    """Replace the `scores` row of (scope, metric, q, members, key); returns its score_id."""
    score_id = digest({"scope": scope, "metric": metric.metric, "q": None if math.isnan(metric.q) else metric.q,
                       "members": list(member_ids), "key": metric.key})
    store.replace_score(score_id=score_id, scope=scope, metric=metric.metric, q=metric.q, value=metric.value,
                        entropy=metric.entropy, n=metric.n, dim=metric.dim, n_excluded=metric.n_excluded,
                        embedding_key=metric.key, config=metric.details, run_id=run_id)
    return score_id


def record_baselines(store: MetadataStore, samples: Sequence[Sample], *, scope: str, embedder: Embedder,
                     run_id: str | None = None, batch_size: int = BATCH_SIZE, max_length: int | None = None,
                     progress: StepProgress | None = None) -> dict[str, float]:
    """Compute every baseline metric of `samples` and store each as a `scores` row of `scope`.

    Use the same scope as the G-Vendi row it sits beside ("seed", "round:3:after", ...).
    Metrics that are undefined (NaN, e.g. distinct-3 of one-word texts) are not stored.
    Returns {metric: value}.
    """
    if not samples:
        raise ValueError(f"no samples for the baselines of scope {scope!r}: pass the scored pool")
    hidden = hidden_vectors(samples, embedder, store, max_length=max_length, batch_size=batch_size, run_id=run_id,
                            progress=progress)
    metrics = text_metrics(samples)
    emb = embedding_metric(hidden)
    if emb is not None:
        metrics.insert(0, emb)
    ids = [s.sample_id for s in samples]
    values = {}
    for m in metrics:
        if math.isnan(m.value):
            continue
        store_metric(store, m, scope=scope, member_ids=hidden.sample_ids if m is emb else ids, run_id=run_id)
        values[m.metric] = m.value
    return values
