"""Gradient extraction cost and projection fidelity on the packaged SmolLM2-135M and CHAMP.

0. (part "batched", the default) Samples per second of `GradientEmbedder.embed_many` at
   batch 8 (one padded forward and backward, per-sample gradients by hooks, CountSketch
   to d=1024) against `embed` one sample at a time, on CHAMP samples cut to --tokens
   tokens, in the same run, with the largest difference between their vectors.
1. (part "precision") Seconds per sample of `GradientEmbedder.embed` (all 134.5M parameters, CountSketch to
   d=1024, bookkeeping included) in fp32 and bf16 autocast, against a plain
   forward+backward loop over the same samples in the same run: the ratio is the overhead
   of projection and bookkeeping.
2. G-Vendi of the same real gradients under the dense Rademacher projection and the
   CountSketch, on a parameter subset small enough for the dense one on CPU, next to the
   exact G-Vendi of the unprojected (normalized) gradients.
3. (part "memory", its own results file gradient_memory.{json,md}) Peak resident memory and
   s/sample of the gradient step on the CHAMP seed pool at its real lengths (the local
   profile's pool and proxy.max_length), in three modes, each in a fresh process: one
   sample at a time (`embed`), today's batching (`embed_many`, --batch-size samples per
   step, no budget) and the budgeted batching (`compute.memory_gb`, --memory-gb). Samples go
   to `embed_many` in chunks of 8 batches, as the pipeline does. Then, with --cost-cases,
   single steps of B samples x T tokens (today's path) in fresh processes, measured against
   the step-cost model of core/gradient_memory.py, and the model's prediction of today's
   largest step on the pool.

    python -m benchmarks.bench_gradients                       # batched vs one at a time
    python -m benchmarks.bench_gradients --parts batched,precision,fidelity [--n 16] [--subset-n 60]
    python -m benchmarks.bench_gradients --parts memory        # the whole pool, three modes
    python -m benchmarks.bench_gradients --parts memory --limit 6 --batch-size 2 --cost-cases ""  # a check
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import machine, write_results
from prismatic_assets.core.champ import load_champ
from prismatic_assets.core.gradients import (
    GradientEmbedder,
    GradientSpec,
    encode_chat_sample,
    response_loss,
    select_parameters,
)
from prismatic_assets.core.gvendi import g_vendi, vendi_from_kernel
from prismatic_assets.core.models import PACKAGED_MODEL, load_causal_lm, model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec, make_projector

SUBSET = r"model\.layers\.29\.mlp\.down_proj"  # 885k parameters: a dense projection is affordable on CPU


def plain_loop(model, tokenizer, samples, autocast: bool, max_length: int) -> float:
    """Forward + backward only, no projection: the baseline."""
    for p in model.parameters():
        p.requires_grad_(True)
    start = time.perf_counter()
    for s in samples:
        enc = encode_chat_sample(tokenizer, s.prompt, s.response, max_length)
        model.zero_grad(set_to_none=True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
        with ctx:
            loss = response_loss(model, enc)
        loss.backward()
    return (time.perf_counter() - start) / len(samples)


def embed_loop(model, tokenizer, fingerprint, samples, autocast: bool, max_length: int) -> tuple[float, np.ndarray]:
    embedder = GradientEmbedder(model, tokenizer, ProjectionSpec(), GradientSpec(
        autocast="bf16" if autocast else None, max_length=max_length), fingerprint)
    embedder.embed(samples[0].prompt, samples[0].response)  # projector tables built outside the timing
    start = time.perf_counter()
    vectors = [embedder.embed(s.prompt, s.response).vector for s in samples]
    return (time.perf_counter() - start) / len(samples), np.stack(vectors)


def projection_fidelity(model, tokenizer, samples, max_length: int) -> dict:
    params = select_parameters(model, SUBSET)
    chosen = {id(p) for _, p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    input_dim = sum(p.numel() for _, p in params)
    dense = make_projector(ProjectionSpec(kind="rademacher"), input_dim)
    sketch = make_projector(ProjectionSpec(kind="countsketch"), input_dim)
    raw, dense_rows, sketch_rows = [], [], []
    dense_seconds = sketch_seconds = 0.0
    for s in samples:
        enc = encode_chat_sample(tokenizer, s.prompt, s.response, max_length)
        model.zero_grad(set_to_none=True)
        response_loss(model, enc).backward()
        chunks = [p.grad.reshape(-1) for _, p in params]
        raw.append(torch.cat(chunks).double().numpy())
        t = time.perf_counter()
        dense_rows.append(dense.project(chunks).double().numpy())
        dense_seconds += time.perf_counter() - t
        t = time.perf_counter()
        sketch_rows.append(sketch.project(chunks).double().numpy())
        sketch_seconds += time.perf_counter() - t
    exact = vendi_from_kernel(np.stack(raw)).score
    d_score = g_vendi(np.stack(dense_rows)).score
    s_score = g_vendi(np.stack(sketch_rows)).score
    return {
        "subset": SUBSET, "input_dim": input_dim, "n": len(samples),
        "g_vendi_exact": exact, "g_vendi_dense": d_score, "g_vendi_countsketch": s_score,
        "rel_diff_dense_vs_exact": abs(d_score - exact) / exact,
        "rel_diff_countsketch_vs_exact": abs(s_score - exact) / exact,
        "rel_diff_countsketch_vs_dense": abs(s_score - d_score) / d_score,
        "dense_projection_s_per_sample": dense_seconds / len(samples),
        "countsketch_s_per_sample": sketch_seconds / len(samples),
    }


def batched_vs_one(model, tokenizer, fingerprint, samples, tokens: int, batch_sizes: list[int], reps: int) -> dict:
    """embed_many at each batch size against embed one at a time, same samples, alternating, best of reps."""
    embedder = GradientEmbedder(model, tokenizer, ProjectionSpec(), GradientSpec(max_length=tokens), fingerprint)
    pairs = [(s.prompt, s.response) for s in samples]
    embedder.embed(*pairs[0])  # projector table and kernels warmed outside the timing
    embedder.embed_many(pairs[:2], batch_size=2)
    best: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for _ in range(reps):
        t = time.perf_counter()
        vectors["one"] = np.stack([embedder.embed(p, r).vector for p, r in pairs])
        best["one"] = min(best.get("one", float("inf")), time.perf_counter() - t)
        for b in batch_sizes:
            t = time.perf_counter()
            vectors[f"b{b}"] = np.stack([e.vector for e in embedder.embed_many(pairs, batch_size=b)])
            best[f"b{b}"] = min(best.get(f"b{b}", float("inf")), time.perf_counter() - t)
    rows = [{"mode": "one at a time (embed)", "batch": 1, "s_per_sample": best["one"] / len(pairs),
             "samples_per_s": len(pairs) / best["one"], "speedup": 1.0, "max_abs_diff": 0.0}]
    for b in batch_sizes:
        rows.append({"mode": "batched (embed_many)", "batch": b, "s_per_sample": best[f"b{b}"] / len(pairs),
                     "samples_per_s": len(pairs) / best[f"b{b}"], "speedup": best["one"] / best[f"b{b}"],
                     "max_abs_diff": float(np.abs(vectors[f"b{b}"] - vectors["one"]).max())})
    lengths = [encode_chat_sample(tokenizer, p, r, tokens).input_ids.shape[1] for p, r in pairs]
    return {"n": len(pairs), "tokens": lengths, "reps": reps, "rows": rows}


# -- part "memory" -----------------------------------------------------------------------------
MODES = ("one", "today", "budget")
DEFAULT_COST_CASES = "1x256,1x512,1x1024,2x512,4x256,8x128"


def _status_bytes(field: str) -> int | None:
    """A /proc/self/status field (VmRSS, VmHWM) in bytes; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Restart VmHWM from the current resident size (Linux: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _pool(limit: int | None):
    from prismatic_assets.infra.config import load_config
    from prismatic_assets.pipeline.seed import load_seed

    config = load_config("local")
    # CHAMP: competition problems with real-length solutions (the local profile's world problems are short).
    pool = load_seed(config.seed.model_copy(update={"source": "champ"})).pool
    return (pool[:limit] if limit else pool), config


def memory_worker(mode: str, limit: int | None, batch_size: int, memory_gb: float, out: Path) -> dict:
    """One mode in this (fresh) process: load the proxy as the pipeline does, embed, report."""
    from prismatic_assets.core.gradient_memory import release_freed_memory
    from prismatic_assets.pipeline.embedder import load_gradient_embedder

    samples, config = _pool(limit)
    started = time.perf_counter()
    embedder = load_gradient_embedder(config.proxy, config.projection, batch_size,
                              memory_gb if mode == "budget" else None)
    load_s = time.perf_counter() - started
    loaded_rss = _status_bytes("VmRSS")
    load_peak = _status_bytes("VmHWM")
    release_freed_memory()
    reset = _reset_peak()
    pairs = [(s.prompt, s.response) for s in samples]
    steps = []
    started = time.perf_counter()
    if mode == "one":
        outcomes = [embedder.embed(p, r) for p, r in pairs]
    else:
        outcomes = []
        chunk = batch_size * 8  # pipeline/embeddings.py hands the embedder this many samples per call
        for c0 in range(0, len(pairs), chunk):
            outcomes += embedder.embed_many(pairs[c0:c0 + chunk])
            steps += embedder.last_plan
    seconds = time.perf_counter() - started
    vectors = np.stack([o.vector if o.vector is not None else np.full(embedder.dim, np.nan, np.float32)
                        for o in outcomes])
    np.save(out / f"{mode}.npy", vectors)
    result = {"mode": mode, "n": len(pairs), "batch_size": batch_size,
              "memory_gb": memory_gb if mode == "budget" else None,
              "load_s": load_s, "seconds": seconds, "s_per_sample": seconds / len(pairs),
              "loaded_rss_gib": loaded_rss / 2**30 if loaded_rss else None,
              "embed_peak_rss_gib": (_status_bytes("VmHWM") / 2**30) if reset else None,
              "process_peak_rss_gib": max(load_peak or 0, _status_bytes("VmHWM") or 0) / 2**30,
              "errors": sorted({o.error for o in outcomes if o.error}),
              "tokens": [encode_chat_sample(embedder.tokenizer, p, r, embedder.gradient.max_length).input_ids.shape[1]
                         for p, r in pairs]}
    if steps:
        result.update(steps=len(steps), largest_step_tokens=max(p.padded_tokens for p in steps),
                      recomputed_steps=sum(p.recompute > 0 for p in steps),
                      chunked_steps=sum(p.logit_chunk is not None for p in steps))
    if mode == "budget":
        # What the model predicts for today's batching of the same pool (not run here).
        from prismatic_assets.core.gradient_memory import unbudgeted_batches

        cost = embedder.step_cost()
        lengths, prompts = [], []
        for p, r in pairs:
            enc = encode_chat_sample(embedder.tokenizer, p, r, embedder.gradient.max_length)
            lengths.append(enc.input_ids.shape[1])
            prompts.append(enc.n_prompt_tokens)
        worst = 0.0
        for c0 in range(0, len(pairs), batch_size * 8):
            for step in unbudgeted_batches(lengths[c0:c0 + batch_size * 8], prompts[c0:c0 + batch_size * 8], 8):
                worst = max(worst, cost.bytes(len(step.indices), step.tokens, len(step.indices) * step.positions))
        result["predicted_today_step_gib"] = worst / 2**30
        result["largest_step_predicted_gib"] = max(p.predicted_bytes for p in steps) / 2**30
    return result


def cost_worker(batch: int, tokens: int) -> dict:
    """One step of `batch` CHAMP samples cut to `tokens` tokens (the last one shorter, so the
    step pads), today's path; measured peak above the settled baseline vs the model."""
    from prismatic_assets.core.gradient_memory import release_freed_memory

    samples, config = _pool(None)
    from prismatic_assets.pipeline.embedder import load_gradient_embedder

    proxy = config.proxy.model_copy(update={"max_length": tokens})
    embedder = load_gradient_embedder(proxy, config.projection, batch, None)
    cost = embedder.step_cost()
    tok = embedder.tokenizer
    pairs = [(s.prompt, (s.response + "\n") * 20) for s in samples[:batch]]
    if batch > 1:
        prompt_len = encode_chat_sample(tok, samples[batch - 1].prompt, "x", tokens).n_prompt_tokens
        ids = tok((samples[batch - 1].response + "\n") * 20)["input_ids"][: max(8, tokens - prompt_len - 40)]
        pairs[-1] = (samples[batch - 1].prompt, tok.decode(ids))
    embedder.embed_many([(samples[0].prompt, samples[0].response[:80])])  # every weight paged in
    release_freed_memory()
    reset = _reset_peak()
    base = _status_bytes("VmRSS")
    started = time.perf_counter()
    out = embedder.embed_many(pairs, batch_size=batch)
    seconds = time.perf_counter() - started
    (step,) = embedder.last_plan
    predicted = cost.bytes(len(step.indices), step.tokens, len(step.indices) * step.positions)
    return {"batch": batch, "tokens": step.tokens, "positions": step.positions, "seconds": seconds,
            "baseline_rss_gib": base / 2**30 if base else None,
            "measured_gib": (_status_bytes("VmHWM") - base) / 2**30 if reset and base else None,
            "predicted_gib": predicted / 2**30, "errors": [o.error for o in out if o.error]}


def _run(args: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_gradients", "--worker", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    if done.returncode != 0:
        return {"status": f"failed (exit {done.returncode}): " + " | ".join(done.stderr.strip().splitlines()[-3:])}
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_part(args) -> None:
    load = os.getloadavg()
    results: dict = {"machine": machine(), "load_at_start": load, "limit": args.limit,
                     "batch_size": args.batch_size, "memory_gb": args.memory_gb, "modes": {}, "cost_cases": []}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        for mode in filter(None, args.modes.split(",")):
            worker = ["memory", mode, "--out", tmp, "--batch-size", str(args.batch_size),
                      "--memory-gb", str(args.memory_gb)] + (["--limit", str(args.limit)] if args.limit else [])
            results["modes"][mode] = _run(worker, args.timeout_s)
            print(json.dumps(results["modes"][mode]), flush=True)
        done = {m: np.load(Path(tmp) / f"{m}.npy") for m in results["modes"] if (Path(tmp) / f"{m}.npy").exists()}
    if "one" in done:
        for mode, vectors in done.items():
            results["modes"][mode]["max_abs_diff_vs_one"] = float(np.nanmax(np.abs(vectors - done["one"])))
    for case in filter(None, args.cost_cases.split(",")):
        b, t = (int(v) for v in case.split("x"))
        row = _run(["cost", str(b), str(t)], args.timeout_s)
        row.setdefault("batch", b)
        results["cost_cases"].append(row)
        print(json.dumps(row), flush=True)
    results["load_at_end"] = os.getloadavg()
    write_results("gradient_memory", results, memory_markdown(results))


def memory_markdown(results: dict) -> str:
    modes = results["modes"]
    today = modes.get("today", {}).get("s_per_sample")
    lines = [f"Load average: {results['load_at_start'][0]:.1f} at start, {results['load_at_end'][0]:.1f} at end "
             f"(1 min) on {os.cpu_count()} cores.", "",
             "Gradient step on the CHAMP seed pool at real lengths (local profile: packaged SmolLM2-135M, all "
             "134.5M parameters, CountSketch d=1024, fp32, max_length 1024), each mode in a fresh process:", "",
             "| mode | samples | peak RSS GiB (process) | peak RSS GiB (embedding) | s/sample | x today | steps "
             "| recomputed / chunked steps | max abs diff vs one at a time |",
             "|---|---|---|---|---|---|---|---|---|"]
    label = {"one": "one at a time (`embed`)", "today": f"today's batching (batch {results['batch_size']}, no budget)",
             "budget": f"budgeted (memory_gb {results['memory_gb']:g}, batch <= {results['batch_size']})"}
    for mode, r in modes.items():
        if "status" in r:
            lines.append(f"| {label[mode]} | - | - | - | - | - | - | - | {r['status']} |")
            continue
        ratio = f"{r['s_per_sample'] / today:.2f}" if today else "-"
        peak = f"{r['embed_peak_rss_gib']:.2f}" if r.get("embed_peak_rss_gib") is not None else "-"
        lines.append(f"| {label[mode]} | {r['n']} | {r['process_peak_rss_gib']:.2f} | {peak} | "
                     f"{r['s_per_sample']:.2f} | {ratio} | {r.get('steps', r['n'])} | "
                     f"{r.get('recomputed_steps', '-')} / {r.get('chunked_steps', '-')} | "
                     f"{r.get('max_abs_diff_vs_one', float('nan')):.1e} |")
    budget = modes.get("budget", {})
    if "predicted_today_step_gib" in budget:
        lines += ["", f"Step-cost model: today's largest step on these samples would hold "
                      f"{budget['predicted_today_step_gib']:.1f} GiB above the loaded model; the budgeted run's "
                      f"largest step was planned at {budget['largest_step_predicted_gib']:.2f} GiB."]
    if results["cost_cases"]:
        lines += ["", "Single steps (today's path: all logits at once, nothing recomputed), peak RSS above the "
                      "settled baseline, against the step-cost model of core/gradient_memory.py:", "",
                  "| B x T | logit positions | measured GiB | predicted GiB | predicted / measured |",
                  "|---|---|---|---|---|"]
        for c in results["cost_cases"]:
            if "status" in c:
                lines.append(f"| {c['batch']} x ? | - | - | - | {c['status']} |")
                continue
            lines.append(f"| {c['batch']} x {c['tokens']} | {c['batch'] * c['positions']} | {c['measured_gib']:.2f} | "
                         f"{c['predicted_gib']:.2f} | {c['predicted_gib'] / c['measured_gib']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="batched", help="comma list of batched, precision, fidelity")
    parser.add_argument("--tokens", type=int, default=200, help="batched part: samples cut to this many tokens")
    parser.add_argument("--batch-sizes", default="8", help="batched part: comma list")
    parser.add_argument("--batched-n", type=int, default=16, help="batched part: samples")
    parser.add_argument("--reps", type=int, default=2, help="batched part: best of this many runs")
    parser.add_argument("--n", type=int, default=16, help="samples for the timing part")
    parser.add_argument("--subset-n", type=int, default=60, help="samples for the projection comparison")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--limit", type=int, default=None, help="memory part: the first N pool samples (default all)")
    parser.add_argument("--batch-size", type=int, default=8, help="memory part: samples per step (today's: 8)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="memory part: the budget (default: compute.memory_gb's default)")
    parser.add_argument("--modes", default=",".join(MODES), help="memory part: comma list of " + ",".join(MODES))
    parser.add_argument("--cost-cases", default=DEFAULT_COST_CASES, help="memory part: BxT single steps ('' = none)")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600, help="memory part: per process")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_gb is None:
        from prismatic_assets.infra.config import ComputeConfig

        args.memory_gb = ComputeConfig.model_fields["memory_gb"].default
    if args.worker:
        kind, *rest = args.worker
        if kind == "memory":
            print(json.dumps(memory_worker(rest[0], args.limit, args.batch_size, args.memory_gb, Path(args.out))))
        else:
            print(json.dumps(cost_worker(int(rest[0]), int(rest[1]))))
        return
    parts = set(args.parts.split(","))
    if "memory" in parts:
        memory_part(args)
        parts.discard("memory")
        if not parts:
            return
    samples = load_champ().samples
    model, tokenizer = load_causal_lm(PACKAGED_MODEL)
    fingerprint = model_fingerprint(model, tokenizer)
    results: dict = {"machine": machine(), "load_at_start": os.getloadavg()}
    md: list[str] = [f"Load average at start: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores.", ""]
    if "batched" in parts:
        long_enough = [s for s in samples
                       if encode_chat_sample(tokenizer, s.prompt, s.response, 4096).input_ids.shape[1] >= args.tokens]
        batched = batched_vs_one(model, tokenizer, fingerprint, long_enough[: args.batched_n], args.tokens,
                                 [int(b) for b in args.batch_sizes.split(",")], args.reps)
        batched["load_at_end"] = os.getloadavg()
        results["batched"] = batched
        print(batched, flush=True)
        md += [f"Batched per-sample gradients: {batched['n']} CHAMP samples cut to {args.tokens} tokens, all "
               f"134.5M parameters, CountSketch d=1024, fp32, best of {batched['reps']} alternating runs.", "",
               "| mode | batch | s/sample | samples/s | speedup | max abs diff of unit vectors |",
               "|---|---|---|---|---|---|"]
        md += [f"| {r['mode']} | {r['batch']} | {r['s_per_sample']:.3f} | {r['samples_per_s']:.3f} | "
               f"{r['speedup']:.2f} | {r['max_abs_diff']:.1e} |" for r in batched["rows"]]
        md += ["", f"Load average at end: {batched['load_at_end'][0]:.1f} (1 min).", ""]
    if "precision" in parts:
        timing_samples = samples[: args.n]
        tokens = [encode_chat_sample(tokenizer, s.prompt, s.response, args.max_length).input_ids.shape[1]
                  for s in timing_samples]
        rows = []
        vectors = {}
        for label in args.precisions.split(","):
            autocast = label == "bf16"
            plain = plain_loop(model, tokenizer, timing_samples, autocast, args.max_length)
            ours, vectors[label] = embed_loop(model, tokenizer, fingerprint, timing_samples, autocast, args.max_length)
            rows.append({"precision": label, "plain_fwd_bwd_s_per_sample": plain, "embed_s_per_sample": ours,
                         "overhead_ratio": ours / plain})
            print(rows[-1], flush=True)
        both = "fp32" in vectors and "bf16" in vectors
        cos = np.sum(vectors["fp32"] * vectors["bf16"], axis=1) if both else np.array([np.nan])
        results.update({"n": len(timing_samples), "mean_tokens": float(np.mean(tokens)), "timing": rows,
                        "fp32_vs_bf16_cosine_mean": float(cos.mean()), "fp32_vs_bf16_cosine_min": float(cos.min())})
        md += ["| precision | plain fwd+bwd (s/sample) | embed incl. projection (s/sample) | ratio |",
               "|---|---|---|---|"]
        md += [f"| {r['precision']} | {r['plain_fwd_bwd_s_per_sample']:.2f} | {r['embed_s_per_sample']:.2f} | "
               f"{r['overhead_ratio']:.2f} |" for r in rows]
        md += ["", f"{len(timing_samples)} CHAMP samples, mean {np.mean(tokens):.0f} tokens"
               + (f"; cosine(fp32, bf16 vectors): mean {cos.mean():.4f}, min {cos.min():.4f}" if both else ""), ""]
    if "fidelity" in parts:
        fidelity = projection_fidelity(model, tokenizer, samples[: args.subset_n], args.max_length)
        print(fidelity, flush=True)
        results["projection_fidelity"] = fidelity
        md += [f"Projection fidelity on `{SUBSET}` ({fidelity['input_dim']:,} parameters, N={fidelity['n']}):", "",
               "| | G-Vendi | rel. diff vs exact | s/sample |", "|---|---|---|---|",
               f"| exact (unprojected) | {fidelity['g_vendi_exact']:.3f} | 0 | - |",
               f"| dense Rademacher d=1024 | {fidelity['g_vendi_dense']:.3f} | "
               f"{fidelity['rel_diff_dense_vs_exact']:.2%} | {fidelity['dense_projection_s_per_sample']:.3f} |",
               f"| CountSketch d=1024 | {fidelity['g_vendi_countsketch']:.3f} | "
               f"{fidelity['rel_diff_countsketch_vs_exact']:.2%} | {fidelity['countsketch_s_per_sample']:.4f} |",
               "", f"CountSketch vs dense: {fidelity['rel_diff_countsketch_vs_dense']:.2%} relative difference."]
    write_results("gradients", results, "\n".join(md))

if __name__ == "__main__":
    main()
