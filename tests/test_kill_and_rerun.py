"""SIGKILL at each long stage, then a rerun.

Real parts: each materialization in its own process group (`tests/run_assets.py`: the
project's definitions and asset code against the instance of a temporary DAGSTER_HOME with
this project's dagster.yaml; killed with SIGKILL, no chance to clean up), the DuckDB store, MLflow
on SQLite, the SFT process launched through Pipes, and OpenAI-compatible HTTP (the
generator, the teacher and the students behind a deterministic loopback server that counts
what it is asked and can hold requests, so each kill lands at a known point).

After each rerun: no row is duplicated, every request the killed run had been answered is
reused (the server receives only the missing ones, counted), SFT resumes from its last
checkpoint. Then the API key: a sentinel key sent with every request appears nowhere in
the store, MLflow or Dagster's storage.

The tests run in order on one pipeline (each stage needs the previous ones).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from tests.conftest import make_tiny_llama, write_profile
from tests.fake_openai import FakeOpenAI

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SENTINEL = "sk-prismatic-sentinel-7f3c9a1e5b"
N_POOL = 40  # seed pool samples (50 loaded, 20% held out)
N_REQUESTS = 6


class Pipeline:
    def __init__(self, root: Path, server: FakeOpenAI, proxy_dir: str, student_dir: str) -> None:
        self.root, self.server = root, server
        self.home = root / "home"
        self.home.mkdir()
        config = yaml.safe_load((REPO / "dagster.yaml").read_text())
        for key in ("storage", "local_artifact_storage", "compute_logs"):  # state under the temporary home
            config.pop(key, None)
        (self.home / "dagster.yaml").write_text(yaml.safe_dump(config))
        llm = {"backend": "openai", "base_url": server.url, "max_concurrency": 4}
        self.profile = write_profile(root, {
            "data_dir": str(root / "data"),
            "seed": {"source": "champ", "limit": 50, "holdout_fraction": 0.2},
            "proxy": {"model": proxy_dir, "max_length": 256},
            "projection": {"dim": 64},
            "compute": {"shard_rows": 8, "batch_size": 1},  # a Parquet shard every 8 samples, one sample per step
            "clustering": {"ratio": 0.2},
            "synthesis": {"generator": {**llm, "model": "fake-generator"}, "teacher": {**llm, "model": "fake-teacher"},
                          "requests_per_round": N_REQUESTS},
            "distill": {"student": student_dir, "launcher": "python",
                        "sft": {"max_steps": 40, "save_steps": 3, "max_length": 256, "per_device_batch_size": 2,
                                "learning_rate": 1e-3, "warmup_ratio": 0.0}},
            "evaluation": {"engine": {**llm, "max_model_len": 1024}, "gsm_symbolic": 6, "holdout": False,
                           "max_tokens": 64},
        }, name="faults")
        self.store = root / "data" / "prismatic.duckdb"
        self.env = {**os.environ, "DAGSTER_HOME": str(self.home), "PRISMATIC_PROFILE": self.profile,
                    "PYTHONPATH": str(REPO), "OPENAI_API_KEY": SENTINEL}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.logs: list[Path] = []

    def materialize(self, selection: str, partition: str | None = None, kill_when=None, timeout: float = 600):
        """Materialize in a child process; with `kill_when`, SIGKILL its process group once it returns
        True. Returns the exit code, or "killed"."""
        log = self.root / f"run-{len(self.logs)}-{selection}.log"
        self.logs.append(log)
        command = [sys.executable, "-m", "tests.run_assets", selection] + ([partition] if partition else [])
        with open(log, "w") as out:
            proc = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if kill_when is not None and kill_when():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(30)
                    return "killed"
                assert time.monotonic() < deadline, f"{selection} still running after {timeout:.0f} s"
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        assert kill_when is None, f"{selection} finished before it could be killed:\n{log.read_text()[-3000:]}"
        assert proc.returncode == 0, log.read_text()[-5000:]
        return proc.returncode

    def sql(self, query: str, params=None):
        """A read of the store between the pipeline's own short transactions (retried while it writes)."""
        for _ in range(600):
            try:
                con = duckdb.connect(str(self.store), read_only=True)
            except duckdb.Error:
                time.sleep(0.05)
                continue
            try:
                return con.execute(query, params or []).fetchall()
            finally:
                con.close()
        raise AssertionError(f"the store stayed locked: {query}")

    def count(self, table: str, where: str = "TRUE") -> int:
        if not self.store.exists():
            return 0
        try:
            return int(self.sql(f"SELECT count(*) FROM {table} WHERE {where}")[0][0])
        except duckdb.CatalogException:
            return 0

    def metadata(self, asset: str, partition: str | None = None) -> dict:
        import dagster as dg

        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey(asset)) if partition is None else \
                instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                                                                      asset_partitions=[partition]),
                                                limit=1).records[0].event_log_entry
            return {k: v.value for k, v in event.asset_materialization.metadata.items()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, packaged_tokenizer):
    root = tmp_path_factory.mktemp("killed")
    proxy = make_tiny_llama(packaged_tokenizer, seed=1)
    proxy.save_pretrained(root / "proxy")
    packaged_tokenizer.save_pretrained(root / "proxy")
    student = make_tiny_llama(packaged_tokenizer)
    student.save_pretrained(root / "student")
    packaged_tokenizer.save_pretrained(root / "student")
    server = FakeOpenAI()
    yield Pipeline(root, server, str(root / "proxy"), str(root / "student"))
    server.close()


