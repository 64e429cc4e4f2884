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

    python -m benchmarks.bench_gradients                       # batched vs one at a time
    python -m benchmarks.bench_gradients --parts batched,precision,fidelity [--n 16] [--subset-n 60]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from benchmarks.common import machine, write_results
from prismatic_assets.core.gradients import (GradientEmbedder, GradientSpec, encode_chat_sample, response_loss,
                                             select_parameters)
from prismatic_assets.core.gvendi import g_vendi, vendi_from_kernel
from prismatic_assets.core.champ import load_champ
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
        rows.append({"mode": f"batched (embed_many)", "batch": b, "s_per_sample": best[f"b{b}"] / len(pairs),
                     "samples_per_s": len(pairs) / best[f"b{b}"], "speedup": best["one"] / best[f"b{b}"],
                     "max_abs_diff": float(np.abs(vectors[f"b{b}"] - vectors["one"]).max())})
    return {"n": len(pairs), "tokens": [encode_chat_sample(tokenizer, p, r, tokens).input_ids.shape[1] for p, r in pairs],
            "reps": reps, "rows": rows}


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
    args = parser.parse_args()
    parts = set(args.parts.split(","))
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
               "| mode | batch | s/sample | samples/s | speedup | max abs diff of unit vectors |", "|---|---|---|---|---|---|"]
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
