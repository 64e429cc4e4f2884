"""Definitions load for every shipped profile, lazily (no model, hub or GPU), with the lineage's graph."""

from __future__ import annotations

import dagster as dg
import pytest

from prismatic_assets.infra.config import available_profiles
from prismatic_assets.orchestration.definitions import ASSETS, build_definitions

#: The lineage of SPEC.md: seed data -> gradient embeddings -> clusters -> G-Vendi score
#: -> synthetic rounds -> distilled model (-> its evaluation).
LINEAGE = {
    "seed_samples": set(),
    "gradient_embeddings": {"seed_samples"},
    "gradient_clusters": {"gradient_embeddings", "seed_samples"},
    "g_vendi": {"gradient_embeddings", "gradient_clusters"},
    "synthesis_round": {"seed_samples", "gradient_embeddings"},
    "distilled_model": {"seed_samples", "gradient_embeddings", "synthesis_round"},
    "student_evaluation": {"distilled_model", "seed_samples"},
    # Beside the lineage: the seed pool next to the data sets of the profile's `compare` section.
    "dataset_comparison": {"gradient_embeddings"},
    # The arms (prismatic vs random vs naive) on procedural candidates, and one student per arm.
    "arm_round": {"seed_samples", "gradient_embeddings"},
    "arm_students": {"arm_round", "seed_samples"},
    # The correlation study: its own pool, sets and students (no upstream asset).
    "study": set(),
}


@pytest.mark.parametrize("profile", available_profiles())
def test_definitions_for_every_profile_match_the_lineage(profile, monkeypatch):
    # Nothing may be loaded while definitions are built: no hub and no GPU here.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    defs = build_definitions(profile)
    graph = defs.resolve_asset_graph()
    edges = {key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
             for key in graph.get_all_asset_keys()}
    assert edges == LINEAGE
    assert {"profile", "store", "proxy", "engines", "tracker", "pipes_subprocess_client"} <= set(defs.resources)
    assert defs.resources["proxy"].profile == profile
    assert {j.name for j in defs.jobs} == {"backbone_job", "arm_round_job", "arm_students_job", "synthesis_round_job",
                                           "distillation_job", "dataset_comparison_job", "study_job"}
    for schedule in ("synthesis_round_every_6_hours", "arm_round_every_hour"):
        assert defs.resolve_schedule_def(schedule).default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def("add_next_round_partitions").default_status == dg.DefaultSensorStatus.RUNNING


@pytest.mark.parametrize("profile", available_profiles())
def test_each_job_runs_what_its_name_says_and_its_launchpad_is_the_profile(profile):
    from prismatic_assets.infra.config import load_config

    defs, config = build_definitions(profile), load_config(profile)
    selected = {job: {k.to_user_string() for k in defs.resolve_job_def(job).asset_layer.selected_asset_keys}
                for job in ("backbone_job", "arm_round_job", "arm_students_job", "distillation_job")}
    assert selected == {"backbone_job": {"seed_samples", "gradient_embeddings", "gradient_clusters", "g_vendi"},
                        "arm_round_job": {"arm_round"}, "arm_students_job": {"arm_students"},
                        "distillation_job": {"distilled_model", "student_evaluation"}}
    ops = defs.resolve_job_def("backbone_job").run_config["ops"]
    assert ops["gradient_clusters"]["config"]["ratio"] == config.clustering.ratio
    assert ops["g_vendi"]["config"]["q"] == config.score.q
    distill = defs.resolve_job_def("distillation_job").run_config["ops"]["distilled_model"]["config"]
    assert distill["max_steps"] == config.distill.sft.max_steps and distill["rounds"] == config.distill.rounds


def test_resources_name_the_profile_they_serve(monkeypatch):
    monkeypatch.setenv("PRISMATIC_PROFILE", "paper")
    assert build_definitions().resources["store"].profile == "paper"
    monkeypatch.delenv("PRISMATIC_PROFILE")
    assert build_definitions().resources["store"].profile == "local"


def test_assets_are_module_level_and_testable_without_definitions():
    from prismatic_assets.orchestration.assets import arms, backbone, comparison, distillation, rounds, study

    module_level = {a.key.to_user_string() for m in (arms, backbone, comparison, distillation, rounds, study)
                    for a in vars(m).values() if isinstance(a, dg.AssetsDefinition)}
    assert module_level == set(LINEAGE) == {a.key.to_user_string() for a in ASSETS}


#: What no code-location import may load: every Dagster step runs in a process of its own that
#: imports the code location first (10 s and 0.7 GB when it pulled in transformers and torch on
#: 2 cores, 2 s and 0.2 GB without). A step that needs one imports it when it runs.
HEAVY_MODULES = ("torch", "transformers", "peft", "trl", "accelerate", "vllm", "ray", "mlflow", "matplotlib",
                 "sklearn", "datasets")


def test_loading_the_code_location_imports_no_heavy_library():
    import subprocess
    import sys

    probe = ("import sys, prismatic_assets.orchestration.definitions as d; d.build_definitions('local'); "
             f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]", f"imported while loading the code location: {out.stdout.strip()}"
