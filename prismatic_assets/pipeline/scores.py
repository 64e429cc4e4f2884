"""G-Vendi of a pool's vectors, stored under a content-derived id."""

from __future__ import annotations

from typing import Final

from prismatic_assets.core.gvendi import GVendiResult, g_vendi
from prismatic_assets.core.ids import digest
from prismatic_assets.pipeline.embeddings import PoolVectors
from prismatic_assets.store.store import MetadataStore


def score_pool(store: MetadataStore | None, pool: PoolVectors, q: float, embedding_key: str, scope: str,
               run_id: str | None = None) -> GVendiResult:
    """G-Vendi of the pool's valid vectors; stored when a store is given."""
    if not pool.sample_ids:
        raise ValueError(f"no sample has a valid gradient vector ({len(pool.excluded)} excluded, e.g. "
                         f"{list(pool.excluded.items())[:3]}): nothing to score")
    result = score_vectors(pool.vectors, q)
    if store is not None:
        score_id = digest({"scope": scope, "metric": "g_vendi", "q": q, "members": pool.sample_ids,
                           "key": embedding_key})
        store.replace_score(score_id=score_id, scope=scope, metric="g_vendi", q=q, value=result.score,
                            entropy=result.entropy, n=result.n, dim=result.dim, n_excluded=len(pool.excluded),
                            embedding_key=embedding_key, config={"q": q}, run_id=run_id)
    return result


#: The precision of every G-Vendi the pipeline stores or reports: float32 batches, summed in
#: float64 (`core.gvendi`); one setting, so a set scored by `score`, `compare`, `select` or a
#: round gets the same number.
SCORE_DTYPE: Final = "float32"


def score_vectors(vectors, q: float = 1.0) -> GVendiResult:
    """G-Vendi of (N, d) unit vectors at the pipeline's precision."""
    return g_vendi(vectors, q=q, compute_dtype=SCORE_DTYPE)
