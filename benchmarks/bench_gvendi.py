"""Benchmark: G-Vendi time and peak memory, ours (streaming d x d) against Vendi-Score.

For N synthetic unit vectors at d = 1024 it times our streaming G-Vendi (`ours_fp32`:
float32 batch products of 32k rows summed in float64, the pipeline's setting, on unit rows
like the stored gradients; `ours_fp32_nonunit`: the same on rows of length 2, which are
rescaled in a copy; `ours`:
float64 throughout), fed batches generated on the fly so the N x d matrix never exists,
against Vendi-Score 0.0.3's `score_dual` (d x d, needs all of X in memory) and `score_X`
(N x N kernel). Ratios are against `score_dual`, the fastest peer, at the same N. Every case
runs in a fresh subprocess, so its peak RSS (VmHWM) is its own; cases whose estimated
memory exceeds --mem-limit-gb are reported as not run instead of crashing the machine.
Scores are compared in the same run.

    python -m benchmarks.bench_gvendi                       # ours_fp32(_nonunit) vs score_dual at 100k, 300k, 1M
    python -m benchmarks.bench_gvendi --sizes 2000,5000 --dim 128   # quick check

Writes benchmarks/results/gvendi.{json,md} through benchmarks.common. The subprocess and
memory helpers at the top (run_worker, peak_rss_mb, markdown_table) are shared by
bench_kmeans and bench_projection.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from benchmarks.common import machine, write_results

# ----------------------------------------------------------------------------- shared helpers


def load_line() -> str:
    """The load average at start: on a shared machine it explains slow or noisy timings."""
    one, five, _ = os.getloadavg()
    return f"Load average at start: {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores."


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a child started by a large
    parent would report the parent's size.
    """
    hwm = _proc_status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    rss = _proc_status_mb("VmRSS")
    return rss if rss is not None else float("nan")


