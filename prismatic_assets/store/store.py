"""DuckDB metadata store: samples, rejections, embedding cache, clusterings and scores.

DuckDB lets one process hold a database file at a time (readers included), and Dagster's
multiprocess executor runs steps in parallel processes. So the store never keeps a
connection open: every operation opens one, does its work in a single transaction and
closes it, and an open that meets another process's lock waits and retries (bounded by
`lock_timeout`). Writes replace their own rows (delete + insert in one transaction), so
re-running a step never duplicates data.

This module knows tables and rows; it does not compute anything.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, cast

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa

from prismatic_assets.core.samples import Rejection, Sample, problem_key
from prismatic_assets.store import schema as S


class StoreLockTimeout(TimeoutError):
    pass


class StoreError(RuntimeError):
    """The store file cannot be used as it is: damaged, not a store, from another schema, or the disk is full.

    The message names the file and what to do; the DuckDB error is quoted in it.
    """


class StoreDiskFull(StoreError):
    """A write failed for lack of space; the transaction rolled back, the store holds what it held."""


class StoreBusy(StoreError):
    """Another process (or thread) holds the store's lock for this work; nothing was done."""


#: DuckDB error texts that mean the file itself is unusable (not a bug in a query).
_DAMAGE_MARKERS = ("corrupt database file", "could not read enough bytes", "not a valid duckdb database file",
                   "is a directory", "does not match stored checksum", "database has been invalidated")
_FULL_MARKERS = ("no space left on device", "file too large", "disk quota exceeded")

#: Never fetch or load DuckDB extensions behind the user's back: a foreign file (SQLite)
#: would otherwise make DuckDB download an extension to read it.
_CONNECT_CONFIG: dict[str, str | bool | int | float | list[str]] = {"autoinstall_known_extensions": False,
                                                                     "autoload_known_extensions": False}


#: DuckDB's memory limit for bulk vector work: loading gradient shards and reading every
#: vector of a pool. Its default (80% of RAM) lets the buffer pool keep every block an
#: insert wrote and lets a join hold all vectors in its hash table, so the process grows with
#: N; under this limit DuckDB spills and evicts instead. An insert of 2M vectors (d = 256, shards
#: of 50k rows) peaks at 0.83 GB under it, as 200k do; 256 MB was too little for 1M.
BULK_MEMORY_LIMIT = "512MB"


@contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.begin()
    try:
        yield con
    except BaseException:
        con.rollback()
        raise
    con.commit()


@contextmanager
def _memory_limit(con: duckdb.DuckDBPyConnection, limit: str) -> Iterator[None]:
    """DuckDB's memory_limit set to `limit` for a block, then back to what it was (exactly, when
    that was DuckDB's default; the setting reads back rounded otherwise)."""
    setting = "SELECT current_setting('memory_limit')"
    before = con.execute(setting).fetchall()[0][0]
    con.execute("RESET memory_limit")
    was_default = con.execute(setting).fetchall()[0][0] == before
    con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        con.execute("RESET memory_limit" if was_default else f"SET memory_limit = '{before}'")


def _describe_file(path: Path) -> str:
    """What a file that is not a DuckDB database looks like, from its first bytes."""
    try:
        if path.is_dir():
            return "a directory"
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not head:
        return "an empty file"
    if head.startswith(b"SQLite format 3"):
        return "an SQLite database"
    if head.startswith(b"PAR1"):
        return "a Parquet file"
    if len(head) >= 12 and head[8:12] == b"DUCK":
        return "a DuckDB database"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"a text file (starting {head.decode('ascii', 'replace')!r})"
    return "not a DuckDB database"


