"""Benchmark: the backbone at pool scale with a tiny proxy, so that pipeline overhead shows.

N short synthetic samples ("What is 123 + 45?" / "123 + 45 = 168.") go through the same
code as the `gradient_embeddings`, `gradient_clusters` and `g_vendi` assets
(pipeline/embeddings.py, clusters.py, scores.py) with a random-init Llama of 2 layers and
hidden size 64 over a byte-level vocabulary (258 tokens), so the model's own work is small:

- embed: gradients of every sample (batched hooks + CountSketch), Parquet shards, one
  DuckDB insert; `local` (this process) or `ray` (a local Ray with `--workers` actors of
  one CPU each, Ray Data map_batches).
- cluster: loading the N vectors from DuckDB and spherical k-means (K = --k-ratio x N,
  trained on --points-per-centroid points per centroid, every point assigned).
- score: G-Vendi of the N vectors (float32 path).

Model compute is the time of a plain padded forward+backward (autograd into .grad, no
per-sample gradients, projection or storage) over the same batches, measured on up to
20k samples; overhead per sample = embed seconds / N - model compute per sample. Each
(N, backend) case runs in its own process; peak RSS is measured per stage (the kernel's
high-water mark is reset before each stage) and includes the (N, d) vector matrix, which
grows with N by design (N x d x 4 bytes). Ray actors run in their own processes: their
memory is not in these figures.

    python -m benchmarks.bench_scale                                  # N = 100k and 1M, local and ray
    python -m benchmarks.bench_scale --sizes 2000 --backends local    # quick check

Writes benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_gvendi import load_line, markdown_table, peak_rss_mb, run_worker
from benchmarks.common import machine, write_results

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_proxy(folder: Path, seed: int = 0) -> str:
    """Save a byte-level ChatML tokenizer and a random-init 2-layer Llama (hidden 64) to `folder`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}  # 256 byte symbols
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def synthetic_samples(n: int):
    from prismatic_assets.core.samples import Sample

    return [Sample(sample_id=f"q{i}", prompt=f"What is {i} + {i % 97}?", response=f"{i} + {i % 97} = {i + i % 97}.",
                   source="synthetic") for i in range(n)]


def reset_peak_rss() -> None:
    """Start a new high-water mark (Linux: clear_refs 5), so each stage reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def model_seconds_per_sample(model_dir: str, samples, batch_size: int, max_samples: int = 20_000) -> float:
    """Plain padded forward + backward into .grad, the same batches as embed_many: the model's own cost."""
    import torch
    import torch.nn.functional as F

    from prismatic_assets.core.gradients import IGNORE_INDEX, encode_chat_sample
    from prismatic_assets.core.models import load_causal_lm

    model, tokenizer = load_causal_lm(model_dir)
    model.eval()
    subset = samples[:max_samples]
    encoded = sorted((encode_chat_sample(tokenizer, s.prompt, s.response) for s in subset),
                     key=lambda e: -e.input_ids.shape[1])
    start = time.perf_counter()
    for b0 in range(0, len(encoded), batch_size):
        batch = encoded[b0:b0 + batch_size]
        longest = batch[0].input_ids.shape[1]
        ids = torch.full((len(batch), longest), tokenizer.pad_token_id)
        labels = torch.full((len(batch), longest), IGNORE_INDEX)
        mask = torch.zeros(len(batch), longest, dtype=torch.long)
        for i, e in enumerate(batch):
            n = e.input_ids.shape[1]
            ids[i, :n], labels[i, :n], mask[i, :n] = e.input_ids[0], e.labels[0], 1
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1),
                        ignore_index=IGNORE_INDEX).backward()
    return (time.perf_counter() - start) / len(subset)


