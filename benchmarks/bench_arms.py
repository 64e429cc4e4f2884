"""The arms over many draws: is the prismatic arm's G-Vendi gain above the random arm's beyond one draw?

One `make demo` run is one draw of the random arm (and of the prismatic arm's draw among the
candidates that pass the filter). This replays the demo's rounds from its store with other
seeds: the same candidates and vectors (read from the store, nothing recomputed), each arm
growing its own pool round by round exactly as `pipeline.arms.run_arm` does (clustering of
the arm's pool, `judge_candidates`, `choose`, G-Vendi before and after), without writing.

    python -m benchmarks.bench_arms [--store data/prismatic.duckdb] [--draws 20]

Writes benchmarks/results/arms.{json,md}: mean and standard deviation of each arm's gain
per round over the draws, and in how many draws prismatic's gain was at least random's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import write_results
from prismatic_assets.infra.config import load_config
from prismatic_assets.core.clustering import num_clusters, spherical_kmeans
from prismatic_assets.pipeline.arms import _sample_from_row, choose
from prismatic_assets.pipeline.embeddings import pool_vectors
from prismatic_assets.pipeline.round_services import judge_candidates, load_pool
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import MetadataStore


def replay(seed_vectors: np.ndarray, candidates: dict[int, np.ndarray], arm: str, draw: int, config) -> list[float]:
    """One arm's gain per round for one draw."""
    pool, gains = seed_vectors, []
    cl = config.clustering
    for rnd, vectors in sorted(candidates.items()):
        clustering = spherical_kmeans(pool, num_clusters(len(pool), cl.ratio), niter=cl.niter, seed=cl.seed,
                                      sparse_ratio=cl.sparse_ratio)
        judgement = judge_candidates(vectors, clustering.centroids, clustering.sparse, clustering.sizes)
        picks = choose(arm, len(vectors), config.arms.budget, rng_seed=draw * 1_000 + rnd, judgement=judgement)
        before = score_vectors(pool, config.score.q).score
        pool = np.vstack([pool, vectors[picks]])
        gains.append(score_vectors(pool, config.score.q).score - before)
    return gains


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", default="data/prismatic.duckdb")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--out", help="folder for arms.json / arms.md (default benchmarks/results)")
    args = parser.parse_args(argv)
    config, store = load_config(args.profile), MetadataStore(Path(args.store))
    rounds = store.query(f"SELECT DISTINCT round, embedding_key FROM {S.ARM_ROUNDS} ORDER BY round")
    if rounds.is_empty():
        raise SystemExit(f"{args.store}: no arm round; run `make demo` first")
    key, dim = rounds["embedding_key"][0], config.projection.dim
    seed = pool_vectors(store, load_pool(store, 1, config.seed.source), key, dim).vectors
    rows = store.query(f"SELECT * FROM {S.ARM_CANDIDATES} WHERE status = 'verified' ORDER BY round, position")
    candidates = {r: pool_vectors(store, [_sample_from_row(x) for x in rows.filter(rows["round"] == r)
                                          .iter_rows(named=True)], key, dim).vectors
                  for r in rounds["round"].to_list()}
    gains = {arm: np.array([replay(seed, candidates, arm, d, config) for d in range(args.draws)])
             for arm in config.arms.arms}
    wins = (gains["prismatic"] >= gains["random"]).sum(axis=0).tolist() if {"prismatic", "random"} <= set(gains) \
        else None
    lines = [f"# Arms over {args.draws} draws (`{args.store}`, budget {config.arms.budget})", "",
             "| round | " + " | ".join(f"{a} gain, mean +- sd" for a in gains) + " | draws with prismatic >= random |",
             "|---|" + "---|" * (len(gains) + 1)]
    for i, rnd in enumerate(sorted(candidates)):
        cells = [f"{g[:, i].mean():+.2f} +- {g[:, i].std():.2f}" for g in gains.values()]
        lines.append(f"| {rnd} | " + " | ".join(cells) + f" | {wins[i] if wins else '-'} of {args.draws} |")
    write_results("arms", {"draws": args.draws, "gains": {a: g.tolist() for a, g in gains.items()},
                           "prismatic_at_least_random": wins}, "\n".join(lines) + "\n", directory=args.out)


if __name__ == "__main__":
    main()
