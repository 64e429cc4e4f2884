"""Store functions for held-out evaluation: one row per scored response, per evaluation.

`replace_eval_results` replaces every row of one evaluation (an id derived from what was
evaluated and how, `pipeline.evaluation.evaluation_id`) in one transaction, so a rerun after
a crash never duplicates rows. This module knows the table; scoring happens in
`core.evaluation`.
"""

from __future__ import annotations

from typing import Sequence

import pyarrow as pa

from prismatic_assets.core.evaluation import EvalRecord
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

_COLUMNS = ("evaluation_id", "model_role", "model", "mlflow_run_id", "sample_id", "benchmark", "completion",
            "problem", "response", "extracted", "gold", "correct", "run_id")


def replace_eval_results(store: MetadataStore, evaluation_id: str, *, role: str, model: str,
                         mlflow_run_id: str | None, records: Sequence[EvalRecord], run_id: str | None) -> None:
    """Replace the rows of evaluation `evaluation_id` with one row per record."""
    n = len(records)
    table = pa.table({
        "evaluation_id": [evaluation_id] * n, "model_role": [role] * n, "model": [model] * n,
        "mlflow_run_id": pa.array([mlflow_run_id] * n, type=pa.string()),
        "sample_id": [r.sample_id for r in records], "benchmark": [r.benchmark for r in records],
        "completion": pa.array([r.completion for r in records], type=pa.int32()),
        "problem": [r.problem for r in records], "response": [r.response for r in records],
        "extracted": pa.array([r.extracted for r in records], type=pa.string()),
        "gold": [r.gold for r in records], "correct": pa.array([bool(r.correct) for r in records], type=pa.bool_()),
        "run_id": pa.array([run_id] * n, type=pa.string())})
    with store.transaction() as con:
        con.execute(f"DELETE FROM {S.EVAL_RESULTS} WHERE evaluation_id = ?", [evaluation_id])
        con.register("incoming", table)
        con.execute(f"INSERT INTO {S.EVAL_RESULTS} ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM incoming")
