"""Faults around the files Prismatic writes: a bad file at the store path, an older or
hand-edited schema, and a disk that fills up while writing the store, a checkpoint or a
gradient shard.

Real parts: DuckDB files (damaged by truncation and flipped bytes), SQLite and Parquet
files, the CLI in a subprocess, and a small tmpfs in a private mount namespace (or, where
mounting is not allowed, a file-size limit that makes writes fail the same way). The full
disk under a gradient shard is also injected once, in-process: the Parquet write of the
Nth shard leaves part of its file and raises the OSError a full disk (or quota) raises,
so the failure lands on a known shard.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import ProjectionConfig, ProxyConfig
from prismatic_assets.pipeline.embedder import build_embedder
from prismatic_assets.pipeline.embeddings import embed_samples, shard_folder
from prismatic_assets.store import schema, shards
from prismatic_assets.store.shards import ShardDiskFull, ShardFolder
from prismatic_assets.store.store import MetadataStore, StoreDiskFull, StoreError
from tests.fault_scenarios import run_on_full_disk, shard_samples

REPO = Path(__file__).resolve().parents[1]


def _samples(n: int) -> list[Sample]:
    return [Sample(f"unit:{i}", f"problem {i}", f"solution {i}", answer=str(i), source="unit") for i in range(n)]


def _real_store(path: Path) -> Path:
    store = MetadataStore(path)
    store.replace_samples(source="unit", origin="seed", samples=_samples(200), splits={}, rejections=[], run_id="r")
    return path


def _flip(path: Path, offset: int, n: int = 256) -> None:
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + n):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _make(kind: str, path: Path) -> None:
    if kind == "random bytes":
        path.write_bytes(os.urandom(50_000))
    elif kind == "text":
        path.write_text("id,prompt\n1,what is 2+2?\n" * 100)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
    elif kind == "parquet":
        pq.write_table(pa.table({"x": [1, 2, 3]}), path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "foreign duckdb":
        con = duckdb.connect(str(path))
        con.execute("CREATE TABLE customers (id INTEGER, name VARCHAR)")
        con.execute("INSERT INTO customers VALUES (1, 'a')")
        con.close()
    elif kind == "truncated store":
        _real_store(path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "flipped bytes":
        _real_store(path)
        _flip(path, 8192)
    else:
        raise ValueError(kind)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


KINDS = {  # kind -> what the message must say
    "random bytes": "not a DuckDB database",
    "text": "is a text file",
    "empty": "is an empty file",
    "sqlite": "is an SQLite database",
    "parquet": "is a Parquet file",
    "directory": "is a directory",
    "foreign duckdb": "DuckDB database of something else (tables: customers",
    "truncated store": "is damaged",
    "flipped bytes": "is damaged (Corrupt database file",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_file_at_the_store_path_is_named_with_the_fix(kind, tmp_path):
    path = tmp_path / "prismatic.duckdb"
    _make(kind, path)
    before = _digest(path)
    with pytest.raises(StoreError) as caught:
        MetadataStore(path).query(f"SELECT count(*) FROM {schema.SAMPLES}")
    message = str(caught.value)
    assert KINDS[kind] in message and str(path) in message
    assert f"mv {path}" in message  # the fix, as a command
    error = caught.value  # no DuckDB traceback chained to it
    assert error.__cause__ is None and (error.__suppress_context__ or error.__context__ is None)
    assert _digest(path) == before  # the file is left as it was: nothing added to someone else's data


def test_cli_reports_a_damaged_store_without_a_traceback(tmp_path, tiny_model_dir):
    cache = tmp_path / "cache"
    cache.mkdir()
    _make("flipped bytes", cache / "score-cache.duckdb")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "response": "\\boxed{2}"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "prismatic_assets.interfaces.cli", "score", str(data),
                           "--model", tiny_model_dir, "--dim", "8"],
                          capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "PRISMATIC_CACHE_DIR": str(cache)})
    assert done.returncode != 0
    assert "score-cache.duckdb is damaged" in done.stderr and "Traceback" not in done.stderr


def _version_1_store(path: Path) -> None:
    """A store exactly as a Prismatic with only migration 1 left it, with data in it."""
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE {schema.MIGRATIONS} (version INTEGER PRIMARY KEY, name VARCHAR, "
                f"applied_at TIMESTAMP DEFAULT current_timestamp)")
    first = schema.MIGRATIONS_LIST[0]
    con.execute(first.sql)
    con.execute(f"INSERT INTO {schema.MIGRATIONS} (version, name) VALUES (?, ?)", [first.version, first.name])
    con.execute(f"INSERT INTO {schema.SAMPLES} (sample_id, content_hash, dedup_key, problem_key, prompt, response, "
                f"source, origin, split) VALUES ('old:1', 'h', 'd', 'p', 'an old problem', 'an old solution', 'old', "
                f"'seed', 'pool')")
    con.close()


def test_older_schema_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.duckdb"
    _version_1_store(path)
    store = MetadataStore(path)
    assert store.schema_version() == schema.LATEST_VERSION
    assert store.load_samples(["old:1"])[0].prompt == "an old problem"
    tables = set(store.query("SELECT table_name FROM information_schema.tables")["table_name"].to_list())
    assert {schema.GENERATIONS, schema.SYNTHESIS_ROUNDS, schema.EVAL_RESULTS} <= tables


def test_a_migration_that_cannot_apply_names_the_version_and_changes_nothing(tmp_path):
    path = tmp_path / "edited.duckdb"
    _version_1_store(path)
    con = duckdb.connect(str(path))  # edited by hand: a table that migration 2 wants to create
    con.execute(f"CREATE TABLE {schema.GENERATIONS} (key VARCHAR)")
    con.close()
    with pytest.raises(StoreError, match=r"from version 1 failed at migration 2 \(synthesis.*left at version 1") as e:
        MetadataStore(path)
    assert str(path) in str(e.value)
    con = duckdb.connect(str(path))
    assert con.execute(f"SELECT max(version) FROM {schema.MIGRATIONS}").fetchone()[0] == 1
    assert con.execute(f"SELECT count(*) FROM {schema.SAMPLES}").fetchone()[0] == 1
    assert con.execute(f"SELECT count(*) FROM information_schema.tables WHERE table_name = "
                       f"'{schema.SYNTHESIS_ROUNDS}'").fetchone()[0] == 0
    con.close()


@pytest.mark.integration
def test_full_disk_while_writing_the_store(tmp_path):
    out = run_on_full_disk("store", tmp_path, size_mb=8)
    assert out["error_type"] == "StoreDiskFull", out
    assert "the disk is full" in out["error"] and "prismatic.duckdb" in out["error"]
    assert "still holds what it held before" in out["error"]
    assert out["after"] == out["before"] == {"samples": 100, "rejections": 0}  # nothing of the failed write
    assert out["files"] in (["prismatic.duckdb"], ["prismatic.duckdb", "prismatic.duckdb.wal"])
    assert out["wal_bytes"] == 0  # no half-written log to replay
    if out["mode"] == "tmpfs":  # with space freed, the same store takes writes again
        assert out["after_freeing"] == {"samples": 400, "rejections": 0}


@pytest.mark.integration
def test_full_disk_while_writing_a_checkpoint(tmp_path, tiny_model_dir):
    out = run_on_full_disk("checkpoint", tmp_path, 64, tiny_model_dir)
    assert out["error_type"] == "SFTDiskFull", out
    assert "the disk filled up while saving" in out["error"] and "half-written folder was removed" in out["error"]
    assert not out["final"] and out["hidden"] == []  # no temp folder left behind
    if out["mode"] == "tmpfs":
        # The first checkpoint was complete; the second never appears; a rerun resumes from the first.
        assert "checkpoint-1" in out["error"] and "a rerun resumes from it" in out["error"]
        assert out["complete"] == ["checkpoint-1"]
        assert [e for e in out["entries"] if e.startswith("checkpoint")] == ["checkpoint-1"]
        assert out["resumed_from"] == "checkpoint-1" and out["steps_after_resume"] == [2, 3]
        assert out["final_steps"] == 3
    else:
        assert "no checkpoint was complete" in out["error"]
        assert out["complete"] == [] and not [e for e in out["entries"] if e.startswith("checkpoint")]


def _write_fails_on(monkeypatch, nth: int, code: int) -> tuple[list[Path], dict]:
    """Make the `nth` Parquet shard write leave half its file and raise OSError(code).

    Returns the paths written to, and a switch: set "full" to False to free the space."""
    real = pq.write_table
    written: list[Path] = []
    state = {"full": True}

    def write(table, where, **kwargs):
        written.append(Path(where))
        if len(written) != nth or not state["full"]:
            return real(table, where, **kwargs)
        sink = pa.BufferOutputStream()
        real(table, sink, **kwargs)
        data = sink.getvalue().to_pybytes()
        Path(where).write_bytes(data[:len(data) // 2])  # what reached the disk before it filled
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shards.pq, "write_table", write)
    return written, state


def _stored_vectors(store: MetadataStore, samples, key: str, dim: int) -> np.ndarray:
    valid, matrix, reasons = store.load_vectors([s.content_hash for s in samples], key, dim)
    assert valid.all(), reasons
    return matrix


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_full_disk_while_writing_a_gradient_shard(code, tmp_path, tiny_model_dir, monkeypatch):
    samples = shard_samples()
    embedder = build_embedder(ProxyConfig(model=tiny_model_dir), ProjectionConfig(dim=16), batch_size=1)
    computed: list[str] = []  # prompts that reached the model, counted outside the code under test
    embed_many = embedder.gradients.embed_many
    embedder.gradients.embed_many = lambda pairs: computed.extend(p for p, _ in pairs) or embed_many(pairs)
    store_path = tmp_path / "data" / "prismatic.duckdb"
    store = MetadataStore(store_path)
    folder = shard_folder(store, embedder.key).path
    # Chunks of 8 samples, a shard per chunk: shards 1 and 2 are written, the disk fills during the 3rd.
    written, disk = _write_fails_on(monkeypatch, 3, code)
    with pytest.raises(ShardDiskFull) as caught:
        embed_samples(samples, embedder, store, shard_rows=8)
    message = str(caught.value)
    assert isinstance(caught.value, StoreDiskFull) and len(written) == 3
    assert str(folder) in message and f"df -h {folder}" in message
    assert "16 vectors are safe in 2 finished shard(s)" in message and "partial file was removed" in message
    assert caught.value.__cause__.errno == code
    # Only the two finished shards are there, whole; the half-written third is gone.
    assert not written[2].exists()
    files = sorted(folder.iterdir())
    assert [p.suffix for p in files] == [".parquet", ".parquet"]
    assert sorted(pq.read_table(p).num_rows for p in files) == [8, 8]
    # The store opens and reads as before: nothing of this run reached it yet.
    reopened = MetadataStore(store_path)
    assert reopened.query(f"SELECT count(*) AS n FROM {schema.EMBEDDINGS}")["n"][0] == 0
    assert reopened.cached_hashes([s.content_hash for s in samples], embedder.key) == set()

    disk["full"] = False  # space freed
    computed.clear()
    report = embed_samples(samples, embedder, reopened, shard_rows=8)
    assert computed == [s.prompt for s in samples[16:]]  # only the vectors the finished shards did not hold
    assert (report.n_resumed, report.n_computed) == (16, 8) and list(folder.iterdir()) == []

    clean = MetadataStore(tmp_path / "clean" / "prismatic.duckdb")
    assert embed_samples(samples, embedder, clean, shard_rows=8).n_computed == 24
    np.testing.assert_allclose(_stored_vectors(reopened, samples, embedder.key, 16),
                               _stored_vectors(clean, samples, embedder.key, 16), rtol=1e-5, atol=1e-6)
    assert reopened.query(f"SELECT count(*) AS n FROM {schema.EMBEDDINGS}")["n"][0] == 24


@pytest.mark.integration
def test_a_gradient_shard_on_a_disk_that_really_fills(tmp_path, tiny_model_dir):
    """The same fault without injection: the disk (a tmpfs, or a file-size limit) fills
    after two shards; pyarrow's own error for it becomes ShardDiskFull."""
    out = run_on_full_disk("shard", tmp_path, 16, tiny_model_dir)
    assert out["error_type"] == "ShardDiskFull", out
    assert f"df -h {out['folder']}" in out["error"] and "16 vectors are safe in 2 finished shard(s)" in out["error"]
    assert [Path(f).suffix for f in out["files"]] == [".parquet", ".parquet"] and out["shard_rows"] == [8, 8]
    assert out["stored"] == 0
    assert out["rerun_computed"] and out["n_resumed"] == 16 and out["files_after"] == []
    assert out["all_stored"] and out["max_difference"] < 1e-5


def test_other_write_errors_of_a_shard_are_not_called_a_full_disk(tmp_path, monkeypatch):
    folder = ShardFolder(tmp_path / "shards")
    _write_fails_on(monkeypatch, 1, errno.EIO)
    with pytest.raises(OSError) as caught:
        folder.write(shards.embedding_rows_table([]))
    assert not isinstance(caught.value, StoreDiskFull) and caught.value.errno == errno.EIO
    assert list(folder.path.iterdir()) == []  # the partial file is removed all the same
