"""The end of the lineage: distilled_model (SFT of the student) and student_evaluation.

distilled_model plans the training (`pipeline.distill.plan_training`: lengths, rounds, the
training set), scores the training set's G-Vendi, and trains and registers the student under
one MLflow run (`train_student`); the SFT processes (`accelerate launch` / `torchrun` /
python, per the profile) run through Dagster Pipes, so the training log streams into the run
and rank 0 reports the result. student_evaluation scores the base and the distilled student
on held-out problems (`pipeline.evaluation.evaluate_students`: per-problem rows in DuckDB)
and logs the accuracies to MLflow and onto the model version (`track_evaluation`). The
assets read inputs, call those functions and attach metadata.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import dagster as dg
from pydantic import Field

from prismatic_assets.orchestration.assets.backbone import EmbeddingSnapshot, SeedSnapshot
from prismatic_assets.orchestration.metadata import chart, figure, rounded
from prismatic_assets.orchestration.resources import (
    EngineResource,
    ProfileResource,
    ProxyResource,
    StoreResource,
    TrackerResource,
)
from prismatic_assets.pipeline.distill import (
    StaleRoundsError,
    distill_settings,
    plan_training,
    train_student,
    training_g_vendi,
    training_samples,
)
from prismatic_assets.pipeline.evaluation import evaluate_students, evaluation_sets, track_evaluation

GROUP = "distillation"


@dataclass(frozen=True)
class DistilledSnapshot:
    model_dir: str
    base_model: str
    rounds: list[int]
    n_train: int
    g_vendi: float
    mlflow_run_id: str
    registered_name: str
    version: str


class DistillRunConfig(dg.Config):
    """Per-run overrides of the profile's `distill` block (empty: the profile's value)."""

    rounds: Optional[str] = Field(None, description="'all', 'none' (seed only) or a comma list such as '1,2'")
    max_steps: Optional[int] = Field(None, description="optimizer steps")
    learning_rate: Optional[float] = Field(None)


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, deps=["synthesis_round"],
          description="The student fine-tuned (TRL SFT, assistant tokens only, its own processes through Pipes) "
                      "on seed + accepted synthetic samples; logged and registered in MLflow.")
def distilled_model(context: dg.AssetExecutionContext, config: DistillRunConfig, seed_samples: SeedSnapshot,
                    gradient_embeddings: EmbeddingSnapshot, profile: ProfileResource, store: StoreResource,
                    proxy: ProxyResource, tracker: TrackerResource,
                    pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.Output[DistilledSnapshot]:
    settings, db = profile.config(), store.open()
    distill = distill_settings(settings.distill, max_steps=config.max_steps, learning_rate=config.learning_rate)
    try:
        plan = plan_training(db, seed_samples.pool_ids, distill, settings.evaluation, settings.data_path,
                             rounds=config.rounds)
    except StaleRoundsError as exc:  # a retry cannot help: the rounds must be re-run first
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    with proxy.open() as embedder:  # the training set's diversity, under the pool's proxy and projection
        g_vendi = training_g_vendi(db, plan.samples, embedder, settings.score.q, context.run_id)

    def launch(command: list[str]) -> Mapping[str, Any]:  # through Pipes: the training log streams into the run
        return pipes_subprocess_client.run(command=command, context=context).get_materialize_result().metadata or {}

    t = tracker.tracker()
    student = train_student(plan, tracker=t, g_vendi=g_vendi, launch=launch, dagster_run_id=context.run_id,
                            log=context.log.info)
    snapshot = DistilledSnapshot(student.model_dir, distill.student, plan.rounds, len(plan.samples), g_vendi,
                                 student.mlflow_run_id, student.registered_name, student.version)
    return dg.Output(snapshot, metadata={
        **student.reported,
        "model_dir": dg.MetadataValue.path(student.model_dir), "steps": student.steps,
        "world_size": student.world_size, "resumed_from": student.resumed_from or "none",
        "final_loss": figure(student.final_loss, 4), "train_seconds": figure(student.train_seconds, 1),
        "loss_curve": chart(context, student.loss_png, "loss_curve", "loss curve"),
        "rounds": ",".join(map(str, plan.rounds)) or "none (seed only)", "n_train": len(plan.samples),
        "train_g_vendi": figure(g_vendi), "mlflow_run": dg.MetadataValue.url(t.run_url(student.mlflow_run_id)),
        "mlflow_run_id": student.mlflow_run_id,
        "registered_model": f"{student.registered_name} v{student.version}",
        "model_version": dg.MetadataValue.url(t.model_version_url(student.registered_name, student.version)),
    })


@dg.asset(group_name=GROUP, kinds={"vllm", "mlflow", "duckdb"},
          description="Accuracy of the base and the distilled student on held-out problems that no seed or "
                      "synthetic sample overlaps; per-problem results in DuckDB.")
def student_evaluation(context: dg.AssetExecutionContext, distilled_model: DistilledSnapshot,
                       seed_samples: SeedSnapshot, profile: ProfileResource, store: StoreResource,
                       engines: EngineResource, tracker: TrackerResource) -> dg.MaterializeResult:
    db, ev = store.open(), profile.config().evaluation
    train = training_samples(db, seed_samples.pool_ids, distilled_model.rounds)
    sets = evaluation_sets(db, seed_samples.source, seed_samples.holdout_ids, train, ev)
    students = {"base": distilled_model.base_model, "distilled": distilled_model.model_dir}
    scores = evaluate_students(db, engines.engines("student"), students, sets, ev,
                               mlflow_run_id=distilled_model.mlflow_run_id, run_id=context.run_id,
                               log=context.log.info)
    t = tracker.tracker()
    png = track_evaluation(t, distilled_model.mlflow_run_id, scores, registered_name=distilled_model.registered_name,
                           version=distilled_model.version, registered_role="distilled",
                           plot_path=Path(distilled_model.model_dir).parent / "accuracy.png")
    base, distilled = scores["base"], scores["distilled"]
    return dg.MaterializeResult(metadata={
        "base_accuracy": dg.MetadataValue.json(rounded(base.accuracy())),
        "distilled_accuracy": dg.MetadataValue.json(rounded(distilled.accuracy())),
        "base_overall": figure(base.report.overall),
        "llm_requests": dg.MetadataValue.json({
            "base": {"engine": base.engine_requests, "cached": base.cached_requests},
            "distilled": {"engine": distilled.engine_requests, "cached": distilled.cached_requests}}),
        "distilled_overall": figure(distilled.report.overall),
        **{f"accuracy/{role}/{b}": figure(a) for role, result in scores.items() for b, a in result.accuracy().items()},
        "train_g_vendi": figure(distilled_model.g_vendi),
        "problems": dg.MetadataValue.json(base.report.problems),
        "mlflow_run": dg.MetadataValue.url(t.run_url(distilled_model.mlflow_run_id)),
        "accuracy_by_benchmark": chart(context, png, "accuracy_by_benchmark", "accuracy by benchmark"),
    })