def store_error(path: Path, exc: BaseException, opening: bool = False) -> StoreError | None:
    """The StoreError a DuckDB (or OS) error means for the store at `path`, None for other errors.

    opening: the error came from opening the file, so any failure on a file that is not a
    DuckDB database means a foreign file (DuckDB may report it as a missing extension).
    """
    path = Path(path).absolute()
    text = str(exc)
    low = text.lower()
    if any(marker in low for marker in _FULL_MARKERS) or (isinstance(exc, OSError) and exc.errno in (28, 27, 122)):
        return StoreDiskFull(
            f"metadata store {path}: the disk is full ({text.strip().splitlines()[0]}). The write was rolled back: "
            f"the store still holds what it held before, and nothing of this step was stored. Free space on the "
            f"file system of {path.parent} (df -h {path.parent}), or move the data directory, then re-run the step.")
    kind = _describe_file(path) if path.exists() else None
    if opening and kind is not None and kind != "a DuckDB database":
        return _not_a_store(path, kind)
    if any(marker in low for marker in _DAMAGE_MARKERS):
        if kind == "a DuckDB database":
            return StoreError(
                f"metadata store {path} is damaged ({text.strip().splitlines()[0]}). Restore it from a backup, or "
                f"move it away (mv {path} {path}.damaged) and re-materialize from seed_samples: embeddings, "
                "generations and rounds are then computed again.")
        return _not_a_store(path, kind or "missing")
    return None


def _not_a_store(path: Path, kind: str) -> StoreError:
    return StoreError(
        f"{path} is {kind}, not a Prismatic metadata store (DuckDB). Point store_path at another file, or move "
        f"this one away (mv {path} {path}.bak) and Prismatic creates a new store there.")


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def _vectors_to_arrow(vectors: Sequence[np.ndarray | None]) -> pa.Array:
    return pa.array([None if v is None else np.asarray(v, dtype=np.float32).tolist() for v in vectors],
                    type=pa.list_(pa.float32()))


def _register_wanted(con: duckdb.DuckDBPyConnection, content_hashes: Sequence[str]) -> None:
    """The view `wanted` (content_hash, pos): the samples asked for, with their input positions."""
    con.register("wanted", pa.table({"content_hash": list(content_hashes),
                                     "pos": pa.array(np.arange(len(content_hashes), dtype=np.int64))}))


def _missing_or_failed(con: duckdb.DuckDBPyConnection, embedding_key: str) -> dict[int, str]:
    """{position in `wanted`: reason} for samples without a vector under the key."""
    rows = con.execute(
        f"SELECT w.pos, e.error, e.content_hash IS NULL AS missing FROM wanted w "
        f"LEFT JOIN {S.EMBEDDINGS} e ON e.content_hash = w.content_hash AND e.embedding_key = ? "
        f"WHERE e.content_hash IS NULL OR e.error IS NOT NULL", [embedding_key]).fetchall()
    return {int(pos): ("not computed" if missing else error) for pos, error, missing in rows}


#: Rows per record batch when vectors stream out of the store (64 MB at d = 256).
_VECTOR_BATCH_ROWS = 65_536


