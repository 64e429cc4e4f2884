"""The arms in the procedural world: each arm generates from its own pool, accepts the budget by its
rule, records G-Vendi and cell coverage; reruns add nothing, a killed round reruns to the same rows.

Real parts: a DuckDB file, reasoning-gym's generators and scorers, per-sample gradients of a
tiny random-init Llama with the packaged tokenizer.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from prismatic_assets.core.samples import Sample, normalize_text
from prismatic_assets.core.world import WorldError, draw_entry, world_item
from prismatic_assets.infra.config import Config, build_config
from prismatic_assets.pipeline.arms import (
    ArmRoundOrderError,
    accepted_samples,
    arm_pool,
    choose,
    next_arm_round,
    prismatic_order,
    run_arm_round,
    summary_lines,
)
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors
from prismatic_assets.pipeline.seed import load_seed, store_seed
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

ROOT = Path(__file__).resolve().parents[2]
ARMS = ("prismatic", "prismatic_targeted", "random", "naive")
VALUES = {"seed": {"source": "world", "holdout_fraction": 0.0}, "clustering": {"ratio": 0.2},
          "world": {"families": ["basic_arithmetic", "gcd", "leg_counting", "letter_counting"],
                    "pool": {"size": 24, "family_zipf": 1.0}, "held_out_per_family": 2},
          "arms": {"requests_per_round": 5, "budget": 4}}
CONFIG = build_config(VALUES)
VARYING = {S.ARM_REQUESTS: " EXCLUDE (run_id)", S.ARM_CANDIDATES: " EXCLUDE (run_id)", S.ARM_ACCEPTED: "",
           S.ARM_ROUNDS: " EXCLUDE (run_id, finished_at)"}


def snapshot(store: MetadataStore, arm: str | None = None) -> dict:
    """Every arm row, floats to 5 decimals: a gradient computed in another batch (other arms' candidates
    beside it, sorted by length) differs in the last float32 bits, which moves a similarity or a
    G-Vendi by ~1e-7; every id, count and decision must match exactly."""
    where = f" WHERE arm = '{arm}'" if arm else ""
    return {t: [tuple(round(v, 5) if isinstance(v, float) else v for v in row)
                for row in store.query(f"SELECT *{cols} FROM {t}{where} ORDER BY ALL").rows()]
            for t, cols in VARYING.items()}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_embedder):
    """A store holding the world's seed pool and its vectors; each call returns a fresh copy."""
    template = tmp_path_factory.mktemp("arms") / "seeded.duckdb"
    store = MetadataStore(template)
    seed = load_seed(CONFIG.seed, CONFIG.world)
    store_seed(store, seed, "seed")
    embed_samples(seed.pool, tiny_embedder, store)

    def copy(path) -> MetadataStore:
        shutil.copyfile(template, path)
        return MetadataStore(path)
    return copy


def _round(store, tiny_embedder, round, config=CONFIG, **kw):
    return run_arm_round(store, round, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=config,
                         seed_source="world", **kw)


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory, seeded, tiny_embedder):
    store = seeded(tmp_path_factory.mktemp("three") / "m.duckdb")
    reports = [_round(store, tiny_embedder, r) for r in (1, 2, 3)]
    return store, reports


def test_every_arm_accepts_the_budget_from_its_own_verified_candidates(three_rounds):
    store, reports = three_rounds
    for report in reports:
        assert set(report.arms) == set(ARMS)
        for arm, result in report.arms.items():
            assert result.arm == arm and len(result.candidates) == 10 and len(result.requests) == 5
            assert [c.position for c in result.candidates] == list(range(10))  # generation order
            assert len(result.accepted) == 4 and result.shortfall == 0
            own = {c.sample.sample_id for c in result.verified}
            assert set(result.accepted) <= own and all(sid.startswith(f"arm:{arm}:r{report.round}:")
                                                       for sid in result.accepted)
    rows = store.query(f"SELECT round, arm, n_accepted, shortfall, n_candidates FROM {S.ARM_ROUNDS} ORDER BY ALL")
    assert rows.rows() == sorted((r, a, 4, 0, 10) for r in (1, 2, 3) for a in ARMS)


def test_each_arms_exemplars_come_from_its_own_pool(three_rounds):
    store, reports = three_rounds
    seed = store.load_samples(where="origin = 'seed' AND split = 'pool'")
    for report in reports:
        for arm in ARMS:
            pool = {s.sample_id for s in arm_pool(store, arm, report.round, seed)}
            assert len(pool) == len(seed) + 4 * (report.round - 1)
            shown = store.query(f"SELECT exemplar_ids FROM {S.ARM_REQUESTS} WHERE round = ? AND arm = ?",
                                [report.round, arm])["exemplar_ids"].to_list()
            assert len(shown) == 5 and all(set(ids) <= pool for ids in shown)
    for arm in ARMS:
        own = accepted_samples(store, arm, 4)
        assert [s.sample_id for s in own] == [sid for r in reports for sid in r.arms[arm].accepted]


