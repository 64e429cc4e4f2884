"""The `study` asset: does G-Vendi rank accuracy across training sets of equal size? (`prismatic study`)

Thin: reads the profile, runs `pipeline.study.run_study` (students through Pipes with the
local backend, as Ray tasks with `compute.backend: ray`), and attaches what it found: rho
per measure and split as numbers (the asset's Plots tab charts them across
materializations), the ranking and sets tables, one scatter per measure, the wall time
per stage, and the MLflow parent run.
"""

import dagster as dg

from prismatic_assets.orchestration.metadata import chart
from prismatic_assets.orchestration.resources import ProfileResource, ProxyResource, StoreResource, TrackerResource
from prismatic_assets.pipeline.study import BASE, ranking_numbers, ranking_table, run_study, scatter_pngs, sets_table

GROUP = "study"


@dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow", "duckdb"},
          description="Training sets of equal size drawn by design from one verified pool, one student each; "
                      "Spearman rho of every diversity measure (G-Vendi q=1,2,inf, embedding Vendi, distinct-n, "
                      "compression, family-level entropy) against OOD and ID accuracy, with bootstrap intervals.")
def study(context: dg.AssetExecutionContext, profile: ProfileResource, store: StoreResource, proxy: ProxyResource,
          tracker: TrackerResource, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    config = profile.config()
    launch = None if config.compute.backend == "ray" else (
        lambda command: pipes_subprocess_client.run(command=command, context=context))
    mlflow = tracker.tracker()
    report = run_study(store.open(), config, proxy=proxy.open, launch=launch, tracker=mlflow, run_id=context.run_id,
                       log=context.log.info)
    ranking, sets = ranking_table(report), sets_table(report)
    context.log.info("\n" + ranking)
    metadata: dict = {
        "study_id": report.study_id, "run_key": report.run_key,
        "sets": len(report.sets),
        "students_finished": sum(s.status == "finished" for s in report.students if s.set_name != BASE),
        "trained_this_run": dg.MetadataValue.json(report.trained),
        "failed": dg.MetadataValue.json(report.failed),
        "ranking": dg.MetadataValue.md(ranking),
        "sets_table": dg.MetadataValue.md(sets),
        "seconds_by_stage": dg.MetadataValue.json({k: round(v, 1) for k, v in report.seconds.items()}),
    }
    metadata.update(ranking_numbers(report))  # numbers, so the Plots tab charts them across materializations
    metadata.update({f"scatter/{measure}": chart(context, png, f"scatter_{measure}", f"{measure} vs accuracy")
                     for measure, png in scatter_pngs(report).items()})
    return dg.MaterializeResult(metadata=metadata)
