"""The arms' tables: each arm's generator requests, candidates, acceptances and per-round summary.

A round is written in one transaction that replaces its own rows (a rerun adds nothing).
If a rerun changes what an arm accepted, the later rounds built on the old acceptances are
removed with it (they must run again), and their numbers are returned. Evidence (cluster,
similarity, whether the cluster is sparse) sits on the candidate rows; decisions sit in
`arm_accepted`, so a threshold can change without recomputing anything.

This module knows tables and rows; it decides nothing (`pipeline/arms.py` does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import polars as pl
import pyarrow as pa

from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

__all__ = ["ArmCandidateRow", "ArmRequestRow", "ArmRoundRecord", "ArmRoundRow", "accepted_candidates",
           "accepted_cells", "arm_history", "clear_arm_rounds", "completed_arm_rounds", "earlier_problem_keys",
           "round_candidates", "write_arm_round"]


@dataclass(frozen=True)
class ArmRequestRow:
    round: int
    arm: str
    request: int
    request_seed: int
    strategy: str
    target_cluster: int | None
    exemplar_ids: list[str]
    exemplar_cells: list[str]
    clustering_id: str


@dataclass(frozen=True)
class ArmCandidateRow:
    round: int
    arm: str
    sample_id: str
    request: int
    slot: int
    position: int
    mode: str
    exemplar_id: str
    family: str
    level: int
    attempts: int
    prompt: str | None
    response: str | None
    answer: str | None
    source_ref: str | None
    content_hash: str | None
    problem_key: str | None
    status: str
    reason: str | None
    cluster: int | None = None
    similarity: float | None = None
    cluster_size: int | None = None
    in_sparse: bool | None = None


@dataclass(frozen=True)
class ArmRoundRow:
    round: int
    arm: str
    budget: int
    n_requests: int
    n_candidates: int
    n_verified: int
    n_passed_filter: int
    n_accepted: int
    shortfall: int
    n_in_sparse: int
    n_pool_before: int
    k: int
    n_sparse: int
    clustering_id: str
    pool_digest: str
    embedding_key: str
    g_vendi_before: float
    g_vendi_after: float
    cells_before: int
    cells_after: int
    cell_entropy_before: float
    cell_entropy_after: float
    rejected: dict[str, int]
    modes: dict[str, int]
    settings: dict[str, Any]


@dataclass(frozen=True)
class _AcceptedRow:
    arm: str
    sample_id: str
    round: int
    rank: int


@dataclass
class ArmRoundRecord:
    """Everything one arm round writes."""

    round: int
    requests: list[ArmRequestRow]
    candidates: list[ArmCandidateRow]
    accepted: dict[str, list[str]]  # arm -> sample ids in acceptance order
    rounds: list[ArmRoundRow]
    run_id: str | None = None
    removed_rounds: list[int] = field(default_factory=list)


_REQUEST_SCHEMA = pa.schema([
    ("round", pa.int32()), ("arm", pa.string()), ("request", pa.int32()), ("request_seed", pa.int64()),
    ("strategy", pa.string()), ("target_cluster", pa.int32()), ("exemplar_ids", pa.list_(pa.string())),
    ("exemplar_cells", pa.list_(pa.string())), ("clustering_id", pa.string()), ("run_id", pa.string())])
_CANDIDATE_SCHEMA = pa.schema([
    ("round", pa.int32()), ("arm", pa.string()), ("sample_id", pa.string()), ("request", pa.int32()),
    ("slot", pa.int32()), ("position", pa.int32()), ("mode", pa.string()), ("exemplar_id", pa.string()),
    ("family", pa.string()), ("level", pa.int32()), ("attempts", pa.int32()), ("prompt", pa.string()),
    ("response", pa.string()), ("answer", pa.string()), ("source_ref", pa.string()), ("content_hash", pa.string()),
    ("problem_key", pa.string()), ("status", pa.string()), ("reason", pa.string()), ("cluster", pa.int32()),
    ("similarity", pa.float64()), ("cluster_size", pa.int32()), ("in_sparse", pa.bool_()), ("run_id", pa.string())])
_ACCEPTED_SCHEMA = pa.schema([("arm", pa.string()), ("sample_id", pa.string()), ("round", pa.int32()),
                              ("rank", pa.int32())])
_ROUND_JSON = ("rejected", "modes", "settings")


def _table(rows: Sequence[Any], schema: pa.Schema, run_id: str | None) -> pa.Table:
    columns = {name: [getattr(r, name) if name != "run_id" else run_id for r in rows] for name in schema.names}
    return pa.table(columns, schema=schema)


def _rounds_table(rows: Sequence[ArmRoundRow], run_id: str | None) -> pa.Table:
    names = [f for f in ArmRoundRow.__dataclass_fields__]
    data = {n: [json.dumps(getattr(r, n), sort_keys=True, default=str) if n in _ROUND_JSON else getattr(r, n)
                for r in rows] for n in names}
    data["run_id"] = pa.array([run_id] * len(rows), type=pa.string())
    return pa.table(data)


def _insert(con: Any, table: str, data: pa.Table, json_columns: Sequence[str] = ()) -> None:
    cols = data.column_names
    select = ", ".join(f"{c}::JSON" if c in json_columns else c for c in cols)
    con.register("incoming", data)
    con.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {select} FROM incoming")
    con.unregister("incoming")


def write_arm_round(store: MetadataStore, record: ArmRoundRecord) -> list[int]:
    """Replace round `record.round`'s rows in one transaction; returns the later rounds removed
    because they grew from acceptances of this round that changed."""
    r = record.round
    accepted = [_AcceptedRow(arm, sid, r, rank) for arm, ids in record.accepted.items() for rank, sid in enumerate(ids)]
    with store.transaction() as con:
        old = set(con.execute(f"SELECT arm, sample_id FROM {S.ARM_ACCEPTED} WHERE round = ?", [r]).fetchall())
        new = {(a.arm, a.sample_id) for a in accepted}
        later = [row[0] for row in con.execute(f"SELECT DISTINCT round FROM {S.ARM_ROUNDS} WHERE round > ? "
                                               f"ORDER BY 1", [r]).fetchall()]
        removed = later if (old and old != new) else []
        for table in (S.ARM_REQUESTS, S.ARM_CANDIDATES, S.ARM_ACCEPTED, S.ARM_ROUNDS):
            con.execute(f"DELETE FROM {table} WHERE round {'>=' if removed else '='} ?", [r])
        _insert(con, S.ARM_REQUESTS, _table(record.requests, _REQUEST_SCHEMA, record.run_id))
        _insert(con, S.ARM_CANDIDATES, _table(record.candidates, _CANDIDATE_SCHEMA, record.run_id))
        _insert(con, S.ARM_ACCEPTED, _table(accepted, _ACCEPTED_SCHEMA, record.run_id))
        _insert(con, S.ARM_ROUNDS, _rounds_table(record.rounds, record.run_id), _ROUND_JSON)
    return removed


def accepted_candidates(store: MetadataStore, arm: str, before_round: int) -> list[dict[str, Any]]:
    """The candidate rows `arm` accepted in rounds before `before_round`, in acceptance order."""
    rows = store.query(f"SELECT c.* FROM {S.ARM_ACCEPTED} a JOIN {S.ARM_CANDIDATES} c "
                       f"ON c.round = a.round AND c.arm = a.arm AND c.sample_id = a.sample_id "
                       f"WHERE a.arm = ? AND a.round < ? ORDER BY a.round, a.rank", [arm, before_round])
    return list(rows.iter_rows(named=True))


def earlier_problem_keys(store: MetadataStore, arm: str, before_round: int) -> set[str]:
    """Normalized problems `arm` was offered in rounds before `before_round` (accepted or not)."""
    rows = store.query(f"SELECT DISTINCT problem_key FROM {S.ARM_CANDIDATES} WHERE arm = ? AND round < ? "
                       f"AND problem_key IS NOT NULL", [arm, before_round])
    return set(rows["problem_key"].to_list())


def completed_arm_rounds(store: MetadataStore, arms: Sequence[str]) -> list[int]:
    """Rounds written for every one of `arms`."""
    rows = store.query(f"SELECT round, count(DISTINCT arm) AS n FROM {S.ARM_ROUNDS} WHERE arm IN "
                       f"({','.join('?' for _ in arms)}) GROUP BY round ORDER BY round", list(arms))
    return [r for r, n in zip(rows["round"].to_list(), rows["n"].to_list()) if n == len(arms)]


def arm_history(store: MetadataStore) -> pl.DataFrame:
    """Every arm round: budget, counts, G-Vendi and cell coverage before/after, by round and arm."""
    return store.query(f"SELECT round, arm, budget, n_candidates, n_verified, n_passed_filter, n_accepted, shortfall, "
                       f"n_in_sparse, n_pool_before, k, n_sparse, g_vendi_before, g_vendi_after, "
                       f"g_vendi_after - g_vendi_before AS gain, cells_before, cells_after, cell_entropy_before, "
                       f"cell_entropy_after, rejected, modes, embedding_key FROM {S.ARM_ROUNDS} ORDER BY round, arm")


def round_candidates(store: MetadataStore, round: int, arm: str) -> pl.DataFrame:
    """The candidates `arm` was offered in `round`, in generation order."""
    return store.query(f"SELECT * FROM {S.ARM_CANDIDATES} WHERE round = ? AND arm = ? ORDER BY position",
                       [round, arm])


def accepted_cells(store: MetadataStore) -> pl.DataFrame:
    """How many samples of each (family, level) cell each arm accepted per round."""
    return store.query(f"SELECT a.round, a.arm, c.family, c.level, count(*) AS n FROM {S.ARM_ACCEPTED} a "
                       f"JOIN {S.ARM_CANDIDATES} c ON c.round = a.round AND c.arm = a.arm "
                       f"AND c.sample_id = a.sample_id GROUP BY ALL ORDER BY a.round, a.arm, c.family, c.level")


def clear_arm_rounds(store: MetadataStore) -> None:
    """Remove every arm round (the embedding cache and the seed pool stay): a fresh start for
    another setting on the same vectors."""
    with store.transaction() as con:
        for table in (S.ARM_REQUESTS, S.ARM_CANDIDATES, S.ARM_ACCEPTED, S.ARM_ROUNDS):
            con.execute(f"DELETE FROM {table}")