def test_arms_never_read_each_others_pools(three_rounds, seeded, tmp_path, tiny_embedder):
    """The random arm run alone gives exactly the rows it got beside the three other arms."""
    store, _ = three_rounds
    alone = seeded(tmp_path / "alone.duckdb")
    config = build_config({**VALUES, "arms": {**VALUES["arms"], "arms": ["random"]}})
    for r in (1, 2):
        _round(alone, tiny_embedder, r, config=config)
    beside = {t: [row for row in rows if row[0] <= 2] for t, rows in snapshot(store, "random").items()
              if t != S.ARM_ACCEPTED}
    by_itself = {t: rows for t, rows in snapshot(alone, "random").items() if t != S.ARM_ACCEPTED}
    settings = [i for i, c in enumerate(store.query(f"SELECT * EXCLUDE (run_id, finished_at) FROM {S.ARM_ROUNDS}")
                                        .columns) if c == "settings"][0]

    def without_settings(rows):  # the arms list differs, nothing else
        return [row[:settings] + row[settings + 1:] for row in rows]
    beside[S.ARM_ROUNDS], by_itself[S.ARM_ROUNDS] = (without_settings(beside[S.ARM_ROUNDS]),
                                                     without_settings(by_itself[S.ARM_ROUNDS]))
    assert beside == by_itself


def test_naive_takes_generation_order_and_the_filtered_arms_take_sparse_clusters_first(three_rounds):
    store, reports = three_rounds
    for report in reports:
        for arm, result in report.arms.items():
            verified = [c for c in result.candidates if c.reason is None]
            if arm == "naive":
                assert result.accepted == [c.sample.sample_id for c in verified[:4]]
            if arm in ("prismatic", "prismatic_targeted"):
                passed = {c.sample.sample_id for c in verified if c.in_sparse}
                taken = set(result.accepted)
                assert taken <= passed if len(passed) >= 4 else passed <= taken
    # the filter is a difference of rule: across the run, a filtered arm accepted more sparse-cluster
    # candidates than it would by taking them in generation order
    sparse = store.query(f"SELECT a.arm, count(*) FILTER (WHERE c.in_sparse) AS n FROM {S.ARM_ACCEPTED} a JOIN "
                         f"{S.ARM_CANDIDATES} c USING (round, arm, sample_id) GROUP BY 1")
    n = dict(sparse.rows())
    assert n["prismatic"] >= n["naive"] and n["prismatic_targeted"] >= n["naive"]


def test_the_targeted_arm_draws_each_request_from_one_sparse_cluster(three_rounds):
    store, reports = three_rounds
    for report in reports:
        rows = store.query(f"SELECT r.request, r.strategy, r.target_cluster, r.exemplar_ids, r.clustering_id FROM "
                           f"{S.ARM_REQUESTS} r WHERE round = ? AND arm = 'prismatic_targeted' ORDER BY request",
                           [report.round])
        for request in rows.iter_rows(named=True):
            assert request["strategy"] == "sparse_cluster"
            members = store.query(f"SELECT sample_id, cluster FROM {S.CLUSTER_MEMBERS} WHERE clustering_id = ?",
                                  [request["clustering_id"]])
            cluster_of = dict(members.rows())
            assert {cluster_of[sid] for sid in request["exemplar_ids"]} == {request["target_cluster"]}
            size, sparse = store.query(f"SELECT size, is_sparse FROM {S.CLUSTERS} WHERE clustering_id = ? AND "
                                       f"cluster = ?", [request["clustering_id"], request["target_cluster"]]).row(0)
            assert sparse and len(request["exemplar_ids"]) == min(5, size)
        other = store.query(f"SELECT DISTINCT strategy FROM {S.ARM_REQUESTS} WHERE arm <> 'prismatic_targeted'")
        assert other["strategy"].to_list() == ["random"]


