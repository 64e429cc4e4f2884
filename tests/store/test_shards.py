"""Parquet shards of embedding rows, unit by unit: the vector column (nulls where a gradient
failed, float32 values), the table in the shard schema, the atomic write (temporary name,
rename, nothing partial left), which files count as finished, removal, and a full disk told
apart from other write errors. Real pyarrow files in a temporary folder; a full disk is the
OSError a full disk raises, injected into the Parquet write."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prismatic_assets.store import shards as shards_module
from prismatic_assets.store.shards import (
    EMBEDDING_SHARD_SCHEMA,
    ShardDiskFull,
    ShardFolder,
    embedding_rows_table,
    vectors_to_arrow,
)


@dataclass
class Row:
    content_hash: str
    vector: np.ndarray | None
    dim: int = 3
    embedding_key: str = "k"
    model_fingerprint: str = "fp"
    projection_key: str = "pk"
    gradient_spec: dict | None = None
    grad_norm: float = 1.5
    loss: float = 0.5
    n_response_tokens: int = 4
    truncated: bool = False
    seconds: float = 0.25
    error: str | None = None
    run_id: str | None = "run"


def test_the_vector_column_holds_float32_lists_and_nulls_where_a_vector_is_missing():
    arr = vectors_to_arrow([np.array([1.0, 2.0, 3.0]), None, np.array([0.5, 0.25, 0.125]), None], 3)
    assert arr.type == pa.list_(pa.float32())
    assert arr.to_pylist() == [[1.0, 2.0, 3.0], None, [0.5, 0.25, 0.125], None]
    third = np.float32(1 / 3)
    assert vectors_to_arrow([np.array([1 / 3, 1.0], np.float64)], 2).to_pylist() == [[float(third), 1.0]]
    full = vectors_to_arrow([np.ones(2), np.zeros(2)], 2)
    assert (full.null_count, full.to_pylist()) == (0, [[1.0, 1.0], [0.0, 0.0]])
    none = vectors_to_arrow([None, None], 4)
    assert (none.type, none.to_pylist()) == (pa.list_(pa.float32()), [None, None])


def test_rows_become_a_table_in_the_shard_schema_with_the_spec_as_sorted_json():
    rows = [Row("a", np.array([1.0, 0.0, 0.0]), gradient_spec={"max_length": 8, "loss": "mean"}),
            Row("b", None, error="nan gradient", loss=float("nan"), truncated=True, run_id=None)]
    table = embedding_rows_table(rows)
    assert table.schema == EMBEDDING_SHARD_SCHEMA
    got = table.to_pylist()
    assert got[0]["gradient_spec"] == '{"loss": "mean", "max_length": 8}'
    assert got[1]["gradient_spec"] == "null"
    assert [(r["content_hash"], r["vector"], r["error"], r["truncated"], r["run_id"]) for r in got] == [
        ("a", [1.0, 0.0, 0.0], None, False, "run"), ("b", None, "nan gradient", True, None)]
    assert (got[0]["dim"], got[0]["grad_norm"], got[0]["n_response_tokens"], got[0]["seconds"]) == (3, 1.5, 4, 0.25)
    empty = embedding_rows_table([])
    assert (empty.schema, empty.num_rows) == (EMBEDDING_SHARD_SCHEMA, 0)


def _table(n: int, start: int = 0) -> pa.Table:
    return embedding_rows_table([Row(f"h{i}", np.full(3, i, np.float32)) for i in range(start, start + n)])


def test_a_shard_is_written_whole_under_its_final_name_in_a_new_folder(tmp_path, monkeypatch):
    folder = ShardFolder(tmp_path / "a" / "b")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    first = folder.write(_table(2))
    second = folder.write(_table(3, 2))
    assert first.parent == second.parent == tmp_path / "a" / "b" and first != second
    assert first.name.endswith(".parquet") and len(first.stem) == 32
    assert pq.read_table(first).to_pylist() == _table(2).to_pylist()
    assert sorted(p.name for p in folder.path.iterdir()) == sorted([first.name, second.name])  # no .tmp left
    assert folder.finished() == sorted([first, second]) and folder.count_rows(folder.finished()) == 5
    # the data, then the folder's entry (the rename) are on disk before write returns
    assert synced[:2] == [str(first) + ".tmp", str(folder.path)]


def test_a_table_in_another_but_castable_schema_is_cast_to_the_shard_schema(tmp_path):
    table = _table(2)
    wider = table.set_column(table.schema.get_field_index("dim"), "dim", pa.array([3, 3], pa.int64()))
    path = ShardFolder(tmp_path).write(wider)
    assert pq.read_schema(path) == EMBEDDING_SHARD_SCHEMA


def test_only_complete_parquet_files_count_as_finished_and_remove_clears_stale_temporaries(tmp_path):
    folder = ShardFolder(tmp_path / "shards")
    assert folder.finished() == [] and folder.count_rows([]) == 0
    folder.remove([])  # no folder yet: nothing to do
    done = folder.write(_table(4))
    (folder.path / "cut.parquet.tmp").write_bytes(b"PAR1 half")
    (folder.path / "dir.parquet").mkdir()
    (folder.path / "notes.txt").write_text("x")
    assert folder.finished() == [done]
    folder.remove([done])
    folder.remove([done])  # removed already: fine
    assert sorted(p.name for p in folder.path.iterdir()) == ["dir.parquet", "notes.txt"]


def _failing_write(monkeypatch, exc: BaseException) -> list[Path]:
    """The next Parquet write leaves half a file, then raises `exc`."""
    seen: list[Path] = []

    def write_table(table, where):
        seen.append(Path(where))
        Path(where).write_bytes(b"PAR1 partial")
        raise exc

    monkeypatch.setattr(shards_module.pq, "write_table", write_table)
    return seen


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"),
                                 OSError(errno.EDQUOT, "Disk quota exceeded"),
                                 OSError(errno.EFBIG, "File too large"),
                                 OSError("IOError: [arrow] No Space Left On Device (write failed)")])
def test_a_full_disk_removes_the_partial_file_and_says_what_is_safe(tmp_path, monkeypatch, exc):
    folder = ShardFolder(tmp_path)
    folder.write(_table(3))
    folder.write(_table(2, 3))
    seen = _failing_write(monkeypatch, exc)
    with pytest.raises(ShardDiskFull) as caught:
        folder.write(_table(7, 5))
    (tmp,) = seen
    assert not tmp.exists() and tmp.name.endswith(".parquet.tmp") and len(folder.finished()) == 2
    first = str(exc).strip().splitlines()[0]
    assert str(caught.value) == (
        f"gradient shard folder {tmp_path}: the disk is full ({first}) while writing a shard of 7 vectors; its "
        f"partial file was removed. 5 vectors are safe in 2 finished shard(s) there: a rerun loads them and computes "
        f"only the rest. Free space on that file system (df -h {tmp_path}), or move the data directory, then re-run "
        f"the step.")
    assert caught.value.__cause__ is exc


def test_a_full_disk_without_a_message_is_named_by_its_type(tmp_path, monkeypatch):
    _failing_write(monkeypatch, OSError(errno.ENOSPC, ""))
    with pytest.raises(ShardDiskFull, match=r"the disk is full \(\[Errno 28\]\) while"):
        ShardFolder(tmp_path).write(_table(1))
    _failing_write(monkeypatch, OSError())
    monkeypatch.setattr(shards_module, "_FULL_ERRNOS", (None,))  # an errno-less error counted as full
    with pytest.raises(ShardDiskFull, match=r"the disk is full \(OSError\) while writing a shard of 1 vectors"):
        ShardFolder(tmp_path).write(_table(1))


def test_a_full_disk_before_the_temporary_file_exists_is_still_told_as_full(tmp_path, monkeypatch):
    def write_table(table, where):
        raise OSError(errno.ENOSPC, "No space left on device")  # nothing created yet

    monkeypatch.setattr(shards_module.pq, "write_table", write_table)
    with pytest.raises(ShardDiskFull, match="while writing a shard of 2 vectors"):
        ShardFolder(tmp_path).write(_table(2))


def test_a_stale_temporary_removed_by_another_process_meanwhile_is_no_error(tmp_path, monkeypatch):
    folder = ShardFolder(tmp_path)
    monkeypatch.setattr(type(tmp_path), "glob", lambda self, pattern: iter([self / "gone.parquet.tmp"]))
    folder.remove([tmp_path / "also-gone.parquet"])


@pytest.mark.parametrize("exc", [OSError(errno.EACCES, "Permission denied"), ValueError("no space left on device"),
                                 KeyboardInterrupt()])
def test_other_write_errors_pass_through_and_leave_no_partial_file(tmp_path, monkeypatch, exc):
    seen = _failing_write(monkeypatch, exc)
    with pytest.raises(type(exc)) as caught:
        ShardFolder(tmp_path).write(_table(1))
    assert caught.value is exc and not isinstance(caught.value, ShardDiskFull)
    assert not seen[0].exists() and list(tmp_path.iterdir()) == []


def test_shard_rows_read_back_as_written(tmp_path):
    rows = [Row("x", np.array([0.1, 0.2, 0.3], np.float32), gradient_spec={"z": 1}, error=None),
            Row("y", None, error="failed", grad_norm=0.0)]
    path = ShardFolder(tmp_path).write(embedding_rows_table(rows))
    back = pq.read_table(path).to_pylist()
    assert back[0]["vector"] == pytest.approx([0.1, 0.2, 0.3]) and json.loads(back[0]["gradient_spec"]) == {"z": 1}
    assert (back[1]["vector"], back[1]["error"], back[1]["grad_norm"]) == (None, "failed", 0.0)
