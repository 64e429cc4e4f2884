"""Decontamination and deduplication of synthesized problems.

What it does:
- `NGramIndex` flags a text that shares a word n-gram (default n = 10, as in the paper)
  with any evaluation text, and says which benchmark (label) and which n-gram.
- `find_duplicates` flags candidates that repeat a pool problem or an earlier candidate of
  the same batch, exactly or after `normalize_text` (the `problem_key` hash).

What it does not: the paper's second stage (an LLM judging paraphrases), fuzzy or
embedding-based near-duplicate search, or deciding what to do with a hit (the caller
stores the match and its own accept/reject decision).

Tokens: `normalize_text` (Unicode NFKC, lower case, whitespace folded), then maximal runs
of letters and digits; everything else (punctuation, LaTeX backslashes and braces, ``_``)
separates tokens. So ``$\\frac{1}{2}$`` is the tokens ``frac 1 2`` and ``x^2+y^2`` is
``x 2 y 2``.

Short texts: a text with fewer than n tokens (but at least one) has no n-gram; it is
indexed and queried as one whole-text gram, so a short candidate is contaminated only by a
short evaluation text with exactly the same tokens. A short evaluation text is not
searched for inside longer candidates (that would flag every problem containing a common
phrase like "find x").

N-grams are stored as 64-bit hashes (a rolling hash over per-token BLAKE2b hashes) in a
sorted numpy array, 16 bytes per n-gram with its source, so 100k evaluation texts of ~60
words (~5M n-grams) take ~80 MB and ~10 s to index, and a query is a binary search. Hash
collisions (about 1e-6 over all queries of a large round) are ignored.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from prismatic_assets.core.samples import problem_key

__all__ = [
    "DuplicateMatch",
    "Match",
    "NGramIndex",
    "find_duplicates",
    "tokenize",
]

_TOKEN = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """The word tokens n-grams are made of (see the module docstring).

    Same tokens as splitting `normalize_text(text)`; its whitespace folding is skipped
    because whitespace only separates tokens anyway.
    """
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).lower())


def _grams(tokens: Sequence[str], n: int) -> list[str]:
    """Space-joined n-grams; the whole text when it is shorter than n."""
    if not tokens:
        return []
    if len(tokens) < n:
        return [" ".join(tokens)]
    return [" ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# Polynomial rolling hash over per-token hashes, mod 2^64 (numpy uint64 wraps silently).
_P = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication is a bijection mod 2^64
_SHORT_SALT = np.uint64(0xD6E8FEB86659FD93)  # keeps whole-text grams apart from n-grams


class _TokenHashCache(dict[str, int]):
    """token -> 64-bit BLAKE2b hash, computed on first use."""

    def __missing__(self, token: str) -> int:
        h = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")
        self[token] = h
        return h


class _GramHasher:
    """Hashes every n-gram (or whole-text gram) of a batch of token lists at once.

    Each distinct token gets a cached 64-bit BLAKE2b hash; an n-gram's hash is
    sum_k h(t_k) * P^(n-1-k) mod 2^64, computed for all windows of the batch with n
    vectorized multiply-adds.
    """

    def __init__(self) -> None:
        self._cache = _TokenHashCache()

    def _token_hashes(self, tokens: list[str]) -> np.ndarray:
        return np.fromiter(map(self._cache.__getitem__, tokens), dtype=np.uint64, count=len(tokens))

    def __call__(self, docs: Sequence[Sequence[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
        """(hashes, doc index), one entry per gram, in doc then position order."""
        lengths = np.array([len(d) for d in docs], dtype=np.int64)  # (docs,)
        flat = self._token_hashes([t for d in docs for t in d])  # (tokens,)
        ends = np.cumsum(lengths)
        doc_of = np.repeat(np.arange(len(docs)), lengths)  # (tokens,)
        hashes: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        windows = flat.size - n + 1
        if windows > 0:
            acc = np.zeros(windows, dtype=np.uint64)
            for k in range(n):
                acc = acc * _P + flat[k : k + windows]
            starts_doc = doc_of[:windows]
            valid = np.arange(windows) + n <= ends[starts_doc]  # window inside its doc
            hashes.append(acc[valid])
            owners.append(starts_doc[valid])
        for d in np.nonzero((lengths > 0) & (lengths < n))[0].tolist():
            seg = flat[ends[d] - lengths[d] : ends[d]]
            acc1 = np.zeros(1, dtype=np.uint64)
            for k in range(seg.size):
                acc1 = acc1 * _P + seg[k : k + 1]
            hashes.append(acc1 ^ _SHORT_SALT)
            owners.append(np.array([d], dtype=np.int64))
        if not hashes:
            return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
        return np.concatenate(hashes), np.concatenate(owners)


@dataclass(frozen=True)
class Match:
    """One n-gram shared with an evaluation text.

    label: the benchmark given to `NGramIndex.add`.
    ngram: the shared n-gram, as normalized tokens joined by spaces.
    eval_index: position of the evaluation text among all texts added to the index.
    """

    label: str
    ngram: str
    eval_index: int


class NGramIndex:
    """Word n-grams of evaluation texts, for contamination checks.

    >>> index = NGramIndex(n=3)
    >>> index.add(["What is the sum of 2 and 3?"], label="toy")
    >>> index.is_contaminated("Compute the sum of 2 and 5.").ngram
    'the sum of'
    """

    def __init__(self, n: int = 10) -> None:
        if n < 1:
            raise ValueError(f"n={n}: n-grams need n >= 1 (the paper uses 10)")
        self.n = n
        self._hasher = _GramHasher()
        self._labels: list[str] = []
        self._n_texts = 0
        self._pending_hashes: list[np.ndarray] = []
        self._pending_sources: list[np.ndarray] = []
        self._pending_labels: list[np.ndarray] = []
        self._hashes = np.empty(0, dtype=np.uint64)  # sorted
        self._sources = np.empty(0, dtype=np.uint32)  # eval text index per hash
        self._label_ids = np.empty(0, dtype=np.uint32)  # label id per hash

    def add(self, texts: Iterable[str], label: str) -> None:
        """Index the n-grams of `texts` under benchmark `label`."""
        if label not in self._labels:
            self._labels.append(label)
        label_id = self._labels.index(label)
        docs = [tokenize(t or "") for t in texts]
        hashes, owners = self._hasher(docs, self.n)
        base = self._n_texts
        self._n_texts += len(docs)
        if hashes.size:
            self._pending_hashes.append(hashes)
            self._pending_sources.append((owners + base).astype(np.uint32))
            self._pending_labels.append(np.full(hashes.size, label_id, dtype=np.uint32))

    def _finalize(self) -> None:
        if not self._pending_hashes:
            return
        hashes = np.concatenate([self._hashes, *self._pending_hashes])
        sources = np.concatenate([self._sources, *self._pending_sources])
        labels = np.concatenate([self._label_ids, *self._pending_labels])
        order = np.argsort(hashes, kind="stable")
        self._hashes, self._sources, self._label_ids = hashes[order], sources[order], labels[order]
        self._pending_hashes, self._pending_sources, self._pending_labels = [], [], []

    def __len__(self) -> int:
        """Number of indexed n-gram occurrences."""
        self._finalize()
        return int(self._hashes.size)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self._labels)

    @property
    def n_texts(self) -> int:
        return self._n_texts

    def overlaps(self, text: str) -> list[Match]:
        """Every distinct (n-gram, benchmark) pair `text` shares with the index, in the
        order the n-grams occur in `text`; one evaluation text is named per pair."""
        self._finalize()
        tokens = tokenize(text or "")
        grams = _grams(tokens, self.n)
        if not grams or self._hashes.size == 0:
            return []
        query, _ = self._hasher([tokens], self.n)  # (len(grams),), aligned with grams
        lo = np.searchsorted(self._hashes, query, side="left")
        hi = np.searchsorted(self._hashes, query, side="right")
        matches: list[Match] = []
        seen: set[tuple[str, int]] = set()
        for gram, a, b in zip(grams, lo.tolist(), hi.tolist()):
            if a == b:
                continue
            # One match per benchmark: the first evaluation text (in hash order) holding it.
            label_ids, first = np.unique(self._label_ids[a:b], return_index=True)
            for label_id, j in zip(label_ids.tolist(), first.tolist()):
                if (gram, label_id) not in seen:
                    seen.add((gram, label_id))
                    matches.append(Match(self._labels[label_id], gram, int(self._sources[a + j])))
        return matches

    def is_contaminated(self, text: str) -> Match | None:
        """The first overlap of `text` with the index, None if it has none."""
        found = self.overlaps(text)
        return found[0] if found else None

    def check(self, texts: Sequence[str]) -> list[Match | None]:
        """`is_contaminated` for each text."""
        return [self.is_contaminated(t) for t in texts]


@dataclass(frozen=True)
class DuplicateMatch:
    """Why a candidate is a duplicate.

    kind: "exact" (identical text) or "normalized" (same `problem_key`: equal after
        folding case, Unicode form and whitespace).
    source: "pool" (repeats a pool problem) or "batch" (repeats an earlier candidate).
    index: the index of the first copy in `pool_problems` or in `candidates`.
    pool_id: the pool id of the first copy when `pool_ids` was given (None otherwise).
    """

    kind: str
    source: str
    index: int
    pool_id: str | None = None


def find_duplicates(
    candidates: Sequence[str],
    pool_problems: Sequence[str],
    *,
    pool_ids: Sequence[str] | None = None,
) -> list[DuplicateMatch | None]:
    """For each candidate, the first copy it repeats, or None if it is new.

    The pool is checked before the batch and exact copies before normalized ones; within
    the batch the first copy is new and later copies are its duplicates.
    """
    if pool_ids is not None and len(pool_ids) != len(pool_problems):
        raise ValueError(
            f"pool_ids has {len(pool_ids)} ids but pool_problems has {len(pool_problems)} "
            "texts: pass one id per pool problem, in the same order"
        )
    pool_exact: dict[str, int] = {}
    pool_norm: dict[str, int] = {}
    for i, p in enumerate(pool_problems):
        pool_exact.setdefault(p, i)
        pool_norm.setdefault(problem_key(p), i)

    def pool_match(kind: str, i: int) -> DuplicateMatch:
        return DuplicateMatch(kind, "pool", i, pool_ids[i] if pool_ids is not None else None)

    batch_exact: dict[str, int] = {}
    batch_norm: dict[str, int] = {}
    out: list[DuplicateMatch | None] = []
    for j, c in enumerate(candidates):
        key = problem_key(c)
        if c in pool_exact:
            out.append(pool_match("exact", pool_exact[c]))
        elif key in pool_norm:
            out.append(pool_match("normalized", pool_norm[key]))
        elif c in batch_exact:
            out.append(DuplicateMatch("exact", "batch", batch_exact[c]))
        elif key in batch_norm:
            out.append(DuplicateMatch("normalized", "batch", batch_norm[key]))
        else:
            out.append(None)
        batch_exact.setdefault(c, j)
        batch_norm.setdefault(key, j)
    return out