def test_g_vendi_and_cell_coverage_match_an_independent_computation(three_rounds, tiny_embedder):
    store, reports = three_rounds
    seed = store.load_samples(where="origin = 'seed' AND split = 'pool'")
    key, dim = reports[0].embedding_key, tiny_embedder.dim
    for report in reports:
        for arm in report.arms:
            pool = arm_pool(store, arm, report.round + 1, seed)  # the pool after this round
            cells = Counter((s.meta["family"], s.meta["level"]) for s in pool)
            p = np.array(list(cells.values())) / len(pool)
            row = store.query(f"SELECT * FROM {S.ARM_ROUNDS} WHERE round = ? AND arm = ?",
                              [report.round, arm]).row(0, named=True)
            assert row["cells_after"] == len(cells)
            assert row["cell_entropy_after"] == pytest.approx(float(-(p * np.log(p)).sum()))
            g = pool_vectors(store, pool, key, dim).vectors.astype(np.float64)
            lam = np.clip(np.linalg.eigvalsh(g.T @ g / len(g)), 0, None)
            lam = lam[lam > 0]
            assert row["g_vendi_after"] == pytest.approx(math.exp(-(lam * np.log(lam)).sum()), rel=1e-4)
    for arm in ARMS:  # each round starts where the previous ended
        for a, b in zip(reports, reports[1:]):
            assert b.arms[arm].g_vendi_before == pytest.approx(a.arms[arm].g_vendi_after, rel=1e-5)
            assert b.arms[arm].cells_before == a.arms[arm].cells_after
    lines = summary_lines(store, ARMS)
    assert len(lines) == 2 + 3 * 4 and lines[2].startswith("| 1 | naive | 4 (0) |")


def test_an_arm_round_scores_g_vendi_of_the_configured_order(seeded, tmp_path, tiny_embedder):
    from vendi_score import vendi

    config = build_config({**VALUES, "arms": {**VALUES["arms"], "arms": ["random"]}, "score": {"q": 2}})
    store = seeded(tmp_path / "q2.duckdb")
    report = _round(store, tiny_embedder, 1, config=config)
    seed = store.load_samples(where="origin = 'seed' AND split = 'pool'")
    key, dim = report.embedding_key, tiny_embedder.dim
    row = store.query(f"SELECT * FROM {S.ARM_ROUNDS} WHERE arm = 'random'").row(0, named=True)
    for column, pool in (("g_vendi_before", seed), ("g_vendi_after", arm_pool(store, "random", 2, seed))):
        vectors = pool_vectors(store, pool, key, dim).vectors.astype(np.float64)
        assert row[column] == pytest.approx(vendi.score_dual(vectors, q=2), rel=1e-5)
        assert row[column] != pytest.approx(vendi.score_dual(vectors, q=1), rel=1e-3)  # so the order shows


class FirstGradientFails:
    """The embedder, except that the first sample it is asked for gets no gradient, with a long error."""

    ERROR = "non-finite loss (nan) " + "at token 7 " * 30

    def __init__(self, inner) -> None:
        self.inner, self.failed = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def embed_chunks(self, samples):
        import dataclasses

        for chunk, out in self.inner.embed_chunks(samples):
            if not self.failed:
                self.failed.append(chunk[0].sample_id)
                out = [dataclasses.replace(out[0], vector=None, error=self.ERROR), *out[1:]]
            yield chunk, out


def test_a_verified_candidate_without_a_gradient_is_rejected_with_its_reason(seeded, tmp_path, tiny_embedder):
    config = build_config({**VALUES, "arms": {**VALUES["arms"], "arms": ["random"]}})
    store = seeded(tmp_path / "nograd.duckdb")
    embedder = FirstGradientFails(tiny_embedder)
    result = _round(store, embedder, 1, config=config).arms["random"]
    (failed,) = embedder.failed
    reason = ("no_gradient: " + FirstGradientFails.ERROR)[:200]  # reasons are cut at 200 characters
    assert {c.sample.sample_id: c.reason for c in result.candidates if c.reason} == {failed: reason}
    assert failed not in result.accepted and len(result.accepted) == 4
    stored = store.query(f"SELECT status, reason FROM {S.ARM_CANDIDATES} WHERE sample_id = ?", [failed]).rows()
    assert stored == [("rejected", reason)]
    row = store.query(f"SELECT rejected, n_verified FROM {S.ARM_ROUNDS} WHERE arm = 'random'").row(0, named=True)
    assert _json(row["rejected"]) == {"no_gradient": 1} and row["n_verified"] == 9


def test_an_arms_pool_holds_what_it_accepted_as_it_was_written(three_rounds):
    store, reports = three_rounds
    for arm in ARMS:
        written = {}
        for report in reports:
            by_id = {c.sample.sample_id: c.sample for c in report.arms[arm].candidates}
            written |= {sid: (report.round, by_id[sid]) for sid in report.arms[arm].accepted}
        pool = accepted_samples(store, arm, 4)
        assert [s.sample_id for s in pool] == [sid for r in reports for sid in r.arms[arm].accepted]
        for s in pool:
            round_, w = written[s.sample_id]
            assert (s.prompt, s.response, s.answer) == (w.prompt, w.response, w.answer) and s.answer
            assert s.category == w.meta["family"] and s.source == f"arm:{arm}"
            assert s.source_ref == w.source_ref and s.source_ref.startswith("reasoning_gym:")
            assert s.meta == {"family": w.meta["family"], "level": w.meta["level"], "round": round_}
        assert [s.sample_id for s in accepted_samples(store, arm, 2)] == reports[0].arms[arm].accepted


