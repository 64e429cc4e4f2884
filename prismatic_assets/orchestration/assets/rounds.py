"""Synthesis rounds as a dynamically partitioned asset, a stopped-by-default schedule and a job.

Each round is one partition ("1", "2", ...) of `synthesis_round`, materialized on its own
with the round's funnel and G-Vendi before/after/random-control as metadata. Rounds run in
order: materializing round r before r-1 is complete fails with a message naming the fix.
The schedule adds the next partition and launches it; `prismatic rounds N` does the same
from the command line. The round itself is `prismatic_assets.pipeline.round.run_round`.
"""

import dagster as dg

from prismatic_assets.infra.config import Config
from prismatic_assets.orchestration.assets.backbone import EmbeddingSnapshot, SeedSnapshot
from prismatic_assets.orchestration.metadata import chart, figure, rounded
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
from prismatic_assets.pipeline.evaluation import decontamination_texts
from prismatic_assets.pipeline.round import RoundReport, run_round, track_round
from prismatic_assets.store.synthesis_tables import completed_rounds, stale_rounds

GROUP = "synthesis"
#: The name of the round partitions, for the instance calls that take a name (`ROUNDS.name` is optional).
ROUND_PARTITIONS = "synthesis_rounds"
ROUNDS = dg.DynamicPartitionsDefinition(name=ROUND_PARTITIONS)
#: Runs carrying this tag are limited to one at a time by dagster.yaml's run coordinator.
CONCURRENCY_TAG = {"prismatic/synthesis": "round"}


def next_round(store) -> int:
    """The round to run next: the first stale round (it must be rebuilt before anything
    builds on it), else the one after the last complete round."""
    stale = stale_rounds(store)
    if stale:
        return min(stale)
    done = completed_rounds(store)
    return (max(done) + 1) if done else 1


def _progress_logger(context: dg.AssetExecutionContext, round_number: int):
    step = StepProgress(context.log.info)

    def progress(stage: str, done: int, total: int) -> None:
        if stage.startswith("engine_call:"):
            context.log.info(f"round {round_number}: {stage[12:]}: one engine call with {done} requests "
                             f"({total} missing from the cache)")
        else:
            step(stage, done, total)
    return progress


@dg.asset(group_name=GROUP, partitions_def=ROUNDS, kinds={"vllm", "duckdb"}, op_tags=CONCURRENCY_TAG,
          retry_policy=TRANSIENT_RETRY,
          description="One Prismatic Synthesis round: generate problems, solve them 3 times, keep the verified "
                      "ones whose gradients land in sparse clusters of the current pool.")
def synthesis_round(context: dg.AssetExecutionContext, seed_samples: SeedSnapshot,
                    gradient_embeddings: EmbeddingSnapshot, profile: ProfileResource, store: StoreResource,
                    proxy: ProxyResource, engines: EngineResource, tracker: TrackerResource) -> dg.MaterializeResult:
    round_number = partition_round(context)
    retried = retry_note(context)
    config, db = profile.config(), store.open()
    eval_texts = decontamination_texts(db, seed_samples.source, seed_samples.holdout_ids, config.evaluation)
    mlflow = tracker.tracker()
    tags = {"dagster_run_id": context.run_id, "stage": "synthesis", "round": round_number}
    with mlflow.run(f"round-{round_number}", tags=tags) as mlflow_run:  # ends FAILED if anything below raises
        with retry_transient_only():  # a rerun resumes from the generation and vector caches
            report = run_round(db, round_number, engines=engines.engines("generator", "teacher"), proxy=proxy.open,
                               config=config, eval_texts=eval_texts, seed_source=seed_samples.source,
                               run_id=context.run_id, progress=_progress_logger(context, round_number))
        plots_md = _track_round(context, mlflow, mlflow_run, config, report, db)
    _unmaterialize_stale_rounds(context, db, round_number)
    context.log.info(f"round {round_number}: accepted {report.accepted} of {report.problems_parsed} parsed "
                     f"problems; G-Vendi {report.g_vendi_before:.3f} -> {report.g_vendi_after:.3f} "
                     f"(random control {report.g_vendi_random:.3f})")
    return dg.MaterializeResult(metadata={**_round_metadata(report), **plots_md,
                                          "generator": config.synthesis.generator.model,
                                          "teacher": config.synthesis.teacher.model,
                                          "mlflow_run": dg.MetadataValue.url(mlflow.run_url(mlflow_run)),
                                          "mlflow_run_id": mlflow_run, **retried})


