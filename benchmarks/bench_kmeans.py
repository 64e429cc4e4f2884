"""Benchmark: spherical k-means (faiss, via core.clustering) at pool scale.

N synthetic unit vectors at d = 1024 drawn around hidden directions (so clusters exist and
their sizes vary), clustered into K = 1% of N (the paper) and K = 10% (its reference
code), 20 iterations, each K in a fresh subprocess. Also times assigning a batch of new
candidates to the centroids and reports the sparse-cluster count and size spread.

    python -m benchmarks.bench_kmeans                                   # N = 100k, K = 1000, 10000
    python -m benchmarks.bench_kmeans --n 5000 --dim 64 --ks 50,500 --niter 5   # quick check

Cost per iteration is about 2 N K d flops: N = 100k, K = 10000, d = 1024 is 2e12 per
iteration, minutes on 2 cores. Writes benchmarks/results/kmeans.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from benchmarks.bench_gvendi import current_rss_mb, load_line, markdown_table, peak_rss_mb, run_worker
from benchmarks.common import machine, write_results


def synthetic_pool(n: int, d: int, seed: int, hidden: int | None = None) -> np.ndarray:
    """(n, d) float32 unit rows around `hidden` random directions with Zipf-like weights."""
    rng = np.random.default_rng(seed)
    hidden = hidden or max(2, n // 50)
    centers = rng.standard_normal((hidden, d), dtype=np.float32)  # (h, d)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, hidden + 1)
    labels = rng.choice(hidden, size=n, p=weights / weights.sum())  # (n,)
    x = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 65536):  # in chunks: no second (n, d) temporary
        part = centers[labels[s:s + 65536]] + rng.standard_normal((len(labels[s:s + 65536]), d), dtype=np.float32) \
            * np.float32(1.5 / np.sqrt(d))
        x[s:s + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return x


def worker(n: int, d: int, k: int, niter: int, seed: int, candidates: int,
           max_points_per_centroid: int | None = None) -> dict[str, Any]:
    from prismatic_assets.core.clustering import assign_to_centroids, spherical_kmeans

    base = current_rss_mb()
    x = synthetic_pool(n + candidates, d, seed)
    pool, new = x[:n], x[n:]
    t0 = time.perf_counter()
    c = spherical_kmeans(pool, k, niter=niter, seed=seed, max_points_per_centroid=max_points_per_centroid)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, _ = assign_to_centroids(new, c.centroids)
    assign_s = time.perf_counter() - t0
    return {
        "status": "ok", "fit_s": fit_s, "assign_s": assign_s,
        "candidates": candidates, "candidates_in_sparse": int(c.sparse[ids].sum()),
        "sparse_clusters": int(c.sparse.sum()), "empty_clusters": int((c.sizes == 0).sum()),
        "size_min": int(c.sizes.min()), "size_median": float(np.median(c.sizes)), "size_max": int(c.sizes.max()),
        "mean_similarity": float(c.similarities.mean()),
        "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": base,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--ks", default="1000,10000", help="comma-separated K")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=10_000, help="new vectors assigned after the fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-points-per-centroid", type=int, default=None,
                        help="train on a sample of K x this many points (default: every point)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per K")
    parser.add_argument("--name", default="kmeans", help="results file stem under benchmarks/results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.n, args.dim, args.k, args.niter, args.seed, args.candidates,
                                args.max_points_per_centroid)))
        return

    info, load = machine(), load_line()
    ks = [int(k) for k in args.ks.split(",")]
    cases = []
    for k in ks:
        result = run_worker("benchmarks.bench_kmeans",
                            ["--n", str(args.n), "--dim", str(args.dim), "--k", str(k), "--niter", str(args.niter),
                             "--seed", str(args.seed), "--candidates", str(args.candidates)]
                            + ([] if args.max_points_per_centroid is None
                               else ["--max-points-per-centroid", str(args.max_points_per_centroid)]), args.timeout_s)
        result.update(n=args.n, dim=args.dim, k=k, niter=args.niter, gflop_per_iter=2 * args.n * k * args.dim / 1e9)
        cases.append(result)
        print(json.dumps(result), flush=True)
    rows = [[c["n"], c["k"], c["niter"], c.get("fit_s"), c.get("assign_s"),
             c.get("peak_rss_mb"), c.get("sparse_clusters"), c.get("empty_clusters"),
             None if c["status"] != "ok" else f"{c['size_min']}/{c['size_median']:g}/{c['size_max']}",
             "" if c["status"] == "ok" else c["status"]] for c in cases]
    payload = {"benchmark": "kmeans", "machine": info, "load_at_start": load,
               "config": {"n": args.n, "dim": args.dim, "ks": ks, "niter": args.niter,
                          "candidates": args.candidates, "seed": args.seed},
               "cases": cases}
    md = (f"# Spherical k-means (faiss)\n\n{load}\n\n"
          f"N = {args.n} synthetic unit vectors, d = {args.dim}, {args.niter} iterations, "
          + ("all points used every iteration" if args.max_points_per_centroid is None else
             f"trained on a sample of K x {args.max_points_per_centroid} points")
          + "; 'fit' includes the final assignment of all N points to the centroids (batched); 'assign' places "
          f"{args.candidates} new vectors on the centroids.\n\n")
    md += markdown_table(["N", "K", "iters", "fit s", "assign s", "peak RSS MB", "sparse", "empty",
                          "size min/median/max", "note"], rows)
    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