def _shard_rows(pipeline) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(p).num_rows for p in (pipeline.root / "data" / "shards").rglob("*.parquet"))


def test_embedding_killed_then_rerun_computes_only_the_rest(pipeline):
    assert pipeline.materialize("seed_samples") == 0
    assert pipeline.materialize("gradient_embeddings", kill_when=lambda: _shard_rows(pipeline) >= 8) == "killed"
    kept = _shard_rows(pipeline)  # finished shards survive the kill; nothing reached the store yet
    assert 8 <= kept < N_POOL and pipeline.count("embeddings") == 0
    assert pipeline.materialize("gradient_embeddings") == 0
    meta = pipeline.metadata("gradient_embeddings")
    assert (meta["n_resumed"], meta["n_cached"], meta["n_computed"]) == (kept, kept, N_POOL - kept)
    assert pipeline.count("embeddings") == N_POOL
    assert pipeline.sql("SELECT count(*) - count(DISTINCT content_hash || embedding_key) FROM embeddings")[0][0] == 0


def test_round_killed_while_generating_then_while_solving_pays_each_request_once(pipeline):
    import dagster as dg

    with dg.DagsterInstance.from_config(str(pipeline.home)) as instance:
        instance.add_dynamic_partitions("synthesis_rounds", ["1"])
    server = pipeline.server
    # 1. Killed while generating: 3 of the 6 problem requests answered (and stored as they came back).
    server.hold("problem", after=3)
    assert pipeline.materialize("synthesis_round", "1",
                                kill_when=lambda: pipeline.count("generation_cache") >= 3) == "killed"
    server.release()
    first = set(server.keys("problem"))
    assert len(first) == 3 and pipeline.count("generation_cache") == 3
    # 2. Killed while solving: only the 3 missing problem requests go out; 4 solution requests answered.
    server.hold("solution", after=4)
    assert pipeline.materialize("synthesis_round", "1",
                                kill_when=lambda: pipeline.count("generation_cache") >= N_REQUESTS + 4) == "killed"
    server.release()
    second = server.keys("problem")[3:]
    assert len(second) == N_REQUESTS - 3 and not set(second) & first
    solved_before = set(server.keys("solution"))
    assert len(solved_before) == 4
    # 3. To the end: no problem request again, solution requests only for the unsolved.
    asked_before = len(server.asked)
    assert pipeline.materialize("synthesis_round", "1") == 0
    new = server.asked[asked_before:]
    assert [k for k, _ in new if k == "problem"] == []
    assert {key for _, key in new} .isdisjoint(solved_before)
    meta = pipeline.metadata("synthesis_round", "1")
    assert meta["outputs_cached"] == N_REQUESTS and meta["llm_requests"] == {"generator": 0, "teacher": len(new)}
    # Every request was paid for once, and nothing is stored twice.
    assert len(server.keys("problem")) == len(set(server.keys("problem"))) == N_REQUESTS
    assert len(server.keys("solution")) == len(set(server.keys("solution"))) == meta["solved"]
    assert pipeline.count("synthesis_rounds") == 1
    for table, key in [("synthesis_requests", "request_id || ':' || output_index"),
                       ("synthesis_candidates", "candidate_id"), ("synthesis_decisions", "candidate_id"),
                       ("samples", "sample_id")]:
        assert pipeline.sql(f"SELECT count(*) - count(DISTINCT {key}) FROM {table}")[0][0] == 0, table
    assert meta["accepted"] == pipeline.count("samples", "origin = 'synthetic' AND round = 1")


