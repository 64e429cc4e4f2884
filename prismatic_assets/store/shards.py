"""Parquet shards of embedding rows: how workers hand results to the metadata store.

A worker (a local loop or a Ray actor's driver-side consumer) writes each finished chunk
of results as one Parquet file in a shard folder, atomically (a temporary name, then a
rename): a shard either exists whole or not at all. The store then loads a whole set of
shards with one `INSERT ... SELECT FROM read_parquet([...])` in one transaction
(`MetadataStore.ingest_embedding_shards`), instead of a commit every few samples, and the
shards are deleted. A run that stops midway leaves its finished shards behind; the next
run ingests them first, so nothing paid for is computed twice.

The columns are those of the `embeddings` table (`EMBEDDING_SHARD_SCHEMA`).
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EMBEDDING_SHARD_SCHEMA = pa.schema([
    ("content_hash", pa.string()), ("embedding_key", pa.string()), ("model_fingerprint", pa.string()),
    ("projection_key", pa.string()), ("gradient_spec", pa.string()), ("dim", pa.int32()),
    ("vector", pa.list_(pa.float32())), ("grad_norm", pa.float64()), ("loss", pa.float64()),
    ("n_response_tokens", pa.int32()), ("truncated", pa.bool_()), ("seconds", pa.float64()),
    ("error", pa.string()), ("run_id", pa.string()),
])
SHARD_SUFFIX = ".parquet"


def vectors_to_arrow(vectors: Sequence[np.ndarray | None], dim: int) -> pa.Array:
    """A list<float32> column from (d,) vectors or None, without a Python list per value."""
    valid = np.array([v is not None for v in vectors], dtype=bool)
    flat = np.zeros((int(valid.sum()), dim), dtype=np.float32)
    if valid.any():
        flat[:] = np.stack([np.asarray(v, dtype=np.float32) for v in vectors if v is not None])
    offsets = np.zeros(len(vectors) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum(valid * dim)
    mask = pa.array(~valid) if not valid.all() else None
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat.reshape(-1)), mask=mask)


def embedding_rows_table(rows) -> pa.Table:
    """An Arrow table of `EmbeddingRow`s in the shard schema."""
    dim = rows[0].dim if rows else 0
    return pa.table({
        "content_hash": [r.content_hash for r in rows],
        "embedding_key": [r.embedding_key for r in rows],
        "model_fingerprint": [r.model_fingerprint for r in rows],
        "projection_key": [r.projection_key for r in rows],
        "gradient_spec": [json.dumps(r.gradient_spec, sort_keys=True) for r in rows],
        "dim": pa.array([r.dim for r in rows], type=pa.int32()),
        "vector": vectors_to_arrow([r.vector for r in rows], dim),
        "grad_norm": pa.array([r.grad_norm for r in rows], type=pa.float64()),
        "loss": pa.array([r.loss for r in rows], type=pa.float64()),
        "n_response_tokens": pa.array([r.n_response_tokens for r in rows], type=pa.int32()),
        "truncated": pa.array([r.truncated for r in rows], type=pa.bool_()),
        "seconds": pa.array([r.seconds for r in rows], type=pa.float64()),
        "error": pa.array([r.error for r in rows], type=pa.string()),
        "run_id": pa.array([r.run_id for r in rows], type=pa.string()),
    }, schema=EMBEDDING_SHARD_SCHEMA)


class ShardFolder:
    """One folder of finished shards (typically one per embedding key)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, table: pa.Table) -> Path:
        """Write one shard atomically; returns its final path."""
        if table.schema != EMBEDDING_SHARD_SCHEMA:
            table = table.cast(EMBEDDING_SHARD_SCHEMA)
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.path / f"{uuid.uuid4().hex}{SHARD_SUFFIX}"
        tmp = final.with_name(final.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)
        return final

    def finished(self) -> list[Path]:
        """Shards written completely (half-written temporary files are ignored)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name.endswith(SHARD_SUFFIX))

    def remove(self, shards: Sequence[Path]) -> None:
        for shard in shards:
            shard.unlink(missing_ok=True)
        for stale in self.path.glob(f"*{SHARD_SUFFIX}.tmp") if self.path.is_dir() else []:
            stale.unlink(missing_ok=True)  # left by a writer that died mid-file
