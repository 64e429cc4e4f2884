"""`prismatic experiment` and `prismatic pipeline` end to end through the real `dagster` CLI, on a tiny profile.

Same commands as `make experiment` (backbone on the procedural world's seed pool, the arm
rounds, one student per arm scored on held-out tasks), then the paper's path (two LLM
synthesis rounds from the same seed pool, distillation, evaluation)
and the round benchmark, with a tiny
random-init model in every role so it runs in minutes; the packaged model's paths are
covered by the asset tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.instance.ref import InstanceRef
from mlflow import MlflowClient

from prismatic_assets.pipeline.round import STAGES
from prismatic_assets.store.store import MetadataStore

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_the_whole_lineage(tmp_path, tiny_model_dir):
    llm = {"backend": "transformers", "model": tiny_model_dir}
    profile = {
        "profile": "tiny", "data_dir": str(tmp_path / "data"),
        "seed": {"source": "world", "holdout_fraction": 0.2},
        "proxy": {"model": tiny_model_dir, "max_length": 256},
        "projection": {"dim": 64},
        "clustering": {"ratio": 0.2},
        "synthesis": {"generator": llm, "teacher": llm, "requests_per_round": 2,
                      "problem_sampling": {"max_tokens": 16}, "solution_sampling": {"max_tokens": 16}},
        "distill": {"student": tiny_model_dir, "launcher": "python",
                    "sft": {"max_steps": 2, "save_steps": 1, "max_length": 256}},
        "evaluation": {"engine": {"backend": "transformers"}, "gsm_symbolic": 2, "max_tokens": 8},
        "world": {"families": ["basic_arithmetic", "gcd", "leg_counting", "letter_counting"], "levels": [0, 1],
                  "pool": {"size": 24, "family_zipf": 1.0}, "held_out_per_family": 1},
        # two of the four arms (the pipeline tests run all four): the targeted variant and the control
        "arms": {"arms": ["prismatic_targeted", "random"], "rounds": 2, "budget": 2, "requests_per_round": 3,
                 "experiment": {"max_steps": 2, "batch_size": 2, "ood_families": ["spell_backward"],
                                "max_tokens": 8}},
    }
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(profile))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["DAGSTER_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "prismatic_assets.interfaces.cli", "experiment",
                           "--profile", str(config)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[experiment] done in" in proc.stdout and "arm rounds" in proc.stdout and "students" in proc.stdout
    # A console a person reads: one line per step with its figure, no Dagster debug log, no warning.
    console = proc.stdout + proc.stderr
    assert "DEBUG" not in console and "warning" not in console.lower(), console
    assert len(console.splitlines()) < 60, console
    assert "g_vendi " in console and "G-Vendi " in console and "arm_round[2] " in console
    log = Path(console.split("full log: ")[1].split()[0])
    assert log.parent == tmp_path / "data" / "logs" and "STEP_SUCCESS" in log.read_text()
    # The runs belong to the code location's jobs (launched like the UI does), not to an anonymous job.
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        runs = instance.get_runs()
        assert sorted(r.job_name for r in runs) == ["arm_round_job", "arm_round_job", "arm_students_job",
                                                    "backbone_job"]
        assert {r.remote_job_origin.location_name for r in runs} == {"prismatic"}
    store = MetadataStore(tmp_path / "data" / "prismatic.duckdb")
    arms = store.query("SELECT round, arm, n_accepted, n_candidates FROM arm_rounds ORDER BY round, arm").rows()
    assert arms == [(r, a, 2, 6) for r in (1, 2) for a in ("prismatic_targeted", "random")]
    assert store.query("SELECT DISTINCT source FROM samples WHERE origin = 'seed'")["source"].to_list() == ["world"]
    # the closing summary: per round and arm, G-Vendi and (family, level) coverage
    assert "| 2 | prismatic_targeted | 2 (0) |" in proc.stdout and "cells before -> after" in proc.stdout
    assert "| prismatic_targeted | " in proc.stdout and "out_of_distribution" in proc.stdout  # the students' table
    roles = store.query("SELECT model_role, count(*) AS n FROM eval_results GROUP BY 1 ORDER BY 1").rows()
    assert roles == [(f"arm:{m}", 4 + 1) for m in ("base", "prismatic_targeted", "random")]

    # The demo again: every arm round is complete, so it runs none and the store is unchanged.
    again = subprocess.run([sys.executable, "-m", "prismatic_assets.interfaces.cli", "demo", "--profile", str(config)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert "arm round " not in again.stdout and "arm_round[" not in again.stdout
    assert store.query("SELECT count(*) AS n FROM arm_accepted")["n"][0] == 2 * 2 * 2

    # The paper's path: the backbone (cached), two LLM synthesis rounds, distillation, evaluation.
    pipeline = subprocess.run([sys.executable, "-m", "prismatic_assets.interfaces.cli", "pipeline", "--rounds", "2",
                               "--profile", str(config)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert pipeline.returncode == 0, pipeline.stdout[-4000:] + pipeline.stderr[-4000:]
    assert "[pipeline] done in" in pipeline.stdout and "distill+evaluation" in pipeline.stdout
    assert store.query("SELECT round FROM synthesis_rounds ORDER BY round")["round"].to_list() == [1, 2]
    roles = store.query("SELECT DISTINCT model_role FROM eval_results WHERE model_role NOT LIKE 'arm:%' "
                        "ORDER BY 1")["model_role"].to_list()
    assert roles == ["base", "distilled"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("prismatic")
    names = sorted(r.info.run_name for r in client.search_runs(experiment.experiment_id))
    assert names == ["arm-students", "arms-round-1", "arms-round-2", "distillation", "round-1", "round-2"]

    # The round benchmark runs the next round on a copy of this store and reports every stage.
    out = tmp_path / "bench"
    bench = subprocess.run([sys.executable, "-m", "benchmarks.bench_round", "--store",
                            str(tmp_path / "data" / "prismatic.duckdb"), "--profile", str(config), "--out", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert bench.returncode == 0, bench.stdout[-4000:] + bench.stderr[-4000:]
    result = json.loads((out / "round.json").read_text())
    assert result["round"] == 3 and result["report"]["requests"] == 2
    assert set(result["seconds"]) == set(STAGES) and result["total_s"] >= sum(result["seconds"].values()) * 0.99
    assert result["report"]["outputs_cached"] == 0  # a cold round: every output generated in this run
    assert "| **round total** |" in (out / "round.md").read_text()
    assert store.query("SELECT round FROM synthesis_rounds ORDER BY round")["round"].to_list() == [1, 2]
