"""The Dagster code location: `build_definitions(profile)` and the lazily built `defs`.

`dagster dev` (with the repo's workspace.yaml) and `dagster asset materialize -m
prismatic_assets.orchestration.definitions` (`dg dev`, `make ui` and the command line) load
`defs`, bound to the profile named by $PRISMATIC_PROFILE (default "local":
resources/local.yaml). Assets and checks are defined at module top level in
`prismatic_assets/orchestration/assets/`, the round sensor and the arm-round schedule in
`automation.py`; the resources and the jobs' default run config come from the profile, and
the resources read it when a step uses them (no model, hub or GPU is touched to build the
definitions).
"""

from __future__ import annotations

import dagster as dg

from prismatic_assets.infra.config import load_config
from prismatic_assets.orchestration.assets.arms import arm_round, arm_students
from prismatic_assets.orchestration.assets.backbone import BACKBONE_ASSETS
from prismatic_assets.orchestration.assets.comparison import dataset_comparison
from prismatic_assets.orchestration.assets.distillation import distilled_model, student_evaluation
from prismatic_assets.orchestration.assets.rounds import synthesis_round, synthesis_round_every_6_hours
from prismatic_assets.orchestration.assets.study import study
from prismatic_assets.orchestration.automation import add_next_round_partitions, arm_round_every_hour
from prismatic_assets.orchestration.checks import BACKBONE_CHECKS, ROUND_CHECKS
from prismatic_assets.orchestration.jobs import build_jobs
from prismatic_assets.orchestration.resources import build_resources

ASSETS = [*BACKBONE_ASSETS, synthesis_round, distilled_model, student_evaluation, dataset_comparison, arm_round,
          arm_students, study]


def build_definitions(profile: str | None = None) -> dg.Definitions:
    """Definitions bound to `profile` (a name in resources/ or a YAML path; None: $PRISMATIC_PROFILE).

    The profile is validated here, so a broken profile fails when the code location loads."""
    config = load_config(profile)
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=[*BACKBONE_CHECKS, *ROUND_CHECKS],
        jobs=build_jobs(config),
        schedules=[synthesis_round_every_6_hours, arm_round_every_hour],
        sensors=[add_next_round_partitions],
        resources=build_resources(profile),
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
