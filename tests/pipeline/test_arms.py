"""The arms' bookkeeping: candidates made once and shared, pools kept per arm, the budget
respected, reruns that add nothing, and the order the sparse-cluster filter takes candidates.

Real parts: a DuckDB file, reasoning-gym's generators and scorers, per-sample gradients of a
tiny random-init Llama with the packaged tokenizer.
"""

from __future__ import annotations

import contextlib
import shutil

import numpy as np
import pytest

from prismatic_assets.infra.config import build_config
from prismatic_assets.core.procedural import task_items, verify_item
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.arms import (ArmRoundOrderError, accepted_samples, arm_pool, choose, prismatic_order,
                                            run_arm_round, summary_lines)
from prismatic_assets.pipeline.embeddings import embed_samples
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

ARMS = ("prismatic", "random", "naive")
CONFIG = build_config({"clustering": {"ratio": 0.2},
                       "arms": {"budget": 6, "source": {"families": ["basic_arithmetic", "gcd", "leg_counting"],
                                                        "levels": [0, 1], "candidates_per_round": 18}}})


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_embedder):
    template = tmp_path_factory.mktemp("arms") / "seeded.duckdb"
    store = MetadataStore(template)
    seed = [Sample(f"unit:{i:02d}", f"Seed problem {i}: what is {i} times {i + 3}?",
                   f"It is \\boxed{{{i * (i + 3)}}}.", answer=str(i * (i + 3)), source="unit") for i in range(20)]
    store.replace_samples(source="unit", origin="seed", samples=seed, splits={}, rejections=[], run_id="seed")
    embed_samples(seed, tiny_embedder, store)

    def copy(path) -> MetadataStore:
        shutil.copyfile(template, path)
        return MetadataStore(path)
    return copy


def _round(store, tiny_embedder, round, config=CONFIG, **kw):
    return run_arm_round(store, round, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=config,
                         seed_source="unit", **kw)


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory, seeded, tiny_embedder):
    store = seeded(tmp_path_factory.mktemp("three") / "m.duckdb")
    reports = [_round(store, tiny_embedder, r) for r in (1, 2, 3)]
    return store, reports


def test_every_arm_accepts_the_budget_from_one_shared_candidate_set(three_rounds):
    store, reports = three_rounds
    for report in reports:
        assert report.n_candidates == 18 and report.n_verified == 18 and report.rejected == {}
        assert set(report.arms) == set(ARMS)
        verified = set(store.query(f"SELECT sample_id FROM {S.ARM_CANDIDATES} WHERE round = ? AND "
                                   f"status = 'verified'", [report.round])["sample_id"].to_list())
        for arm, result in report.arms.items():
            assert len(result.accepted) == 6  # the budget, for every arm
            assert set(result.accepted) <= verified  # accepted only from the round's shared candidates
    counts = store.query(f"SELECT round, arm, count(*) AS n FROM {S.ARM_ACCEPTED} GROUP BY 1, 2")
    assert sorted(counts["n"].to_list()) == [6] * 9
    # one candidate set per round, embedded once: 18 rows per round, each with one vector
    assert store.query(f"SELECT count(*) AS n FROM {S.ARM_CANDIDATES}")["n"][0] == 54


def test_each_arm_grows_its_own_pool(three_rounds):
    store, reports = three_rounds
    seed = store.load_samples(where="origin = 'seed'")
    for arm in ARMS:
        own = accepted_samples(store, arm, 4)
        assert len(own) == 18 and len({s.sample_id for s in own}) == 18  # no sample twice in one arm
        assert [s.sample_id for s in own] == [sid for r in reports for sid in r.arms[arm].accepted]
        assert len(arm_pool(store, arm, 4, seed)) == 20 + 18
        for r in reports:  # the pool each round started from: seed + that arm's earlier acceptances only
            assert r.arms[arm].n_pool_before == 20 + 6 * (r.round - 1)
    pools = {arm: {s.sample_id for s in accepted_samples(store, arm, 4)} for arm in ARMS}
    assert pools["naive"] != pools["random"] != pools["prismatic"]
    # naive takes generation order: the first 6 verified candidates of every round
    for r in reports:
        first = store.query(f"SELECT sample_id FROM {S.ARM_CANDIDATES} WHERE round = ? AND status = 'verified' "
                            f"ORDER BY position LIMIT 6", [r.round])["sample_id"].to_list()
        assert r.arms["naive"].accepted == first


