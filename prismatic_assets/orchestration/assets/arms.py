"""Arms compared round by round (`arm_round`), and one student per arm (`arm_students`).

`arm_round` is dynamically partitioned by round ("1", "2", ...), like `synthesis_round`:
each partition runs one round of every arm in the procedural world
(`prismatic_assets.pipeline.arms.run_arm_round`): each arm generates from its own pool,
and accepts the same budget. Its metadata carries, per arm, G-Vendi and the (family, level)
cell count and entropy as numbers (the UI's Plots tab charts them across rounds), a table
and charts; the same go to MLflow (run `arms-round-N`).

`arm_students` (`prismatic experiment`) trains one student per arm on the arm's final pool
through Dagster Pipes and scores them and the base model on held-out tasks in and out of
distribution (`prismatic_assets.pipeline.experiment.run_experiment`).
"""

import dagster as dg

from prismatic_assets.orchestration.assets.backbone import EmbeddingSnapshot, SeedSnapshot
from prismatic_assets.orchestration.assets.rounds import CONCURRENCY_TAG  # one synthesis or arm round at a time
from prismatic_assets.orchestration.metadata import chart, figure
from prismatic_assets.orchestration.progress import StepProgress
from prismatic_assets.orchestration.resources import (
    EngineResource,
    ProfileResource,
    ProxyResource,
    StoreResource,
    TrackerResource,
)
from prismatic_assets.orchestration.retry import TRANSIENT_RETRY, retry_note, retry_transient_only
from prismatic_assets.orchestration.round_keys import partition_round
from prismatic_assets.pipeline.arms import run_arm_round, summary_lines
from prismatic_assets.pipeline.arms_report import arm_table, log_arm_round, log_lines, round_numbers
from prismatic_assets.pipeline.experiment import ExperimentNotReady, arm_round_guards, run_experiment, track_experiment

GROUP = "arms"
#: The name of the arm round partitions (see rounds.ROUND_PARTITIONS).
ARM_ROUND_PARTITIONS = "arm_rounds"
ARM_ROUNDS = dg.DynamicPartitionsDefinition(name=ARM_ROUND_PARTITIONS)


@dg.asset(group_name=GROUP, partitions_def=ARM_ROUNDS, kinds={"pytorch", "duckdb", "mlflow"},
          op_tags=CONCURRENCY_TAG, retry_policy=TRANSIENT_RETRY,
          description="One round of the arms in the procedural world: each arm (prismatic, prismatic_targeted, "
                      "random, naive) generates candidates from its own pool and accepts the same budget; G-Vendi "
                      "and (family, level) coverage per arm.")
def arm_round(context: dg.AssetExecutionContext, seed_samples: SeedSnapshot, gradient_embeddings: EmbeddingSnapshot,
              profile: ProfileResource, store: StoreResource, proxy: ProxyResource,
              tracker: TrackerResource) -> dg.MaterializeResult:
    round_number = partition_round(context)
    retried = retry_note(context)
    config, db, mlflow = profile.config(), store.open(), tracker.tracker()
    eval_texts, held_out = arm_round_guards(db, config, seed_samples.source, seed_samples.holdout_ids)
    with mlflow.run(f"arms-round-{round_number}", tags={"dagster_run_id": context.run_id, "stage": "arms",
                                                        "round": round_number}) as run:
        with retry_transient_only():
            report = run_arm_round(db, round_number, proxy=proxy.open, config=config, seed_source=seed_samples.source,
                                   eval_texts=eval_texts, held_out=held_out, run_id=context.run_id,
                                   progress=StepProgress(context.log.info))
        charts = log_arm_round(mlflow, run, db, report, config)
    context.log.info("\n".join(log_lines(report)))
    return dg.MaterializeResult(metadata={
        # one numeric series per figure and arm for the asset's Plots view (x: round)
        **{name: figure(value) for name, value in round_numbers(report).items()},
        "per_arm": dg.MetadataValue.md(arm_table(report)),
        "history": dg.MetadataValue.md("\n".join(summary_lines(db, config.arms.arms))),
        **{f"chart_{name}": chart(context, path.read_bytes(), f"chart_{name}", name) for name, path in charts.items()},
        "removed_later_rounds": dg.MetadataValue.json(report.removed_rounds),
        "seconds_by_stage": dg.MetadataValue.json({k: round(v, 1) for k, v in report.seconds.items()}),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)),
        **retried,
    })


arm_round_job = dg.define_asset_job("arm_round_job", selection=[arm_round], partitions_def=ARM_ROUNDS,
                                    tags=CONCURRENCY_TAG)


@dg.asset(group_name=GROUP, kinds={"pytorch", "vllm", "mlflow", "duckdb"}, deps=[arm_round],
          description="One student per arm, trained on the arm's final pool for the same steps through Pipes; it and "
                      "the base model scored on held-out tasks in and out of distribution (95% Wilson intervals).")
def arm_students(context: dg.AssetExecutionContext, seed_samples: SeedSnapshot, profile: ProfileResource,
                 store: StoreResource, engines: EngineResource, tracker: TrackerResource,
                 pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    config = profile.config()
    try:
        result = run_experiment(
            store.open(), config, seed_samples.source, run_id=context.run_id, log=context.log.info,
            launch=lambda command: pipes_subprocess_client.run(command=command, context=context),
            open_student=lambda model: engines.engines("student").open("student", model=model))
    except ExperimentNotReady as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    mlflow = tracker.tracker()
    run = track_experiment(mlflow, config, result, context.run_id)
    context.log.info("\n" + result.table)
    return dg.MaterializeResult(metadata={
        "accuracy": dg.MetadataValue.md(result.table),
        "within_noise": dg.MetadataValue.json(result.within_noise()),
        "g_vendi_vs_accuracy": chart(context, result.png, "g_vendi_vs_accuracy", "G-Vendi vs accuracy"),
        **{f"accuracy/{r.model}/{r.split}": figure(r.accuracy) for r in result.rows},
        "rounds": result.rounds, "steps_per_student": result.steps,
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)),
    })
