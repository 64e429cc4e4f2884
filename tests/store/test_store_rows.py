"""Every column the metadata store writes, read back and compared with values built here from the inputs.

JSON columns hold the text as written: keys sorted where the store sorts them (configs, gradient
specs), as given otherwise (sample metadata), non-JSON values as their text."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from prismatic_assets.core.samples import Rejection, Sample, problem_key
from prismatic_assets.store import schema
from prismatic_assets.store import store as store_module
from prismatic_assets.store.store import EmbeddingRow, MetadataStore, StoreError


def _sample(i: int, **fields) -> Sample:
    values = dict(sample_id=f"src:{i}", prompt=f"Problem {i}?", response=f"Work {i}. \\boxed{{{i}}}", answer=str(i),
                  source="src", source_ref=f"src.jsonl:{i + 1}")
    values.update(fields)
    return Sample(**values)


def _raw(store: MetadataStore, sql: str) -> list[tuple]:
    con = duckdb.connect(str(store.path))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_samples_and_rejections_are_stored_column_by_column(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    when = dt.date(2026, 1, 2)
    samples = [_sample(0, category="algebra", meta={"level": 2, "when": when, "tags": ["a"]}),
               _sample(1, source="", source_ref="", meta={})]
    rejections = [Rejection(source="", source_ref="src.jsonl:9", line=9, reason="no answer", raw='{"q": 1}'),
                  Rejection(source="src", source_ref="src.jsonl:10", line=None, reason="duplicate", raw="x",
                            duplicate_of="src:0")]
    store.replace_samples(source="src", origin="seed", samples=samples, splits={"src:1": "holdout"},
                          rejections=rejections, run_id="run-1", round=3)
    rows = _raw(store, f"SELECT sample_id, content_hash, dedup_key, problem_key, prompt, response, answer, category, "
                       f"source, source_ref, origin, split, round, meta::VARCHAR, run_id FROM {schema.SAMPLES} "
                       f"ORDER BY sample_id")
    expected = [(s.sample_id, s.content_hash, s.dedup_key, problem_key(s.prompt), s.prompt, s.response, s.answer,
                 s.category, "src", s.source_ref, "seed", split, 3, meta, "run-1")
                for s, split, meta in [(samples[0], "pool", '{"level": 2, "when": "2026-01-02", "tags": ["a"]}'),
                                       (samples[1], "holdout", "{}")]]
    assert rows == expected
    assert _raw(store, f"SELECT source, source_ref, line, reason, raw, duplicate_of, run_id FROM {schema.REJECTIONS} "
                       f"ORDER BY source_ref") == [("src", "src.jsonl:10", None, "duplicate", "x", "src:0", "run-1"),
                                                   ("src", "src.jsonl:9", 9, "no answer", '{"q": 1}', None, "run-1")]


def test_replacing_a_source_twice_keeps_one_copy_of_each_row(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    args = dict(source="src", origin="seed", samples=[_sample(0), _sample(1, source="")], splits={},
                rejections=[Rejection(source="", source_ref="r", line=1, reason="bad", raw="?")], run_id=None)
    store.replace_samples(**args)
    store.replace_samples(**args)
    assert _raw(store, f"SELECT count(*) FROM {schema.SAMPLES}") == [(2,)]
    assert _raw(store, f"SELECT count(*) FROM {schema.REJECTIONS}") == [(1,)]


@pytest.mark.parametrize("kind", ["sample", "rejection"])
def test_rows_of_another_source_are_refused(tmp_path, kind):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = [_sample(0, source="other" if kind == "sample" else "src")]
    rejections = [Rejection(source="other" if kind == "rejection" else "", source_ref="r", line=1, reason="bad",
                            raw="?")]
    with pytest.raises(ValueError, match=rf"source='src'\) got a {kind} of source 'other' \(1 in all\)"):
        store.replace_samples(source="src", origin="seed", samples=samples, splits={}, rejections=rejections,
                              run_id=None)
    assert _raw(store, f"SELECT count(*) FROM {schema.SAMPLES}") == [(0,)]


def test_samples_load_back_as_they_were_written(tmp_path):
    store = MetadataStore(tmp_path / "nested" / "deeper" / "m.duckdb")  # parent folders are created
    samples = [_sample(2, category="geometry", meta={"level": 1}), _sample(0, source_ref=""), _sample(1)]
    store.replace_samples(source="src", origin="seed", samples=samples, splits={}, rejections=[], run_id=None)
    by_id = store.load_samples(["src:1", "src:2"])
    assert by_id == [samples[2], samples[0]]  # the order asked for
    assert by_id[1].category == "geometry" and by_id[1].meta == {"level": 1}
    everything = store.load_samples()
    assert [s.sample_id for s in everything] == ["src:0", "src:1", "src:2"]  # by sample id
    assert everything[0].source_ref == "" and everything[0].meta == {} and everything[0].category is None
    assert store.load_samples(where="answer = ? OR answer = ?", params=["0", "2"]) == [samples[1], samples[0]]
    with pytest.raises(KeyError, match=r"2 sample ids are not in .*m\.duckdb, e\.g\. \['src:7', 'src:9'\]"):
        store.load_samples(["src:9", "src:0", "src:7"])


def test_a_clustering_is_stored_column_by_column(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    centroids = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])  # float64 in, float32 stored
    config = {"sparse_ratio": 0.5, "k": 3, "a": [1, 2]}
    store.replace_clustering(
        clustering_id="c1", scope="seed", embedding_key="ek", k=3, n=5, niter=20, seed=7, sparse_ratio=0.5,
        threshold_size=2, sizes=np.array([3, 1, 1]), sparse=np.array([0, 1, 1]), centroids=centroids,
        member_ids=["s:0", "s:1", "s:2", "s:3", "s:4"], assignments=np.array([0, 0, 1, 0, 2]),
        similarities=np.array([0.9, 0.8, 1.0, 0.7, 0.95]), config=config, run_id="r")
    assert _raw(store, f"SELECT clustering_id, scope, embedding_key, k, n, niter, seed, sparse_ratio, threshold_size, "
                       f"n_sparse, config::VARCHAR, run_id FROM {schema.CLUSTERINGS}") == [
        ("c1", "seed", "ek", 3, 5, 20, 7, 0.5, 2, 2, '{"a": [1, 2], "k": 3, "sparse_ratio": 0.5}', "r")]
    clusters = _raw(store, f"SELECT clustering_id, cluster, size, is_sparse, centroid FROM {schema.CLUSTERS} "
                           f"ORDER BY cluster")
    assert [row[:4] for row in clusters] == [("c1", 0, 3, False), ("c1", 1, 1, True), ("c1", 2, 1, True)]
    np.testing.assert_array_equal(np.array([row[4] for row in clusters]), centroids.astype(np.float32))
    assert _raw(store, f"SELECT clustering_id, sample_id, cluster, similarity FROM {schema.CLUSTER_MEMBERS} "
                       f"ORDER BY sample_id") == [("c1", "s:0", 0, 0.9), ("c1", "s:1", 0, 0.8), ("c1", "s:2", 1, 1.0),
                                                  ("c1", "s:3", 0, 0.7), ("c1", "s:4", 2, 0.95)]


def _embedding(h: str, key: str = "k", vector=None, error=None, spec=None) -> EmbeddingRow:
    return EmbeddingRow(content_hash=h, embedding_key=key, model_fingerprint="fp", projection_key="pk",
                        gradient_spec=spec if spec is not None else {"z": 1, "a": None}, dim=2, vector=vector,
                        grad_norm=1.5, loss=0.25, n_response_tokens=7, truncated=True, seconds=0.5, error=error,
                        run_id="r")


def test_an_embedding_row_is_stored_column_by_column(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    store.put_embeddings([_embedding("h1", vector=np.array([0.1, 0.2])), _embedding("h2", error="too long")])
    rows = _raw(store, f"SELECT content_hash, embedding_key, model_fingerprint, projection_key, "
                       f"gradient_spec::VARCHAR, dim, vector, grad_norm, loss, n_response_tokens, truncated, "
                       f"seconds, error, run_id FROM {schema.EMBEDDINGS} ORDER BY content_hash")
    f32 = [float(x) for x in np.array([0.1, 0.2], dtype=np.float32)]
    assert rows == [("h1", "k", "fp", "pk", '{"a": null, "z": 1}', 2, f32, 1.5, 0.25, 7, True, 0.5, None, "r"),
                    ("h2", "k", "fp", "pk", '{"a": null, "z": 1}', 2, None, 1.5, 0.25, 7, True, 0.5, "too long", "r")]


def test_missing_or_failed_names_each_input_position(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    store.put_embeddings([_embedding("h1", vector=[1.0, 0.0]), _embedding("h2", error="nan gradient"),
                          _embedding("h3", key="other", vector=[0.0, 1.0])])
    assert store.missing_or_failed(["h3", "h1", "h2", "h4"], "k") == {0: "not computed", 2: "nan gradient",
                                                                      3: "not computed"}
    assert store.missing_or_failed([], "k") == {}


def test_vectors_load_as_float32_and_a_wrong_dim_names_the_store(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    store.put_embeddings([_embedding("h1", vector=[0.5, 0.25]), _embedding("h2", error="x")])
    valid, matrix, reasons = store.load_vectors(["h2", "h1"], "k", 2)
    assert valid.tolist() == [False, True] and reasons == {0: "x"}
    assert matrix.dtype == np.float32 and matrix.tolist() == [[0.5, 0.25]]
    with pytest.raises(StoreError, match=rf"^{tmp_path / 'm.duckdb'}: stored vectors do not all have 3 values"):
        store.load_vectors(["h1"], "k", 3)


def test_arrow_vectors_become_a_float32_matrix():
    to_matrix = store_module._arrow_to_matrix
    chunked = pa.chunked_array([pa.array([[1.0, 2.0]], type=pa.list_(pa.float64())),
                                pa.array([[3.0, 4.0]], type=pa.list_(pa.float64()))])
    out = to_matrix(chunked, 2)
    assert out.dtype == np.float32 and out.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    empty = to_matrix(pa.array([], type=pa.list_(pa.float32())), 5)
    assert empty.shape == (0, 5) and empty.dtype == np.float32
    with pytest.raises(StoreError, match=r"^the store: stored vectors do not all have 3 values \(2 values for 1"):
        to_matrix(pa.array([[1.0, 2.0]]), 3)


def test_float64_vectors_are_stored_as_their_float32_rounding():
    vectors = [np.array([0.1, 1 / 3]), None, [2.5, -0.7]]
    out = store_module._vectors_to_arrow(vectors)
    assert out.type == pa.list_(pa.float32())
    assert out.to_pylist() == [[float(x) for x in np.asarray(v, dtype=np.float32)] if v is not None else None
                               for v in vectors]


def test_recent_scores_default_to_five(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    for i in range(7):
        store.replace_score(score_id=f"s{i}", scope=f"scope{i}", metric="g_vendi", q=1.0, value=float(i),
                            entropy=0.0, n=1, dim=2, n_excluded=0, embedding_key="k", config={"b": 1, "a": 2},
                            run_id=None)
    assert store.recent_scores()["scope"].to_list() == ["scope6", "scope5", "scope4", "scope3", "scope2"]
    assert _raw(store, f"SELECT DISTINCT config::VARCHAR FROM {schema.SCORES}") == [('{"a": 2, "b": 1}',)]


def test_the_lock_wait_defaults_to_ten_minutes(tmp_path):
    assert MetadataStore(tmp_path / "m.duckdb").lock_timeout == 600.0  # the module's documented default


@pytest.mark.parametrize("n_tables, shown", [(1, "t0"), (5, "t0, t1, t2, t3, t4"), (6, "t0, t1, t2, t3, t4, ..."),
                                             (7, "t0, t1, t2, t3, t4, ...")])
def test_a_duckdb_file_of_something_else_lists_its_first_five_tables(tmp_path, n_tables, shown):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    for i in reversed(range(n_tables)):
        con.execute(f"CREATE TABLE t{i} (x INTEGER)")
    con.close()
    with pytest.raises(StoreError) as caught:
        MetadataStore(path)
    assert str(caught.value) == (
        f"{path} is a DuckDB database of something else (tables: {shown}; no {schema.MIGRATIONS}): Prismatic does "
        f"not add its tables to it. Point store_path at another file, or move this one away (mv {path} {path}.bak).")


def test_migrate_returns_the_versions_it_applied(tmp_path):
    path = tmp_path / "m.duckdb"
    store = MetadataStore.__new__(MetadataStore)
    store.path, store.lock_timeout = path, 5.0
    assert store.migrate() == [m.version for m in schema.MIGRATIONS_LIST]
    assert store.migrate() == []


@pytest.mark.parametrize("blocked, current", [(1, 0), (2, 1)])
def test_a_migration_that_fails_names_the_version_the_store_was_left_at(tmp_path, blocked, current):
    """A file with an empty migrations table and, made by hand, a table that migration `blocked`
    creates: the migrations before it apply, it fails, and the store stays at the last one applied."""
    path = tmp_path / "m.duckdb"
    migration = schema.MIGRATIONS_LIST[blocked - 1]
    table = {1: schema.SAMPLES, 2: schema.GENERATIONS}[blocked]
    assert f"CREATE TABLE {table} " in migration.sql
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE {schema.MIGRATIONS} (version INTEGER PRIMARY KEY, name VARCHAR, "
                f"applied_at TIMESTAMP DEFAULT current_timestamp)")
    con.execute(f"CREATE TABLE {table} (edited_by_hand INTEGER)")
    con.close()
    with pytest.raises(StoreError) as caught:
        MetadataStore(path)
    message = str(caught.value)
    assert message.startswith(f"metadata store {path}: upgrading the schema from version {current} failed at "
                              f"migration {blocked} ({migration.name}): Catalog Error: Table with name \"{table}\" "
                              f"already exists!")
    assert message.endswith(f"The store was left at version {current}, unchanged by this migration. It was probably "
                            f"edited by hand or by another tool: restore a backup, or move it away "
                            f"(mv {path} {path}.old) and re-materialize.")
    con = duckdb.connect(str(path))
    try:
        assert con.execute(f"SELECT version FROM {schema.MIGRATIONS} ORDER BY version").fetchall() == [
            (v,) for v in range(1, current + 1)]
    finally:
        con.close()


def test_ingesting_no_shards_reads_no_rows(tmp_path):
    assert MetadataStore(tmp_path / "m.duckdb").ingest_embedding_shards([]) == 0
