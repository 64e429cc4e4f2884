"""The arms' tables: the schema migration from the shared-candidate tables, and the round writer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import duckdb

from prismatic_assets.store import schema as S
from prismatic_assets.store.arms_tables import (
    ArmCandidateRow,
    ArmRequestRow,
    ArmRoundRecord,
    ArmRoundRow,
    accepted_candidates,
    accepted_cells,
    arm_history,
    clear_arm_rounds,
    completed_arm_rounds,
    earlier_problem_keys,
    round_candidates,
    write_arm_round,
)
from prismatic_assets.store.store import MetadataStore


def test_migration_6_keeps_the_old_arm_tables_beside_the_new_ones(tmp_path):
    path = tmp_path / "v5.duckdb"
    con = duckdb.connect(str(path))
    con.execute(f"CREATE TABLE {S.MIGRATIONS} (version INTEGER PRIMARY KEY, name VARCHAR, "
                f"applied_at TIMESTAMP DEFAULT current_timestamp)")
    for m in S.MIGRATIONS_LIST[:5]:
        con.execute(m.sql)
        con.execute(f"INSERT INTO {S.MIGRATIONS} (version, name) VALUES (?, ?)", [m.version, m.name])
    con.execute(f"INSERT INTO {S.ARM_ACCEPTED} VALUES ('random', 'arm-r1:gcd:0:3', 1, 0, 2, 5, true)")
    con.close()
    store = MetadataStore(path)
    assert store.schema_version() == S.LATEST_VERSION >= 6
    assert store.query(f"SELECT arm, sample_id FROM {S.ARM_ACCEPTED}_v5").rows() == [("random", "arm-r1:gcd:0:3")]
    assert store.query(f"SELECT count(*) AS n FROM {S.ARM_ACCEPTED}")["n"][0] == 0
    assert "mode" in store.query(f"SELECT * FROM {S.ARM_CANDIDATES} LIMIT 0").columns


def _candidate(round, arm, i, prompt=None):
    prompt = prompt or f"problem {round}-{arm}-{i}"
    return ArmCandidateRow(round, arm, f"{arm}:r{round}:{i}", 0, i, i, "same_cell", "seed:0", "gcd", 0, 1, prompt,
                           "r \\boxed{1}", "1", "ref", f"h{round}{arm}{i}", prompt.lower(), "verified", None, 2, 0.5,
                           3, i % 2 == 0)


def _round_row(round, arm, accepted):
    return ArmRoundRow(round, arm, 2, 1, 3, 3, 1, accepted, 2 - accepted, 1, 10, 2, 1, "c", "p", "k", 1.0, 1.5, 3, 4,
                       0.5, 0.7, {}, {"same_cell": 3}, {"budget": 2})


def _record(round, picks):
    arms = list(picks)
    return ArmRoundRecord(
        round, [ArmRequestRow(round, a, 0, 7, "random", None, ["seed:0"], ["gcd:0"], "c") for a in arms],
        [_candidate(round, a, i) for a in arms for i in range(3)],
        {a: [f"{a}:r{round}:{i}" for i in ids] for a, ids in picks.items()},
        [_round_row(round, a, len(ids)) for a, ids in picks.items()], run_id="x")


def test_rounds_replace_their_rows_and_a_changed_round_removes_the_later_ones(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    assert write_arm_round(store, _record(1, {"random": [2, 0], "naive": [0, 1]})) == []
    assert write_arm_round(store, _record(2, {"random": [1], "naive": [0, 1]})) == []
    assert completed_arm_rounds(store, ["random", "naive"]) == [1, 2]
    assert [r["sample_id"] for r in accepted_candidates(store, "random", 3)] == \
        ["random:r1:2", "random:r1:0", "random:r2:1"]  # acceptance order
    assert earlier_problem_keys(store, "naive", 2) == {"problem 1-naive-0", "problem 1-naive-1", "problem 1-naive-2"}
    counts = {t: store.query(f"SELECT count(*) AS n FROM {t}")["n"][0]
              for t in (S.ARM_REQUESTS, S.ARM_CANDIDATES, S.ARM_ACCEPTED, S.ARM_ROUNDS)}
    assert write_arm_round(store, _record(1, {"random": [2, 0], "naive": [0, 1]})) == []  # the same again
    assert counts == {t: store.query(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in counts}
    assert write_arm_round(store, _record(1, {"random": [1, 0], "naive": [0, 1]})) == [2]  # random changed
    assert completed_arm_rounds(store, ["random", "naive"]) == [1]
    hist = arm_history(store)
    assert hist.select("round", "arm", "gain", "shortfall").rows() == [(1, "naive", 0.5, 0), (1, "random", 0.5, 0)]
    assert accepted_cells(store).rows() == [(1, "naive", "gcd", 0, 2), (1, "random", "gcd", 0, 2)]
    clear_arm_rounds(store)
    assert completed_arm_rounds(store, ["random", "naive"]) == []


def test_every_row_of_a_round_carries_its_run_and_the_summary_its_canonical_json(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    record = _record(1, {"random": [1], "prismatic": [0, 2]})
    record.rounds[0] = dataclasses.replace(record.rounds[0], settings={"b": 1, "a": {"z": 2, "y": Path("out/x")}},
                                           rejected={"wrong": 2, "dense": 1})
    write_arm_round(store, record)
    for table in (S.ARM_REQUESTS, S.ARM_CANDIDATES, S.ARM_ROUNDS):  # acceptances belong to their round's row
        assert store.query(f"SELECT DISTINCT run_id FROM {table}").rows() == [("x",)], table
    settings, rejected = store.query(f"SELECT settings::VARCHAR AS s, rejected::VARCHAR AS r FROM {S.ARM_ROUNDS} "
                                     "WHERE arm = 'random'").rows()[0]
    assert settings == '{"a": {"y": "out/x", "z": 2}, "b": 1}'  # sorted keys; a path as its text
    assert rejected == '{"dense": 1, "wrong": 2}'
    assert json.loads(store.query(f"SELECT modes::VARCHAR AS m FROM {S.ARM_ROUNDS} WHERE arm = 'prismatic'")
                      ["m"][0]) == {"same_cell": 3}


def test_round_candidates_are_one_arms_offers_of_one_round_in_generation_order(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    record = _record(2, {"random": [0], "naive": [1]})
    record.candidates.reverse()  # written in any order, read by position
    write_arm_round(store, _record(1, {"random": [2], "naive": [0]}))
    write_arm_round(store, record)
    got = round_candidates(store, 2, "random")
    assert got["sample_id"].to_list() == ["random:r2:0", "random:r2:1", "random:r2:2"]
    assert got["position"].to_list() == [0, 1, 2] and set(got["round"].to_list()) == {2}
    assert round_candidates(store, 3, "random").height == 0
