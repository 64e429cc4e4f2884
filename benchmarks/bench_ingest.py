"""Peak memory and time of loading gradient shards into the store (`MetadataStore.ingest_embedding_shards`).

N random vectors (d = 256 by default) are written to Parquet shards of 50k rows in the shard
schema, then loaded into a new store; each N runs in its own process, so the peak RSS
(`ru_maxrss`) is that of one ingest. The embed stage of `bench_scale` ends with this insert.

    python -m benchmarks.bench_ingest [--sizes 200000,600000] [--dim 256]

Writes benchmarks/results/ingest.{json,md}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_results


def worker(n: int, dim: int, chunk: int = 50_000) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from prismatic_assets.store.shards import vectors_to_arrow
    from prismatic_assets.store.store import MetadataStore

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    files = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        table = pa.table({
            "content_hash": [hashlib.sha256(str(i).encode()).hexdigest() for i in range(start, start + m)],
            "embedding_key": ["k"] * m, "model_fingerprint": ["m"] * m, "projection_key": ["p"] * m,
            "gradient_spec": ["{}"] * m, "dim": pa.array([dim] * m, type=pa.int32()),
            "vector": vectors_to_arrow(list(rng.standard_normal((m, dim)).astype(np.float32)), dim),
            "grad_norm": pa.array(np.ones(m)), "loss": pa.array(np.ones(m)),
            "n_response_tokens": pa.array([1] * m, type=pa.int32()), "truncated": pa.array([False] * m),
            "seconds": pa.array(np.zeros(m)), "error": pa.array([None] * m, type=pa.string()),
            "run_id": pa.array([None] * m, type=pa.string())})
        files.append(folder / f"{start:09d}.parquet")
        pq.write_table(table, files[-1])
        del table
    store = MetadataStore(folder / "store.duckdb")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    began = time.perf_counter()
    rows = store.ingest_embedding_shards(files)
    return {"n": n, "dim": dim, "shards": len(files), "rows": rows, "ingest_s": time.perf_counter() - began,
            "peak_rss_mb_before": before, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="200000,600000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.dim)))
        return
    import os

    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_ingest", "--worker", str(n), "--dim",
                              str(args.dim)], capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    lines = [f"# Shard ingest (d = {args.dim}, shards of 50k rows)", "",
             f"Load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.", "",
             "| N | shards | ingest s | peak RSS MB before the ingest | peak RSS MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['shards']} | {r['ingest_s']:.1f} | {r['peak_rss_mb_before']:.0f} | "
              f"{r['peak_rss_mb']:.0f} |" for r in results]
    write_results("ingest", {"results": results}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
