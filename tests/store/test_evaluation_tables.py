"""Evaluation rows in the store: one row per response, replaced (never duplicated) per evaluation."""

from __future__ import annotations

from prismatic_assets.core.evaluation import EvalRecord
from prismatic_assets.store import schema
from prismatic_assets.store.evaluation_tables import replace_eval_results
from prismatic_assets.store.store import MetadataStore


def _records(correct: list[bool]) -> list[EvalRecord]:
    return [EvalRecord(sample_id=f"gsm:{i}", benchmark="gsm", completion=0, problem=f"p{i}", response=f"r{i}",
                       extracted=None if i == 0 else str(i), gold=str(i), correct=c) for i, c in enumerate(correct)]


def _rows(store: MetadataStore) -> list[tuple]:
    return store.query(f"SELECT evaluation_id, model_role, model, mlflow_run_id, sample_id, extracted, correct, run_id "
                       f"FROM {schema.EVAL_RESULTS} ORDER BY evaluation_id, sample_id").rows()


def test_rows_are_written_as_given_and_a_rerun_replaces_them(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    replace_eval_results(store, "e1", role="base", model="m0", mlflow_run_id=None, records=_records([False, True]),
                         run_id="r1")
    replace_eval_results(store, "e2", role="distilled", model="m1", mlflow_run_id="ml", records=_records([True]),
                         run_id="r1")
    assert _rows(store) == [("e1", "base", "m0", None, "gsm:0", None, False, "r1"),
                            ("e1", "base", "m0", None, "gsm:1", "1", True, "r1"),
                            ("e2", "distilled", "m1", "ml", "gsm:0", None, True, "r1")]
    # The same evaluation again (a rerun after a crash): its rows are replaced, the other's kept.
    replace_eval_results(store, "e1", role="base", model="m0", mlflow_run_id=None, records=_records([True]),
                         run_id="r2")
    assert _rows(store) == [("e1", "base", "m0", None, "gsm:0", None, True, "r2"),
                            ("e2", "distilled", "m1", "ml", "gsm:0", None, True, "r1")]
