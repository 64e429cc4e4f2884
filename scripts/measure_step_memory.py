"""Peak resident memory of the real Dagster `gradient_embeddings` step (or any selection).

Materializes `--select` (default `seed_samples,gradient_embeddings`) with `dagster asset
materialize`, as `make demo` does, into a fresh data folder (so nothing is cached), and
polls every process of the run every `--interval` seconds (psutil): its resident set and,
on Linux, its own high-water mark (VmHWM, exact even between polls). Prints each process
that passed 200 MiB with its peak, and the largest as the step's figure:

    python scripts/measure_step_memory.py                          # the local profile
    python scripts/measure_step_memory.py --profile local --select seed_samples,gradient_embeddings

The same figure without this script: GNU time reports the largest peak among the command
and the processes it waited for ("Maximum resident set size", in KiB):

    PRISMATIC_DATA_DIR=$(mktemp -d) DAGSTER_HOME=$PWD /usr/bin/time -v .venv/bin/python -m dagster \\
        asset materialize --select seed_samples,gradient_embeddings -m prismatic_assets.orchestration.definitions
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

ROOT = Path(__file__).resolve().parents[1]


def _hwm_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(command: list[str], env: dict[str, str], interval: float) -> tuple[int, dict[int, dict]]:
    """Run `command`; return its exit code and, per process of its tree, the peak resident bytes."""
    import psutil

    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    root = psutil.Process(proc.pid)
    peaks: dict[int, dict] = {}
    while proc.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                rss = p.memory_info().rss
                seen = peaks.setdefault(p.pid, {"cmd": " ".join(p.cmdline())[:160], "peak": 0})
                seen["peak"] = max(seen["peak"], rss, _hwm_bytes(p.pid))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(interval)
    return proc.wait(), peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="local")
    parser.add_argument("--select", default="seed_samples,gradient_embeddings")
    parser.add_argument("--data-dir", default=None, help="default: a fresh temporary folder (nothing cached)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between polls")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="step-memory-") as tmp:
        env = dict(os.environ, PRISMATIC_PROFILE=args.profile, PRISMATIC_DATA_DIR=args.data_dir or tmp)
        env.setdefault("DAGSTER_HOME", str(ROOT))
        command = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", args.select,
                   "-m", "prismatic_assets.orchestration.definitions"]
        started = time.perf_counter()
        code, peaks = measure(command, env, args.interval)
        seconds = time.perf_counter() - started
    big = sorted((v for v in peaks.values() if v["peak"] > 200 * 2**20), key=lambda v: -v["peak"])
    for v in big:
        print(f"{v['peak'] / 2**30:6.2f} GiB  {v['cmd']}")
    peak = big[0]["peak"] if big else 0
    print(json.dumps({"select": args.select, "profile": args.profile, "exit": code, "seconds": round(seconds, 1),
                      "largest_process_peak_gib": round(peak / 2**30, 2), "load": os.getloadavg()}))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
