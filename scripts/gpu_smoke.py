"""GPU smoke test of the paper-scale paths, on random-init models shaped like the paper's.

    python scripts/gpu_smoke.py            # one CUDA GPU
    python scripts/gpu_smoke.py --tiny     # the same checks on CPU with tiny models (CI runs this)

Checks, one printed line each with its figure:
1. engine A (vLLM) opens, generates a batch, closes; its GPU memory comes back;
2. engine B opens on the same GPU after A (possible only if A freed it), generates, closes;
   both print "skipped: vllm not installed" where vLLM is missing (the lent GPU machine);
   on CPU (--tiny) the transformers backend stands in for vLLM;
3. SFT: the project's training process (pipeline/sft_worker.py) under `accelerate launch`,
   the command pipeline/distill.py builds, bf16 and gradient checkpointing on the GPU;
4. gradients: bf16 per-sample gradients with the dense Rademacher projection, samples/s;
5. gradient memory: the memory budget (core/gradient_memory.py) at Qwen2.5-0.5B shapes with
   4096-token samples: planned steps, predicted and measured peak GPU memory against the
   budget, vectors against one-at-a-time ones.
No model is downloaded: random-init Qwen2 models with the shapes of Qwen2.5-0.5B (proxy,
student) and a smaller Qwen2 (engine B), and a byte-level ChatML tokenizer made here.

Checks 3-5 import only torch, transformers, numpy, scipy and, for SFT, trl, datasets and
accelerate: no pydantic, Dagster, DuckDB, polars, MLflow or faiss (a bare GPU machine has
none of them; tests/test_gpu_smoke.py runs the dry run with them blocked).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Qwen2.5-0.5B-Instruct's shapes (config.json of the hub model).
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, max_position_embeddings=8192, tie_word_embeddings=True, vocab_size=151_936)
SMALL = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True, vocab_size=151_936)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, vocab_size=512)
#: The budget of the gradient-memory check on a GPU, and the sample length (the paper profile's max_length).
GPU_MEMORY_GB = 24.0
GPU_TOKENS = 4096


def report(check: str, ok: bool, figure: str) -> bool:
    print(f"[gpu-smoke] {'PASS' if ok else 'FAIL'} {check}: {figure}", flush=True)
    return ok


def skip(check: str, why: str) -> bool:
    print(f"[gpu-smoke] SKIP {check}: skipped: {why}", flush=True)
    return True


def make_model(folder: Path, shapes: dict, dtype: str) -> str:
    """A random-init Qwen2 model with a byte-level ChatML tokenizer, saved as a model folder."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from benchmarks.bench_gpu_gradients import byte_tokenizer

    tok = byte_tokenizer()
    config = Qwen2Config(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, **shapes)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def check_engines(models: tuple[str, str], tiny: bool) -> bool:
    if importlib.util.find_spec("vllm") is None:
        return skip("engine generator", "vllm not installed") & skip("engine teacher", "vllm not installed")
    from prismatic_assets.core.generation import SamplingConfig
    from prismatic_assets.infra.config import EngineConfig
    from prismatic_assets.infra.engines import EngineSet, _gpu_used_bytes

    backend = "transformers" if tiny else "vllm"
    configs = {"generator": EngineConfig(backend=backend, model=models[0], max_model_len=1024, devices=None
                                         if tiny else (0,), enforce_eager=tiny),
               "teacher": EngineConfig(backend=backend, model=models[1], max_model_len=1024,
                                       devices=None if tiny else (0,), enforce_eager=tiny)}
    engines = EngineSet(configs, release_timeout=120)
    n = 4 if tiny else 32
    prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(n)]
    sampling = SamplingConfig(n=1, temperature=1.0, top_p=0.95, max_tokens=8 if tiny else 64, seed=0)
    ok = True
    for role in ("generator", "teacher"):
        before = _gpu_used_bytes((0,))
        began = time.perf_counter()
        with engines.open(role) as llm:  # closing verifies processes and GPU memory are released
            outputs = llm.chat(prompts, sampling)
            tokens = getattr(llm, "total_completion_tokens", 0)
        seconds = time.perf_counter() - began
        after = _gpu_used_bytes((0,))
        freed = "n/a (no NVML)" if before is None else f"{(after[0] - before[0]) / 2**30:+.2f} GiB after close"
        ok &= report(f"engine {role}", len(outputs) == n, f"{len(outputs)} prompts, {tokens} tokens in "
                     f"{seconds:.1f} s incl. start; GPU memory {freed}")
    return ok


def sft_launch(student: str, data: Path, output_dir: Path, settings, mixed_precision: str) -> list[str]:
    """The command pipeline.distill.sft_command builds for launcher accelerate, one process
    (tests/test_gpu_smoke.py keeps the two equal)."""
    from dataclasses import asdict

    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
            "--mixed_precision", mixed_precision, "--dynamo_backend", "no",
            "-m", "prismatic_assets.pipeline.sft_worker", "--student", student, "--data", str(data),
            "--output-dir", str(output_dir), "--settings", json.dumps(asdict(settings))]


