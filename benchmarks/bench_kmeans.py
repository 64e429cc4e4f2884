"""Benchmark: spherical k-means (faiss, via core.clustering) at pool scale, and its cheaper trainings.

N synthetic unit vectors at d = 1024 drawn around hidden directions (so clusters exist and
their sizes vary), 20 iterations, each run in a fresh subprocess. A case is N x K and a
list of methods:

- `flat`: the paper's k-means, every point in every iteration (`flat~1`: the same with
  seed + 1, the run-to-run noise floor of the comparison);
- `sampledM`: flat, trained on a seeded sample of K x M points (`max_points_per_centroid`);
- `two_level` (`two_levelC`: C coarse groups; default round(sqrt(K))): coarse groups,
  then k-means inside each with K split by size; `-rR` R refine steps (default 3), `-pP`
  P groups probed per point (default 16), `-probe` the final assignment by that probe
  search instead of the exact one (`assign="probe"`), e.g. `two_level-r1-p4-probe`.

Every method then assigns every point to its exact nearest final centroid (`-probe`: to the
nearest under its probed groups). Reported per
method: fit time (training + that assignment), peak RSS, the objective (mean cosine of a
point to its assigned centroid), and, against the case's first method (the reference):
the relative loss in objective, the sparse-flag agreement on the pool (the share of points
whose own cluster is sparse in both clusterings or in neither: the sparse rule marks the
smaller half of the clusters, `sparse_cluster_mask`), and the decision agreement on held-out
candidates (the share of new vectors that the sparse filter accepts in both or rejects in
both: each goes to its nearest centroid and is kept iff that cluster is sparse).

    python -m benchmarks.bench_kmeans                                            # N = 100k, K = 1000, flat
    python -m benchmarks.bench_kmeans --cases "100000x1000:flat,flat~1,sampled32,two_level;1000000x10000:two_level" \\
        --name kmeans_methods                                                    # the issue's comparison and 1M run
    python -m benchmarks.bench_kmeans --cases "20000x200:flat,flat~1,sampled16,two_level" --dim 256 --name x  # quick

Cost per flat iteration is about 2 N K d flops (N = 1M, K = 10k, d = 1024: 2e13, about 10
minutes on 2 cores); the exact assignment at the end is one more such pass. Writes
benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_gvendi import current_rss_mb, load_line, markdown_table, peak_rss_mb, run_worker
from benchmarks.common import machine, write_results

METHOD = re.compile(r"^(flat(~(\d+))?|sampled(\d+)|two_level(\d+)?(?:-r(\d+))?(?:-p(\d+))?(-probe)?)$")


def parse_method(spec: str) -> dict[str, Any]:
    """The spherical_kmeans arguments of a method spec (see the module docstring)."""
    match = METHOD.match(spec)
    if not match:
        raise SystemExit(f"method {spec!r}: use flat, flat~S (seed + S), sampledM or two_level[C][-rR][-pP][-probe]")
    if spec.startswith("flat"):
        return {"method": "flat", "seed_offset": int(match.group(3) or 0)}
    if spec.startswith("sampled"):
        return {"method": "flat", "max_points_per_centroid": int(match.group(4)), "seed_offset": 0}
    out: dict[str, Any] = {"method": "two_level", "coarse": int(match.group(5)) if match.group(5) else None,
                           "seed_offset": 0}
    if match.group(6):
        out["refine"] = int(match.group(6))
    if match.group(7):
        out["probe"] = int(match.group(7))
    if match.group(8):
        out["assign"] = "probe"
    return out


def parse_cases(text: str) -> list[tuple[int, int, list[str]]]:
    cases = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        size, _, methods = part.partition(":")
        n, k = (int(v) for v in size.lower().split("x"))
        names = [m.strip() for m in (methods or "flat").split(",") if m.strip()]
        for name in names:
            parse_method(name)
        cases.append((n, k, names))
    return cases


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


def worker(n: int, d: int, k: int, niter: int, seed: int, candidates: int, method: str,
           out: str | None = None) -> dict[str, Any]:
    from prismatic_assets.core.clustering import assign_to_centroids, spherical_kmeans

    base = current_rss_mb()
    spec = parse_method(method)
    x = synthetic_pool(n + candidates, d, seed)
    pool, new = x[:n], x[n:]
    t0 = time.perf_counter()
    c = spherical_kmeans(pool, k, niter=niter, seed=seed + spec.pop("seed_offset"), **spec)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids, _ = assign_to_centroids(new, c.centroids)
    assign_s = time.perf_counter() - t0
    if out:
        np.save(Path(out) / f"{method}.assign.npy", c.assignments.astype(np.int32))
        np.save(Path(out) / f"{method}.sparse.npy", c.sparse)
        np.save(Path(out) / f"{method}.candidates.npy", ids.astype(np.int32))
    return {
        "status": "ok", "method": method, "fit_s": fit_s, "assign_s": assign_s,
        "objective": float(c.similarities.mean()),
        "candidates": candidates, "candidates_in_sparse": int(c.sparse[ids].sum()),
        "sparse_clusters": int(c.sparse.sum()), "empty_clusters": int((c.sizes == 0).sum()),
        "size_min": int(c.sizes.min()), "size_median": float(np.median(c.sizes)), "size_max": int(c.sizes.max()),
        "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": base,
    }


def agreement(folder: Path, reference: str, method: str) -> dict[str, float]:
    """Sparse-flag agreement of `method` with `reference` on the pool and on the candidates."""
    def load(name: str, what: str) -> np.ndarray:
        return np.load(folder / f"{name}.{what}.npy")

    ref_sparse, sparse = load(reference, "sparse"), load(method, "sparse")
    pool = ref_sparse[load(reference, "assign")] == sparse[load(method, "assign")]  # (N,)
    new = ref_sparse[load(reference, "candidates")] == sparse[load(method, "candidates")]  # (candidates,)
    return {"pool_sparse_agreement": float(pool.mean()), "candidate_decision_agreement": float(new.mean())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--ks", default="1000", help="comma-separated K (with --n; method flat)")
    parser.add_argument("--cases", default=None, help="NxK:method,method;NxK:... (overrides --n and --ks)")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=10_000, help="new vectors assigned after the fit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per run")
    parser.add_argument("--name", default="kmeans", help="results file stem under benchmarks/results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="flat", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.n, args.dim, args.k, args.niter, args.seed, args.candidates, args.method,
                                args.out)))
        return

    info, load = machine(), load_line()
    cases = parse_cases(args.cases) if args.cases else [(args.n, int(k), ["flat"]) for k in args.ks.split(",")]
    rows_out = []
    for n, k, methods in cases:
        with tempfile.TemporaryDirectory(prefix="bench-kmeans-") as tmp:
            reference = None
            for method in methods:
                result = run_worker("benchmarks.bench_kmeans",
                                    ["--n", str(n), "--dim", str(args.dim), "--k", str(k), "--niter", str(args.niter),
                                     "--seed", str(args.seed), "--candidates", str(args.candidates),
                                     "--method", method, "--out", tmp], args.timeout_s)
                result.update(n=n, dim=args.dim, k=k, niter=args.niter, method=method)
                if result["status"] == "ok":
                    if reference is None:
                        reference = result
                    else:
                        result.update(agreement(Path(tmp), reference["method"], method))
                        result["reference"] = reference["method"]
                        best = reference["objective"]
                        result["objective_loss"] = (best - result["objective"]) / best
                        result["speedup"] = reference["fit_s"] / result["fit_s"]
                rows_out.append(result)
                print(json.dumps(result), flush=True)

    def fmt(c: dict, key: str, pattern: str = "{:.4f}") -> str | None:
        return pattern.format(c[key]) if key in c else None

    rows = [[c["n"], c["k"], c["method"], c.get("fit_s"), fmt(c, "speedup", "{:.1f}x"), c.get("peak_rss_mb"),
             fmt(c, "objective"), fmt(c, "objective_loss", "{:.2%}"), fmt(c, "pool_sparse_agreement", "{:.1%}"),
             fmt(c, "candidate_decision_agreement", "{:.1%}"),
             None if c["status"] != "ok" else f"{c['size_min']}/{c['size_median']:g}/{c['size_max']}",
             "" if c["status"] == "ok" else c["status"]] for c in rows_out]
    payload = {"benchmark": "kmeans", "machine": info, "load_at_start": load,
               "config": {"dim": args.dim, "niter": args.niter, "candidates": args.candidates, "seed": args.seed,
                          "cases": [{"n": n, "k": k, "methods": m} for n, k, m in cases]},
               "cases": rows_out}
    md = (f"# Spherical k-means (faiss)\n\n{load}\n\n"
          f"Synthetic unit vectors, d = {args.dim}, {args.niter} iterations. Methods: flat = every point in every "
          "iteration (the paper), flat~1 = the same with another seed (the noise floor), sampledM = trained on K x M "
          "points, two_level = sqrt(K) coarse groups then k-means inside each (-rR: R refine steps, -pP: P groups "
          "probed, -probe: the final assignment by that probe search). 'fit' includes assigning every point to its "
          "nearest final centroid (exact unless -probe). Objective = mean cosine to the assigned centroid; loss, "
          "sparse-flag agreement (pool points whose cluster is sparse in both or neither) and decision agreement ("
          f"{args.candidates} held-out candidates accepted in both or rejected in both) are against the first "
          "method of each case.\n\n")
    md += markdown_table(["N", "K", "method", "fit s", "speedup", "peak RSS MB", "objective", "objective loss",
                          "pool sparse agreement", "candidate decision agreement", "size min/median/max", "note"], rows)
    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
