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
    assert defs.resolve_job_def("synthesis_round_job") is not None
    assert defs.resolve_job_def("arm_round_job") is not None
    assert defs.resolve_schedule_def("next_synthesis_round").default_status == dg.DefaultScheduleStatus.STOPPED


def test_assets_are_module_level_and_testable_without_definitions():
    from prismatic_assets.orchestration.assets import arms, backbone, comparison, distillation, rounds, study

    module_level = {a.key.to_user_string() for m in (arms, backbone, comparison, distillation, rounds, study)
                    for a in vars(m).values() if isinstance(a, dg.AssetsDefinition)}
    assert module_level == set(LINEAGE) == {a.key.to_user_string() for a in ASSETS}
