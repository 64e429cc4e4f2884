"""The correlation study's tables: its sets and members, their measures, one student each, the ranking.

Every write replaces its own rows in one transaction (delete by key, then insert), so a
rerun never duplicates a row: a study is written once per `study_id` (the digest of the
settings that define its sets), measures per study, a student's result per (study, set,
run key) together with its accuracy and per-problem answers, the ranking per (study, run
key). This module knows tables and rows; it computes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import pyarrow as pa

from prismatic_assets.core.samples import Sample
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore


@dataclass(frozen=True)
class SetRecord:
    name: str
    position: int
    kind: str
    details: dict
    members: list[Sample]  # each with meta {"family", "level"} where known


@dataclass(frozen=True)
class MeasureRow:
    set_name: str
    measure: str
    value: float | None
    n: int
    reason: str | None = None
    embedding_key: str | None = None


@dataclass(frozen=True)
class AccuracyRecord:
    split: str
    n: int
    correct: int
    accuracy: float
    low: float
    high: float


@dataclass(frozen=True)
class StudentRecord:
    set_name: str
    run_key: str
    status: str  # 'finished' | 'failed'
    settings: dict
    reason: str | None = None
    model: str | None = None
    steps: int | None = None
    final_loss: float | None = None
    train_seconds: float | None = None
    eval_seconds: float | None = None
    mlflow_run_id: str | None = None
    accuracy: list[AccuracyRecord] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)  # EvalReport.rows(), for eval_results


@dataclass(frozen=True)
class RankingRow:
    measure: str
    split: str
    rho: float | None
    low: float | None
    high: float | None
    n_sets: int
    resamples: int
    degenerate: int
    bootstrap_seed: int
    reason: str | None = None


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def study_exists(store: MetadataStore, study_id: str) -> bool:
    return store.query(f"SELECT count(*) AS n FROM {S.STUDIES} WHERE study_id = ?", [study_id])["n"][0] > 0


def study_pool_size(store: MetadataStore, study_id: str) -> int | None:
    """The verified pool size the study's sets were drawn from (None for an unknown study)."""
    rows = store.query(f"SELECT n_pool FROM {S.STUDIES} WHERE study_id = ?", [study_id])
    return int(rows["n_pool"][0]) if rows.height else None


def write_study(store: MetadataStore, *, study_id: str, settings: dict, pool_source: str, n_pool: int,
                rejections: dict[str, int], set_size: int, disjoint: bool, sets: Sequence[SetRecord],
                run_id: str | None) -> None:
    """Replace the study's row, its sets and their members (one transaction)."""
    members = [(s.name, m) for s in sets for m in s.members]
    table = pa.table({
        "study_id": [study_id] * len(members), "set_name": [n for n, _ in members],
        "sample_id": [m.sample_id for _, m in members],
        "family": pa.array([m.meta.get("family") for _, m in members], type=pa.string()),
        "level": pa.array([m.meta.get("level") for _, m in members], type=pa.int32()),
        "prompt": [m.prompt for _, m in members], "response": [m.response for _, m in members],
        "answer": pa.array([m.answer for _, m in members], type=pa.string()),
        "category": pa.array([m.category for _, m in members], type=pa.string()),
        "source": [m.source for _, m in members],
        "source_ref": pa.array([m.source_ref for _, m in members], type=pa.string()),
        "content_hash": [m.content_hash for _, m in members]})
    with store.transaction() as con:
        for name in (S.STUDY_MEMBERS, S.STUDY_SETS, S.STUDIES):
            con.execute(f"DELETE FROM {name} WHERE study_id = ?", [study_id])
        con.execute(f"INSERT INTO {S.STUDIES} (study_id, settings, pool_source, n_pool, n_rejected, pool_rejections, "
                    f"n_sets, set_size, disjoint, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [study_id, _json(settings), pool_source, n_pool, sum(rejections.values()), _json(rejections),
                     len(sets), set_size, disjoint, run_id])
        for s in sets:
            con.execute(f"INSERT INTO {S.STUDY_SETS} (study_id, set_name, position, kind, size, details) "
                        f"VALUES (?, ?, ?, ?, ?, ?)", [study_id, s.name, s.position, s.kind, len(s.members),
                                                      _json(s.details)])
        con.register("incoming", table)
        con.execute(f"INSERT INTO {S.STUDY_MEMBERS} SELECT * FROM incoming")


