"""The arm round's lock: held for the whole round, its file names the round and the run."""

from __future__ import annotations

import json
import os

from prismatic_assets.pipeline.arms import ARM_ROUND_LOCK
from prismatic_assets.pipeline.seed import load_seed, store_seed
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