def check_sft(student: str, tiny: bool, work: Path) -> bool:
    from dataclasses import asdict

    from prismatic_assets.core.samples import Sample
    from prismatic_assets.core.sft import SFTSettings
    from prismatic_assets.pipeline.sft_worker import RESULT_FILE

    samples = [Sample(sample_id=f"s:{i}", prompt=f"What is {i} times {i + 2}?",
                      response=f"{i} x {i + 2} = {i * (i + 2)}. The answer is \\boxed{{{i * (i + 2)}}}.")
               for i in range(16 if tiny else 64)]
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(asdict(s), default=str) + "\n" for s in samples))
    settings = SFTSettings(max_steps=3 if tiny else 10, per_device_batch_size=4, max_length=256, bf16=not tiny,
                           gradient_checkpointing=True, save_steps=5, learning_rate=1e-4)
    began = time.perf_counter()
    done = subprocess.run(sft_launch(student, data, work / "sft", settings, "no" if tiny else "bf16"),
                          capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return report("sft", False, f"exit {done.returncode}")
    result = json.loads((work / "sft" / RESULT_FILE).read_text())
    losses = [loss for _, loss in result["loss_history"]]
    return report("sft", result["steps"] == settings.max_steps and all(loss == loss for loss in losses),
                  f"{settings.max_steps} steps ({'fp32 CPU' if tiny else 'bf16, checkpointing'}) in {seconds:.1f} s, "
                  f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def check_gradients(proxy: str, tiny: bool) -> bool:
    import torch

    from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
    from prismatic_assets.core.models import load_causal_lm, model_fingerprint
    from prismatic_assets.core.projection import ProjectionSpec

    device = "cpu" if tiny else "cuda:0"
    model, tokenizer = load_causal_lm(proxy, device=device)
    embedder = GradientEmbedder(model, tokenizer, ProjectionSpec("rademacher", 64 if tiny else 1024, 0),
                                GradientSpec(autocast=None if tiny else "bf16", max_length=512),
                                model_fingerprint(model, tokenizer))
    text = " ".join(f"step {i}: add {i} to the total." for i in range(30))  # ~200 tokens
    batch = 2 if tiny else 32
    pairs = [(f"Problem {i}: sum the steps.", text) for i in range(batch * (2 if tiny else 4))]
    embedder.embed_many(pairs[:batch], batch_size=batch)  # warm-up
    began = time.perf_counter()
    outcomes = embedder.embed_many(pairs, batch_size=batch)  # B per step, projected on the device
    if not tiny:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    setup = "CPU tiny" if tiny else "bf16, dense Rademacher d=1024, Qwen2.5-0.5B shapes"
    return report("gradients", all(o.error is None for o in outcomes),
                  f"{len(pairs) / seconds:.1f} samples/s ({setup})")


def check_gradient_memory(tiny: bool) -> bool:
    from benchmarks.bench_gpu_gradients import budget_run

    r = budget_run("cpu" if tiny else "cuda", tiny, tokens=1024 if tiny else GPU_TOKENS, n=8 if tiny else 12,
                   memory_gb=None if tiny else GPU_MEMORY_GB, dim=64 if tiny else 1024)
    unit = "resident" if tiny else "allocated GPU"
    return report("gradient memory", r["ok"],
                  f"budget {r['budget_gib']:.2f} GiB, peak {unit} {r['peak_gib']:.2f} GiB (predicted "
                  f"{r['predicted_peak_gib']:.2f}), {len(r['steps'])} steps of up to {max(s[0] for s in r['steps'])} "
                  f"x {max(s[1] for s in r['steps'])} tokens, {sum(s[2] > 0 for s in r['steps'])} with recomputed "
                  f"layers, {sum(s[3] is not None for s in r['steps'])} with chunked logits; {r['samples_per_s']:.2f} "
                  f"samples/s; cosine vs one at a time {min(r['cosine_vs_one_at_a_time']):.4f}"
                  + (f"; errors {r['errors']}" if r["errors"] else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny models (what CI runs)")
    args = parser.parse_args(argv)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("[gpu-smoke] no CUDA device: run on a GPU machine, or pass --tiny for the CPU dry run")
        return 2
    dtype = "float32" if args.tiny else "bfloat16"
    with tempfile.TemporaryDirectory(prefix="gpu-smoke-") as tmp:
        work = Path(tmp)
        big = make_model(work / "qwen-0.5b-shape", TINY if args.tiny else QWEN_05B, dtype)
        small = make_model(work / "qwen-small", TINY if args.tiny else SMALL, dtype)
        began = time.perf_counter()
        ok = check_engines((big, small), args.tiny)
        ok &= check_sft(big, args.tiny, work)
        ok &= check_gradients(big, args.tiny)
        ok &= check_gradient_memory(args.tiny)
        report("total", ok, f"{time.perf_counter() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
