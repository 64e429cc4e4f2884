"""GPU smoke test of the paper-scale paths, on random-init models shaped like the paper's.

    python scripts/gpu_smoke.py            # one CUDA GPU: vLLM engines, bf16 SFT, dense projection
    python scripts/gpu_smoke.py --tiny     # the same checks on CPU with tiny models (CI runs this)

Checks, one printed line each with its figure:
1. engine A (vLLM) opens, generates a batch, closes; its GPU memory comes back;
2. engine B opens on the same GPU after A (possible only if A freed it), generates, closes;
3. SFT through the project's launcher (`accelerate launch`), bf16, gradient checkpointing;
4. bf16 per-sample gradients with the dense Rademacher projection: samples/s and the
   projection's ms per sample.
No model is downloaded: the models are random-init from configs with the shapes of
Qwen2.5-0.5B (proxy, student) and a smaller Qwen2 (engine B), with the packaged tokenizer.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Qwen2.5-0.5B-Instruct's shapes (config.json of the hub model).
QWEN_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
SMALL = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True)


def report(check: str, ok: bool, figure: str) -> bool:
    print(f"[gpu-smoke] {'PASS' if ok else 'FAIL'} {check}: {figure}", flush=True)
    return ok


def make_model(folder: Path, shapes: dict, dtype: str) -> str:
    """A random-init Qwen2 model with the packaged tokenizer, saved as a model folder."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(PACKAGED_MODEL))
    config = Qwen2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, **shapes)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def check_engines(models: tuple[str, str], tiny: bool) -> bool:
    from prismatic_assets.infra.config import EngineConfig
    from prismatic_assets.core.generation import SamplingConfig
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


def check_sft(student: str, tiny: bool, work: Path) -> bool:
    from prismatic_assets.infra.config import build_config
    from prismatic_assets.core.samples import Sample
    from prismatic_assets.pipeline.distill import read_result, sft_command, write_training_set

    samples = [Sample(sample_id=f"s:{i}", prompt=f"What is {i} times {i + 2}?",
                      response=f"{i} x {i + 2} = {i * (i + 2)}. The answer is \\boxed{{{i * (i + 2)}}}.")
               for i in range(16 if tiny else 64)]
    data = write_training_set(samples, work / "train.jsonl")
    distill = build_config({"distill": {"student": student, "launcher": "python" if tiny else "accelerate",
                                        "sft": {"max_steps": 3 if tiny else 10, "per_device_batch_size": 4, "max_length": 256,
                                                "bf16": not tiny, "gradient_checkpointing": True,
                                                "save_steps": 5, "learning_rate": 1e-4}}}).distill
    began = time.perf_counter()
    done = subprocess.run(sft_command(distill, data, work / "sft"), capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        return report("sft", False, f"exit {done.returncode}")
    result = read_result(work / "sft")
    losses = [loss for _, loss in result["loss_history"]]
    steps = distill.sft.max_steps
    return report("sft", result["steps"] == steps and all(l == l for l in losses),
                  f"{steps} steps ({'fp32 CPU' if tiny else 'bf16, checkpointing'}) in {seconds:.1f} s, "
                  f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")


def check_gradients(proxy: str, tiny: bool) -> bool:
    from prismatic_assets.infra.config import ProjectionConfig, ProxyConfig
    from prismatic_assets.pipeline.embedder import load_gradient_embedder

    device = "cpu" if tiny else "cuda:0"
    proxy_cfg = ProxyConfig(model=proxy, device=device, autocast=None if tiny else "bf16", max_length=512)
    # The GradientEmbedder itself: this check times `embed_many` batches directly.
    embedder = load_gradient_embedder(proxy_cfg, ProjectionConfig(kind="rademacher", dim=1024 if not tiny else 64))
    text = " ".join(f"step {i}: add {i} to the total." for i in range(30))  # ~200 tokens
    batch = 2 if tiny else 32
    pairs = [(f"Problem {i}: sum the steps.", text) for i in range(batch * (2 if tiny else 4))]
    embedder.embed_many(pairs[:batch], batch_size=batch)  # warm-up
    n = len(pairs)
    began = time.perf_counter()
    outcomes = embedder.embed_many(pairs, batch_size=batch)  # B per step, projected on the device
    if not tiny:
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    projection = None  # benchmarks/bench_gpu_gradients.py (scripts/gpu_smoke_gradients.sh) times it alone
    ok = all(o.error is None for o in outcomes)
    extra = f", projection {1000 * projection:.1f} ms/sample" if projection is not None else ""
    setup = "CPU tiny" if tiny else "bf16, dense Rademacher d=1024, Qwen2.5-0.5B shapes"
    return report("gradients", ok, f"{n / seconds:.1f} samples/s ({setup}){extra}")


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
        report("total", ok, f"{time.perf_counter() - began:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
