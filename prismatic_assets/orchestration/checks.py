"""Asset checks: what must hold for the backbone's outputs and the rounds to be trusted."""


import dagster as dg
import numpy as np

from prismatic_assets.orchestration.assets.backbone import (
    ClusterSnapshot,
    EmbeddingSnapshot,
    ScoreSnapshot,
    SeedSnapshot,
)
from prismatic_assets.orchestration.assets.rounds import synthesis_round
from prismatic_assets.orchestration.resources import StoreResource
from prismatic_assets.pipeline.embeddings import pool_vectors
from prismatic_assets.store.synthesis_tables import refresh_staleness


@dg.asset_check(asset="seed_samples", description="Most rows load: a high rejection rate means a wrong field mapping.")
def seed_rejection_rate(seed_samples: SeedSnapshot) -> dg.AssetCheckResult:
    total = len(seed_samples.pool_ids) + len(seed_samples.holdout_ids) + seed_samples.n_rejected
    rate = seed_samples.n_rejected / total if total else 1.0
    return dg.AssetCheckResult(passed=bool(rate <= 0.5), severity=dg.AssetCheckSeverity.WARN,
                               metadata={"rejection_rate": rate, "n_rejected": seed_samples.n_rejected})


@dg.asset_check(asset="gradient_embeddings", description="Every stored vector is finite and unit length.")
def embeddings_finite_unit(gradient_embeddings: EmbeddingSnapshot, store: StoreResource) -> dg.AssetCheckResult:
    db = store.open()
    samples = db.load_samples(gradient_embeddings.sample_ids)
    pool = pool_vectors(db, samples, gradient_embeddings.embedding_key, gradient_embeddings.dim)
    finite = bool(np.isfinite(pool.vectors).all())
    norms = np.linalg.norm(pool.vectors.astype(np.float64), axis=1) if len(pool.vectors) else np.ones(1)
    worst = float(np.max(np.abs(norms - 1.0)))
    return dg.AssetCheckResult(passed=finite and worst < 1e-3 and len(pool.sample_ids) > 0,
                               metadata={"n_valid": len(pool.sample_ids), "all_finite": finite,
                                         "max_norm_error": worst, "n_excluded": len(pool.excluded)})


@dg.asset_check(asset="gradient_clusters", description="Cluster sizes add up to the clustered pool.",
                additional_ins={"gradient_embeddings": dg.AssetIn("gradient_embeddings")})
def clusters_cover_pool(gradient_clusters: ClusterSnapshot,
                        gradient_embeddings: EmbeddingSnapshot) -> dg.AssetCheckResult:
    total = int(sum(gradient_clusters.sizes))
    return dg.AssetCheckResult(passed=total == gradient_embeddings.n_valid and gradient_clusters.k >= 2,
                               metadata={"sum_of_sizes": total, "n_valid": gradient_embeddings.n_valid})


@dg.asset_check(asset="g_vendi", description="G-Vendi is finite and within [1, min(N, d)].")
def g_vendi_in_range(g_vendi: ScoreSnapshot) -> dg.AssetCheckResult:
    upper = min(g_vendi.n, g_vendi.dim)
    ok = bool(np.isfinite(g_vendi.value)) and 1.0 - 1e-9 <= g_vendi.value <= upper + 1e-6
    return dg.AssetCheckResult(passed=ok, metadata={"g_vendi": g_vendi.value, "upper_bound": upper})


@dg.asset_check(asset=synthesis_round, description="Every complete round was built on the pool that exists now "
                                                   "(no earlier round re-run after it, no seed pool change).")
def rounds_built_on_current_pools(store: StoreResource) -> dg.AssetCheckResult:
    stale = refresh_staleness(store.open())
    return dg.AssetCheckResult(
        passed=not stale, severity=dg.AssetCheckSeverity.ERROR,
        description=(f"stale rounds {sorted(stale)}: {stale[min(stale)]}" if stale else "every round is current"),
        metadata={"stale_rounds": dg.MetadataValue.json({str(r): why for r, why in stale.items()})})


BACKBONE_CHECKS = [seed_rejection_rate, embeddings_finite_unit, clusters_cover_pool, g_vendi_in_range]
ROUND_CHECKS = [rounds_built_on_current_pools]