def _files(folder: Path):
    for path in folder.rglob("*"):
        if path.is_file():
            yield path


def test_the_api_key_is_stored_nowhere(pipeline):
    """The rounds above sent the sentinel key with every request; no file keeps it."""
    assert pipeline.server.auth == {f"Bearer {SENTINEL}"}  # it was in use
    needle = SENTINEL.encode()
    leaks = [str(p) for folder in (pipeline.root / "data", pipeline.home) for p in _files(folder)
             if needle in p.read_bytes()]
    assert leaks == []
    # DuckDB compresses strings on disk, so read every text column back as well.
    tables = pipeline.sql("SELECT table_name, column_name FROM information_schema.columns WHERE data_type IN "
                          "('VARCHAR', 'JSON', 'VARCHAR[]')")
    for table, column in tables:
        found = pipeline.sql(f'SELECT count(*) FROM "{table}" WHERE CAST("{column}" AS VARCHAR) LIKE ?',
                             [f"%{SENTINEL}%"])[0][0]
        assert found == 0, (table, column)
    for db in [*(pipeline.root / "data").rglob("*.db"), *pipeline.home.rglob("*.db")]:
        con = sqlite3.connect(db)
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            columns = [row[1] for row in con.execute(f'PRAGMA table_info("{table}")')]
            for column in columns:
                hit = con.execute(f'SELECT count(*) FROM "{table}" WHERE CAST("{column}" AS TEXT) LIKE ?',
                                  [f"%{SENTINEL}%"]).fetchone()[0]
                assert hit == 0, (db.name, table, column)
        con.close()


def test_sft_killed_mid_training_resumes_from_its_last_checkpoint(pipeline):
    models = pipeline.root / "data" / "models"

    def checkpointed() -> bool:
        for state in models.glob("distilled-*/checkpoint-*/trainer_state.json"):
            try:
                return json.loads(state.read_text())["global_step"] >= 3
            except (OSError, ValueError, KeyError):
                continue
        return False

    assert pipeline.materialize("distilled_model", kill_when=checkpointed) == "killed"
    (out,) = list(models.glob("distilled-*"))
    done = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*")
                  if (p / "trainer_state.json").is_file())
    assert done and done[-1] < 40 and not (out / "final").exists()
    stray = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert stray == []  # the SFT process died with the run
    assert pipeline.materialize("distilled_model") == 0
    meta = pipeline.metadata("distilled_model")
    resumed = meta["resumed_from"]
    assert resumed != "none" and Path(resumed).name.startswith("checkpoint-")
    assert int(Path(resumed).name.split("-")[1]) >= done[-1] and meta["steps"] == 40


def test_evaluation_killed_then_rerun_reuses_the_answers_and_duplicates_nothing(pipeline):
    server = pipeline.server
    server.hold("evaluation", after=6 + 2)  # the base student's 6 answers and 2 of the distilled one's
    assert pipeline.materialize("student_evaluation",
                                kill_when=lambda: server.count("evaluation") >= 8 and
                                pipeline.count("generation_cache", "messages::VARCHAR LIKE '%reason step by step%'")
                                >= 8) == "killed"
    server.release()
    answered = set(server.keys("evaluation"))
    asked_before = len(server.asked)
    assert pipeline.materialize("student_evaluation") == 0
    new = [key for kind, key in server.asked[asked_before:] if kind == "evaluation"]
    assert len(new) == 4 and not set(new) & answered  # only the distilled student's 4 missing answers
    meta = pipeline.metadata("student_evaluation")
    assert meta["llm_requests"] == {"base": {"engine": 0, "cached": 6}, "distilled": {"engine": 4, "cached": 2}}
    rows = pipeline.sql("SELECT model_role, count(*), count(DISTINCT evaluation_id) FROM eval_results "
                        "GROUP BY 1 ORDER BY 1")
    assert rows == [("base", 6, 1), ("distilled", 6, 1)]  # the killed run's base rows were replaced, not added to
