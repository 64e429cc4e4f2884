"""The DuckDB metadata store: migrations, idempotent writes, the vector cache, concurrent processes."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest

from prismatic_assets.core.samples import Rejection, Sample
from prismatic_assets.store import schema
from prismatic_assets.store.store import EmbeddingRow, MetadataStore


def _samples(n: int, source: str = "unit") -> list[Sample]:
    return [Sample(sample_id=f"{source}:{i}", prompt=f"{source} problem {i}", response=f"{source} solution {i}",
                   answer=str(i), source=source, source_ref=f"{source}.jsonl:{i + 1}") for i in range(n)]


def _row(sample: Sample, key: str, vector, error=None) -> EmbeddingRow:
    return EmbeddingRow(content_hash=sample.content_hash, embedding_key=key, model_fingerprint="m",
                        projection_key="p", gradient_spec={"params": None}, dim=4, vector=vector,
                        grad_norm=1.0, loss=0.5, n_response_tokens=3, truncated=False, seconds=0.1,
                        error=error, run_id="r1")


def test_migrations_apply_once_and_record_version(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    assert store.schema_version() == schema.LATEST_VERSION
    assert store.migrate() == []  # nothing pending on a second open
    versions = store.query(f"SELECT version FROM {schema.MIGRATIONS}")["version"].to_list()
    assert versions == [m.version for m in schema.MIGRATIONS_LIST]


def test_newer_schema_is_refused(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    with store.connect() as con:
        con.execute(f"INSERT INTO {schema.MIGRATIONS} (version, name) VALUES (999, 'future')")
    with pytest.raises(RuntimeError, match="newer than this Prismatic"):
        MetadataStore(tmp_path / "m.duckdb")


def test_replace_samples_is_idempotent_and_keeps_rejections(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(5)
    rejections = [Rejection("unit", "unit.jsonl:9", 9, "missing field: 'response'", '{"prompt": "x"}')]
    for _ in range(3):  # re-running a step replaces its rows
        store.replace_samples(source="unit", origin="seed", samples=samples, splits={"unit:4": "holdout"},
                              rejections=rejections, run_id="run")
    counts = store.query("SELECT split, count(*) AS n FROM samples GROUP BY split ORDER BY split")
    assert counts.rows() == [("holdout", 1), ("pool", 4)]
    rej = store.query("SELECT line, reason, raw FROM rejections")
    assert rej.rows() == [(9, "missing field: 'response'", '{"prompt": "x"}')]
    loaded = store.load_samples(["unit:3", "unit:1"])
    assert [s.sample_id for s in loaded] == ["unit:3", "unit:1"]
    assert loaded[0] == samples[3]


def test_load_samples_names_missing_ids(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    with pytest.raises(KeyError, match="not in"):
        store.load_samples(["nope:1"])


def test_vector_cache_round_trip_with_errors_and_keys(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(3)
    v0 = np.array([1, 0, 0, 0], dtype=np.float32)
    v2 = np.array([0, 0.6, 0.8, 0], dtype=np.float32)
    store.put_embeddings([_row(samples[0], "k1", v0), _row(samples[1], "k1", None, "zero gradient"),
                          _row(samples[2], "k1", v2)])
    store.put_embeddings([_row(samples[0], "k1", v0)])  # upsert, no duplicate
    assert store.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 3
    hashes = [s.content_hash for s in samples]
    assert store.cached_hashes(hashes, "k1") == set(hashes)
    assert store.cached_hashes(hashes, "k2") == set()  # another model/projection never reuses vectors
    valid, matrix, reasons = store.load_vectors(hashes, "k1", 4)
    assert valid.tolist() == [True, False, True]
    np.testing.assert_array_equal(matrix, np.stack([v0, v2]))
    assert reasons == {1: "zero gradient"}
    valid, matrix, reasons = store.load_vectors(hashes, "k2", 4)
    assert not valid.any() and matrix.shape == (0, 4) and set(reasons.values()) == {"not computed"}


def _write_many(path: str, worker: int, n: int) -> None:
    store = MetadataStore(path, lock_timeout=120)
    samples = _samples(n, source=f"w{worker}")
    for i, sample in enumerate(samples):
        store.put_embeddings([_row(sample, "k", np.full(4, 0.5, dtype=np.float32))])
        store.replace_samples(source=f"w{worker}", origin="seed", samples=samples[: i + 1], splits={},
                              rejections=[], run_id=str(worker))


def test_parallel_processes_do_not_fail_on_the_single_writer_lock(tmp_path):
    path = str(tmp_path / "m.duckdb")
    MetadataStore(path)
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_write_many, args=(path, w, 15)) for w in range(3)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(120)
    assert [p.exitcode for p in workers] == [0, 0, 0]
    store = MetadataStore(path)
    assert store.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 45
    assert store.query("SELECT count(*) AS n FROM samples")["n"][0] == 45


def test_shards_are_ingested_once_per_key_the_last_shard_winning(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from prismatic_assets.store.shards import embedding_rows_table

    store = MetadataStore(tmp_path / "m.duckdb")
    a, b = (Sample(f"s{i}", f"p{i}", f"r{i}") for i in range(2))
    old, new = np.array([1, 0, 0, 0], np.float32), np.array([0, 1, 0, 0], np.float32)
    first, second = tmp_path / "shard-1.parquet", tmp_path / "shard-2.parquet"
    pq.write_table(embedding_rows_table([_row(a, "k", old), _row(b, "k", old), _row(a, "k", old)]), first)
    pq.write_table(embedding_rows_table([_row(a, "k", new)]), second)
    assert store.ingest_embedding_shards([second, first]) == 4  # rows read, in any order given
    assert store.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 2  # one row per sample and key
    ok, vectors, _ = store.load_vectors([a.content_hash, b.content_hash], "k", 4)
    assert ok.all() and vectors[0].tolist() == new.tolist() and vectors[1].tolist() == old.tolist()
    assert store.ingest_embedding_shards([first]) == 3  # again: replaced, not added
    assert store.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 2


def test_shard_ingest_runs_under_its_own_memory_limit_and_rolls_back_whole(tmp_path, monkeypatch):
    """The ingest lowers DuckDB's memory limit (flat memory at any N, benchmarks/bench_ingest.py):
    a limit too small for the insert fails it as a whole, keeping nothing of it, and the
    store's limit is back afterwards."""
    import numpy as np
    import pyarrow.parquet as pq

    from prismatic_assets.store import store as store_module
    from prismatic_assets.store.shards import embedding_rows_table

    store = MetadataStore(tmp_path / "m.duckdb")
    samples = [Sample(f"s{i}", f"p{i}", f"r{i}") for i in range(3000)]
    vectors = np.random.default_rng(0).standard_normal((3000, 4)).astype(np.float32)
    shards = []
    for part in range(3):
        shards.append(tmp_path / f"shard-{part}.parquet")
        rows = [_row(s, "k", v) for s, v in zip(samples[part * 1000:(part + 1) * 1000], vectors[part * 1000:])]
        pq.write_table(embedding_rows_table(rows), shards[-1])
    monkeypatch.setattr(store_module, "BULK_MEMORY_LIMIT", "64KB")
    with pytest.raises(Exception, match="(?i)memory"):
        store.ingest_embedding_shards(shards)
    assert store.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 0
    monkeypatch.setattr(store_module, "BULK_MEMORY_LIMIT", "256MB")
    assert store.ingest_embedding_shards(shards) == 3000
    assert store.query("SELECT count(*) AS n FROM embeddings")["n"][0] == 3000
    with store.connect() as con:
        before = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
        with store_module._memory_limit(con, "300MB"):
            assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "286.1 MiB"
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == before


