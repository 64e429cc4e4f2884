"""GPU smoke benchmark: gradient embeddings at Qwen2.5-0.5B scale with the dense projection.

A random-init Qwen2 model with Qwen2.5-0.5B's shapes (24 layers, hidden 896, 151,936-token
vocabulary, tied embeddings: 494M parameters; nothing is downloaded), float32 weights and
bf16 autocast as in the paper profile, the dense Rademacher projection to d = 1024 (bf16
signs, float32 accumulation) and synthetic texts of about --tokens byte tokens. Reports:

- samples/s of `GradientEmbedder.embed_many` at --batch-size (forward, backward,
  per-sample gradients and projection, all on the device);
- the projection's ms per sample: `project_slice` over all 494M coordinates for a batch,
  the signs of each block made once for the batch, divided by the batch size.

Goals (the issue): >= 25 samples/s on one H100-class GPU, projection < 30 ms per sample.
`--tiny` runs the same code with a 2-layer model on whatever device is there (CPU in the
tests); `--check` exits 1 when a goal is missed.

With --memory-gb the benchmark checks the memory budget instead (`budget_run`): samples of
--tokens (e.g. 4096) tokens and shorter, planned within the budget, peak device memory
measured against it and the vectors against one-at-a-time ones.

    python -m benchmarks.bench_gpu_gradients --device cuda --check      # scripts/gpu_smoke_gradients.sh
    python -m benchmarks.bench_gpu_gradients --device cuda --tokens 4096 --n 12 --memory-gb 24 --check
    python -m benchmarks.bench_gpu_gradients --tiny --out /tmp/x        # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151_936, max_position_embeddings=32_768, rope_theta=1e6,
                  tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=512, max_position_embeddings=1024, tie_word_embeddings=True)
GOAL_SAMPLES_PER_S = 25.0
GOAL_PROJECTION_MS = 30.0


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def texts(n: int, tokens: int) -> list[tuple[str, str]]:
    """Synthetic (prompt, response) pairs of about `tokens` byte tokens in all."""
    out = []
    for i in range(n):
        prompt = f"Problem {i}: what is {i * 37 % 1000} times {i % 89}? "
        body = f"Step: {i * 37 % 1000} * {i % 89} = {(i * 37 % 1000) * (i % 89)}. "
        response = (body * (tokens // len(body) + 1))[: max(8, tokens - len(prompt) - 30)]
        out.append((prompt, response))
    return out


def _model(shapes: dict, device: str, tokenizer):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(**shapes, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.device(device):
        return Qwen2ForCausalLM(config).eval()


def byte_tokenizer():
    """A byte-level ChatML tokenizer (one token per byte), made here: nothing is downloaded."""
    from transformers import AutoTokenizer

    from benchmarks.bench_scale import tiny_proxy

    with tempfile.TemporaryDirectory() as tmp:
        return AutoTokenizer.from_pretrained(tiny_proxy(Path(tmp) / "tok"))


def device_peak_bytes(device: str) -> int:
    """Peak memory since the last `reset_device_peak`: allocated by torch on a GPU, resident on CPU."""
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_device_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def budget_run(device: str, tiny: bool, tokens: int = 4096, n: int = 12, memory_gb: float | None = None,
               dim: int = 1024) -> dict:
    """The memory budget (core/gradient_memory.py) at Qwen2.5-0.5B shapes and `tokens`-token samples.

    Samples of tokens, 3/4, 1/2 and 1/4 of that, in turn; bf16 autocast, the dense projection.
    Reports the planned steps, the predicted and the measured peak (allocated GPU memory, or
    resident memory on CPU) against the budget, samples/s, and the cosine of the longest and
    the shortest sample's vectors with their one-at-a-time ones. memory_gb None: what is
    resident after loading plus 0.25 GiB (the CPU dry run).
    """
    import numpy as np
    import torch

    from prismatic_assets.core.gradient_memory import MemoryBudget, resident_bytes
    from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
    from prismatic_assets.core.projection import ProjectionSpec

    tokenizer = byte_tokenizer()
    model = _model(TINY if tiny else QWEN25_05B, device, tokenizer)
    pairs = [texts(i + 1, [tokens, 3 * tokens // 4, tokens // 2, tokens // 4][i % 4])[i] for i in range(n)]
    spec = ProjectionSpec("rademacher", dim, 0)
    gradient = GradientSpec(autocast="bf16", max_length=tokens + 64)
    reference = GradientEmbedder(model, tokenizer, spec, gradient, model_fingerprint="random-init")
    ends = [reference.embed(*pairs[0]), reference.embed(*pairs[3])]  # the longest, the shortest
    del reference
    _sync(device)
    resident = resident_bytes(device)
    budget = MemoryBudget.gb(memory_gb) if memory_gb else MemoryBudget(resident + 2**28)
    embedder = GradientEmbedder(model, tokenizer, spec, gradient, model_fingerprint="random-init", memory=budget)
    embedder.step_cost()
    reset_device_peak(device)
    started = time.perf_counter()
    out = embedder.embed_many(pairs, batch_size=16)
    _sync(device)
    seconds = time.perf_counter() - started
    peak = device_peak_bytes(device)
    cosines = [float(np.dot(a.vector, b.vector)) if a.vector is not None and b.vector is not None else float("nan")
               for a, b in zip(ends, (out[0], out[3]))]
    plan = embedder.last_plan
    gib = 2**30
    result = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu", "tiny": tiny,
        "tokens": [len(tokenizer(p + r)["input_ids"]) for p, r in pairs[:4]], "n": n,
        "budget_gib": budget.total_bytes / gib, "resident_before_gib": resident / gib,
        "peak_gib": peak / gib, "predicted_peak_gib": (resident + max(p.predicted_bytes for p in plan)) / gib,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / gib if device.startswith("cuda") else None,
        "steps": [[len(p.indices), p.tokens, p.recompute, p.logit_chunk] for p in plan],
        "samples_per_s": n / seconds, "cosine_vs_one_at_a_time": cosines,
        "errors": sorted({o.error for o in out if o.error}),
    }
    result["ok"] = (peak <= budget.total_bytes and not result["errors"] and min(cosines) > 0.99)
    return result


def run(args) -> dict:
    import torch

    from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
    from prismatic_assets.core.projection import ProjectionSpec, make_projector

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = byte_tokenizer()
    model = _model(TINY if args.tiny else QWEN25_05B, device, tokenizer)
    n_params = sum(p.numel() for p in model.parameters())
    kind = "rademacher"
    spec = ProjectionSpec(kind, args.dim, 0)
    gradient = GradientSpec(autocast="bf16" if args.autocast else None, max_length=args.tokens + 64)
    embedder = GradientEmbedder(model, tokenizer, spec, gradient, model_fingerprint="random-init")
    pairs = texts(args.n + args.batch_size, args.tokens)
    embedder.embed_many(pairs[: args.batch_size], batch_size=args.batch_size)  # warm-up: kernels, allocator
    _sync(device)
    start = time.perf_counter()
    out = embedder.embed_many(pairs[args.batch_size:], batch_size=args.batch_size)
    _sync(device)
    embed_s = time.perf_counter() - start
    errors = sorted({o.error for o in out if o.error})

    # The projection alone: every coordinate of a batch of gradients, block by block.
    projector = make_projector(spec, n_params, device=device, cache_bytes=0)
    block = min(n_params, 1 << 24)
    values = torch.randn(args.batch_size, block, device=device)
    projector.project_slice(values[:, : min(block, 1 << 20)], 0)  # warm-up
    _sync(device)
    start = time.perf_counter()
    acc = torch.zeros(args.batch_size, args.dim, device=device)
    for offset in range(0, n_params, block):
        m = min(block, n_params - offset)
        acc += projector.project_slice(values[:, :m], offset)
    _sync(device)
    projection_s = time.perf_counter() - start
    result = {
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "tiny": bool(args.tiny), "parameters": n_params, "tokens": args.tokens, "batch_size": args.batch_size,
        "n": len(out), "autocast": "bf16" if args.autocast else None, "projection": projector.key,
        "embed_s": embed_s, "samples_per_s": len(out) / embed_s,
        "projection_ms_per_sample": 1e3 * projection_s / args.batch_size,
        "errors": errors, "load": os.getloadavg()[0],
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
    }
    result["meets_goals"] = (result["samples_per_s"] >= GOAL_SAMPLES_PER_S
                             and result["projection_ms_per_sample"] < GOAL_PROJECTION_MS and not errors)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="2-layer model, for CPUs and tests")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=256, help="timed samples (after one warm-up batch)")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--no-autocast", dest="autocast", action="store_false")
    parser.add_argument("--out", default=None, help="folder for gpu_gradients.json/.md (default benchmarks/results)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="instead: the memory budget check at --tokens tokens (e.g. 4096) within this many GiB "
                             "(--tiny without it: resident + 0.25 GiB); writes gpu_gradient_memory.{json,md}")
    args = parser.parse_args(argv)
    from benchmarks.common import write_results

    if args.memory_gb is not None or (args.tiny and args.tokens >= 1024):
        import torch

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        result = budget_run(device, args.tiny, args.tokens, args.n, args.memory_gb, args.dim)
        md = ("| device | budget GiB | resident before GiB | peak GiB (predicted) | peak reserved GiB | steps (B, T, "
              "recomputed, logit chunk) | samples/s | cosine vs one at a time | within budget |\n"
              "|---|---|---|---|---|---|---|---|---|\n"
              f"| {result['device']} | {result['budget_gib']:.1f} | {result['resident_before_gib']:.2f} | "
              f"{result['peak_gib']:.2f} ({result['predicted_peak_gib']:.2f}) | {result['peak_reserved_gib']} | "
              f"{result['steps']} | {result['samples_per_s']:.2f} | "
              f"{', '.join(f'{c:.4f}' for c in result['cosine_vs_one_at_a_time'])} | {result['ok']} |\n\n"
              f"Samples of about {result['tokens']} byte tokens in turn; Qwen2.5-0.5B shapes (random init), bf16 "
              "autocast, dense Rademacher d=1024; peak = allocated device memory (resident memory on CPU).")
        write_results("gpu_gradient_memory", result, md, directory=Path(args.out) if args.out else None)
        print(json.dumps(result))
        return 0 if result["ok"] or not args.check else 1
    result = run(args)

    peak = result['peak_gpu_mem_gib']
    md = ("| device | parameters | batch | tokens | samples/s | projection ms/sample | peak GPU GiB | goals met |\n"
          "|---|---|---|---|---|---|---|---|\n"
          f"| {result['device']} | {result['parameters']:,} | {result['batch_size']} | {result['tokens']} | "
          f"{result['samples_per_s']:.1f} | {result['projection_ms_per_sample']:.1f} | "
          f"{peak if peak is None else round(peak, 1)}"
          f" | {result['meets_goals']} |\n\nGoals: >= {GOAL_SAMPLES_PER_S:g} samples/s, projection < "
          f"{GOAL_PROJECTION_MS:g} ms per sample ({result['projection']}, bf16 autocast: {result['autocast']}).")
    write_results("gpu_gradients", result, md, directory=Path(args.out) if args.out else None)
    print(json.dumps(result))
    if args.check and not result["meets_goals"]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
