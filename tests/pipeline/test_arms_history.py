"""What an arm round holds while it runs (its lock) and what it reads of the rounds before it."""

from __future__ import annotations

import json
import os
import shutil

from prismatic_assets.pipeline.arms import ARM_ROUND_LOCK
from prismatic_assets.pipeline.seed import load_seed, store_seed
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore
from tests.pipeline.test_arms import CONFIG, _round


def test_the_lock_file_names_the_round_and_its_run_while_the_round_runs(tmp_path, tiny_embedder):
    """Whoever a round refuses is told which round holds the store and under which run (see
    `MetadataStore.exclusive`): the lock file says so for the whole round, and is emptied after."""
    store = MetadataStore(tmp_path / "lock.duckdb")
    store_seed(store, load_seed(CONFIG.seed, CONFIG.world), "seed")
    lock = store.path.with_name(f"{store.path.name}.{ARM_ROUND_LOCK}.lock")
    holders: list[dict] = []
    _round(store, tiny_embedder, 1, run_id="run-7",
           progress=lambda *event: holders.append(json.loads(lock.read_text())))
    assert holders, "the round reported no progress"
    assert {(h["what"], h["round"], h["run_id"], h["pid"]) for h in holders} == {
        ("arm round 1", 1, "run-7", os.getpid())}
    assert lock.read_text() == ""  # released


def test_an_arm_is_never_offered_a_problem_again_that_an_earlier_round_offered_it(tmp_path, tiny_embedder):
    """Round 2 of an arm writes around every problem its round 1 offered, accepted or not: made to look
    as if round 1 had offered what round 2 writes on its own, round 2 writes none of those again."""
    first = MetadataStore(tmp_path / "first.duckdb")
    store_seed(first, load_seed(CONFIG.seed, CONFIG.world), "seed")
    _round(first, tiny_embedder, 1)
    shutil.copyfile(first.path, tmp_path / "second.duckdb")
    keys = f"SELECT arm, problem_key FROM {S.ARM_CANDIDATES} WHERE round = 2 AND problem_key IS NOT NULL"
    _round(first, tiny_embedder, 2)
    own: dict[str, list[str]] = {}  # what each arm's round 2 writes by itself
    for arm, key in sorted(first.query(keys).rows()):
        own.setdefault(arm, []).append(key)
    second = MetadataStore(tmp_path / "second.duckdb")
    planted = set()  # round 1's rows, now offering round 2's problems
    with second.transaction() as con:
        for arm, problems in own.items():
            slots = con.execute(f"SELECT sample_id FROM {S.ARM_CANDIDATES} WHERE round = 1 AND arm = ? "
                                "AND problem_key IS NOT NULL ORDER BY sample_id", [arm]).fetchall()
            for (slot,), key in zip(slots, problems):
                con.execute(f"UPDATE {S.ARM_CANDIDATES} SET problem_key = ? WHERE sample_id = ?", [key, slot])
                planted.add((arm, key))
    _round(second, tiny_embedder, 2)
    assert len(planted) >= 4 * len(own) and not planted & set(second.query(keys).rows())
