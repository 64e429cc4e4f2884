"""Synthesis rounds through Dagster: a real round with vLLM on CPU, the schedule, the partitions."""

from __future__ import annotations

import dagster as dg
import pytest

from prismatic_assets.infra.config import load_config
from prismatic_assets.orchestration.assets.rounds import ROUNDS, next_round
from prismatic_assets.orchestration.definitions import build_definitions
from prismatic_assets.store.store import MetadataStore
from tests.conftest import write_profile

BACKBONE = ["seed_samples", "gradient_embeddings", "gradient_clusters", "g_vendi"]


def _settings(tmp_path, tiny_model_dir, backend: str) -> str:
    llm = {"backend": backend, "model": "packaged:smollm2-135m-instruct", "max_model_len": 1024}
    return write_profile(tmp_path, {
        "data_dir": str(tmp_path / "data"),
        "seed": {"source": "champ", "limit": 30, "holdout_fraction": 0.2},
        "proxy": {"model": tiny_model_dir, "max_length": 256},
        "projection": {"dim": 64},
        "clustering": {"ratio": 0.2},
        "synthesis": {"generator": llm, "teacher": llm, "requests_per_round": 2,
                      "problem_sampling": {"max_tokens": 96}, "solution_sampling": {"max_tokens": 96}},
    })


def _run(defs: dg.Definitions, selection, instance, partition=None) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.get_subset(asset_selection={dg.AssetKey(k) for k in selection}).execute_in_process(
        instance=instance, partition_key=partition)


@pytest.mark.integration
def test_round_partition_with_real_vllm_on_cpu(tmp_path, tiny_model_dir):
    settings = _settings(tmp_path, tiny_model_dir, "vllm")
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        assert _run(defs, BACKBONE, instance).success
        instance.add_dynamic_partitions(ROUNDS.name, ["1"])
        result = _run(defs, ["synthesis_round"], instance, partition="1")
        assert result.success
        event = result.get_asset_materialization_events()[0]
        assert event.partition == "1"
        meta = event.event_specific_data.materialization.metadata
        assert meta["requests"].value == 2 and meta["outputs"].value == 2
        generator = meta["generator"].value
        assert generator.endswith("packaged:smollm2-135m-instruct") or "smollm2" in generator.lower()
        for key in ("g_vendi_before", "g_vendi_after", "g_vendi_random_control", "acceptance_rate",
                    "g_vendi_per_round", "seconds_by_stage"):
            assert key in meta
        assert meta["accepted"].value <= meta["verified"].value <= meta["solved"].value
        # Whole stages per engine call: the 2 problem requests in one call, the solutions in one.
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
        calls = [m for m in logs if "one engine call with" in m]
        assert any("generate: one engine call with 2 requests" in m for m in calls), calls
        assert len([m for m in calls if "generate:" in m]) == 1 and len([m for m in calls if "solve:" in m]) <= 1
    store = MetadataStore(load_config(settings).store_path)
    assert next_round(store) == 2
    requests = store.query("SELECT count(*) AS n FROM synthesis_requests WHERE round = 1")["n"][0]
    assert requests == 2


def test_round_order_is_enforced_through_dagster(tmp_path, tiny_model_dir):
    settings = _settings(tmp_path, tiny_model_dir, "transformers")
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        assert _run(defs, BACKBONE, instance).success
        instance.add_dynamic_partitions(ROUNDS.name, ["2"])
        job = defs.resolve_implicit_global_asset_job_def().get_subset(
            asset_selection={dg.AssetKey("synthesis_round")})
        result = job.execute_in_process(instance=instance, partition_key="2", raise_on_error=False)
        assert not result.success
        failure = result.failure_data_for_node("synthesis_round")
        assert "round 1" in str(failure.error)
    # The round's MLflow run is ended FAILED, not left RUNNING.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{load_config(settings).data_path / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("prismatic").experiment_id)
    assert [(r.info.run_name, r.info.status) for r in runs] == [("round-2", "FAILED")]


def test_schedule_is_stopped_by_default_and_requests_the_next_round(tmp_path, tiny_model_dir):
    settings = _settings(tmp_path, tiny_model_dir, "transformers")
    defs = build_definitions(settings)
    schedule = defs.resolve_schedule_def("synthesis_round_every_6_hours")
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    MetadataStore(load_config(settings).store_path)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, resources={"store": defs.resources["store"]},
                                            repository_def=defs.get_repository_def())
        request = schedule.evaluate_tick(context).run_requests[0]
        assert request.partition_key == "1"
        assert instance.has_dynamic_partition(ROUNDS.name, "1")
        assert request.tags["prismatic/synthesis"] == "round"
