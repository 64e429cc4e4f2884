"""Diversity metrics beside G-Vendi: embedding Vendi, n-gram diversity, cluster coverage.

The paper compares G-Vendi against cheaper metrics; these are the ones users ask for:

- **Embedding Vendi**: the Vendi score of the cosine kernel of one embedding per sample.
  The embedding is the mean-pooled last hidden state of the proxy model over the whole
  formatted sample (chat template: user turn = prompt, assistant turn = response; every
  token of the rendered conversation, prompt included), so it sees the same text the
  gradient sees, but through activations instead of the loss. The score goes through the
  d x d second moment, like G-Vendi (`gvendi.g_vendi`), never an N x N kernel.
- **distinct-n** (Li et al., 2016): distinct n-grams / all n-grams over the whole set,
  n-grams never crossing sample boundaries. Tokens: lowercased words (`\\w+`) and single
  punctuation marks, so "x+1" is three tokens.
- **compression ratio**: bytes of the set's text / bytes of its gzip (level 9). Higher
  means more redundant text, i.e. *less* diverse (Shaib et al., 2024).
- **coverage**: given one clustering of the union of several sets' gradient vectors, each
  set's share per cluster, the clusters only one set fills, each set's entropy over the
  shared clusters, and a per-cluster contrast that ranks the clusters telling the sets apart.

The text used by the n-gram metrics is prompt + "\\n" + response per sample.

This module computes; it does not load data, cache vectors or store scores (the pipeline
layer does).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from prismatic_assets.core.gvendi import GVendiResult, g_vendi

#: Bump when the pooling, formatting or truncation of hidden-state embeddings changes.
HIDDEN_STATE_VERSION = 1
#: Bump when the n-gram tokenizer or the compression changes.
TEXT_METRICS_VERSION = 1

_TOKEN = re.compile(r"\w+|[^\w\s]")


# -- embedding Vendi ---------------------------------------------------------------------
def embedding_vendi(embeddings, q: float = 1.0) -> GVendiResult:
    """Vendi score of the cosine kernel of (N, h) embeddings, via the (h, h) second moment.

    Rows are L2-normalized; zero or non-finite rows raise with their index (as in g_vendi).
    """
    return g_vendi(embeddings, q=q)


def hidden_state_key(model_fingerprint: str, max_length: int) -> str:
    """Cache key of mean-pooled hidden states: model weights, pooling version, token budget."""
    payload = json.dumps({"model": model_fingerprint, "kind": "mean_last_hidden_state",
                          "version": HIDDEN_STATE_VERSION, "max_length": int(max_length)}, sort_keys=True)
    return "hidden-" + hashlib.sha256(payload.encode()).hexdigest()[:26]


def format_sample_ids(tokenizer, prompt: str, response: str, max_length: int) -> list[int]:
    """Token ids of the whole chat-formatted sample (user = prompt, assistant = response), cut at max_length."""
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(conversation, tokenize=True)
    if hasattr(ids, "keys"):  # BatchEncoding
        ids = ids["input_ids"]
    return list(ids)[:max_length]


def mean_pooled_hidden_states(model, tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                              batch_size: int = 8, max_length: int = 1024,
                              progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, h) float32 mean over tokens of the proxy's last hidden state, one row per sample.

    Batches are right-padded and masked, so a row does not depend on its batch mates beyond
    float round-off. Samples are batched in length order to waste little on padding; rows
    come back in input order. Only the decoder runs (no LM head). `progress(done, total)`
    is called after each batch.
    """
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: pass one of each per sample")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
    n = len(prompts)
    encoded = [format_sample_ids(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    order = sorted(range(n), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    decoder = model.base_model  # LlamaModel for LlamaForCausalLM: hidden states without logits
    whole = decoder is model  # a model without a separate decoder module: ask for its hidden states
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: np.ndarray | None = None
    done = 0
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, :len(encoded[i])] = torch.tensor(encoded[i], dtype=torch.long)
                mask[r, :len(encoded[i])] = 1
            extra = {"output_hidden_states": True} if whole else {}
            result = decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False, **extra)
            hidden = result.hidden_states[-1] if whole else result.last_hidden_state  # (b, T, h)
            m = mask.to(device=device, dtype=torch.float32).unsqueeze(-1)  # (b, T, 1)
            pooled = (hidden.float() * m).sum(dim=1) / m.sum(dim=1)  # (b, h)
            pooled = pooled.cpu().numpy()
            if out is None:
                out = np.zeros((n, pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
            done += len(rows)
            if progress:
                progress(done, n)
    if out is None:
        return np.zeros((0, 0), dtype=np.float32)
    return out


# -- n-gram diversity --------------------------------------------------------------------
def ngram_tokens(text: str) -> list[str]:
    """Lowercased words and single punctuation marks: the tokens of distinct-n."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class DistinctN:
    n: int
    value: float  # unique / total; NaN when the texts hold no n-gram
    unique: int
    total: int
    n_texts: int


def distinct_ns(texts: Iterable[str], ns: Sequence[int] = (1, 2, 3)) -> dict[int, DistinctN]:
    """distinct-n for several n in one pass over the texts (each text is tokenized once).

    Each n-gram is kept as a 64-bit hash (numpy), not as a tuple of strings, so large sets
    fit in memory; collisions start to matter only near 4e9 distinct n-grams.
    """
    ns = tuple(ns)
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer (1 for unigrams), got {n!r}")
    chunks: dict[int, list[np.ndarray]] = {n: [] for n in ns}
    totals = {n: 0 for n in ns}
    n_texts = 0
    for text in texts:
        n_texts += 1
        tokens = ngram_tokens(text)
        for n in ns:
            grams = [hash(tuple(tokens[i:i + n])) for i in range(len(tokens) - n + 1)]
            totals[n] += len(grams)
            if grams:
                chunks[n].append(np.unique(np.array(grams, dtype=np.int64)))
            if len(chunks[n]) > 4096:  # fold, so memory follows the distinct n-grams, not the texts
                chunks[n] = [np.unique(np.concatenate(chunks[n]))]
    out = {}
    for n in ns:
        unique = int(np.unique(np.concatenate(chunks[n])).size) if chunks[n] else 0
        value = unique / totals[n] if totals[n] else float("nan")
        out[n] = DistinctN(n=n, value=value, unique=unique, total=totals[n], n_texts=n_texts)
    return out


def distinct_n(texts: Iterable[str], n: int) -> DistinctN:
    """Distinct n-grams over all n-grams of a set of texts (n-grams stay within one text)."""
    return distinct_ns(texts, (n,))[n]


@dataclass(frozen=True)
class CompressionRatio:
    value: float  # raw bytes / gzip bytes; NaN for empty text
    raw_bytes: int
    compressed_bytes: int
    n_texts: int


class _CountingSink(io.RawIOBase):
    """A write-only file that counts the bytes written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data) -> int:
        self.size += len(data)
        return len(data)


def compression_ratio(texts: Iterable[str]) -> CompressionRatio:
    """UTF-8 bytes of the texts joined by newlines over their gzip size (level 9, fixed mtime).

    Streamed: the joined text is never held in memory.
    """
    sink = _CountingSink()
    raw = n_texts = 0
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=9, mtime=0) as gz:
        for i, text in enumerate(texts):
            data = (text if i == 0 else "\n" + text).encode("utf-8")
            gz.write(data)
            raw += len(data)
            n_texts += 1
    if raw == 0:
        return CompressionRatio(float("nan"), 0, 0, n_texts)
    return CompressionRatio(raw / sink.size, raw, sink.size, n_texts)


def sample_text(prompt: str, response: str) -> str:
    """The text the n-gram metrics read for one sample."""
    return f"{prompt}\n{response}"


# -- coverage over shared clusters -------------------------------------------------------
@dataclass(frozen=True)
class Coverage:
    """How several sets spread over one clustering of their union.

    counts[s, c]: members of set s in cluster c. shares[s, c] = counts[s, c] / N_s (each
    set's rows sum to 1, so sets of different sizes compare). composition[s, c] =
    counts[s, c] / size of c (each non-empty cluster's column sums to 1). contrast[c] =
    max_s shares[s, c] - min_s shares[s, c]: how differently the sets use cluster c.
    """

    set_names: list[str]
    k: int
    counts: np.ndarray  # (S, K) int64
    shares: np.ndarray  # (S, K) float64
    composition: np.ndarray  # (S, K) float64, NaN for empty clusters
    sizes: np.ndarray  # (K,) int64
    contrast: np.ndarray  # (K,) float64
    exclusive: dict[str, list[int]] = field(default_factory=dict)  # set -> clusters only it fills
    entropy: dict[str, float] = field(default_factory=dict)  # set -> Shannon entropy (nats) over clusters

    def effective_clusters(self, name: str) -> float:
        """exp(entropy): how many clusters the set spreads over, evenly counted."""
        return math.exp(self.entropy[name])

    def distinguishing(self, top: int = 3) -> list[int]:
        """Non-empty clusters by decreasing contrast (ties: larger cluster first, then lower index)."""
        order = sorted((c for c in range(self.k) if self.sizes[c] > 0),
                       key=lambda c: (-self.contrast[c], -self.sizes[c], c))
        return order[:top]

    def as_dict(self) -> dict:
        return {"sets": self.set_names, "k": self.k, "sizes": self.sizes.tolist(),
                "counts": {s: self.counts[i].tolist() for i, s in enumerate(self.set_names)},
                "shares": {s: self.shares[i].round(6).tolist() for i, s in enumerate(self.set_names)},
                "contrast": self.contrast.round(6).tolist(), "exclusive": self.exclusive,
                "entropy": self.entropy,
                "effective_clusters": {s: self.effective_clusters(s) for s in self.set_names}}


def cluster_coverage(assignments, set_index, set_names: Sequence[str], k: int) -> Coverage:
    """Coverage of S sets over K shared clusters.

    assignments: (N,) cluster of each sample of the union; set_index: (N,) which set (0..S-1)
    each sample belongs to. A set with no sample is an error (its shares are undefined).
    """
    a = np.asarray(assignments)
    s = np.asarray(set_index)
    names = list(set_names)
    if a.ndim != 1 or s.shape != a.shape:
        raise ValueError(f"assignments {a.shape} and set_index {s.shape} must be 1-D arrays of the same length")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if a.size and (a.min() < 0 or a.max() >= k):
        raise ValueError(f"assignments must lie in [0, {k}), got [{a.min()}, {a.max()}]")
    if s.size and (s.min() < 0 or s.max() >= len(names)):
        raise ValueError(f"set_index must lie in [0, {len(names)}), got [{s.min()}, {s.max()}]")
    counts = np.zeros((len(names), int(k)), dtype=np.int64)
    np.add.at(counts, (s, a), 1)
    per_set = counts.sum(axis=1)  # (S,)
    empty = [names[i] for i in np.flatnonzero(per_set == 0)]
    if empty:
        raise ValueError(f"set(s) {empty} have no sample with a vector: coverage needs at least one each")
    shares = counts / per_set[:, None]
    sizes = counts.sum(axis=0)  # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        composition = np.where(sizes > 0, counts / np.maximum(sizes, 1), np.nan)
    contrast = shares.max(axis=0) - shares.min(axis=0)
    exclusive: dict[str, list[int]] = {name: [] for name in names}
    for c in np.flatnonzero(sizes > 0):
        holders = np.flatnonzero(counts[:, c] > 0)
        if len(holders) == 1 and len(names) > 1:
            exclusive[names[holders[0]]].append(int(c))
    entropy = {}
    for i, name in enumerate(names):
        p = shares[i][shares[i] > 0]
        entropy[name] = float(-(p * np.log(p)).sum())
    return Coverage(set_names=names, k=int(k), counts=counts, shares=shares, composition=composition,
                    sizes=sizes, contrast=contrast, exclusive=exclusive, entropy=entropy)


# -- 2-D map -----------------------------------------------------------------------------
def pca_2d(vectors, batch_size: int = 65536) -> np.ndarray:
    """(N, 2) coordinates on the two leading principal axes (mean-centred), via the d x d covariance."""
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, d) array, got shape {x.shape}")
    n, d = x.shape
    mean = x.mean(axis=0, dtype=np.float64)  # (d,)
    cov = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, batch_size):
        b = x[start:start + batch_size].astype(np.float64) - mean
        cov += b.T @ b
    cov /= n
    _, vecs = np.linalg.eigh(cov)  # ascending
    axes = vecs[:, ::-1][:, :2]  # (d, 2)
    # eigh's sign is arbitrary: make the largest-magnitude loading positive, so maps are reproducible
    # (eigenvectors are unit vectors: that loading is never 0).
    cols = np.arange(axes.shape[1])  # 2, or 1 when d = 1
    axes = axes * np.sign(axes[np.abs(axes).argmax(axis=0), cols])
    if axes.shape[1] < 2:  # d = 1: the second coordinate is 0
        axes = np.hstack([axes, np.zeros((d, 2 - axes.shape[1]))])
    return ((x.astype(np.float64) - mean) @ axes).astype(np.float32)
