"""Parquet shards of embedding rows: how workers hand results to the metadata store.

A worker (a local loop or a Ray actor's driver-side consumer) writes each finished chunk
of results as one Parquet file in a shard folder, atomically (a temporary name in the same
folder, fsync, then a rename): a shard either exists whole or not at all, even after a
crash or a full disk. A write that fails for lack of space removes its temporary file and
raises `ShardDiskFull`, which says how many vectors the finished shards keep. The store
then loads a whole set of shards with one `INSERT ... SELECT FROM read_parquet([...])` in
one transaction (`MetadataStore.ingest_embedding_shards`), instead of a commit every few
samples, and the shards are deleted. A run that stops midway leaves its finished shards
behind; the next run ingests them first, so nothing paid for is computed twice.

The columns are those of the `embeddings` table (`EMBEDDING_SHARD_SCHEMA`).
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from prismatic_assets.store.store import StoreDiskFull

EMBEDDING_SHARD_SCHEMA = pa.schema([
    ("content_hash", pa.string()), ("embedding_key", pa.string()), ("model_fingerprint", pa.string()),
    ("projection_key", pa.string()), ("gradient_spec", pa.string()), ("dim", pa.int32()),
    ("vector", pa.list_(pa.float32())), ("grad_norm", pa.float64()), ("loss", pa.float64()),
    ("n_response_tokens", pa.int32()), ("truncated", pa.bool_()), ("seconds", pa.float64()),
    ("error", pa.string()), ("run_id", pa.string()),
])
SHARD_SUFFIX = ".parquet"
TEMP_SUFFIX = ".tmp"  # a shard being written: never read, removed by the next `remove`
#: errno values that mean "no room": ENOSPC, EDQUOT, and EFBIG (a file-size limit).
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "file too large")


class ShardDiskFull(StoreDiskFull):
    """A shard could not be written for lack of space; its partial file was removed and the
    finished shards (and the store) hold what they held."""


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and (exc.errno in _FULL_ERRNOS
                                         or any(t in str(exc).lower() for t in _FULL_TEXTS))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        """Write one shard atomically; returns its final path.

        Raises `ShardDiskFull` when the disk (or a quota) is full; no partial file is left.
        """
        if table.schema != EMBEDDING_SHARD_SCHEMA:
            table = table.cast(EMBEDDING_SHARD_SCHEMA)
        final = self.path / f"{uuid.uuid4().hex}{SHARD_SUFFIX}"
        tmp = final.with_name(final.name + TEMP_SUFFIX)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, tmp)
            _fsync(tmp)  # the data is on disk before the name says the shard is finished
            os.replace(tmp, final)
            _fsync(self.path)  # and so is the rename
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if _disk_full(exc):
                raise self._disk_full_error(exc, table.num_rows) from exc
            raise
        return final

    def _disk_full_error(self, exc: BaseException, n_rows: int) -> ShardDiskFull:
        finished = self.finished()
        safe = self.count_rows(finished)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return ShardDiskFull(
            f"gradient shard folder {self.path}: the disk is full ({first}) while writing a shard of {n_rows} "
            f"vectors; its partial file was removed. {safe} vectors are safe in {len(finished)} finished shard(s) "
            f"there: a rerun loads them and computes only the rest. Free space on that file system "
            f"(df -h {self.path}), or move the data directory, then re-run the step.")

    def finished(self) -> list[Path]:
        """Shards written completely (temporary files of a write in progress or cut short are ignored)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name.endswith(SHARD_SUFFIX) and p.is_file())

    @staticmethod
    def count_rows(shards: Sequence[Path]) -> int:
        """Rows (vectors) in finished shards, from their Parquet footers."""
        return sum(pq.read_metadata(p).num_rows for p in shards)

    def remove(self, shards: Sequence[Path]) -> None:
        for shard in shards:
            shard.unlink(missing_ok=True)
        for stale in self.path.glob(f"*{SHARD_SUFFIX}{TEMP_SUFFIX}") if self.path.is_dir() else []:
            stale.unlink(missing_ok=True)  # left by a writer that died mid-file