def test_an_accepted_row_without_a_source_ref_has_an_empty_one():
    from prismatic_assets.pipeline.arms import _accepted_sample

    row = {"sample_id": "arm:naive:r1:0", "prompt": "2 + 2?", "response": "\\boxed{4}", "answer": "4",
           "family": "basic_arithmetic", "level": 0, "round": 1, "arm": "naive", "source_ref": None}
    assert _accepted_sample(row).source_ref == ""


def test_the_closing_table_has_a_row_per_round_of_each_arm_asked_for(three_rounds, tmp_path):
    store, reports = three_rounds
    header = ["| round | arm | accepted (shortfall) | passed the filter | G-Vendi before -> after (gain) | "
              "cells before -> after | cell entropy before -> after |", "|---|---|---|---|---|---|---|"]
    for arms in (("random",), ("naive", "random")):  # the history lists arms alphabetically: random last
        expected = []
        for report in reports:
            for arm in sorted(arms):
                r = report.arms[arm]
                passed = sum(1 for c in r.verified if c.in_sparse)
                expected.append(
                    f"| {report.round} | {arm} | {len(r.accepted)} ({r.budget - len(r.accepted)}) | "
                    f"{passed} of {len(r.verified)} | {r.g_vendi_before:.2f} -> {r.g_vendi_after:.2f} "
                    f"({r.g_vendi_after - r.g_vendi_before:+.2f}) | {r.cells_before} -> {r.cells_after} | "
                    f"{r.cell_entropy_before:.3f} -> {r.cell_entropy_after:.3f} |")
        assert summary_lines(store, arms) == header + expected
    assert summary_lines(MetadataStore(tmp_path / "empty.duckdb"), ARMS) == ["no arm round in the store yet"]


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def test_every_stored_column_of_an_arm_round_is_the_reports_value(three_rounds):
    from prismatic_assets.pipeline.arms import request_seed

    store, reports = three_rounds

    def rows(table, round_, arm, key):
        found = store.query(f"SELECT * FROM {table} WHERE round = ? AND arm = ?", [round_, arm])
        return {r[key]: r for r in found.iter_rows(named=True)}

    for report in reports:
        r = report.round
        for arm, res in report.arms.items():
            requests = rows(S.ARM_REQUESTS, r, arm, "request")
            assert sorted(requests) == [q.request for q in res.requests] == list(range(5))
            for q in res.requests:
                row = requests[q.request]
                assert (row["request_seed"], row["strategy"], row["target_cluster"], row["clustering_id"]) == (
                    request_seed(CONFIG.world.seed, r, q.request), q.strategy, q.target_cluster, res.clustering_id)
                assert list(row["exemplar_ids"]) == [e.sample_id for e in q.exemplars]
                assert list(row["exemplar_cells"]) == [f"{e.family}:{e.level}" for e in q.exemplars]
            candidates = rows(S.ARM_CANDIDATES, r, arm, "sample_id")
            assert len(candidates) == len(res.candidates) == 10
            for c in res.candidates:
                s, w = c.sample, c.written
                row = candidates[s.sample_id]
                assert {k: row[k] for k in ("request", "slot", "position", "mode", "exemplar_id", "family", "level",
                                            "attempts", "prompt", "response", "answer", "source_ref",
                                            "content_hash", "problem_key", "status", "reason", "cluster",
                                            "cluster_size", "in_sparse")} == {
                    "request": c.request, "slot": w.slot, "position": c.position, "mode": w.mode,
                    "exemplar_id": w.exemplar_id, "family": w.family, "level": w.level, "attempts": w.attempts,
                    "prompt": s.prompt, "response": s.response, "answer": s.answer, "source_ref": s.source_ref,
                    "content_hash": s.content_hash, "problem_key": normalize_text(s.prompt),
                    "status": "verified" if c.reason is None else "rejected", "reason": c.reason,
                    "cluster": c.cluster, "cluster_size": c.cluster_size, "in_sparse": c.in_sparse}
                assert row["similarity"] == pytest.approx(c.similarity)
            verified = [c for c in res.candidates if c.reason is None]
            row = store.query(f"SELECT * FROM {S.ARM_ROUNDS} WHERE round = ? AND arm = ?", [r, arm]).row(0, named=True)
            expected = {"budget": 4, "n_requests": 5, "n_candidates": 10, "n_verified": len(verified),
                        "n_passed_filter": sum(1 for c in verified if c.in_sparse), "n_accepted": 4, "shortfall": 0,
                        "n_in_sparse": sum(1 for c in verified if c.in_sparse and c.sample.sample_id in res.accepted),
                        "n_pool_before": 24 + 4 * (r - 1), "k": res.k, "n_sparse": res.n_sparse,
                        "clustering_id": res.clustering_id, "pool_digest": res.pool_digest,
                        "embedding_key": report.embedding_key, "g_vendi_before": res.g_vendi_before,
                        "g_vendi_after": res.g_vendi_after, "cells_before": res.cells_before,
                        "cells_after": res.cells_after, "cell_entropy_before": res.cell_entropy_before,
                        "cell_entropy_after": res.cell_entropy_after}
            assert {k: row[k] for k in expected} == expected
            assert _json(row["rejected"]) == dict(Counter(c.reason.split(":")[0] for c in res.candidates
                                                          if c.reason is not None))
            assert _json(row["modes"]) == dict(Counter(c.written.mode for c in res.candidates))
            settings = _json(row["settings"])
            assert settings["arms"] == CONFIG.arms.model_dump(mode="json", exclude={"experiment"})
            assert settings["world"] == CONFIG.world.model_dump(mode="json")
            assert settings["clustering"] == CONFIG.clustering.model_dump(mode="json")


