"""Every figure an arm round stores, recomputed here from the stored vectors and centroids.

Two arm rounds of the four arms in a small procedural world with a tiny random-init proxy;
for each arm and round: the pool it started from (the world's seed pool + its own earlier
acceptances), the nearest centroid of each pool member and candidate (a numpy argmax over
the stored centroids), the sparse clusters (the paper's rule over those sizes), what passed
the filter, what was accepted, and G-Vendi before and after by the Vendi-Score package.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.world import world_seed
from prismatic_assets.infra.config import build_config
from prismatic_assets.pipeline.arms import arm_pool, run_arm_round
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors
from prismatic_assets.pipeline.seed import load_seed, store_seed
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore

ARMS = ("prismatic", "prismatic_targeted", "random", "naive")
CONFIG = build_config({"seed": {"source": "world", "holdout_fraction": 0.0}, "clustering": {"ratio": 0.2},
                       "world": {"families": ["basic_arithmetic", "gcd", "leg_counting", "letter_counting"],
                                 "pool": {"size": 24, "family_zipf": 1.0}, "held_out_per_family": 2,
                                 "seed": 3},
                       "arms": {"requests_per_round": 5, "budget": 4}})


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory, tiny_embedder):
    store = MetadataStore(tmp_path_factory.mktemp("arms-figures") / "m.duckdb")
    seed = load_seed(CONFIG.seed, CONFIG.world)
    store_seed(store, seed, "seed")
    embed_samples(seed.pool, tiny_embedder, store)
    reports = [run_arm_round(store, r, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=CONFIG,
                             seed_source="world") for r in (1, 2)]
    return store, list(seed.pool), reports, tiny_embedder.dim


def _vectors(store, samples, key, dim) -> np.ndarray:
    got = pool_vectors(store, samples, key, dim)
    return got.vectors.astype(np.float64)


@pytest.mark.parametrize("arm", ARMS)
def test_each_arm_rounds_figures_match_an_independent_computation(two_rounds, arm):
    store, seed, reports, dim = two_rounds
    for report in reports:
        r, key = report.round, report.embedding_key
        row = store.query(f"SELECT * FROM {S.ARM_ROUNDS} WHERE round = ? AND arm = ?", [r, arm]).row(0, named=True)
        pool_samples = arm_pool(store, arm, r, seed)
        pool = _vectors(store, pool_samples, key, dim)  # (n_pool, d)
        assert row["n_pool_before"] == len(pool) == len(seed) + CONFIG.arms.budget * (r - 1)
        centroids = np.array(store.query(f"SELECT centroid FROM {S.CLUSTERS} WHERE clustering_id = ? ORDER BY "
                                         f"cluster", [row["clustering_id"]])["centroid"].to_list(), dtype=np.float64)
        sizes = np.bincount(np.argmax(pool @ centroids.T, axis=1), minlength=len(centroids)).tolist()
        threshold = sorted(sizes)[int(len(sizes) * CONFIG.clustering.sparse_ratio)]
        sparse = {c for c, size in enumerate(sizes) if size < threshold}
        assert (row["k"], row["n_sparse"]) == (len(centroids), len(sparse))
        result = report.arms[arm]
        verified = [c for c in result.candidates if c.reason is None]
        stored = {sid: (cluster, size, flag) for sid, cluster, size, flag in store.query(
            f"SELECT sample_id, cluster, cluster_size, in_sparse FROM {S.ARM_CANDIDATES} WHERE round = ? AND "
            f"arm = ? AND status = 'verified'", [r, arm]).rows()}
        assert sorted(stored) == sorted(c.sample.sample_id for c in verified)
        cand = _vectors(store, [c.sample for c in verified], key, dim)
        nearest = {c.sample.sample_id: int(n) for c, n in zip(verified, np.argmax(cand @ centroids.T, axis=1))}
        assert stored == {sid: (n, sizes[n], n in sparse) for sid, n in nearest.items()}
        assert row["n_passed_filter"] == sum(n in sparse for n in nearest.values())
        accepted = store.query(f"SELECT sample_id FROM {S.ARM_ACCEPTED} WHERE round = ? AND arm = ? ORDER BY rank",
                               [r, arm])["sample_id"].to_list()
        assert accepted == result.accepted and len(accepted) == row["n_accepted"]
        # Every verified candidate is acceptable: the budget is filled while they last.
        budget = CONFIG.arms.budget
        assert (row["n_accepted"], row["shortfall"]) == (min(budget, len(verified)), max(0, budget - len(verified)))
        assert row["n_in_sparse"] == sum(nearest[i] in sparse for i in accepted)
        if arm in ("prismatic", "prismatic_targeted"):  # the filter's candidates first, as long as there are any
            assert row["n_in_sparse"] == min(row["n_accepted"], row["n_passed_filter"])
        if arm == "naive":
            assert accepted == [c.sample.sample_id for c in verified][:CONFIG.arms.budget]
        if arm == "random":  # numpy's draw without replacement, seeded by the round and the arm alone
            rng = np.random.default_rng(world_seed("accept", CONFIG.world.seed, r, "random", 0))
            drawn = sorted(rng.choice(len(verified), size=min(budget, len(verified)), replace=False).tolist())
            assert accepted == [verified[i].sample.sample_id for i in drawn]
        by_id = {c.sample.sample_id: c.sample for c in verified}
        after = np.vstack([pool, _vectors(store, [by_id[i] for i in accepted], key, dim)])
        assert row["g_vendi_before"] == pytest.approx(vendi.score_dual(pool), rel=1e-5)
        assert row["g_vendi_after"] == pytest.approx(vendi.score_dual(after), rel=1e-5)

