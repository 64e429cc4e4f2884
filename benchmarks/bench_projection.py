"""Benchmark: gradient projection cost (CountSketch, dense Rademacher) and how close they score.

Three parts, each in a fresh subprocess:

1. countsketch: per-sample time of projecting a synthetic 134.5M-dim gradient split into
   chunks shaped like SmolLM2-135M's parameters (tied 49152 x 576 embedding, 30 layers of
   q/k/v/o/gate/up/down and two norms, final norm), fp32 and bf16, at torch's default
   thread count and at 1 thread; plus the one-time hash-table build and peak memory.
2. dense: the paper's dense Rademacher projection for smaller input dims (LoRA-sized),
   with the int8 sign cache, without it, and batched (project_many) without it; CountSketch
   at the same sizes for comparison. Sizes beyond the CPU guard report its refusal.
3. agreement: G-Vendi of the same synthetic gradients (low-rank structure, per-coordinate
   scales spread over orders of magnitude) under dense vs CountSketch for several seeds,
   against the exact score (kernel Vendi of the unprojected gradients).

    python -m benchmarks.bench_projection              # full sizes
    python -m benchmarks.bench_projection --layers 1 --dense-input-dims 65536 \\
        --agreement-n 40 --agreement-input-dim 20000 --reps 2       # quick check

Writes benchmarks/results/projection.{json,md}.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from typing import Any

from benchmarks.bench_gvendi import current_rss_mb, load_line, markdown_table, peak_rss_mb, run_worker
from benchmarks.common import machine, write_results

# SmolLM2-135M (LlamaForCausalLM): hidden 576, 9 heads / 3 KV heads of 64, MLP 1536, vocab 49152.
_HIDDEN, _KV, _MLP, _VOCAB = 576, 192, 1536, 49152


def smollm2_chunk_sizes(layers: int = 30) -> list[int]:
    """numel of each parameter in SmolLM2-135M's order; 30 layers sum to 134,515,008."""
    per_layer = [_HIDDEN * _HIDDEN, _KV * _HIDDEN, _KV * _HIDDEN, _HIDDEN * _HIDDEN,
                 _MLP * _HIDDEN, _MLP * _HIDDEN, _HIDDEN * _MLP, _HIDDEN, _HIDDEN]
    return [_VOCAB * _HIDDEN] + per_layer * layers + [_HIDDEN]


def _median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def countsketch_worker(layers: int, dim: int, reps: int) -> dict[str, Any]:
    import torch

    from prismatic_assets.core.projection import ProjectionSpec, make_projector

    base = current_rss_mb()
    sizes = smollm2_chunk_sizes(layers)
    input_dim = sum(sizes)
    gen = torch.Generator().manual_seed(0)
    chunks = [torch.randn(s, generator=gen) for s in sizes]  # like [p.grad.reshape(-1) for p in params]
    chunks_bf16 = [c.bfloat16() for c in chunks]
    t0 = time.perf_counter()
    proj = make_projector(ProjectionSpec("countsketch", dim, 0), input_dim)
    build_s = time.perf_counter() - t0
    proj.project(chunks)  # warm-up: page in the table and scratch buffers
    default_threads = torch.get_num_threads()
    out: dict[str, Any] = {"status": "ok", "input_dim": input_dim, "chunks": len(sizes), "dim": dim,
                           "build_s": build_s, "default_threads": default_threads}
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        out[f"fp32_s_{threads}t"] = _median_time(lambda: proj.project(chunks), reps)
        out[f"bf16_s_{threads}t"] = _median_time(lambda: proj.project(chunks_bf16), reps)
    torch.set_num_threads(default_threads)
    v = proj.project(chunks)
    # JL sanity: ||Pg||^2 / ||g||^2 ~ 1 +- sqrt(2/dim).
    out["norm_ratio"] = float(v.double().norm() ** 2 / sum(float(c.double().norm() ** 2) for c in chunks))
    out["peak_rss_mb"], out["baseline_rss_mb"] = peak_rss_mb(), base
    return out