def test_a_rerun_adds_nothing_and_the_same_seed_gives_the_same_round(three_rounds, seeded, tmp_path, tiny_embedder):
    store, _ = three_rounds
    copy = MetadataStore(tmp_path / "copy.duckdb")
    shutil.copyfile(store.path, copy.path)
    before = snapshot(copy)
    again = _round(copy, tiny_embedder, 2, run_id="again")
    assert again.removed_rounds == []  # the same acceptances: round 3 still stands on round 2
    assert snapshot(copy) == before
    fresh = seeded(tmp_path / "fresh.duckdb")  # another store, the same settings: the same first round
    _round(fresh, tiny_embedder, 1)
    assert snapshot(fresh) == {t: [row for row in rows if row[0 if t != S.ARM_ACCEPTED else 2] == 1]
                               for t, rows in before.items()}


def test_another_world_seed_gives_other_candidates(seeded, tmp_path, tiny_embedder):
    store = seeded(tmp_path / "other.duckdb")
    config = build_config({**VALUES, "world": {**VALUES["world"], "seed": 1}})
    report = _round(store, tiny_embedder, 1, config=config)
    ours = {c.sample.prompt for c in report.arms["random"].verified}
    theirs = _round(seeded(tmp_path / "base.duckdb"), tiny_embedder, 1).arms["random"].verified
    assert ours != {c.sample.prompt for c in theirs}


KILLED = """
import contextlib, os, sys
sys.path.insert(0, {root!r})
from tests.conftest import make_tiny_llama
from transformers import AutoTokenizer
import torch
from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
from prismatic_assets.core.models import model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec
from prismatic_assets.infra.config import build_config
from prismatic_assets.pipeline.arms import run_arm_round
from prismatic_assets.pipeline.embedder import LocalEmbedder
from prismatic_assets.store.store import MetadataStore
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained({tokenizer!r})
model = make_tiny_llama(tok)
embedder = LocalEmbedder(GradientEmbedder(model, tok, ProjectionSpec(dim=32), GradientSpec(max_length=256),
                                          model_fingerprint(model, tok)))

def die(stage, i, n):
    if stage == "candidate gradients" and i == 3:
        os._exit(137)  # as SIGKILL: no cleanup, no finally, nothing flushed

run_arm_round(MetadataStore({store!r}), 2, proxy=lambda: contextlib.nullcontext(embedder),
              config=build_config({values!r}), seed_source="world", progress=die)
"""


def test_a_killed_round_reruns_to_the_same_rows(three_rounds, tmp_path, tiny_embedder, packaged_tokenizer):
    store, _ = three_rounds
    killed = MetadataStore(tmp_path / "killed.duckdb")
    shutil.copyfile(store.path, killed.path)
    with killed.transaction() as con:  # back to the state before round 2 (embeddings of later rounds removed too)
        for table in (S.ARM_REQUESTS, S.ARM_CANDIDATES, S.ARM_ACCEPTED, S.ARM_ROUNDS):
            con.execute(f"DELETE FROM {table} WHERE round >= 2")
        con.execute(f"DELETE FROM {S.EMBEDDINGS} WHERE content_hash NOT IN (SELECT content_hash FROM {S.SAMPLES}) "
                    f"AND content_hash NOT IN (SELECT content_hash FROM {S.ARM_CANDIDATES})")
    tok_dir = tmp_path / "tok"
    packaged_tokenizer.save_pretrained(tok_dir)
    script = KILLED.format(root=str(ROOT), tokenizer=str(tok_dir), store=str(killed.path), values=VALUES)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 137, proc.stderr[-3000:]
    # nothing half-written
    assert killed.query(f"SELECT count(*) AS n FROM {S.ARM_ROUNDS} WHERE round = 2")["n"][0] == 0
    _round(killed, tiny_embedder, 2, run_id="rerun")
    expected = {t: [row for row in rows if row[0 if t != S.ARM_ACCEPTED else 2] <= 2]
                for t, rows in snapshot(store).items()}
    assert snapshot(killed) == expected


