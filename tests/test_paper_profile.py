"""`prismatic pipeline` on the paper profile's structure, shrunk to tiny models and 2 CPU cores.

The profile extends `resources/paper.yaml` and changes only what this machine cannot run:
the models (one tiny random-init Llama in every role, HF `transformers` engines instead of
vLLM), the devices (CPU: countsketch instead of the dense projection, bf16 off), and
the sizes. Everything else is the paper's: `compute.backend: ray` (here 2 local workers with
half a CPU each), the `accelerate` launcher with 2 training processes (gloo on CPU), and
every kind of evaluation set (gsm_symbolic, the seed hold-out split, a benchmark file).
It runs the real CLI in a subprocess, which runs the real Dagster: the backbone, one
synthesis round, distillation and evaluation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
from mlflow import MlflowClient

from prismatic_assets.infra.config import load_config
from prismatic_assets.store.store import MetadataStore

ROOT = Path(__file__).resolve().parents[1]


def _latest_metadata(home: Path, asset: str) -> dict:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        assert event is not None, f"{asset} was not materialized"
        return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_paper_profile_runs_with_ray_workers_and_two_training_processes(tmp_path, tiny_model_dir):
    benchmark = tmp_path / "bench" / "tiny_math.jsonl"
    benchmark.parent.mkdir()
    benchmark.write_text("".join(json.dumps({"problem": f"What is {a} + {a + 2}?", "answer": str(2 * a + 2)}) + "\n"
                                 for a in (3, 11)))
    llm = {"backend": "transformers", "model": tiny_model_dir, "tensor_parallel_size": 1, "devices": None,
           "max_model_len": 512}
    profile = {
        "extends": "paper", "profile": "paper-tiny", "data_dir": str(tmp_path / "data"),
        "seed": {"source": "champ", "fields": None, "limit": 20, "holdout_fraction": 0.2},
        "proxy": {"model": tiny_model_dir, "device": "cpu", "autocast": None, "max_length": 256},
        # rademacher over every parameter on a CPU is refused by the config (minutes per sample)
        "projection": {"kind": "countsketch", "dim": 64},
        # batch_size 1: a Ray task is 8 batches, so the 16 pool samples make two tasks, one per worker.
        "compute": {"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 0.5, "batch_size": 1},
        "synthesis": {"generator": llm, "teacher": llm, "requests_per_round": 2,
                      "problem_sampling": {"max_tokens": 16}, "solution_sampling": {"max_tokens": 16}},
        # The paper's FSDP sharding and gradient checkpointing stay: two gloo processes run them on CPU.
        "distill": {"student": tiny_model_dir, "num_processes": 2,
                    "sft": {"max_steps": 2, "per_device_batch_size": 2, "max_length": 256, "bf16": False,
                            "save_steps": 1}},
        "evaluation": {"engine": {"backend": "transformers", "max_model_len": 512}, "gsm_symbolic": 2,
                       "holdout": True, "holdout_limit": 2, "files": [str(benchmark)], "max_tokens": 8},
    }
    path = tmp_path / "paper-tiny.yaml"
    path.write_text(yaml.safe_dump(profile))
    config = load_config(str(path))
    # The paper's structure, kept:
    assert config.compute.backend == "ray" and config.distill.launcher == "accelerate"
    assert config.clustering.ratio == 0.01 and config.distill.sft.sharding == "fsdp"
    assert config.distill.sft.gradient_checkpointing

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["DAGSTER_HOME"] = str(home)
    log = tmp_path / "pipeline.log"  # kept whole: on a failure or a timeout its tail is the message
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prismatic_assets.interfaces.cli", "pipeline", "--rounds", "1",
                                 "--profile", str(path)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
        try:
            code = proc.wait(timeout=1800)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI, its Dagster run and the Ray workers it started
            proc.wait()
            code = None
    text = log.read_text()
    assert code == 0, f"exit {code}; log {log}:\n" + text[-8000:]
    done = next(line for line in text.splitlines() if line.startswith("[pipeline] done in"))
    assert "backbone" in done and "rounds" in done and "distill+evaluation" in done, done

    embeddings = _latest_metadata(home, "gradient_embeddings")
    assert embeddings["compute"] == "ray: 2 workers x (0 GPU, 0.5 CPU)"
    assert embeddings["n_computed"] == 16 and embeddings["n_valid"] == 16

    store = MetadataStore(config.store_path)
    # The seed pool's baselines beside G-Vendi: hidden states computed by the Ray workers.
    seed_metrics = dict(store.query("SELECT metric, n FROM scores WHERE scope = 'seed'").rows())
    assert seed_metrics["g_vendi"] == 16 and seed_metrics["embedding_vendi"] == 16
    assert {"distinct_1", "compression_ratio"} <= set(seed_metrics)
    assert store.query("SELECT round FROM synthesis_rounds")["round"].to_list() == [1]
    assert store.query("SELECT count(*) AS n FROM scores WHERE scope = 'round:1:after' "
                       "AND metric = 'embedding_vendi'")["n"][0] == 1

    distilled = _latest_metadata(home, "distilled_model")
    assert distilled["world_size"] == 2 and distilled["steps"] == 2  # two gloo processes, rank 0 reported
    counts = store.query("SELECT model_role, benchmark, count(*) AS n FROM eval_results "
                         "GROUP BY ALL ORDER BY ALL").rows()
    assert counts == [(role, bench, 2) for role in ("base", "distilled")
                      for bench in ("champ_holdout", "gsm_symbolic", "tiny_math")]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs(client.get_experiment_by_name("prismatic").experiment_id)}
    assert sorted(runs) == ["distillation", "round-1"]
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["distillation"].data.params["num_processes"] == "2"