def load_sets(store: MetadataStore, study_id: str) -> list[SetRecord]:
    """The study's sets in design order, members in sample id order."""
    sets = store.query(f"SELECT set_name, position, kind, details FROM {S.STUDY_SETS} WHERE study_id = ? "
                       f"ORDER BY position", [study_id])
    rows = store.query(f"SELECT * FROM {S.STUDY_MEMBERS} WHERE study_id = ? ORDER BY set_name, sample_id",
                       [study_id])
    by_set: dict[str, list[Sample]] = {}
    for r in rows.iter_rows(named=True):
        meta = {k: r[k] for k in ("family", "level") if r[k] is not None}
        by_set.setdefault(r["set_name"], []).append(Sample(
            sample_id=r["sample_id"], prompt=r["prompt"], response=r["response"], answer=r["answer"],
            category=r["category"], source=r["source"], source_ref=r["source_ref"] or "", meta=meta))
    return [SetRecord(r["set_name"], r["position"], r["kind"], json.loads(r["details"]), by_set.get(r["set_name"], []))
            for r in sets.iter_rows(named=True)]


def replace_measures(store: MetadataStore, study_id: str, rows: Sequence[MeasureRow]) -> None:
    with store.transaction() as con:
        con.execute(f"DELETE FROM {S.STUDY_MEASURES} WHERE study_id = ?", [study_id])
        for r in rows:
            con.execute(f"INSERT INTO {S.STUDY_MEASURES} (study_id, set_name, measure, value, n, reason, "
                        f"embedding_key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [study_id, r.set_name, r.measure, r.value, r.n, r.reason, r.embedding_key])


def load_measures(store: MetadataStore, study_id: str) -> list[MeasureRow]:
    rows = store.query(f"SELECT set_name, measure, value, n, reason, embedding_key FROM {S.STUDY_MEASURES} "
                       f"WHERE study_id = ? ORDER BY set_name, measure", [study_id])
    return [MeasureRow(**r) for r in rows.iter_rows(named=True)]


def finished_students(store: MetadataStore, study_id: str, run_key: str) -> set[str]:
    """Names of the sets (and 'base') whose student has a stored result under `run_key`."""
    rows = store.query(f"SELECT set_name FROM {S.STUDY_STUDENTS} WHERE study_id = ? AND run_key = ? AND "
                       f"status = 'finished'", [study_id, run_key])
    return set(rows["set_name"].to_list())


def write_student(store: MetadataStore, study_id: str, record: StudentRecord, *, evaluation_id: str,
                  run_id: str | None) -> None:
    """Replace one student's result, its accuracy per split and its per-problem answers (one transaction)."""
    key = [study_id, record.set_name, record.run_key]
    answers = record.answers
    table = pa.table({
        "evaluation_id": [evaluation_id] * len(answers), "model_role": [f"study:{record.set_name}"] * len(answers),
        "model": [record.model or ""] * len(answers), "mlflow_run_id": [record.mlflow_run_id or ""] * len(answers),
        "sample_id": [a["sample_id"] for a in answers], "benchmark": [a["benchmark"] for a in answers],
        "completion": pa.array([a["completion"] for a in answers], type=pa.int32()),
        "problem": [a["problem"] for a in answers], "response": [a["response"] for a in answers],
        "extracted": pa.array([a["extracted"] for a in answers], type=pa.string()),
        "gold": [a["gold"] for a in answers], "correct": pa.array([bool(a["correct"]) for a in answers],
                                                                  type=pa.bool_()),
        "run_id": pa.array([run_id] * len(answers), type=pa.string())})
    with store.transaction() as con:
        for name in (S.STUDY_STUDENTS, S.STUDY_ACCURACY):
            con.execute(f"DELETE FROM {name} WHERE study_id = ? AND set_name = ? AND run_key = ?", key)
        con.execute(f"DELETE FROM {S.EVAL_RESULTS} WHERE evaluation_id = ?", [evaluation_id])
        con.execute(f"INSERT INTO {S.STUDY_STUDENTS} (study_id, set_name, run_key, status, reason, model, steps, "
                    f"final_loss, train_seconds, eval_seconds, settings, mlflow_run_id, run_id) "
                    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    key + [record.status, record.reason, record.model, record.steps, record.final_loss,
                           record.train_seconds, record.eval_seconds, _json(record.settings), record.mlflow_run_id,
                           run_id])
        for a in record.accuracy:
            con.execute(f"INSERT INTO {S.STUDY_ACCURACY} (study_id, set_name, run_key, split, n, correct, accuracy, "
                        f"low, high) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        key + [a.split, a.n, a.correct, a.accuracy, a.low, a.high])
        if answers:
            con.register("incoming", table)
            con.execute(f"INSERT INTO {S.EVAL_RESULTS} (evaluation_id, model_role, model, mlflow_run_id, sample_id, "
                        f"benchmark, completion, problem, response, extracted, gold, correct, run_id) "
                        f"SELECT * FROM incoming")


def load_students(store: MetadataStore, study_id: str, run_key: str) -> list[StudentRecord]:
    """Every student row of the study under `run_key` (finished and failed), with its accuracy."""
    rows = store.query(f"SELECT * FROM {S.STUDY_STUDENTS} WHERE study_id = ? AND run_key = ?", [study_id, run_key])
    acc = store.query(f"SELECT set_name, split, n, correct, accuracy, low, high FROM {S.STUDY_ACCURACY} "
                      f"WHERE study_id = ? AND run_key = ? ORDER BY split", [study_id, run_key])
    by_set: dict[str, list[AccuracyRecord]] = {}
    for a in acc.iter_rows(named=True):
        name = a.pop("set_name")
        by_set.setdefault(name, []).append(AccuracyRecord(**a))
    return [StudentRecord(set_name=r["set_name"], run_key=r["run_key"], status=r["status"],
                          settings=json.loads(r["settings"]), reason=r["reason"], model=r["model"], steps=r["steps"],
                          final_loss=r["final_loss"], train_seconds=r["train_seconds"],
                          eval_seconds=r["eval_seconds"], mlflow_run_id=r["mlflow_run_id"],
                          accuracy=by_set.get(r["set_name"], []))
            for r in rows.iter_rows(named=True)]


def replace_rankings(store: MetadataStore, study_id: str, run_key: str, rows: Sequence[RankingRow]) -> None:
    with store.transaction() as con:
        con.execute(f"DELETE FROM {S.STUDY_RANKINGS} WHERE study_id = ? AND run_key = ?", [study_id, run_key])
        for r in rows:
            con.execute(f"INSERT INTO {S.STUDY_RANKINGS} (study_id, run_key, measure, split, rho, low, high, n_sets, "
                        f"resamples, degenerate, bootstrap_seed, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [study_id, run_key, r.measure, r.split, r.rho, r.low, r.high, r.n_sets, r.resamples,
                         r.degenerate, r.bootstrap_seed, r.reason])


def load_rankings(store: MetadataStore, study_id: str, run_key: str) -> list[RankingRow]:
    rows = store.query(f"SELECT measure, split, rho, low, high, n_sets, resamples, degenerate, bootstrap_seed, reason "
                       f"FROM {S.STUDY_RANKINGS} WHERE study_id = ? AND run_key = ?", [study_id, run_key])
    return [RankingRow(**r) for r in rows.iter_rows(named=True)]


def latest_study(store: MetadataStore) -> tuple[str, str] | None:
    """(study_id, run_key) of the most recently finished student, None when no study has one."""
    rows = store.query(f"SELECT study_id, run_key FROM {S.STUDY_STUDENTS} ORDER BY finished_at DESC LIMIT 1")
    return None if rows.is_empty() else (rows["study_id"][0], rows["run_key"][0])


def row_counts(store: MetadataStore) -> dict[str, int]:
    """Rows per study table (and eval_results), to show that a rerun adds none."""
    tables = (S.STUDIES, S.STUDY_SETS, S.STUDY_MEMBERS, S.STUDY_MEASURES, S.STUDY_STUDENTS, S.STUDY_ACCURACY,
              S.STUDY_RANKINGS, S.EVAL_RESULTS)
    with store.connect() as con:
        return {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]) for t in tables}