def test_a_changed_rerun_removes_the_rounds_built_on_it(three_rounds, tmp_path, tiny_embedder):
    store, _ = three_rounds
    copy = MetadataStore(tmp_path / "copy.duckdb")
    shutil.copyfile(store.path, copy.path)
    changed = build_config({**VALUES, "arms": {**VALUES["arms"], "budget": 3}})
    report = _round(copy, tiny_embedder, 2, config=changed)
    assert report.removed_rounds == [3]
    assert copy.query(f"SELECT DISTINCT round FROM {S.ARM_ROUNDS} ORDER BY 1")["round"].to_list() == [1, 2]
    assert copy.query(f"SELECT count(*) AS n FROM {S.ARM_ACCEPTED} WHERE round = 2")["n"][0] == 3 * 4


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


def test_the_next_round_is_the_first_one_some_arm_lacks(tmp_path):
    from prismatic_assets.store.arms_tables import write_arm_round
    from tests.store.test_arms_tables import _record

    store = MetadataStore(tmp_path / "next.duckdb")
    assert next_arm_round(store, ["random", "naive"]) == 1
    write_arm_round(store, _record(1, {"random": [0], "naive": [1]}))
    assert next_arm_round(store, ["random", "naive"]) == 2
    write_arm_round(store, _record(2, {"random": [0]}))  # naive has no round 2 yet
    assert next_arm_round(store, ["random", "naive"]) == 2
    assert next_arm_round(store, ["random"]) == 3
    write_arm_round(store, _record(3, {"random": [0], "naive": [1]}))  # a gap at 2 comes first
    assert next_arm_round(store, ["random", "naive"]) == 2
    write_arm_round(store, _record(2, {"random": [0], "naive": [1]}))  # round 2 again for both: 3 is dropped
    assert next_arm_round(store, ["random", "naive"]) == 3


def test_held_out_problems_are_rejected_and_a_short_budget_is_a_recorded_shortfall(seeded, tmp_path, tiny_embedder):
    store = seeded(tmp_path / "held.duckdb")
    first = _round(seeded(tmp_path / "probe.duckdb"), tiny_embedder, 1).arms["naive"].verified
    held = [Sample(f"held:{i}", c.sample.prompt, "x", answer="1", source="held") for i, c in enumerate(first[:7])]
    report = _round(store, tiny_embedder, 1, held_out=held)
    naive = report.arms["naive"]
    assert naive.rejected == {"duplicate_held_out": 7} and len(naive.verified) == 3
    assert len(naive.accepted) == 3 and naive.shortfall == 1
    row = store.query(f"SELECT n_accepted, shortfall, rejected FROM {S.ARM_ROUNDS} WHERE arm = 'naive'").row(0)
    assert row[:2] == (3, 1) and '"duplicate_held_out": 7' in row[2]
    assert "| 1 | naive | 3 (1) |" in "\n".join(summary_lines(store, ARMS))
    keys = {normalize_text(h.prompt) for h in held}
    assert not keys & {normalize_text(s.prompt) for s in accepted_samples(store, "naive", 2)}


def test_a_round_counts_its_progress_times_its_stages_and_writes_under_its_run(tmp_path, tiny_embedder):
    """On a store whose seed pool has no gradients yet: each gradient stage counts up to the samples it
    computes (the pool once, the verified candidates once, however many arms wrote them), every stage
    is timed within the call, and the gradients and clusterings it writes carry the run's id."""
    config = build_config({**VALUES, "arms": {**VALUES["arms"], "arms": ["random", "naive"]}})
    store = MetadataStore(tmp_path / "progress.duckdb")
    seed = load_seed(config.seed, config.world)
    store_seed(store, seed, "seed")
    events: list[tuple] = []
    began = time.perf_counter()
    report = _round(store, tiny_embedder, 1, config=config, run_id="run-7", progress=lambda *e: events.append(e))
    wall = time.perf_counter() - began
    n_pool = len({s.content_hash for s in seed.pool})
    n_verified = len({c.sample.content_hash for r in report.arms.values() for c in r.candidates if c.reason is None})
    assert 0 < n_verified < sum(len(r.verified) for r in report.arms.values())  # both arms wrote the same problems
    assert events == ([("pool gradients", i, n_pool) for i in range(1, n_pool + 1)]
                      + [("candidate gradients", i, n_verified) for i in range(1, n_verified + 1)])
    assert set(report.seconds) == {"pool gradients", "generate", "candidate gradients", "arms", "write"}
    assert all(0 <= seconds <= wall for seconds in report.seconds.values()), report.seconds
    assert sum(report.seconds.values()) <= wall
    for table in (S.EMBEDDINGS, S.CLUSTERINGS, S.ARM_REQUESTS, S.ARM_CANDIDATES, S.ARM_ROUNDS):
        assert store.query(f"SELECT DISTINCT run_id FROM {table}")["run_id"].to_list() == ["run-7"], table
    assert store.query(f"SELECT count(*) AS n FROM {S.EMBEDDINGS}")["n"][0] == n_pool + n_verified