def _unmaterialize_stale_rounds(context: dg.AssetExecutionContext, db, round_number: int) -> None:
    """Later rounds built on what this run replaced are stale (`synthesis_tables.stale_rounds`):
    wipe their partitions' materializations so Dagster shows them as missing, to be
    materialized again in order. Their rows stay in the store, marked stale."""
    later = {r: why for r, why in stale_rounds(db).items() if r > round_number}
    if not later:
        return
    context.instance.wipe_asset_partitions(context.asset_key, [str(r) for r in sorted(later)])
    context.log.warning(f"round {round_number} changed the pool of rounds {sorted(later)}: they are stale and "
                        f"shown as not materialized; re-materialize them in order ({later[min(later)]})")


def _round_metadata(report: RoundReport) -> dict:
    return {
        "requests": report.requests, "outputs": report.outputs, "outputs_cached": report.outputs_cached,
        "problems_parsed": report.problems_parsed, "parse_failures": report.parse_failures,
        "duplicates": report.duplicates, "contaminated": report.contaminated, "solved": report.sent_to_teacher,
        "verified": report.verified, "vote_failures": dg.MetadataValue.json(report.vote_failures),
        "in_dense_cluster": report.in_dense, "accepted": report.accepted,
        "acceptance_rate": dg.MetadataValue.json(rounded(report.acceptance_rate)),
        "pool_before": report.n_pool, "k": report.k, "n_sparse": report.n_sparse,
        "sparse_coverage": figure(report.sparse_coverage), "g_vendi_before": figure(report.g_vendi_before),
        "g_vendi_after": figure(report.g_vendi_after),
        "g_vendi_gain": figure(report.g_vendi_after - report.g_vendi_before),
        "g_vendi_random_control": figure(report.g_vendi_random),
        "llm_requests": dg.MetadataValue.json(report.llm_requests),
        "seconds_by_stage": dg.MetadataValue.json({k: round(v, 1) for k, v in report.seconds.items()}),
    }


def _track_round(context: dg.AssetExecutionContext, tracker, run_id: str, config: Config, report: RoundReport,
                 db) -> dict:
    """The round's MLflow record (`pipeline.round.track_round`); its charts as metadata."""
    charts = track_round(tracker, run_id, config, report, db)
    return {name: chart(context, png, name, name.replace("_", " ")) for name, png in charts.items()}


synthesis_round_job = dg.define_asset_job("synthesis_round_job", selection=[synthesis_round], partitions_def=ROUNDS,
                                          tags=CONCURRENCY_TAG)


@dg.schedule(job=synthesis_round_job, cron_schedule="0 */6 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Adds and runs the next synthesis round every 6 hours (stopped by default).")
def synthesis_round_every_6_hours(context: dg.ScheduleEvaluationContext, store: StoreResource):
    db = store.open()
    upcoming = str(next_round(db))
    if ROUNDS.has_partition_key(upcoming, dynamic_partitions_store=context.instance) and \
            _round_in_flight(context.instance, upcoming):
        return dg.SkipReason(f"round {upcoming} is already running")
    if not context.instance.has_dynamic_partition(ROUND_PARTITIONS, upcoming):
        context.instance.add_dynamic_partitions(ROUND_PARTITIONS, [upcoming])
    return dg.RunRequest(partition_key=upcoming, tags=CONCURRENCY_TAG)


def _round_in_flight(instance: dg.DagsterInstance, partition: str) -> bool:
    runs = instance.get_runs(filters=dg.RunsFilter(
        tags={"dagster/partition": partition, **CONCURRENCY_TAG},
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    return bool(runs)