def run_worker(module: str, args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run `python -m module --worker ...args` in a fresh process; parse its last stdout line as JSON."""
    cmd = [sys.executable, "-m", module, "--worker", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        return {"status": f"not finished: over the {timeout_s:.0f} s timeout"}
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"status": f"failed (exit {proc.returncode}): {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- data

METHODS = ("ours_fp32", "ours_fp32_nonunit", "ours", "score_dual", "score_X")


def synthetic_batches(n: int, d: int, batch: int, seed: int) -> Iterator[np.ndarray]:
    """(b, d) float32 unit rows; a decaying per-axis scale keeps the score well below d.

    Batch i depends only on (seed, i), so the streaming and the in-memory methods see the
    same vectors.
    """
    scale = np.linspace(1.0, 0.05, d).astype(np.float32)  # (d,)
    for i, start in enumerate(range(0, n, batch)):
        rng = np.random.default_rng([seed, i])
        x = rng.standard_normal((min(batch, n - start), d), dtype=np.float32) * scale
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield x


def estimate_gib(method: str, n: int, d: int, batch: int) -> float:
    """Rough peak memory of a case, used to skip cases that cannot fit."""
    if method.startswith("ours"):
        return (3 * UPDATE_ROWS[method] * d * 8 + 4 * d * d * 8) / 2**30
    if method == "score_dual":
        return (2 * n * d * 4 + 3 * d * d * 8) / 2**30  # X, its normalized copy, S
    return (n * d * 4 * 2 + n * n * (4 + 4 + 8 + 8)) / 2**30  # X; K, K/n (float32); float64 copy + LAPACK


def not_run_reason(method: str, n: int, d: int, batch: int, limit_gib: float) -> str | None:
    need = estimate_gib(method, n, d, batch)
    if need <= limit_gib:
        return None
    if method == "score_X":
        return (f"not run: the N x N float64 kernel alone would need {8 * n * n / 2**30:.1f} GB "
                f"(~{need:.0f} GiB in all) > limit {limit_gib:.1f} GiB")
    return f"not run: needs ~{need:.1f} GiB > limit {limit_gib:.1f} GiB"


# ----------------------------------------------------------------------------- worker


#: Rows per update of our streaming path (the g_vendi defaults).
UPDATE_ROWS = {"ours": 8192, "ours_fp32": 32768, "ours_fp32_nonunit": 32768}


def worker(method: str, n: int, d: int, batch: int, seed: int) -> dict[str, Any]:
    base_rss = current_rss_mb()
    if method.startswith("ours"):
        from prismatic_assets.core.gvendi import SecondMoment, g_vendi_from_moment

        moment = SecondMoment(d, compute_dtype="float64" if method == "ours" else "float32")
        gen_s = 0.0
        t0 = time.perf_counter()
        batches = synthetic_batches(n, d, batch, seed)
        while True:
            g0 = time.perf_counter()
            parts = []  # generated in `batch`-row pieces (same data for every method), updated in larger ones
            while sum(len(p) for p in parts) < UPDATE_ROWS[method]:
                piece = next(batches, None)
                if piece is None:
                    break
                parts.append(piece)
            x = np.concatenate(parts) if len(parts) > 1 else (parts[0] if parts else None)
            if x is not None and method == "ours_fp32_nonunit":
                x *= 2.0  # rows of length 2: the float32 path copies and rescales them (same score)
            gen_s += time.perf_counter() - g0
            if x is None:
                break
            moment.update(x)
        score = g_vendi_from_moment(moment, 1.0).score
        elapsed = time.perf_counter() - t0 - gen_s
    else:
        from vendi_score import vendi

        g0 = time.perf_counter()
        x = np.concatenate(list(synthetic_batches(n, d, batch, seed)))  # (n, d) float32
        gen_s = time.perf_counter() - g0
        t0 = time.perf_counter()
        score = float(vendi.score_dual(x) if method == "score_dual" else vendi.score_X(x))
        elapsed = time.perf_counter() - t0
    return {"status": "ok", "time_s": elapsed, "data_gen_s": gen_s, "score": score,
            "peak_rss_mb": peak_rss_mb(), "baseline_rss_mb": base_rss}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated N")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8192, help="rows per generated piece of data")
    parser.add_argument("--methods", default="ours_fp32,ours_fp32_nonunit,score_dual")
    parser.add_argument("--mem-limit-gib", type=float, default=None, help="default: half of RAM")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="gvendi", help="results file stem under benchmarks/results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.method, args.n, args.dim, args.batch_size, args.seed)))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in METHODS:
            parser.error(f"unknown method {m!r}: choose from {METHODS}")
    info = machine()
    load = load_line()
    limit = args.mem_limit_gib if args.mem_limit_gib is not None else info["memory_gib"] / 2
    cases = []
    for n in sizes:
        for method in methods:
            reason = not_run_reason(method, n, args.dim, args.batch_size, limit)
            if reason:
                result: dict[str, Any] = {"status": reason}
            else:
                result = run_worker("benchmarks.bench_gvendi",
                                    ["--method", method, "--n", str(n), "--dim", str(args.dim),
                                     "--batch-size", str(args.batch_size), "--seed", str(args.seed)],
                                    args.timeout_s)
            result.update(method=method, n=n, dim=args.dim,
                          est_gib=round(estimate_gib(method, n, args.dim, args.batch_size), 2))
            cases.append(result)
            print(json.dumps(result), flush=True)

    # Ratios against score_dual (the fastest peer) for the same N.
    rows = []
    for case in cases:
        ref = next((c for c in cases if c["n"] == case["n"] and c["method"] == "score_dual" and c["status"] == "ok"),
                   None)
        if case["status"] == "ok" and ref is not None:
            case["time_vs_score_dual"] = case["time_s"] / ref["time_s"]
            case["peak_rss_vs_score_dual"] = case["peak_rss_mb"] / ref["peak_rss_mb"]
            case["score_rel_diff_vs_score_dual"] = abs(case["score"] - ref["score"]) / ref["score"]
        extra = case["peak_rss_mb"] - case["baseline_rss_mb"] if case["status"] == "ok" else None
        rows.append([case["n"], case["method"], case.get("time_s"), case.get("peak_rss_mb"), extra, case.get("score"),
                     case.get("time_vs_score_dual"), case.get("peak_rss_vs_score_dual"),
                     case.get("score_rel_diff_vs_score_dual"), "" if case["status"] == "ok" else case["status"]])
    payload = {"benchmark": "gvendi", "machine": info, "load_at_start": load,
               "config": {"sizes": sizes, "dim": args.dim, "batch_size": args.batch_size, "methods": methods,
                          "mem_limit_gib": limit, "seed": args.seed},
               "cases": cases}
    md = (f"# G-Vendi: time and peak memory\n\n{load}\n\n"
          f"d = {args.dim}. `ours_fp32` streams batches of {UPDATE_ROWS['ours_fp32']} rows (float32 products "
          "summed in float64; unit rows go to BLAS as they are), `ours_fp32_nonunit` the same on rows of length 2 "
          "(copied and rescaled per batch, the general case), `ours` batches of 8192 in float64; "
          "data generation is excluded. Vendi-Score 0.0.3 "
          "gets X in memory. Every case ran in its own process: peak RSS (VmHWM) includes the interpreter and "
          "libraries; 'above baseline' subtracts the RSS before the method's imports. Ratios are against "
          "`score_dual` at the same N.\n\n")
    md += markdown_table(["N", "method", "time s", "peak RSS MB", "above baseline MB", "score", "time / score_dual",
                          "RSS / score_dual", "score rel diff", "note"], rows)
    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