def test_an_arms_seed_pool_is_the_chosen_sources_seed_pool_alone(seeded, tmp_path, tiny_embedder):
    """Neither another seed source nor a sample the synthesis rounds accepted joins an arm's pool."""
    from prismatic_assets.store.synthesis_tables import SYNTHETIC_ORIGIN

    config = build_config({**VALUES, "arms": {**VALUES["arms"], "arms": ["random"]}})
    store = seeded(tmp_path / "sources.duckdb")
    world = store.load_samples(where="origin = 'seed' AND split = 'pool'")
    champ = [Sample(f"c:{i}", f"Problem {i}?", f"\\boxed{{{i}}}", answer=str(i), source="champ") for i in range(3)]
    store.replace_samples(source="champ", origin="seed", samples=champ, splits={}, rejections=[], run_id="s")
    synthetic = Sample("synthesis:r1:0", "What is 40 + 2?", "\\boxed{42}", answer="42",
                       meta={"family": "basic_arithmetic", "level": 0})
    store.replace_samples(source="synthesis", origin=SYNTHETIC_ORIGIN, samples=[synthetic], splits={}, rejections=[],
                          run_id="s", round=1)
    result = _round(store, tiny_embedder, 1, config=config).arms["random"]
    assert result.n_pool_before == len(world) == 24
    shown = {e.sample_id for q in result.requests for e in q.exemplars}
    assert shown <= {s.sample_id for s in world}


def test_candidates_sharing_an_ngram_with_an_eval_set_are_rejected_as_contaminated(seeded, tmp_path, tiny_embedder):
    from prismatic_assets.core.decontamination import NGramIndex

    config = build_config({**VALUES, "arms": {**VALUES["arms"], "arms": ["naive"]}})
    probe = _round(seeded(tmp_path / "probe.duckdb"), tiny_embedder, 1, config=config).arms["naive"].verified
    eval_texts = {"test": [probe[0].sample.prompt, probe[5].sample.prompt]}
    reference = NGramIndex(n=config.synthesis.ngram)  # the eval set's n-grams, as the round must see them
    reference.add(eval_texts["test"], "test")
    expected = {c.sample.sample_id for c in probe if reference.is_contaminated(c.sample.prompt) is not None}
    assert {probe[0].sample.sample_id, probe[5].sample.sample_id} <= expected < {c.sample.sample_id for c in probe}
    store = seeded(tmp_path / "eval.duckdb")
    result = _round(store, tiny_embedder, 1, config=config, eval_texts=eval_texts).arms["naive"]
    assert {c.sample.sample_id for c in result.candidates if c.reason == "contaminated"} == expected
    assert result.rejected == {"contaminated": len(expected)} and not expected & set(result.accepted)
    stored = store.query(f"SELECT sample_id FROM {S.ARM_CANDIDATES} WHERE reason = 'contaminated'")
    assert set(stored["sample_id"].to_list()) == expected


def test_a_seed_pool_from_another_world_is_refused(tmp_path, tiny_embedder):
    store = MetadataStore(tmp_path / "champ.duckdb")
    seed = [Sample(f"c:{i}", f"Problem {i}?", f"\\boxed{{{i}}}", answer=str(i), source="champ") for i in range(6)]
    store.replace_samples(source="champ", origin="seed", samples=seed, splits={}, rejections=[], run_id="s")
    with pytest.raises(WorldError, match=r"seed.source: world.*source 'champ' has no \(family, level\)"):
        run_arm_round(store, 1, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=CONFIG,
                      seed_source="champ")


def _products_world(path, keep: int, requests: int) -> tuple[MetadataStore, Config]:
    """A store whose seed pool holds `keep` of the 100 products problems at level 0, and a config
    whose generator writes only from that cell, in 5 tries a slot."""
    every = {}
    for i in range(3000):
        every.setdefault(normalize_text(draw_entry("products", 0, i)["question"]), i)
    assert len(every) == 100
    seed = [world_item("products", 0, i, sample_id=f"world:products:L0:{n:03d}").sample
            for n, i in enumerate(list(every.values())[:keep])]
    store = MetadataStore(path)
    store.replace_samples(source="world", origin="seed", samples=seed, splits={}, rejections=[], run_id="s")
    config = build_config({"seed": {"source": "world"}, "clustering": {"ratio": 0.05},
                           "world": {"families": ["products"], "levels": [0, 1],
                                     "generator": {"same_cell": 1.0, "neighbour_level": 0.0, "new_family": 0.0,
                                                   "max_attempts": 5}},
                           "arms": {"arms": ["random"], "requests_per_round": requests, "budget": 2}})
    return store, config


