"""distilled_model and student_evaluation through Dagster, with a real SQLite-backed MLflow store."""

from __future__ import annotations

import dagster as dg
from mlflow import MlflowClient

from prismatic_assets.infra.config import load_config
from prismatic_assets.orchestration.definitions import build_definitions
from prismatic_assets.store.store import MetadataStore
from tests.conftest import write_profile

BACKBONE = ["seed_samples", "gradient_embeddings", "gradient_clusters", "g_vendi"]


def test_distill_and_evaluate_track_everything_in_mlflow(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = write_profile(tmp_path, {
        "data_dir": str(tmp_path / "data"),
        "seed": {"source": "champ", "limit": 20, "holdout_fraction": 0.2},
        "proxy": {"model": tiny_model_dir, "max_length": 256},
        "projection": {"dim": 64},
        "clustering": {"ratio": 0.2},
        # SFT in its own process through Pipes (the python launcher: one CPU process).
        "distill": {"student": tiny_model_dir, "rounds": "none", "launcher": "python",
                    "sft": {"max_steps": 3, "save_steps": 2, "max_length": 256, "learning_rate": 1e-3}},
        "evaluation": {"engine": {"backend": "transformers"}, "gsm_symbolic": 3, "holdout": True,
                       "holdout_limit": 3, "max_tokens": 8},  # 3 of the 4 hold-out problems
    })
    defs = build_definitions(settings)
    job = defs.resolve_implicit_global_asset_job_def()
    with dg.instance_for_test() as instance:
        selection = {dg.AssetKey(k) for k in BACKBONE + ["distilled_model", "student_evaluation"]}
        result = job.get_subset(asset_selection=selection).execute_in_process(instance=instance)
        assert result.success
        meta = {e.asset_key.to_user_string(): e.event_specific_data.materialization.metadata
                for e in result.get_asset_materialization_events()}
    distilled, evaluation = meta["distilled_model"], meta["student_evaluation"]
    assert distilled["n_train"].value == 16 and distilled["steps"].value == 3
    assert distilled["rounds"].value.startswith("none")
    run_id = distilled["mlflow_run_id"].value
    assert run_id in distilled["mlflow_run"].value  # the Dagster metadata links to the MLflow run

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'data' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.data.tags["dagster_run_id"] and run.data.params["n_train"] == "16"
    assert len(client.get_metric_history(run_id, "train/loss")) == 3
    assert "train/g_vendi" in run.data.metrics
    assert {"base/accuracy/overall", "distilled/accuracy/overall", "distilled/accuracy/gsm_symbolic"} <= set(
        run.data.metrics)
    version = client.get_model_version("prismatic-student", "1")
    assert "eval/accuracy/overall" in version.tags
    assert distilled["registered_model"].value == "prismatic-student v1"

    store = MetadataStore(load_config(settings).store_path)
    counts = store.query("SELECT model_role, benchmark, count(*) AS n FROM eval_results "
                         "GROUP BY ALL ORDER BY ALL").rows()
    assert counts == [("base", "champ_holdout", 3), ("base", "gsm_symbolic", 3),
                      ("distilled", "champ_holdout", 3), ("distilled", "gsm_symbolic", 3)]
    assert 0.0 <= evaluation["distilled_overall"].value <= 1.0
