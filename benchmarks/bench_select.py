"""Benchmark: diverse subset selection (core.selection) at scale, beside random subsets.

Synthetic unit vectors at d = 1024 around hidden directions with Zipf-like weights (a few
large modes, many small ones), each case in a fresh subprocess so its peak RSS is its own:

- ``greedy``: the lazy log-det greedy, N = 100k, k = 1k; beside it the plain greedy (every
  candidate's gain updated after each pick) on the same data, the baseline the lazy one
  must match pick for pick;
- ``cluster-balanced``: N = 1M, k = 100k (k-means++ on a sample, batched assignment).

For each: wall time, peak RSS (and the RSS of the input vectors alone), the subset's
G-Vendi (q = 1), and the G-Vendi of 5 random subsets of the same size (mean, std).

    python -m benchmarks.bench_select                                   # the documented sizes
    python -m benchmarks.bench_select --greedy 20000:200 --balanced 100000:10000   # quick check

Writes benchmarks/results/select.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_gvendi import current_rss_mb, markdown_table, peak_rss_mb, run_worker
from benchmarks.common import machine, write_results

RANDOM_SEEDS = 5


def synthetic_vectors(n: int, d: int, seed: int, hidden: int = 500, noise: float = 1.0,
                      chunk: int = 8192) -> np.ndarray:
    """(n, d) float32 unit rows around `hidden` random directions, weights 1/rank; built in chunks."""
    rng = np.random.default_rng([seed, 0])
    centers = rng.standard_normal((hidden, d), dtype=np.float32)  # (h, d)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, hidden + 1)
    labels = rng.choice(hidden, size=n, p=weights / weights.sum())  # (n,)
    x = np.empty((n, d), dtype=np.float32)
    for i, start in enumerate(range(0, n, chunk)):
        part = np.random.default_rng([seed, 1, i])
        rows = labels[start:start + chunk]
        block = centers[rows] + part.standard_normal((rows.size, d), dtype=np.float32) * np.float32(noise / np.sqrt(d))
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:start + rows.size] = block
    return x


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _streamed_g_vendi(x: np.ndarray, rows: np.ndarray) -> float:
    from prismatic_assets.core.gvendi import g_vendi

    rows = np.sort(rows)
    return g_vendi((x[rows[i:i + 16384]] for i in range(0, rows.size, 16384)), compute_dtype="float32").score


def worker(method: str, n: int, d: int, k: int, seed: int, lazy: bool) -> dict[str, Any]:
    from prismatic_assets.core.selection import random_subset, select

    t0 = time.perf_counter()
    x = synthetic_vectors(n, d, seed)
    data_s = time.perf_counter() - t0
    data_rss = current_rss_mb()
    hwm_reset = reset_peak_rss()  # so the peak below is the selection's, not the data generation's
    options = {"lazy": lazy} if method == "greedy" else {}
    t0 = time.perf_counter()
    chosen = select(x, k, method=method, seed=seed, **options)
    select_s = time.perf_counter() - t0
    select_peak = peak_rss_mb()
    subset = _streamed_g_vendi(x, chosen.indices)
    randoms = [_streamed_g_vendi(x, random_subset(n, k, 1000 + s)) for s in range(RANDOM_SEEDS)]
    out = {"status": "ok", "peak_is_selection_only": hwm_reset, "method": method,
           "lazy": lazy if method == "greedy" else None, "n": n, "dim": d,
           "k": k, "select_s": select_s, "data_s": data_s, "data_rss_mb": data_rss, "peak_rss_mb": select_peak,
           "g_vendi": subset, "random_mean": float(np.mean(randoms)), "random_std": float(np.std(randoms)),
           "random_max": float(np.max(randoms)), "random": randoms, "params": chosen.params,
           "indices_digest": int(np.bitwise_xor.reduce(chosen.indices * 2654435761 % 2**31))}
    if method == "cluster-balanced":
        out["clusters_used"] = int((chosen.quotas > 0).sum())
        out["cluster_size_min_max"] = [int(chosen.cluster_sizes.min()), int(chosen.cluster_sizes.max())]
    return out


def _parse_case(text: str) -> tuple[int, int]:
    n, _, k = text.partition(":")
    return int(n), int(k)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--greedy", default="100000:1000", help="N:k for the greedy case ('' to skip)")
    parser.add_argument("--balanced", default="1000000:100000", help="N:k for cluster-balanced ('' to skip)")
    parser.add_argument("--plain-greedy", default="yes", choices=["yes", "no"],
                        help="also run the plain (non-lazy) greedy on the greedy case as the baseline")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per case")
    parser.add_argument("--name", default="select", help="results file stem under benchmarks/results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lazy", default="yes", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.method, args.n, args.dim, args.k, args.seed, args.lazy == "yes")))
        return

    load_start = os.getloadavg()
    cases: list[tuple[str, int, int, bool]] = []
    if args.greedy:
        n, k = _parse_case(args.greedy)
        cases.append(("greedy", n, k, True))
        if args.plain_greedy == "yes":
            cases.append(("greedy", n, k, False))
    if args.balanced:
        n, k = _parse_case(args.balanced)
        cases.append(("cluster-balanced", n, k, True))
    results = []
    for method, n, k, lazy in cases:
        label = method if method != "greedy" else ("greedy (lazy)" if lazy else "greedy (plain, baseline)")
        print(f"[select] {label}: N = {n}, k = {k}, d = {args.dim}", flush=True)
        r = run_worker("benchmarks.bench_select", ["--method", method, "--n", str(n), "--k", str(k),
                                                   "--dim", str(args.dim), "--seed", str(args.seed),
                                                   "--lazy", "yes" if lazy else "no"], args.timeout_s)
        r.update(label=label, method=method, n=n, k=k)
        print(f"  {r}", flush=True)
        results.append(r)
    load_end = os.getloadavg()

    lazy_r = next((r for r in results if r.get("label") == "greedy (lazy)" and r["status"] == "ok"), None)
    plain_r = next((r for r in results if r.get("label", "").startswith("greedy (plain") and r["status"] == "ok"),
                   None)
    same_picks = None
    if lazy_r and plain_r:
        same_picks = lazy_r["indices_digest"] == plain_r["indices_digest"]
    rows = []
    for r in results:
        if r["status"] != "ok":
            rows.append([r["label"], r["n"], r["k"], None, None, None, None, None, r["status"]])
            continue
        note = ""
        if r is plain_r and lazy_r:
            note = (f"lazy is {r['select_s'] / lazy_r['select_s']:.1f}x faster; "
                    f"same picks: {'yes' if same_picks else 'no'}")
        if r["method"] == "cluster-balanced":
            note = (f"{r['params']['n_clusters']} clusters (k-means++ on {r['params']['train_size']} rows), "
                    f"sizes {r['cluster_size_min_max'][0]}..{r['cluster_size_min_max'][1]}")
        rows.append([r["label"], r["n"], r["k"], r["select_s"], r["peak_rss_mb"], r["data_rss_mb"], r["g_vendi"],
                     f"{r['random_mean']:.2f} ± {r['random_std']:.2f} (max {r['random_max']:.2f})", note])
    table = markdown_table(["method", "N", "k", "select s", "peak RSS MB", "input RSS MB", "subset G-Vendi",
                            f"random G-Vendi ({RANDOM_SEEDS} seeds)", "note"], rows)
    markdown = (
        "# Diverse subset selection\n\n"
        f"Load average at start: {load_start[0]:.1f} (1 min), {load_start[1]:.1f} (5 min); at the end: "
        f"{load_end[0]:.1f}, {load_end[1]:.1f}; on {os.cpu_count()} cores.\n\n"
        f"Synthetic unit vectors, d = {args.dim}, around 500 hidden directions with weights 1/rank. "
        "'input RSS' is the process after building the vectors (float32 N x d), 'peak RSS' the peak "
        "during selection (the peak counter is reset after the vectors are built); G-Vendi is q = 1 over the "
        "chosen rows; random subsets have the same k.\n\n"
        + table)
    write_results(args.name, {"results": results, "load_start": load_start, "load_end": load_end,
                              "lazy_matches_plain": same_picks, "machine": machine()}, markdown)


if __name__ == "__main__":
    main()