def test_a_world_that_cannot_write_anything_new_is_an_error_naming_the_setting(tmp_path, tiny_embedder):
    """Every one of the 100 products problems at level 0 is already in the seed pool."""
    store, config = _products_world(tmp_path / "full.duckdb", keep=100, requests=2)
    with pytest.raises(WorldError, match=r"arm random, round 1: the generator found no new problem.*max_attempts=5"):
        run_arm_round(store, 1, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=config,
                      seed_source="world")
    assert store.query(f"SELECT count(*) AS n FROM {S.ARM_CANDIDATES}")["n"][0] == 0


def test_a_slot_without_a_fresh_problem_is_stored_as_a_rejected_row_without_a_problem(tmp_path, tiny_embedder):
    """The seed pool holds 92 of the 100 products problems at level 0: in 5 tries a slot finds one of
    the other 8 or none. A slot with none is a rejected row under its slot's id, with no problem."""
    store, config = _products_world(tmp_path / "scarce.duckdb", keep=92, requests=4)
    result = run_arm_round(store, 1, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=config,
                           seed_source="world").arms["random"]
    empty = [c for c in result.candidates if c.written.item is None]
    assert empty and len(empty) < len(result.candidates)
    rows = store.query(f"SELECT sample_id, request, slot, prompt, response, answer, source_ref, content_hash, "
                       f"problem_key, status, reason FROM {S.ARM_CANDIDATES} WHERE prompt IS NULL ORDER BY position")
    assert rows.rows() == [(f"arm:random:r1:q{c.request:03d}:p{c.written.slot}", c.request, c.written.slot,
                            None, None, None, None, None, None, "rejected", "no_fresh_problem") for c in empty]


def test_the_sparse_cluster_order_and_the_other_arms():
    sizes = np.array([9, 9, 2, 5, 5, 2, 1, 7])  # pool sizes of each candidate's nearest cluster
    sparse = np.array([False, False, True, True, True, True, True, False])
    order = prismatic_order(sizes, sparse, np.random.default_rng(0))
    assert sorted(order[:5]) == [2, 3, 4, 5, 6]  # every candidate that passed the filter first
    assert order[5:] == [7, 0, 1] or order[5:] == [7, 1, 0]  # then the smallest other cluster first
    # a mask of 0/1 integers (as a store may hand it back) is the same mask
    assert prismatic_order(sizes, sparse.astype(np.int8), np.random.default_rng(0)) == order
    draws = {tuple(prismatic_order(sizes, sparse, np.random.default_rng(s))[:5]) for s in range(20)}
    assert len(draws) > 1  # a random draw among those that passed, not generation order
    assert choose("naive", 7, 3, rng_seed=0) == [0, 1, 2]
    drawn = choose("random", 7, 3, rng_seed=5)
    assert len(set(drawn)) == 3 and drawn == choose("random", 7, 3, rng_seed=5)
    assert choose("random", 2, 3, rng_seed=0) == [0, 1]  # fewer verified than the budget: all of them
    assert sorted(choose("prismatic_targeted", 8, 5, rng_seed=1, cluster_sizes=sizes, in_sparse=sparse)) == \
        [2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="unknown arm 'greedy'"):
        choose("greedy", 3, 1, rng_seed=0)


def test_each_round_logs_its_numbers_history_and_charts_to_mlflow(three_rounds, tmp_path):
    from prismatic_assets.core.tracking import Tracker
    from prismatic_assets.pipeline.arms_report import arm_table, log_arm_round, round_numbers

    store, reports = three_rounds
    config = build_config({**VALUES, "data_dir": str(tmp_path / "data")})
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracker.run("arms-round-3") as run:
        charts = log_arm_round(tracker, run, store, reports[2], config)
    assert sorted(charts) == ["cell_entropy", "cells", "g_vendi"]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in charts.values())
    client = tracker.client
    assert client.get_run(run).info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run, "plots")} == {f"plots/arms-round-3-{n}.png" for n in charts}
    rows = store.query(f"SELECT round, g_vendi_before, g_vendi_after, cells_after FROM {S.ARM_ROUNDS} "
                       f"WHERE arm = 'random' ORDER BY round").rows()
    history = client.get_metric_history(run, "g_vendi_by_round/random")
    history = sorted(history, key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.value for m in history] == pytest.approx([rows[0][1]] + [after for _, _, after, _ in rows])
    numbers = round_numbers(reports[2])
    assert numbers["cells/random"] == rows[2][3] and numbers["accepted/prismatic_targeted"] == 4
    assert client.get_run(run).data.metrics["g_vendi/random"] == pytest.approx(rows[2][2])
    assert arm_table(reports[2]).count("\n") == 1 + 4
