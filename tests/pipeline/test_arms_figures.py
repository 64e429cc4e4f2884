"""Every figure an arm round stores, recomputed here from the stored vectors and centroids.

Two arm rounds of three arms with a tiny random-init proxy; for each arm and round: the pool
it started from (seed pool + its own earlier acceptances), the nearest centroid of each
candidate (a numpy argmax over the stored centroids), the sparse clusters (the paper's rule
over the pool members' nearest centroids), what passed the filter, and G-Vendi before and
after by the Vendi-Score package.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import build_config
from prismatic_assets.pipeline.arms import run_arm_round
from prismatic_assets.pipeline.embeddings import embed_samples
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

ARMS = ("prismatic", "random", "naive")
CONFIG = build_config({"clustering": {"ratio": 0.2},
                       "arms": {"budget": 5, "source": {"families": ["basic_arithmetic", "gcd", "leg_counting"],
                                                        "levels": [0, 1], "candidates_per_round": 16}}})


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_embedder):
    store = MetadataStore(tmp_path_factory.mktemp("arms-figures") / "m.duckdb")
    seed = [Sample(f"unit:{i:02d}", f"Seed problem {i}: what is {i} times {i + 3}?",
                   f"It is \\boxed{{{i * (i + 3)}}}.", answer=str(i * (i + 3)), source="unit") for i in range(20)]
    store.replace_samples(source="unit", origin="seed", samples=seed, splits={}, rejections=[], run_id="seed")
    embed_samples(seed, tiny_embedder, store)
    reports = [run_arm_round(store, r, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=CONFIG,
                             seed_source="unit") for r in (1, 2)]
    return store, seed, reports, tiny_embedder.dim


def _vectors(store, hashes, key, dim) -> np.ndarray:
    valid, matrix, reasons = store.load_vectors(hashes, key, dim)
    assert valid.all(), reasons
    return matrix.astype(np.float64)


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_rounds_figures_match_an_independent_computation(two_rounds, arm):
    store, seed, reports, dim = two_rounds
    earlier: list[str] = []  # content hashes this arm accepted in rounds before the current one
    for report in reports:
        r, key = report.round, report.embedding_key
        row = store.query(f"SELECT * FROM {S.ARM_ROUNDS} WHERE round = ? AND arm = ?", [r, arm]).row(0, named=True)
        pool = _vectors(store, [s.content_hash for s in seed] + earlier, key, dim)  # (n_pool, d)
        assert row["n_pool_before"] == len(pool) == 20 + CONFIG.arms.budget * (r - 1)
        centroids = np.array(store.query(f"SELECT centroid FROM {S.CLUSTERS} WHERE clustering_id = ? ORDER BY "
                                         f"cluster", [row["clustering_id"]])["centroid"].to_list(), dtype=np.float64)
        sizes = np.bincount(np.argmax(pool @ centroids.T, axis=1), minlength=len(centroids)).tolist()
        threshold = sorted(sizes)[int(len(sizes) * CONFIG.clustering.sparse_ratio)]
        sparse = {c for c, size in enumerate(sizes) if size < threshold}
        assert (row["k"], row["n_sparse"]) == (len(centroids), len(sparse))
        verified = store.query(f"SELECT sample_id, content_hash FROM {S.ARM_CANDIDATES} WHERE round = ? AND "
                               f"status = 'verified' ORDER BY position", [r])
        cand = _vectors(store, verified["content_hash"].to_list(), key, dim)
        nearest = dict(zip(verified["sample_id"].to_list(), np.argmax(cand @ centroids.T, axis=1).tolist()))
        hashes = dict(zip(verified["sample_id"].to_list(), verified["content_hash"].to_list()))
        accepted = store.query(f"SELECT sample_id, cluster, cluster_size, in_sparse FROM {S.ARM_ACCEPTED} "
                               f"WHERE round = ? AND arm = ? ORDER BY rank", [r, arm])
        ids = accepted["sample_id"].to_list()
        assert len(ids) == row["n_accepted"] == CONFIG.arms.budget and set(ids) <= set(hashes)
        assert accepted["cluster"].to_list() == [nearest[i] for i in ids]
        assert accepted["cluster_size"].to_list() == [sizes[nearest[i]] for i in ids]
        assert accepted["in_sparse"].to_list() == [nearest[i] in sparse for i in ids]
        assert row["n_in_sparse"] == sum(nearest[i] in sparse for i in ids)
        passing = [i for i in hashes if nearest[i] in sparse]
        if arm == "prismatic":  # the filter's candidates first, as long as there are any
            assert row["n_in_sparse"] == min(CONFIG.arms.budget, len(passing))
        if arm == "naive":
            assert ids == verified["sample_id"].to_list()[:CONFIG.arms.budget]
        took = [hashes[i] for i in ids]
        after = np.vstack([pool, _vectors(store, took, key, dim)])
        assert row["g_vendi_before"] == pytest.approx(vendi.score_dual(pool), rel=1e-5)
        assert row["g_vendi_after"] == pytest.approx(vendi.score_dual(after), rel=1e-5)
        earlier += took


def test_the_random_arm_does_not_follow_the_prismatic_arm(two_rounds):
    store, *_ = two_rounds
    picks = {arm: set(store.query(f"SELECT sample_id FROM {S.ARM_ACCEPTED} WHERE arm = ?", [arm])["sample_id"]
                      .to_list()) for arm in ARMS}
    assert picks["random"] != picks["prismatic"] and picks["random"] != picks["naive"]