def test_candidates_never_repeat_a_problem_of_an_earlier_round(three_rounds):
    store, _ = three_rounds
    keys = store.query(f"SELECT problem_key, count(*) AS n FROM {S.ARM_CANDIDATES} WHERE status = 'verified' "
                       f"GROUP BY 1 HAVING n > 1")
    assert keys.is_empty()


def test_g_vendi_per_arm_is_stored_and_summarized(three_rounds):
    store, reports = three_rounds
    rows = store.query(f"SELECT round, arm, g_vendi_before, g_vendi_after FROM {S.ARM_ROUNDS} ORDER BY round, arm")
    assert len(rows) == 9
    for r in reports:
        for arm, result in r.arms.items():
            row = rows.filter((rows["round"] == r.round) & (rows["arm"] == arm)).row(0, named=True)
            assert row["g_vendi_after"] == pytest.approx(result.g_vendi_after)
            assert result.g_vendi_after > 1.0
    # each round starts from the pool the previous round ended with
    for arm in ARMS:
        for a, b in zip(reports, reports[1:]):
            assert b.arms[arm].g_vendi_before == pytest.approx(a.arms[arm].g_vendi_after, rel=1e-5)
    lines = summary_lines(store, ARMS)
    assert len(lines) == 2 + 3 and lines[2].startswith("| 1 |")
    gain = reports[0].arms["prismatic"].gain - reports[0].arms["random"].gain
    assert lines[2].endswith(f"| {gain:+.2f} |")


def test_a_rerun_adds_nothing(three_rounds, tmp_path, tiny_embedder):
    store, reports = three_rounds
    copy = MetadataStore(tmp_path / "copy.duckdb")
    shutil.copyfile(store.path, copy.path)

    varying = {S.ARM_CANDIDATES: " EXCLUDE (run_id)", S.ARM_ACCEPTED: "", S.ARM_ROUNDS: " EXCLUDE (run_id, finished_at)"}

    def snapshot(s):
        return {t: s.query(f"SELECT *{cols} FROM {t} ORDER BY ALL").rows() for t, cols in varying.items()}
    before = snapshot(copy)
    again = _round(copy, tiny_embedder, 2, run_id="again")
    assert again.removed_rounds == []  # the same acceptances: round 3 still stands on round 2
    assert snapshot(copy) == before


def test_a_changed_rerun_removes_the_rounds_built_on_it(three_rounds, tmp_path, tiny_embedder):
    store, _ = three_rounds
    copy = MetadataStore(tmp_path / "copy.duckdb")
    shutil.copyfile(store.path, copy.path)
    changed = build_config({**CONFIG.model_dump(mode="json"), "arms": {**CONFIG.arms.model_dump(mode="json"),
                                                                        "budget": 4}})
    report = _round(copy, tiny_embedder, 2, config=changed)
    assert report.removed_rounds == [3]
    assert copy.query(f"SELECT DISTINCT round FROM {S.ARM_ROUNDS} ORDER BY 1")["round"].to_list() == [1, 2]
    assert copy.query(f"SELECT count(*) AS n FROM {S.ARM_ACCEPTED} WHERE round = 2")["n"][0] == 12