def worker(args) -> dict[str, Any]:
    import torch

    from prismatic_assets.infra.config import ClusteringConfig, ComputeConfig, ProjectionConfig, ProxyConfig
    from prismatic_assets.pipeline.clusters import cluster_pool
    from prismatic_assets.pipeline.embeddings import embed_samples, open_embedder, pool_vectors
    from prismatic_assets.pipeline.scores import score_pool
    from prismatic_assets.store.store import MetadataStore

    torch.set_num_threads(args.threads)  # tiny ops: 2 threads on a busy 2-core machine were 10x slower
    out: dict[str, Any] = {"status": "ok"}
    samples = synthetic_samples(args.n)
    proxy, projection = ProxyConfig(model=args.model_dir, max_length=128), ProjectionConfig(dim=args.dim)
    compute = ComputeConfig(backend=args.backend, workers=args.workers, cpus_per_worker=1.0,
                            batch_size=args.batch_size)
    if args.backend == "ray":
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        store = MetadataStore(Path(tmp) / "prismatic.duckdb")
        reset_peak_rss()
        t0 = time.perf_counter()
        with open_embedder(proxy, projection, compute) as embedder:
            report = embed_samples(samples, embedder, store, shard_rows=args.shard_rows)
        out["embed_s"] = time.perf_counter() - t0
        out["embed_ingest_s"] = report.ingest_seconds
        out["embed_shards"] = report.n_shards
        out["embed_errors"] = len(report.errors)
        out["embed_peak_rss_mb"] = peak_rss_mb()
        if args.backend == "ray":
            import ray

            ray.shutdown()
        reset_peak_rss()
        t0 = time.perf_counter()
        pool = pool_vectors(store, samples, report.embedding_key, report.dim)
        out["load_vectors_s"] = time.perf_counter() - t0
        settings = ClusteringConfig(ratio=args.k_ratio, niter=args.niter,
                                    max_points_per_centroid=args.points_per_centroid)
        _, clustering = cluster_pool(store, pool, settings, report.embedding_key, scope="bench")
        out["cluster_s"] = time.perf_counter() - t0
        out["k"] = clustering.k
        out["cluster_peak_rss_mb"] = peak_rss_mb()
        reset_peak_rss()
        t0 = time.perf_counter()
        result = score_pool(store, pool, 1.0, report.embedding_key, scope="bench")
        out["score_s"] = time.perf_counter() - t0
        out["g_vendi"] = result.score
        out["score_peak_rss_mb"] = peak_rss_mb()
        out["store_mb"] = (Path(tmp) / "prismatic.duckdb").stat().st_size / 2**20
        out["vectors_mb"] = pool.vectors.nbytes / 2**20
        out["n_valid"] = int(len(pool.sample_ids))
        del pool
    if args.backend == "local":
        out["model_s_per_sample"] = model_seconds_per_sample(args.model_dir, samples, args.batch_size)
    out["embed_ms_per_sample"] = 1e3 * out["embed_s"] / args.n
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--backends", default="local,ray")
    parser.add_argument("--dim", type=int, default=256, help="projection dimension (the store holds N x dim floats)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the local case (and of loading)")
    parser.add_argument("--workers", type=int, default=2, help="Ray actors (one CPU each)")
    parser.add_argument("--shard-rows", type=int, default=65536)
    parser.add_argument("--k-ratio", type=float, default=0.001, help="K = ratio x N")
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--points-per-centroid", type=int, default=64)
    parser.add_argument("--timeout-s", type=float, default=7200.0)
    parser.add_argument("--name", default="scale")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    info, load = machine(), load_line()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tiny_proxy(Path(tmp) / "tiny-proxy")
        for n in sizes:
            for backend in backends:
                started = time.time()
                load_before = os.getloadavg()[0]
                result = run_worker("benchmarks.bench_scale", [
                    "--n", str(n), "--backend", backend, "--model-dir", model_dir, "--dim", str(args.dim),
                    "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                    "--threads", str(args.threads), "--shard-rows", str(args.shard_rows),
                    "--k-ratio", str(args.k_ratio), "--niter", str(args.niter),
                    "--points-per-centroid", str(args.points_per_centroid)], args.timeout_s)
                result.update(n=n, backend=backend, load_at_case_start=load_before, wall_s=time.time() - started)
                cases.append(result)
                print(json.dumps(result), flush=True)
                report(args, info, load, sizes, cases)  # after every case: a long run keeps what finished


def report(args, info: dict, load: str, sizes: list[int], cases: list[dict[str, Any]]) -> None:
    model_ms = {c["n"]: 1e3 * c["model_s_per_sample"] for c in cases if "model_s_per_sample" in c}
    rows = []
    for c in cases:
        ok = c["status"] == "ok"
        model = model_ms.get(c["n"])
        overhead = c["embed_ms_per_sample"] - model if ok and model is not None else None
        c["overhead_ms_per_sample"] = overhead
        rows.append([c["n"], c["backend"], c.get("embed_s"), c.get("embed_ms_per_sample"), model, overhead,
                     c.get("embed_ingest_s"), c.get("cluster_s"), c.get("k"), c.get("score_s"),
                     c.get("embed_peak_rss_mb"), c.get("cluster_peak_rss_mb"), c.get("score_peak_rss_mb"),
                     c.get("vectors_mb"), c.get("load_at_case_start"), "" if ok else c["status"]])
    payload = {"benchmark": "scale", "machine": info, "load_at_start": load,
               "config": {k: v for k, v in vars(args).items() if k not in ("worker", "n", "backend", "model_dir")}
               | {"sizes": sizes}, "cases": cases}
    md = (f"# Backbone at scale with a tiny proxy\n\n{load}\n\n"
          f"Synthetic samples of ~60 byte tokens; proxy: random-init Llama, 2 layers, hidden 64, 258-token byte "
          f"vocabulary; CountSketch to d = {args.dim}; batches of {args.batch_size}; torch threads: {args.threads} "
          f"(local) and 1 per actor (Ray: {args.workers} actors of 1 CPU on a local Ray). cluster: DuckDB load of "
          f"the vectors + k-means with K = {args.k_ratio} x N, {args.niter} iterations on "
          f"{args.points_per_centroid} points per centroid, every point assigned. 'model' is a plain padded "
          "forward+backward per sample on the same batches (local case); 'overhead' = embed - model: hooks, "
          "per-sample gradients, projection, shards and the DuckDB insert. Peak RSS per stage, in the case's own "
          "process (Ray actors excluded); 'vectors MB' is the N x d matrix that the cluster and score stages "
          "hold; 'load' is the 1-minute load average when the case started.\n\n")
    md += markdown_table(["N", "backend", "embed s", "embed ms/sample", "model ms/sample", "overhead ms/sample",
                          "DuckDB insert s", "cluster s", "K", "score s", "embed RSS MB", "cluster RSS MB",
                          "score RSS MB", "vectors MB", "load", "note"], rows)
    write_results(args.name, payload, md)

if __name__ == "__main__":
    main()