def test_vectors_stream_out_in_input_order_across_record_batches(tmp_path, monkeypatch):
    from prismatic_assets.store import store as store_module

    monkeypatch.setattr(store_module, "_VECTOR_BATCH_ROWS", 7)  # many record batches
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = [Sample(f"s{i}", f"p{i}", f"r{i}") for i in range(60)]
    vectors = np.random.default_rng(1).standard_normal((60, 4)).astype(np.float32)
    store.put_embeddings([_row(s, "k", None, error="nan loss") if i % 11 == 3 else _row(s, "k", v)
                          for i, (s, v) in enumerate(zip(samples[:50], vectors))])  # 50..59 never computed
    order = list(np.random.default_rng(2).permutation(60)) + [5, 5]  # shuffled, one sample asked twice more
    valid, matrix, reasons = store.load_vectors([samples[i].content_hash for i in order], "k", 4)
    expected_valid = [i < 50 and i % 11 != 3 for i in order]
    assert valid.tolist() == expected_valid
    assert np.array_equal(matrix, vectors[[i for i, ok in zip(order, expected_valid) if ok]])
    assert {reasons[p] for p, i in enumerate(order) if i >= 50} == {"not computed"}
    assert {reasons[p] for p, i in enumerate(order) if i < 50 and i % 11 == 3} == {"nan loss"}
    with pytest.raises(store_module.StoreError, match="do not all have 8 values"):
        store.load_vectors([samples[0].content_hash], "k", 8)


def test_recent_scores_are_the_newest_rows_first(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    for i in range(7):
        store.replace_score(score_id=f"s{i}", scope=f"scope{i}", metric="g_vendi", q=1.0, value=float(i + 1),
                            entropy=0.0, n=i + 1, dim=4, n_excluded=0, embedding_key="k", config={}, run_id=None)
    recent = store.recent_scores(3)
    assert recent["scope"].to_list() == ["scope6", "scope5", "scope4"]
    assert recent["value"].to_list() == [7.0, 6.0, 5.0]