def test_a_second_arm_round_while_one_runs_is_refused(seeded, tmp_path, tiny_embedder):
    from prismatic_assets.pipeline.arms import ARM_ROUND_LOCK
    from prismatic_assets.store.store import StoreBusy

    store = seeded(tmp_path / "busy.duckdb")
    with store.exclusive(ARM_ROUND_LOCK, "arm round 1", round=1):
        with pytest.raises(StoreBusy, match="arm round 1"):
            _round(store, tiny_embedder, 1)
    assert store.query(f"SELECT count(*) AS n FROM {S.ARM_CANDIDATES}")["n"][0] == 0


def test_rounds_run_in_order(seeded, tmp_path, tiny_embedder):
    store = seeded(tmp_path / "order.duckdb")
    with pytest.raises(ArmRoundOrderError, match=r"needs rounds \[1\] first"):
        _round(store, tiny_embedder, 2)
    assert store.query(f"SELECT count(*) AS n FROM {S.ARM_ROUNDS}")["n"][0] == 0


def test_duplicates_of_held_out_problems_are_rejected_with_their_reason(seeded, tmp_path, tiny_embedder):
    store = seeded(tmp_path / "held.duckdb")
    items = task_items(CONFIG.arms.source.families, CONFIG.arms.source.levels, 18, CONFIG.arms.source.seed,
                       id_prefix="arm-r1")
    held = [Sample("held:0", items[2].sample.prompt, "x", answer="1", source="held")]
    report = _round(store, tiny_embedder, 1, held_out=held)
    assert report.rejected == {"duplicate_held_out": 1} and report.n_verified == 17
    row = store.query(f"SELECT status, reason FROM {S.ARM_CANDIDATES} WHERE sample_id = ?",
                      [items[2].sample.sample_id]).row(0)
    assert row == ("rejected", "duplicate_held_out")
    assert all(items[2].sample.sample_id not in r.accepted for r in report.arms.values())


def test_procedural_items_are_deterministic_and_graded_by_their_task():
    a = task_items(["gcd", "leg_counting"], [0, 2], 10, 3, id_prefix="x")
    b = task_items(["gcd", "leg_counting"], [0, 2], 10, 3, id_prefix="x")
    assert [i.sample for i in a] == [i.sample for i in b] and len(a) == 10
    assert {(i.family, i.level) for i in a} == {("gcd", 0), ("gcd", 2), ("leg_counting", 0), ("leg_counting", 2)}
    assert all(verify_item(i) is None for i in a)
    from prismatic_assets.core.procedural import TaskItem, score_item
    wrong = TaskItem(a[0].sample, a[0].family, a[0].level, {**a[0].entry, "answer": "-123456"})
    assert verify_item(wrong) == "scorer_rejects_answer"
    assert score_item(a[0], "I think it is 7") == (None, False)
    with pytest.raises(ValueError, match="unknown reasoning-gym task"):
        task_items(["no_such_task"], [0], 2, 0, id_prefix="x")


def test_the_sparse_cluster_order_and_the_other_arms():
    sizes = np.array([9, 9, 2, 5, 5, 2, 1, 7])  # pool sizes of each candidate's nearest cluster
    sparse = np.array([False, False, True, True, True, True, True, False])
    order = prismatic_order(sizes, sparse, np.random.default_rng(0))
    assert sorted(order[:5]) == [2, 3, 4, 5, 6]  # every candidate that passed the filter first
    assert order[5:] == [7, 0, 1] or order[5:] == [7, 1, 0]  # then the smallest other cluster first
    draws = {tuple(prismatic_order(sizes, sparse, np.random.default_rng(s))[:5]) for s in range(20)}
    assert len(draws) > 1  # a random draw among those that passed, not generation order
    assert choose("naive", 7, 3, rng_seed=0) == [0, 1, 2]
    drawn = choose("random", 7, 3, rng_seed=5)
    assert len(set(drawn)) == 3 and drawn == choose("random", 7, 3, rng_seed=5)
    assert choose("random", 2, 3, rng_seed=0) == [0, 1]  # fewer verified than the budget: all of them
