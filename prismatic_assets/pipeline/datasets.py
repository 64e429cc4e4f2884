"""Data sets given by name on the command line or in the API: load, embed, get their vectors.

`prismatic score`, `compare` and `select` (and `api.score_dataset`, `compare_datasets`,
`select_subset`) share these steps, so they load rows with the same validation and the
same errors (file, row, reason), and their gradient vectors come from the same cache.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from prismatic_assets.core.champ import CHAMP_SOURCE
from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.records import FieldMap
from prismatic_assets.core.samples import Rejection, Sample
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import (
    EmbeddingReport,
    PoolVectors,
    Progress,
    default_cache_store,
    embed_samples,
    pool_vectors,
)
from prismatic_assets.store.store import MetadataStore

Cache = MetadataStore | str | Path | None | bool


@contextmanager
def cache_store(cache: Cache = True) -> Iterator[MetadataStore]:
    """The store vectors are cached in: True = the shared cache (~/.cache/prismatic), False or
    None = a scratch file deleted afterwards, a path, or an open MetadataStore."""
    with tempfile.TemporaryDirectory(prefix="prismatic-") as tmp:
        if cache is True:
            yield default_cache_store()
        elif cache is False or cache is None:
            yield MetadataStore(Path(tmp) / "scratch.duckdb")
        elif isinstance(cache, MetadataStore):
            yield cache
        else:
            yield MetadataStore(cache)


@dataclass(frozen=True)
class LoadedSet:
    """One input data set after row validation."""

    name: str  # short label in reports: "champ", a file stem, an hf name
    source: str  # what the user wrote
    samples: list[Sample]
    rejections: list[Rejection]


def default_name(source: str) -> str:
    if source == CHAMP_SOURCE:
        return CHAMP_SOURCE
    if source.startswith("hf:"):
        return source[3:].split(":")[0].split("/")[-1]
    return Path(source).stem or source


def _fields(fields: FieldMap | str | None) -> FieldMap | None:
    return FieldMap.parse(fields) if isinstance(fields, str) else fields


def load_set(source: str | Path, *, name: str | None = None, fields: FieldMap | str | None = None,
             limit: int | None = None) -> LoadedSet:
    """Load and validate one data set (`core.loaders.load_samples`: raises on a bad whole input,
    keeps bad rows as rejections with file, line and reason)."""
    loaded = load_samples(str(source), fields=_fields(fields), limit=limit)
    return LoadedSet(name or default_name(str(source)), str(source), list(loaded.samples), list(loaded.rejections))


def load_sets(sources: Sequence[str | Path], *, names: Sequence[str] | None = None,
              fields: FieldMap | str | Sequence[FieldMap | str | None] | None = None,
              limit: int | None = None) -> list[LoadedSet]:
    """Load several sets. `fields`: one mapping for all, or one per set (None keeps the default).
    Names default to the file stem; repeated names get a numeric suffix."""
    paths = [str(s) for s in sources]
    if names is not None and len(names) != len(sources):
        raise ValueError(f"{len(names)} names for {len(sources)} data sets: give one name per data set")
    if isinstance(fields, (list, tuple)):
        if len(fields) != len(sources):
            raise ValueError(f"{len(fields)} field mappings for {len(sources)} data sets: give one for all "
                             "or one per data set")
        per_set = list(fields)
    else:
        per_set = [fields] * len(sources)
    chosen = list(names) if names is not None else [default_name(s) for s in paths]
    seen: dict[str, int] = {}
    unique = []
    for label in chosen:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    if names is not None and len(set(unique)) != len(chosen):
        raise ValueError(f"names {list(names)} repeat: give every data set its own name")
    return [load_set(s, name=n, fields=f, limit=limit) for s, n, f in zip(paths, unique, per_set)]


def set_vectors(samples: Sequence[Sample], embedder: Embedder, store: MetadataStore,
                run_id: str | None = None, progress: Progress | None = None) -> tuple[EmbeddingReport, PoolVectors]:
    """Compute the missing gradient vectors of `samples` into the store, then read them all back."""
    report = embed_samples(samples, embedder, store, run_id=run_id, progress=progress)
    return report, pool_vectors(store, samples, report.embedding_key, report.dim)
