"""The jobs of the code location: one per thing a user launches, pre-filled from the profile.

Each job's page in the UI has a "Materialize all" button that runs exactly the job:
`backbone_job` the backbone group, `arm_round_job` and `synthesis_round_job` one round (a
partition), `arm_students_job` the students of the arms, `distillation_job` the distilled
student and its evaluation, `dataset_comparison_job` the comparison report,
`study_job` the correlation study. The command line
launches the same jobs (`interfaces/runs.py`), so its runs are listed under them. The run
config of each job defaults to the profile's values, so the launchpad opens pre-filled with
what the run would use and any of it can be changed for one run.

Not here: the assets (assets/), the round jobs (beside their partitioned assets).
"""

from __future__ import annotations

from dataclasses import asdict

import dagster as dg

from prismatic_assets.infra.config import Config
from prismatic_assets.orchestration.assets.arms import arm_round_job, arm_students
from prismatic_assets.orchestration.assets.backbone import GROUP as BACKBONE_GROUP
from prismatic_assets.orchestration.assets.comparison import dataset_comparison
from prismatic_assets.orchestration.assets.distillation import distilled_model, student_evaluation
from prismatic_assets.orchestration.assets.rounds import synthesis_round_job
from prismatic_assets.orchestration.assets.study import study


def _given(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def backbone_config(config: Config) -> dict:
    clustering = config.clustering
    return {"ops": {
        "gradient_clusters": {"config": {"ratio": clustering.ratio, "niter": clustering.niter,
                                         "seed": clustering.seed, "sparse_ratio": clustering.sparse_ratio}},
        "g_vendi": {"config": {"q": config.score.q}},
    }}


def distillation_config(config: Config) -> dict:
    sft = asdict(config.distill.sft)
    return {"ops": {"distilled_model": {"config": {"rounds": config.distill.rounds, "max_steps": sft["max_steps"],
                                                   "learning_rate": sft["learning_rate"]}}}}


def comparison_config(config: Config) -> dict:
    compare = config.compare.model_dump(include={"datasets", "names", "fields", "limit", "include_seed",
                                                 "clusters", "cluster_seed"})
    return {"ops": {"dataset_comparison": {"config": _given(compare)}}}


def build_jobs(config: Config) -> list:
    """Every job, with run config defaults from `config` (the profile the code location serves)."""
    return [
        dg.define_asset_job("backbone_job", selection=dg.AssetSelection.groups(BACKBONE_GROUP),
                            config=backbone_config(config),
                            description="The backbone: seed_samples, gradient_embeddings, gradient_clusters and "
                                        "g_vendi, with their checks (what `prismatic demo` runs first)."),
        arm_round_job,
        dg.define_asset_job("arm_students_job", selection=[arm_students],
                            description="One student per arm trained on its final pool and scored on held-out "
                                        "tasks (needs the arm rounds; what `prismatic experiment` adds)."),
        synthesis_round_job,
        dg.define_asset_job("distillation_job", selection=[distilled_model, student_evaluation],
                            config=distillation_config(config),
                            description="The student fine-tuned on seed + accepted synthetic samples, then "
                                        "evaluated beside its base model."),
        dg.define_asset_job("dataset_comparison_job", selection=[dataset_comparison],
                            config=comparison_config(config),
                            description="The seed pool beside the data sets of the profile's compare section."),
        dg.define_asset_job("study_job", selection=[study],
                            description="The correlation study: one student per designed training set, Spearman "
                                        "rho of each diversity measure against accuracy (what `prismatic study` "
                                        "runs)."),
    ]
