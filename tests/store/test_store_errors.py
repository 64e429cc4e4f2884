"""What the store says about a file it cannot use: what the file is, which error it means, the fix."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prismatic_assets.store import store as store_module
from prismatic_assets.store.store import MetadataStore, StoreDiskFull, StoreError, StoreLockTimeout, store_error


def _write(tmp_path, data: bytes, name: str = "f"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "an empty file"),
        (b"SQLite format 3\x00\x10\x00", "an SQLite database"),
        (b"PAR1\x15\x04", "a Parquet file"),
        (b"\x00" * 8 + b"DUCK", "a DuckDB database"),  # exactly the 12 bytes the test reads
        (b"\x00" * 8 + b"DUC", "not a DuckDB database"),
        (b"\x01\x02" * 8, "not a DuckDB database"),  # binary, 16 bytes, no magic
        (b"\x00" * 8 + b"duck" + b"\x00" * 4, "not a DuckDB database"),
        (b"content_hash,prompt,answer\n1,2,3\n", "a text file (starting 'content_hash,pro')"),  # the first 16 bytes
        (b" x\ty\r\n", "a text file (starting ' x\\ty\\r\\n')"),  # space, tab, CR, LF are text
        (b"~", "a text file (starting '~')"),
        (b"abc\x7f", "not a DuckDB database"),  # DEL is not text
        (b"abc\x0b", "not a DuckDB database"),  # nor is a vertical tab
        (b"abc\x0e", "not a DuckDB database"),
        (b"abc\x1f", "not a DuckDB database"),
        (b"caf\xc3\xa9", "not a DuckDB database"),  # UTF-8 beyond ASCII reads as binary
    ],
)
def test_a_file_is_described_by_its_first_bytes(tmp_path, data, kind):
    assert store_module._describe_file(_write(tmp_path, data)) == kind


def test_real_files_are_recognized(tmp_path):
    con = duckdb.connect(str(tmp_path / "real.duckdb"))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    sqlite = sqlite3.connect(tmp_path / "real.sqlite")
    sqlite.execute("CREATE TABLE t (x INTEGER)")
    sqlite.commit()
    sqlite.close()
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "real.parquet")
    (tmp_path / "folder").mkdir()
    describe = store_module._describe_file
    assert describe(tmp_path / "real.duckdb") == "a DuckDB database"
    assert describe(tmp_path / "real.sqlite") == "an SQLite database"
    assert describe(tmp_path / "real.parquet") == "a Parquet file"
    assert describe(tmp_path / "folder") == "a directory"
    assert describe(tmp_path / "missing") == "unreadable (No such file or directory)"


@pytest.mark.parametrize(
    "exc",
    [
        duckdb.IOException("IO Error: Could not write file: No space left on device\nmore detail"),
        duckdb.IOException("File too large"),
        OSError("Disk quota exceeded"),
        OSError(28, "errno only"),
        OSError(27, "errno only"),
        OSError(122, "errno only"),
    ],
)
def test_a_full_disk_names_the_file_the_first_line_and_the_fix(tmp_path, exc):
    path = tmp_path / "data" / "m.duckdb"
    error = store_error(path, exc)
    first = str(exc).strip().splitlines()[0]
    assert type(error) is StoreDiskFull
    assert str(error) == (
        f"metadata store {path}: the disk is full ({first}). The write was rolled back: the store still holds what it "
        f"held before, and nothing of this step was stored. Free space on the file system of {path.parent} "
        f"(df -h {path.parent}), or move the data directory, then re-run the step.")


@pytest.mark.parametrize("exc", [OSError(29, "Illegal seek"), OSError(123, "No medium found"), OSError("other"),
                                 ValueError("no space left on the shelf"), duckdb.CatalogException("no table")])
def test_other_errors_are_not_translated(tmp_path, exc):
    path = tmp_path / "m.duckdb"
    con = duckdb.connect(str(path))
    con.close()
    for opening in (False, True):
        assert store_error(path, exc, opening=opening) is None, (exc, opening)
    assert store_error(tmp_path / "missing.duckdb", OSError(29, "Illegal seek")) is None


def test_opening_a_foreign_file_names_what_it_is_and_the_fix(tmp_path):
    path = _write(tmp_path, b"SQLite format 3\x00", "m.duckdb")
    error = store_error(path, duckdb.IOException("Catalog Error: extension sqlite_scanner is not loaded"), opening=True)
    assert type(error) is StoreError
    assert str(error) == (f"{path} is an SQLite database, not a Prismatic metadata store (DuckDB). Point store_path "
                          f"at another file, or move this one away (mv {path} {path}.bak) and Prismatic creates a new "
                          "store there.")
    # The same error after the file was opened is not about what the file is.
    assert store_error(path, duckdb.IOException("Catalog Error: extension sqlite_scanner is not loaded")) is None


def test_a_duckdb_file_that_fails_to_open_is_not_called_foreign(tmp_path):
    path = tmp_path / "m.duckdb"
    duckdb.connect(str(path)).close()
    assert store_error(path, duckdb.IOException("Catalog Error: some other failure"), opening=True) is None


def test_a_missing_file_is_not_foreign(tmp_path):
    assert store_error(tmp_path / "nothing.duckdb", duckdb.IOException("some failure"), opening=True) is None


def test_a_damaged_duckdb_file_names_the_first_line_and_the_way_back(tmp_path):
    path = tmp_path / "m.duckdb"
    duckdb.connect(str(path)).close()
    exc = duckdb.IOException("Corrupt database file: block checksum\ndetails on a second line")
    for opening in (False, True):
        error = store_error(path, exc, opening=opening)
        assert type(error) is StoreError
        assert str(error) == (
            f"metadata store {path} is damaged (Corrupt database file: block checksum). Restore it from a backup, or "
            f"move it away (mv {path} {path}.damaged) and re-materialize from seed_samples: embeddings, generations "
            "and rounds are then computed again.")


def test_damage_on_a_file_that_is_not_duckdb_says_what_it_is(tmp_path):
    text = _write(tmp_path, b"hello", "m.duckdb")
    assert str(store_error(text, duckdb.IOException("not a valid DuckDB database file"))).startswith(
        f"{text} is a text file (starting 'hello'), not a Prismatic metadata store (DuckDB).")
    missing = tmp_path / "gone.duckdb"
    assert str(store_error(missing, duckdb.IOException("database has been invalidated"))).startswith(
        f"{missing.absolute()} is missing, not a Prismatic metadata store")


def test_a_relative_path_is_reported_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    error = store_error("m.duckdb", OSError(28, "full"))  # type: ignore[arg-type]
    assert f"metadata store {tmp_path / 'm.duckdb'}:" in str(error)


@pytest.mark.parametrize(
    ("text", "lock"),
    [
        ('IO Error: Could not set lock on file "/d/m.duckdb": Conflicting lock is held in python (PID 7)', True),
        ("IO ERROR: COULD NOT SET LOCK ON FILE", True),
        ("Conflicting lock is held", True),
        ("lock file could not be read", False),
        ("Conflicting writes: could not set the value", False),
        ("IO Error: Cannot open file: No such file or directory", False),
    ],
)
def test_what_counts_as_a_lock_conflict(text, lock):
    assert store_module._is_lock_error(duckdb.IOException(text)) is lock


def test_a_store_locked_by_another_process_waits_then_names_the_fix(tmp_path):
    path = tmp_path / "m.duckdb"
    MetadataStore(path)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys\ncon = duckdb.connect(sys.argv[1])\n"
                               "print('held', flush=True)\nsys.stdin.readline()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        store = MetadataStore.__new__(MetadataStore)  # the store as another process sees it, without migrating
        store.path, store.lock_timeout = path, 0.5
        began = time.monotonic()
        with pytest.raises(StoreLockTimeout, match=rf"metadata store {path} stayed locked by another process for 0 s: "
                                                   r".*Stop the other process .* or raise lock_timeout\.") as caught:
            with store.connect():
                pass
        assert 0.5 <= time.monotonic() - began < 30
        assert isinstance(caught.value.__cause__, duckdb.IOException)
    finally:
        holder.communicate("\n", timeout=30)
    with store.connect() as con:  # free again
        assert con.execute("SELECT 1").fetchone() == (1,)