def dense_worker(input_dim: int, dim: int, reps: int, batch: int) -> dict[str, Any]:
    import torch

    from prismatic_assets.core.projection import ProjectionSpec, make_projector

    base = current_rss_mb()
    g = torch.randn(input_dim, generator=torch.Generator().manual_seed(1))
    chunks = list(torch.split(g, max(1, input_dim // 8)))
    out: dict[str, Any] = {"status": "ok", "input_dim": input_dim, "dim": dim, "entries": input_dim * dim}
    spec = ProjectionSpec("rademacher", dim, 0)
    try:
        t0 = time.perf_counter()
        cached = make_projector(spec, input_dim)
        out["cache_build_s"] = time.perf_counter() - t0
    except ValueError as err:
        out["status"] = f"refused: {err}"
        return out
    if cached.cached:
        cached.project(chunks)
        # A bound method, not a closure over the name: `del cached` below frees the table.
        out["cached_s"] = _median_time(functools.partial(cached.project, chunks), reps)
    del cached
    uncached = make_projector(spec, input_dim, cache_bytes=0)
    out["uncached_s"] = _median_time(lambda: uncached.project(chunks), max(1, min(reps, 3)))
    many = [chunks] * batch
    out[f"uncached_batch{batch}_s_per_sample"] = _median_time(lambda: uncached.project_many(many), 1) / batch
    cs = make_projector(ProjectionSpec("countsketch", dim, 0), input_dim)
    cs.project(chunks)
    out["countsketch_s"] = _median_time(lambda: cs.project(chunks), reps)
    out["peak_rss_mb"], out["baseline_rss_mb"] = peak_rss_mb(), base
    return out


def lowrank_gradients(n: int, input_dim: int, rank: int, seed: int):
    """(n, input_dim) float32 gradients: rank-`rank` signal with decaying strength, per-block
    (layer-like) and per-coordinate log-normal scales, plus 5% isotropic noise."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    blocks = 16
    block_scale = torch.exp(2 * torch.randn(blocks, generator=gen))
    block_scale = block_scale.repeat_interleave(-(-input_dim // blocks))[:input_dim]  # (input_dim,)
    coord_scale = torch.exp(torch.randn(input_dim, generator=gen)) * block_scale  # (input_dim,)
    basis = torch.randn(input_dim, rank, generator=gen) * coord_scale[:, None]  # (input_dim, rank)
    coeff = torch.randn(n, rank, generator=gen) * torch.logspace(0, -1.5, rank)  # (n, rank)
    signal = coeff @ basis.T  # (n, input_dim)
    noise = torch.randn(n, input_dim, generator=gen) * coord_scale
    return signal + 0.05 * signal.norm(dim=1, keepdim=True) / noise.norm(dim=1, keepdim=True) * noise


def agreement_worker(n: int, input_dim: int, rank: int, dim: int, seeds: list[int]) -> dict[str, Any]:
    from prismatic_assets.core.gvendi import g_vendi, vendi_from_kernel
    from prismatic_assets.core.projection import ProjectionSpec, make_projector

    base = current_rss_mb()
    grads = lowrank_gradients(n, input_dim, rank, seed=123)
    exact = vendi_from_kernel(grads.double().numpy()).score
    out: dict[str, Any] = {"status": "ok", "n": n, "input_dim": input_dim, "rank": rank, "dim": dim,
                           "exact": exact, "runs": []}
    samples = [[g] for g in grads]
    for seed in seeds:
        run: dict[str, Any] = {"seed": seed}
        for kind in ("rademacher", "countsketch"):
            proj = make_projector(ProjectionSpec(kind, dim, seed), input_dim, allow_slow=True)
            t0 = time.perf_counter()
            vectors = proj.project_many(samples)
            run[f"{kind}_project_s"] = time.perf_counter() - t0
            run[kind] = g_vendi(vectors).score
            del proj
        run["rel_diff_cs_vs_dense"] = abs(run["countsketch"] - run["rademacher"]) / run["rademacher"]
        run["rel_err_dense"] = (run["rademacher"] - exact) / exact
        run["rel_err_cs"] = (run["countsketch"] - exact) / exact
        out["runs"].append(run)
    out["max_rel_diff_cs_vs_dense"] = max(r["rel_diff_cs_vs_dense"] for r in out["runs"])
    out["peak_rss_mb"], out["baseline_rss_mb"] = peak_rss_mb(), base
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=30, help="SmolLM2 layers in the synthetic gradient (30: 134.5M)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dense-input-dims", default="460800,1048576,4194304,134515008",
                        help="460,800 is LoRA r=8 on q/v of SmolLM2")
    parser.add_argument("--dense-batch", type=int, default=16)
    parser.add_argument("--agreement-n", type=int, default=200)
    parser.add_argument("--agreement-input-dim", type=int, default=262_144)
    parser.add_argument("--agreement-rank", type=int, default=64)
    parser.add_argument("--agreement-seeds", default="0,1,2")
    parser.add_argument("--parts", default="countsketch,dense,agreement")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="per subprocess")
    parser.add_argument("--name", default="projection", help="results file stem under benchmarks/results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--input-dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.agreement_seeds.split(",")]
    if args.worker == "countsketch":
        print(json.dumps(countsketch_worker(args.layers, args.dim, args.reps)))
        return
    if args.worker == "dense":
        print(json.dumps(dense_worker(args.input_dim, args.dim, args.reps, args.dense_batch)))
        return
    if args.worker == "agreement":
        print(json.dumps(agreement_worker(args.agreement_n, args.agreement_input_dim, args.agreement_rank,
                                          args.dim, seeds)))
        return

    info, load = machine(), load_line()
    parts = args.parts.split(",")
    common = ["--dim", str(args.dim), "--reps", str(args.reps)]
    payload: dict[str, Any] = {"benchmark": "projection", "machine": info, "load_at_start": load, "config": vars(args)}
    md = f"# Gradient projection\n\n{load}\n\nOutput dim {args.dim}.\n\n"

    if "countsketch" in parts:
        cs = run_worker("benchmarks.bench_projection", ["countsketch", *common, "--layers", str(args.layers)],
                        args.timeout_s)
        payload["countsketch"] = cs
        print(json.dumps(cs), flush=True)
        md += "## CountSketch, SmolLM2-135M-shaped gradient\n\n"
        if cs["status"] == "ok":
            threads = sorted({cs["default_threads"], 1}, reverse=True)
            rows = [[t, cs[f"fp32_s_{t}t"], cs[f"bf16_s_{t}t"]] for t in threads]
            md += (f"{cs['input_dim']:,} coordinates in {cs['chunks']} chunks; hash table built once in "
                   f"{cs['build_s']:.2f} s; peak RSS {cs['peak_rss_mb']:.0f} MB (gradient, bf16 copy and "
                   f"int32 table included); ||Pg||^2/||g||^2 = {cs['norm_ratio']:.4f}. Median of {args.reps}.\n\n")
            md += markdown_table(["torch threads", "fp32 s / sample", "bf16 s / sample"], rows) + "\n"
        else:
            md += f"{cs['status']}\n\n"

    if "dense" in parts:
        rows = []
        payload["dense"] = []
        for input_dim in [int(s) for s in args.dense_input_dims.split(",")]:
            r = run_worker("benchmarks.bench_projection",
                           ["dense", *common, "--input-dim", str(input_dim), "--dense-batch", str(args.dense_batch)],
                           args.timeout_s)
            r.setdefault("input_dim", input_dim)
            payload["dense"].append(r)
            print(json.dumps(r), flush=True)
            rows.append([f"{input_dim:,}", r.get("cache_build_s"), r.get("cached_s"), r.get("uncached_s"),
                         r.get(f"uncached_batch{args.dense_batch}_s_per_sample"), r.get("countsketch_s"),
                         r.get("peak_rss_mb"), "" if r["status"] == "ok" else r["status"]])
        md += ("## Dense Rademacher vs CountSketch, smaller inputs\n\n"
               "Seconds per sample. 'cached': int8 signs held in memory (built once); 'regenerated': "
               f"signs hashed on every call; 'batch {args.dense_batch}': project_many shares each block.\n\n")
        md += markdown_table(["input dim", "cache build s", "dense cached", "dense regenerated",
                              f"dense regenerated, batch {args.dense_batch}", "countsketch", "peak RSS MB", "note"],
                             rows) + "\n"

    if "agreement" in parts:
        ag = run_worker("benchmarks.bench_projection",
                        ["agreement", "--dim", str(args.dim), "--agreement-n", str(args.agreement_n),
                         "--agreement-input-dim", str(args.agreement_input_dim),
                         "--agreement-rank", str(args.agreement_rank), "--agreement-seeds", args.agreement_seeds],
                        args.timeout_s)
        payload["agreement"] = ag
        print(json.dumps(ag), flush=True)
        md += "## G-Vendi under dense vs CountSketch projection\n\n"
        if ag["status"] == "ok":
            md += (f"{ag['n']} synthetic gradients of {ag['input_dim']:,} coordinates, rank-{ag['rank']} "
                   f"structure; exact score (kernel Vendi of the unprojected gradients) {ag['exact']:.3f}.\n\n")
            rows = [[r["seed"], r["rademacher"], r["countsketch"], r["rel_diff_cs_vs_dense"], r["rel_err_dense"],
                     r["rel_err_cs"], r["rademacher_project_s"], r["countsketch_project_s"]] for r in ag["runs"]]
            md += markdown_table(["seed", "dense", "countsketch", "abs(cs - dense) / dense", "dense vs exact",
                                  "cs vs exact", "dense project s (all)", "cs project s (all)"], rows)
        else:
            md += f"{ag['status']}\n"

    write_results(args.name, payload, md)


if __name__ == "__main__":
    main()
