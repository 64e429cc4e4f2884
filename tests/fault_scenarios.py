"""Fault scenarios that run in their own process, on a disk that fills up.

`python -m tests.fault_scenarios SCENARIO DIR [ARGS]` writes under DIR, prints one JSON line
with what it observed, and exits 0 (assertions live in the tests). DIR is either a small
tmpfs (the test mounted it in a private mount namespace) or, where mounting is not
allowed, an ordinary folder while the process runs under a file-size limit (writes past
it fail with EFBIG instead of ENOSPC). `run_on_full_disk` picks the first that works.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Per-file limit of the fallback mode: above the first store write, below the failing one.
FSIZE_LIMIT = 4 << 20


def _fill(disk: Path, leave: int) -> Path:
    """Fill the tmpfs at `disk` until only about `leave` bytes are free."""
    filler = disk / "filler"
    block = b"\0" * (1 << 20)
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(block)
                handle.flush()
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def _counts(store) -> dict[str, int]:
    return {t: int(store.query(f"SELECT count(*) AS n FROM {t}")["n"][0]) for t in ("samples", "rejections")}


def scenario_store(disk: Path, tmpfs: bool) -> dict:
    from prismatic_assets.core.samples import Sample
    from prismatic_assets.store.store import MetadataStore, StoreDiskFull

    def samples(n: int, tag: str, size: int) -> list[Sample]:
        return [Sample(f"{tag}:{i}", f"{tag} problem {i} " + os.urandom(size).hex(),
                       "solution " + os.urandom(size).hex(), source=tag) for i in range(n)]

    path = disk / "prismatic.duckdb"
    store = MetadataStore(path)
    store.replace_samples(source="seed", origin="seed", samples=samples(100, "seed", 64), splits={}, rejections=[],
                          run_id="r1")
    before = _counts(store)
    filler = _fill(disk, leave=512 << 10) if tmpfs else None
    out: dict = {"before": before}
    try:
        store.replace_samples(source="big", origin="seed", samples=samples(3000, "big", 1000), splits={},
                              rejections=[], run_id="r2")
        out["error"] = None
    except StoreDiskFull as exc:
        out["error"], out["error_type"] = str(exc), type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - reported, the test fails on it
        out["error"], out["error_type"] = str(exc), type(exc).__name__
    out["after"] = _counts(MetadataStore(path))  # a fresh open, as the next step would
    out["files"] = sorted(p.name for p in disk.iterdir() if p.name != "filler")
    wal = path.with_name(path.name + ".wal")
    out["wal_bytes"] = wal.stat().st_size if wal.exists() else 0
    if filler is not None:
        filler.unlink()
        store.replace_samples(source="big", origin="seed", samples=samples(300, "big", 1000), splits={},
                              rejections=[], run_id="r3")
        out["after_freeing"] = _counts(store)
    return out


def scenario_checkpoint(disk: Path, tmpfs: bool, model_dir: str) -> dict:
    from transformers import TrainerCallback

    from prismatic_assets.core.samples import Sample
    from prismatic_assets.core.sft import SFTSettings, train_sft
    from prismatic_assets.core.sft_checkpoints import FINAL_DIR, SFTDiskFull, complete_checkpoints

    samples = [Sample(f"t:{i}", f"What is {i} plus {i + 1}?", f"{i} + {i + 1} = {2 * i + 1}. \\boxed{{{2 * i + 1}}}",
                      answer=str(2 * i + 1)) for i in range(6)]
    settings = SFTSettings(max_steps=3, learning_rate=1e-3, per_device_batch_size=2, warmup_ratio=0.0,
                           max_length=128, save_steps=1, logging_steps=1)
    output = disk / "sft"
    filled: list[Path] = []

    class FillAfterFirstCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if tmpfs and not filled:  # leave room for half a checkpoint: the next save cannot finish
                size = sum(f.stat().st_size for f in (output / "checkpoint-1").rglob("*") if f.is_file())
                filled.append(_fill(disk, leave=size // 2))

    out: dict = {}
    try:
        train_sft(model_dir, samples, output, settings, callbacks=[FillAfterFirstCheckpoint()])
        out["error"] = None
    except SFTDiskFull as exc:
        out["error"], out["error_type"] = str(exc), type(exc).__name__
    except Exception as exc:  # noqa: BLE001
        out["error"], out["error_type"] = str(exc), type(exc).__name__
    out["complete"] = [p.name for p in complete_checkpoints(output)]
    out["entries"] = sorted(p.name for p in output.iterdir() if not p.name.startswith("."))
    out["hidden"] = sorted(p.name for p in output.iterdir() if p.name.startswith("."))
    out["final"] = (output / FINAL_DIR).exists()
    if filled:
        filled[0].unlink()
        steps: list[int] = []
        result = train_sft(model_dir, samples, output, settings, callbacks=lambda step, loss: steps.append(step))
        out["resumed_from"] = result.resumed_from.name if result.resumed_from else None
        out["steps_after_resume"] = steps
        out["final_steps"] = result.steps
    return out


def shard_samples(n: int = 24) -> list:
    """n distinct short worked problems (lengths vary) for the gradient-shard scenarios."""
    from prismatic_assets.core.samples import Sample

    return [Sample(f"g:{i}", f"What is {i} + {i % 5}?" + " Explain." * (i % 3),
                   f"{i} + {i % 5} = \\boxed{{{i + i % 5}}}", source="unit") for i in range(n)]


def scenario_shard(disk: Path, tmpfs: bool, model_dir: str) -> dict:
    """Gradients of 24 samples, a shard per 8; the disk fills once two shards are written."""
    import numpy as np
    import pyarrow.parquet as pq

    from prismatic_assets.infra.config import ProjectionConfig, ProxyConfig
    from prismatic_assets.pipeline.embedder import build_embedder
    from prismatic_assets.pipeline.embeddings import embed_samples, shard_folder
    from prismatic_assets.store.shards import ShardDiskFull
    from prismatic_assets.store.store import MetadataStore

    samples = shard_samples()
    dim = 1024  # a shard of 8 vectors is 32 KiB of floats, far above what is left free
    embedder = build_embedder(ProxyConfig(model=model_dir), ProjectionConfig(dim=dim), batch_size=1)
    computed: list[str] = []  # prompts that reached the model
    embed_many = embedder.gradients.embed_many
    embedder.gradients.embed_many = lambda pairs: computed.extend(p for p, _ in pairs) or embed_many(pairs)
    store = MetadataStore(disk / "data" / "prismatic.duckdb")
    folder = shard_folder(store, embedder.key).path
    filled: list[Path | None] = []
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def fill_before_the_third_shard(i, n, sample, outcome):
        if i == 17 and not filled:  # chunks of 8: two shards are on disk, the third is next
            if tmpfs:
                filled.append(_fill(disk, leave=4 << 10))
            else:  # no file may grow past 4 KiB from now on
                resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 10, hard))
                filled.append(None)

    out: dict = {"folder": str(folder)}
    try:
        embed_samples(samples, embedder, store, progress=fill_before_the_third_shard, shard_rows=8)
        out["error"] = None
    except ShardDiskFull as exc:
        out["error"], out["error_type"] = str(exc), type(exc).__name__
    except Exception as exc:  # noqa: BLE001
        out["error"], out["error_type"] = str(exc), type(exc).__name__
    out["files"] = sorted(p.name for p in folder.iterdir())
    out["shard_rows"] = sorted(pq.read_metadata(p).num_rows for p in folder.iterdir())
    out["stored"] = int(MetadataStore(store.path).query("SELECT count(*) AS n FROM embeddings")["n"][0])
    if filled and filled[0] is not None:
        filled[0].unlink()
    else:
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    computed.clear()
    report = embed_samples(samples, embedder, store, shard_rows=8)
    out["rerun_computed"] = computed == [s.prompt for s in samples[16:]]
    out["n_resumed"] = report.n_resumed
    out["files_after"] = sorted(p.name for p in folder.iterdir())
    clean = MetadataStore(disk / "clean" / "prismatic.duckdb")
    embed_samples(samples, embedder, clean, shard_rows=8)
    hashes = [s.content_hash for s in samples]
    (ok_a, a, _), (ok_b, b, _) = store.load_vectors(hashes, embedder.key, dim), clean.load_vectors(hashes,
                                                                                                   embedder.key, dim)
    out["all_stored"] = bool(ok_a.all() and ok_b.all())
    out["max_difference"] = float(np.abs(a - b).max())
    return out


SCENARIOS = {"store": scenario_store, "checkpoint": scenario_checkpoint, "shard": scenario_shard}


def run_on_full_disk(scenario: str, tmp_path: Path, size_mb: int, *args: str, timeout: float = 600) -> dict:
    """Run a scenario on a `size_mb` tmpfs in a private mount namespace (as root, or as a user
    with user namespaces), else on a plain folder under a file-size limit. Returns its JSON,
    with "mode" set to "tmpfs" or "fsize"."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = [sys.executable, "-m", "tests.fault_scenarios", scenario, str(disk), *args]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    mount = f"mount -t tmpfs -o size={size_mb}m prismatic-full-disk {shlex.quote(str(disk))} && exec "
    wrappers = ([["unshare", "--mount", "--propagation", "private"]] if os.geteuid() == 0 else []) + \
        [["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]]
    if os.environ.get("PRISMATIC_FAULT_DISK") == "fsize":  # exercise the fallback where mounting works
        wrappers = []
    failures = []
    for wrapper in wrappers:
        try:
            done = subprocess.run([*wrapper, "sh", "-c", mount + shlex.join(command)], cwd=REPO, env=env,
                                  capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as exc:  # no unshare here
            failures.append(str(exc))
            break
        if done.returncode == 0:
            return {"mode": "tmpfs", **json.loads(done.stdout.strip().splitlines()[-1])}
        if "mount" not in done.stderr and "unshare" not in done.stderr:
            raise AssertionError(f"scenario {scenario} failed on tmpfs:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        failures.append(done.stderr.strip()[-300:])

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit_file_size)
    if done.returncode != 0:
        raise AssertionError(f"scenario {scenario} failed under a file-size limit (tmpfs unavailable: {failures}):\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"mode": "fsize", **json.loads(done.stdout.strip().splitlines()[-1])}


if __name__ == "__main__":
    name, folder, *rest = sys.argv[1:]
    target = Path(folder)
    result = SCENARIOS[name](target, os.path.ismount(target), *rest)
    print(json.dumps(result))