def _arrow_to_matrix(column: pa.ChunkedArray | pa.Array, dim: int, path: Path | None = None) -> np.ndarray:
    """An (n, dim) float32 matrix from a list<float> column of n non-null vectors."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if len(column) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    flat = np.asarray(column.flatten(), dtype=np.float32)
    if flat.size != len(column) * dim:
        raise StoreError(f"{path or 'the store'}: stored vectors do not all have {dim} values ({flat.size} values "
                         f"for {len(column)} vectors): they were computed under another projection dim; "
                         "re-materialize gradient_embeddings")
    return flat.reshape(len(column), dim)


@dataclass(frozen=True)
class EmbeddingRow:
    content_hash: str
    embedding_key: str
    model_fingerprint: str
    projection_key: str
    gradient_spec: dict
    dim: int
    vector: np.ndarray | None
    grad_norm: float
    loss: float
    n_response_tokens: int | None  # None for hidden-state rows (no gradient, no response count)
    truncated: bool | None
    seconds: float
    error: str | None
    run_id: str | None


class MetadataStore:
    """One DuckDB file; safe to use from several processes at once."""

    def __init__(self, path: str | Path, lock_timeout: float = 600.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    # -- connections ---------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation. Errors that mean the file is damaged, foreign or on a
        full disk come out as `StoreError` naming the file and the fix, here and from the body."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.05
        while True:
            try:
                con = duckdb.connect(str(self.path), config=_CONNECT_CONFIG)
                break
            except (duckdb.Error, OSError) as exc:
                if not isinstance(exc, duckdb.IOException) or not _is_lock_error(exc):
                    translated = store_error(self.path, exc, opening=True)
                    if translated is not None:
                        raise translated from None
                    raise
                if time.monotonic() > deadline:
                    raise StoreLockTimeout(
                        f"metadata store {self.path} stayed locked by another process for "
                        f"{self.lock_timeout:.0f} s: {exc}. Stop the other process (a notebook, "
                        f"the DuckDB CLI) or raise lock_timeout.") from exc
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        try:
            yield con
        except (duckdb.Error, OSError) as exc:
            translated = store_error(self.path, exc)
            if translated is not None:
                raise translated from None
            raise
        finally:
            try:
                con.close()
            except duckdb.Error:
                pass  # closing after a failed write: the error above is the one to report

    @contextmanager
    def exclusive(self, name: str, what: str, **holder: Any) -> Iterator[None]:
        """Hold the store's lock `name` for a piece of work, or raise `StoreBusy` at once.

        A file lock (flock) beside the store file, so the kernel releases it when the holder
        exits, however it exits (SIGKILL included): no stale lock survives a crash. The
        holder's details (`what`, pid, start time, `holder` fields) are written into the lock
        file and quoted to whoever is refused.
        """
        path = self.path.with_name(f"{self.path.name}.{name}.lock")
        handle = open(path, "a+")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                try:
                    other = json.loads(handle.read() or "{}")
                except ValueError:
                    other = {}
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other["since"])) if "since" in other else "?"
                extra = ", ".join(f"{k} {v}" for k, v in other.items() if k not in ("what", "pid", "since"))
                raise StoreBusy(
                    f"{what} was refused: {other.get('what', 'other work')} holds {path.name} "
                    f"(pid {other.get('pid', '?')}"
                    f"{', ' + extra if extra else ''}, since {since}). Wait for it to finish, or stop it; running "
                    f"both would write the same rows twice.") from None
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"what": what, "pid": os.getpid(), "since": time.time(), **holder}, default=str))
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                handle.flush()
                fcntl.flock(handle, fcntl.LOCK_UN)
        finally:
            handle.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect() as con, _transaction(con):
            yield con

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pl.DataFrame:
        """Run one read query; the result as a polars DataFrame."""
        with self.connect() as con:
            # A pyarrow Table always converts to a DataFrame (a Series only comes from an Array).
            return cast(pl.DataFrame, pl.from_arrow(con.sql(sql, params=params).to_arrow_table()))

    # -- schema --------------------------------------------------------------------------
    def migrate(self) -> list[int]:
        """Apply pending migrations in order; return the versions applied."""
        applied: list[int] = []
        with self.connect() as con:
            tables = {row[0] for row in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
            if tables and S.MIGRATIONS not in tables:
                shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
                raise StoreError(
                    f"{self.path} is a DuckDB database of something else (tables: {shown}; no {S.MIGRATIONS}): "
                    f"Prismatic does not add its tables to it. Point store_path at another file, or move this one "
                    f"away (mv {self.path} {self.path}.bak).")
            con.execute(f"CREATE TABLE IF NOT EXISTS {S.MIGRATIONS} (version INTEGER PRIMARY KEY, "
                        f"name VARCHAR, applied_at TIMESTAMP DEFAULT current_timestamp)")
            done = {row[0] for row in con.execute(f"SELECT version FROM {S.MIGRATIONS}").fetchall()}
            if done and max(done) > S.LATEST_VERSION:
                raise StoreError(
                    f"metadata store {self.path} has schema version {max(done)}, newer than this "
                    f"Prismatic ({S.LATEST_VERSION}): upgrade Prismatic or use another data directory")
            for migration in S.MIGRATIONS_LIST:
                if migration.version in done:
                    continue
                con.begin()
                try:
                    con.execute(migration.sql)
                    con.execute(f"INSERT INTO {S.MIGRATIONS} (version, name) VALUES (?, ?)",
                                [migration.version, migration.name])
                except duckdb.Error as exc:
                    con.rollback()
                    if store_error(self.path, exc) is not None:
                        raise
                    current = max(done | set(applied), default=0)
                    raise StoreError(
                        f"metadata store {self.path}: upgrading the schema from version {current} failed at migration "
                        f"{migration.version} ({migration.name}): {str(exc).strip().splitlines()[0]}. The store was "
                        f"left at version {current}, unchanged by this migration. It was probably edited by hand or "
                        f"by another tool: restore a backup, or move it away (mv {self.path} {self.path}.old) and "
                        f"re-materialize.") from None
                except BaseException:
                    con.rollback()
                    raise
                con.commit()
                applied.append(migration.version)
        return applied

    def schema_version(self) -> int:
        return int(self.query(f"SELECT max(version) AS v FROM {S.MIGRATIONS}")["v"][0])

    # -- samples -------------------------------------------------------------------------
    def replace_samples(self, *, source: str, origin: str, samples: Sequence[Sample],
                        splits: Mapping[str, str], rejections: Sequence[Rejection],
                        run_id: str | None, round: int | None = None) -> None:
        """Replace every row of (source, origin[, round]) with these samples and rejections.

        Samples and rejections without a source of their own are stored under `source`; one
        naming another source is refused: the next replace of `source` would not delete it.
        """
        foreign = [(kind, item.source) for kind, items in (("sample", samples), ("rejection", rejections))
                   for item in items if item.source and item.source != source]
        if foreign:
            raise ValueError(f"replace_samples(source={source!r}) got a {foreign[0][0]} of source {foreign[0][1]!r} "
                             f"({len(foreign)} in all): store each source's rows in its own call")
        table = pa.table({
            "sample_id": [s.sample_id for s in samples],
            "content_hash": [s.content_hash for s in samples],
            "dedup_key": [s.dedup_key for s in samples],
            "problem_key": [problem_key(s.prompt) for s in samples],
            "prompt": [s.prompt for s in samples],
            "response": [s.response for s in samples],
            "answer": [s.answer for s in samples],
            "category": [s.category for s in samples],
            "source": [source] * len(samples),
            "source_ref": [s.source_ref for s in samples],
            "origin": [origin] * len(samples),
            "split": [splits.get(s.sample_id, "pool") for s in samples],
            "round": pa.array([round] * len(samples), type=pa.int32()),
            "meta": [json.dumps(s.meta, default=str) for s in samples],
            "run_id": [run_id] * len(samples),
        }, schema=pa.schema([
            ("sample_id", pa.string()), ("content_hash", pa.string()), ("dedup_key", pa.string()),
            ("problem_key", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
            ("answer", pa.string()), ("category", pa.string()), ("source", pa.string()),
            ("source_ref", pa.string()), ("origin", pa.string()), ("split", pa.string()),
            ("round", pa.int32()), ("meta", pa.string()), ("run_id", pa.string())]))
        rejected = pa.table({
            "source": [source] * len(rejections),
            "source_ref": [r.source_ref for r in rejections],
            "line": pa.array([r.line for r in rejections], type=pa.int32()),
            "reason": [r.reason for r in rejections],
            "raw": [r.raw for r in rejections],
            "duplicate_of": pa.array([r.duplicate_of for r in rejections], type=pa.string()),
            "run_id": pa.array([run_id] * len(rejections), type=pa.string()),
        })
        round_clause = "round IS NULL" if round is None else "round = ?"
        params = [source, origin] + ([] if round is None else [round])
        with self.transaction() as con:
            con.execute(f"DELETE FROM {S.SAMPLES} WHERE source = ? AND origin = ? AND {round_clause}", params)
            con.execute(f"DELETE FROM {S.REJECTIONS} WHERE source = ?", [source])
            con.register("incoming_samples", table)
            con.execute(f"INSERT INTO {S.SAMPLES} (sample_id, content_hash, dedup_key, problem_key, prompt, "
                        f"response, answer, category, source, source_ref, origin, split, round, meta, run_id) "
                        f"SELECT sample_id, content_hash, dedup_key, problem_key, prompt, response, answer, "
                        f"category, source, source_ref, origin, split, round, meta::JSON, run_id "
                        f"FROM incoming_samples")
            con.register("incoming_rejections", rejected)
            con.execute(f"INSERT INTO {S.REJECTIONS} BY NAME SELECT * FROM incoming_rejections")

    def load_samples(self, sample_ids: Sequence[str] | None = None, *, where: str | None = None,
                     params: Sequence[Any] | None = None) -> list[Sample]:
        """Samples by id (in the given order) or by a SQL condition (ordered by sample_id)."""
        with self.connect() as con:
            if sample_ids is not None:
                con.register("wanted", pa.table({"sample_id": list(sample_ids),
                                                 "pos": list(range(len(sample_ids)))}))
                rel = con.sql(f"SELECT s.* FROM {S.SAMPLES} s JOIN wanted w USING (sample_id) ORDER BY w.pos")
            else:
                rel = con.sql(f"SELECT * FROM {S.SAMPLES} WHERE {where or 'TRUE'} ORDER BY sample_id",
                              params=params)
            rows = rel.to_arrow_table().to_pylist()
        if sample_ids is not None and len(rows) != len(sample_ids):
            missing = sorted(set(sample_ids) - {r["sample_id"] for r in rows})
            raise KeyError(f"{len(missing)} sample ids are not in {self.path}, e.g. {missing[:3]}: "
                           "re-materialize seed_samples")
        return [Sample(sample_id=r["sample_id"], prompt=r["prompt"], response=r["response"],
                       answer=r["answer"], category=r["category"], source=r["source"],
                       source_ref=r["source_ref"] or "", meta=json.loads(r["meta"]) if r["meta"] else {})
                for r in rows]

    # -- embeddings ----------------------------------------------------------------------
    def cached_hashes(self, content_hashes: Sequence[str], embedding_key: str) -> set[str]:
        """Which of these samples already have a stored result (vector or error) for this key."""
        with self.connect() as con:
            con.register("wanted", pa.table({"content_hash": list(set(content_hashes))}))
            rows = con.execute(f"SELECT e.content_hash FROM {S.EMBEDDINGS} e JOIN wanted USING (content_hash) "
                               f"WHERE e.embedding_key = ?", [embedding_key]).fetchall()
        return {r[0] for r in rows}

    def put_embeddings(self, rows: Sequence[EmbeddingRow]) -> None:
        if not rows:
            return
        table = pa.table({
            "content_hash": [r.content_hash for r in rows],
            "embedding_key": [r.embedding_key for r in rows],
            "model_fingerprint": [r.model_fingerprint for r in rows],
            "projection_key": [r.projection_key for r in rows],
            "gradient_spec": [json.dumps(r.gradient_spec, sort_keys=True) for r in rows],
            "dim": pa.array([r.dim for r in rows], type=pa.int32()),
            "vector": _vectors_to_arrow([r.vector for r in rows]),
            "grad_norm": pa.array([r.grad_norm for r in rows], type=pa.float64()),
            "loss": pa.array([r.loss for r in rows], type=pa.float64()),
            "n_response_tokens": pa.array([r.n_response_tokens for r in rows], type=pa.int32()),
            "truncated": pa.array([r.truncated for r in rows], type=pa.bool_()),
            "seconds": pa.array([r.seconds for r in rows], type=pa.float64()),
            "error": pa.array([r.error for r in rows], type=pa.string()),
            "run_id": pa.array([r.run_id for r in rows], type=pa.string()),
        })
        with self.transaction() as con:
            con.register("incoming", table)
            con.execute(f"INSERT OR REPLACE INTO {S.EMBEDDINGS} (content_hash, embedding_key, model_fingerprint, "
                        f"projection_key, gradient_spec, dim, vector, grad_norm, loss, n_response_tokens, "
                        f"truncated, seconds, error, run_id) SELECT content_hash, embedding_key, "
                        f"model_fingerprint, projection_key, gradient_spec::JSON, dim, vector, grad_norm, loss, "
                        f"n_response_tokens, truncated, seconds, error, run_id FROM incoming")

    def ingest_embedding_shards(self, shards: Sequence[Path]) -> int:
        """Load finished Parquet shards (store/shards.py) in one transaction, one insert per shard.

        A sample present in several shards or already stored is replaced, never duplicated
        (the shard whose name sorts last wins). One statement per shard keeps the insert's
        working memory to about one shard's (a single statement over every shard held them
        all: 5.1 GB for 600k vectors of d = 256), and DuckDB's memory limit is lowered to
        BULK_MEMORY_LIMIT for the insert, so its buffer pool does not keep every written
        block cached: 1M vectors peak at 0.85 GB instead of 2.2 GB
        (`benchmarks/bench_ingest.py`). Returns the number of rows read.
        """
        if not shards:
            return 0
        files = sorted(str(Path(s)) for s in shards)
        n = 0
        with self.connect() as con, _memory_limit(con, BULK_MEMORY_LIMIT), _transaction(con):
            for file in files:
                n += con.execute("SELECT count(*) FROM read_parquet(?)", [file]).fetchall()[0][0]
                con.execute(f"INSERT OR REPLACE INTO {S.EMBEDDINGS} (content_hash, embedding_key, model_fingerprint, "
                            f"projection_key, gradient_spec, dim, vector, grad_norm, loss, n_response_tokens, "
                            f"truncated, seconds, error, run_id) SELECT content_hash, embedding_key, "
                            f"model_fingerprint, projection_key, gradient_spec::JSON, dim, vector, grad_norm, loss, "
                            f"n_response_tokens, truncated, seconds, error, run_id FROM read_parquet(?) "
                            f"QUALIFY row_number() OVER (PARTITION BY content_hash, embedding_key) = 1", [file])
        return int(n)

    def missing_or_failed(self, content_hashes: Sequence[str], embedding_key: str) -> dict[int, str]:
        """{input index: reason} for samples without a vector under this key (an error or "not
        computed"); vectors are not read, so memory stays small at any N."""
        with self.connect() as con:
            _register_wanted(con, content_hashes)
            return _missing_or_failed(con, embedding_key)

    def load_vectors(self, content_hashes: Sequence[str], embedding_key: str, dim: int
                     ) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        """Stored vectors for these samples (by content hash) under one embedding key.

        Returns (valid: (n,) bool mask over the input, (n_valid, dim) float32 matrix in input
        order, {input index: reason} for rows without a vector: a recorded error or "not computed").
        The vectors stream from DuckDB in record batches straight into the matrix, under
        BULK_MEMORY_LIMIT: no sorted copy, Arrow table or filtered copy of all N vectors. At
        1M x 256 the load peaks 1.7 GB above its start, of which 0.98 GB is the matrix itself
        (2.35 GB with DuckDB's default limit; 5.9 GB for the former sorted Arrow read).
        """
        n = len(content_hashes)
        with self.connect() as con, _memory_limit(con, BULK_MEMORY_LIMIT):
            _register_wanted(con, content_hashes)
            reasons = _missing_or_failed(con, embedding_key)
            valid = np.ones(n, dtype=bool)
            valid[list(reasons)] = False
            row_of = np.cumsum(valid) - 1  # (n,) input position -> matrix row, for valid positions
            matrix = np.empty((int(valid.sum()), dim), dtype=np.float32)
            reader = con.sql(
                f"SELECT w.pos, e.vector FROM wanted w JOIN {S.EMBEDDINGS} e "
                f"ON e.content_hash = w.content_hash AND e.embedding_key = ? WHERE e.error IS NULL",
                params=[embedding_key]).to_arrow_reader(_VECTOR_BATCH_ROWS)
            try:
                filled = 0
                for batch in reader:
                    pos = batch.column(0).to_numpy()
                    matrix[row_of[pos]] = _arrow_to_matrix(batch.column(1), dim, self.path)
                    filled += len(pos)
            finally:
                reader.close()  # the connection takes no other statement while a result is open
        if filled != len(matrix):
            raise StoreError(f"{self.path}: {len(matrix)} vectors expected under key {embedding_key[:12]} but "
                             f"{filled} read; the embeddings table changed while it was read: run again")
        return valid, matrix, reasons

    # -- clusterings and scores ----------------------------------------------------------
    def replace_clustering(self, *, clustering_id: str, scope: str, embedding_key: str, k: int, n: int,
                           niter: int, seed: int, sparse_ratio: float, threshold_size: int,
                           sizes: np.ndarray, sparse: np.ndarray, centroids: np.ndarray,
                           member_ids: Sequence[str], assignments: np.ndarray, similarities: np.ndarray,
                           config: dict, run_id: str | None) -> None:
        clusters = pa.table({
            "clustering_id": [clustering_id] * k,
            "cluster": pa.array(range(k), type=pa.int32()),
            "size": pa.array(np.asarray(sizes, dtype=np.int32)),
            "is_sparse": pa.array(np.asarray(sparse, dtype=bool)),
            "centroid": _vectors_to_arrow(list(np.asarray(centroids, dtype=np.float32))),
        })
        members = pa.table({
            "clustering_id": [clustering_id] * len(member_ids),
            "sample_id": list(member_ids),
            "cluster": pa.array(np.asarray(assignments, dtype=np.int32)),
            "similarity": pa.array(np.asarray(similarities, dtype=np.float64)),
        })
        with self.transaction() as con:
            for table in (S.CLUSTERINGS, S.CLUSTERS, S.CLUSTER_MEMBERS):
                con.execute(f"DELETE FROM {table} WHERE clustering_id = ?", [clustering_id])
            con.execute(f"INSERT INTO {S.CLUSTERINGS} (clustering_id, scope, embedding_key, k, n, niter, seed, "
                        f"sparse_ratio, threshold_size, n_sparse, config, run_id) VALUES "
                        f"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::JSON, ?)",
                        [clustering_id, scope, embedding_key, k, n, niter, seed, sparse_ratio,
                         int(threshold_size), int(np.sum(sparse)), json.dumps(config, sort_keys=True), run_id])
            con.register("incoming_clusters", clusters)
            con.execute(f"INSERT INTO {S.CLUSTERS} BY NAME SELECT * FROM incoming_clusters")
            con.register("incoming_members", members)
            con.execute(f"INSERT INTO {S.CLUSTER_MEMBERS} BY NAME SELECT * FROM incoming_members")

    def recent_scores(self, limit: int = 5) -> pl.DataFrame:
        """The `limit` most recently written score rows (scope, metric, q, value, n, dim, ...)."""
        return self.query(f"SELECT scope, metric, q, value, n, dim, n_excluded, created_at FROM {S.SCORES} "
                          f"ORDER BY created_at DESC LIMIT ?", [int(limit)])

    def replace_score(self, *, score_id: str, scope: str, metric: str, q: float, value: float, entropy: float,
                      n: int, dim: int, n_excluded: int, embedding_key: str, config: dict,
                      run_id: str | None) -> None:
        with self.transaction() as con:
            con.execute(f"DELETE FROM {S.SCORES} WHERE score_id = ?", [score_id])
            con.execute(f"INSERT INTO {S.SCORES} (score_id, scope, metric, q, value, entropy, n, dim, n_excluded, "
                        f"embedding_key, config, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::JSON, ?)",
                        [score_id, scope, metric, float(q), float(value), float(entropy), n, dim, n_excluded,
                         embedding_key, json.dumps(config, sort_keys=True), run_id])
