"""Run every benchmark at its documented size, one after another (`make bench`).

Each writes benchmarks/results/<name>.{json,md}. Run on an otherwise idle machine: the
figures are wall-clock times.

    python -m benchmarks.run_all [--only gvendi,kmeans]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHMARKS = {
    "gvendi": ["--sizes", "100000,300000,1000000", "--dim", "1024"],
    "kmeans": ["--n", "100000", "--dim", "1024", "--ks", "1000", "--niter", "20"],
    "select": ["--greedy", "100000:1000", "--balanced", "1000000:100000", "--dim", "1024"],
    "projection": [],
    "gradients": [],
    "scale": ["--sizes", "100000,1000000", "--backends", "local,ray"],
    "generation": ["--prompts", "8", "--max-tokens", "128"],
    "stage": ["--requests", "32", "--max-tokens", "128"],
    "round": ["--store", "data/prismatic.duckdb"],  # needs the backbone: run `make demo` first
    "sft": [],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else list(BENCHMARKS)
    failed = []
    for name in chosen:
        print(f"== {name}", flush=True)
        code = subprocess.call([sys.executable, "-m", f"benchmarks.bench_{name}", *BENCHMARKS[name]])
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
