"""Synthesis rounds as a dynamically partitioned asset, a stopped-by-default schedule and a job.

Each round is one partition ("1", "2", ...) of `synthesis_round`, materialized on its own
with the round's funnel and G-Vendi before/after/random-control as metadata. Rounds run in
order: materializing round r before r-1 is complete fails with a message naming the fix.
The schedule adds the next partition and launches it; `prismatic rounds N` does the same
from the command line. The round itself is `prismatic_assets.synthesis.run_round`.
"""

import dataclasses

import dagster as dg

from prismatic_assets import plots
from prismatic_assets.assets.backbone import EmbeddingSnapshot, SeedSnapshot
from prismatic_assets.core.generation import PROBLEM_SAMPLING, SOLUTION_SAMPLING
from prismatic_assets.resources import (GeneratorResource, MetadataStoreResource, ProxyModelResource,
                                        open_generator)
from prismatic_assets.settings import Settings
from prismatic_assets.store import schema as S
from prismatic_assets.store.synthesis_tables import completed_rounds
from prismatic_assets.synthesis import RoundSettings, run_round
from prismatic_assets.tracking_resource import TrackerResource

GROUP = "synthesis"
ROUNDS = dg.DynamicPartitionsDefinition(name="synthesis_rounds")
#: Runs carrying this tag are limited to one at a time by dagster.yaml's run coordinator.
CONCURRENCY_TAG = {"prismatic/synthesis": "round"}


def round_settings(settings: Settings) -> RoundSettings:
    syn = settings.synthesis
    return RoundSettings(
        requests_per_round=syn.requests_per_round, few_shot=syn.few_shot, new_per_request=syn.new_per_request,
        strategy=syn.strategy, n_solutions=syn.n_solutions, min_agree=syn.min_agree,
        stated_answers=syn.stated_answers,
        problem_sampling=dataclasses.replace(PROBLEM_SAMPLING, temperature=syn.problem_temperature,
                                             top_p=syn.problem_top_p, max_tokens=syn.problem_max_tokens),
        solution_sampling=dataclasses.replace(SOLUTION_SAMPLING, n=syn.n_solutions,
                                              temperature=syn.solution_temperature, top_p=syn.solution_top_p,
                                              max_tokens=syn.solution_max_tokens),
        ngram=syn.ngram, clustering=settings.clustering, q=settings.score.q, seed=syn.seed)


def next_round(store) -> int:
    done = completed_rounds(store)
    return (max(done) + 1) if done else 1


def build_synthesis_assets(settings: Settings):
    """The round asset, its job and the (stopped) schedule."""
    rs = round_settings(settings)

    @dg.asset(group_name=GROUP, partitions_def=ROUNDS, kinds={"vllm", "duckdb"}, op_tags=CONCURRENCY_TAG,
              description="One Prismatic Synthesis round: generate problems, solve them 3 times, keep the verified "
                          "ones whose gradients land in sparse clusters of the current pool.")
    def synthesis_round(context: dg.AssetExecutionContext, seed_samples: SeedSnapshot,
                        gradient_embeddings: EmbeddingSnapshot, store: MetadataStoreResource,
                        proxy: ProxyModelResource, generator: GeneratorResource,
                        teacher: GeneratorResource, tracker: TrackerResource) -> dg.MaterializeResult:
        round_number = int(context.partition_key)
        db = store.open()
        holdout = db.load_samples(seed_samples.holdout_ids) if "holdout" in settings.synthesis.eval_sets else []
        eval_texts = {"seed_holdout": [s.prompt for s in holdout]} if holdout else {}
        gen = open_generator(generator.settings())
        # The same settings share one engine: on the local profile one model writes and solves.
        tea = gen if teacher.settings() == generator.settings() else open_generator(teacher.settings())
        last = {}

        def progress(stage: str, done: int, total: int) -> None:
            if last.get(stage) != done and (done == total or done % max(1, total // 5) == 0):
                last[stage] = done
                context.log.info(f"round {round_number}: {stage} {done}/{total}")

        try:
            report = run_round(db, round_number, generator=gen, teacher=tea, embedder=proxy.embedder(),
                               settings=rs, eval_texts=eval_texts, seed_source=seed_samples.source,
                               run_id=context.run_id, progress=progress)
        finally:
            gen.close()
            if tea is not gen:
                tea.close()
        history = db.query(f"SELECT round, n_pool, accepted, g_vendi_before, g_vendi_after, g_vendi_random "
                           f"FROM ({_ROUNDS_VIEW}) ORDER BY round")
        gv_png = plots.series_png(history["round"].to_list(), {
            "after (gradient filter)": history["g_vendi_after"].to_list(),
            "random control": history["g_vendi_random"].to_list(),
            "before": history["g_vendi_before"].to_list()}, "round", "G-Vendi", "G-Vendi per round")
        acc_png = plots.bars_png([str(r) for r in history["round"].to_list()], history["accepted"].to_list(),
                                 "accepted samples", "Accepted per round")
        mlflow = tracker.tracker()
        mlflow_run = mlflow.start_run(f"round-{round_number}", tags={"dagster_run_id": context.run_id,
                                                                     "stage": "synthesis", "round": round_number})
        mlflow.log_params(mlflow_run, {"round": round_number, "generator": gen.model_name, "teacher": tea.model_name,
                                       **{k: v for k, v in rs.__dict__.items() if not k.endswith("sampling")},
                                       "problem_sampling": rs.problem_sampling.key(),
                                       "solution_sampling": rs.solution_sampling.key()})
        mlflow.log_metrics(mlflow_run, {
            "g_vendi/before": report.g_vendi_before, "g_vendi/after": report.g_vendi_after,
            "g_vendi/random_control": report.g_vendi_random, "pool/before": report.n_pool,
            "pool/after": report.n_pool + report.accepted, "count/requests": report.requests,
            "count/parsed": report.problems_parsed, "count/duplicates": report.duplicates,
            "count/contaminated": report.contaminated, "count/verified": report.verified,
            "count/accepted": report.accepted, "clusters/k": report.k, "clusters/sparse": report.n_sparse,
            "clusters/sparse_coverage": report.sparse_coverage,
            **{f"acceptance/{k}": v for k, v in report.acceptance_rate.items()}}, step=round_number)
        for name, png in (("g_vendi_per_round.png", gv_png), ("accepted_per_round.png", acc_png)):
            path = settings.data_path / "plots" / f"round-{round_number}-{name}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            mlflow.log_artifact(mlflow_run, path, "plots")
        mlflow.end_run(mlflow_run)
        context.log.info(f"round {round_number}: accepted {report.accepted} of {report.problems_parsed} parsed "
                         f"problems; G-Vendi {report.g_vendi_before:.3f} -> {report.g_vendi_after:.3f} "
                         f"(random control {report.g_vendi_random:.3f})")
        return dg.MaterializeResult(metadata={
            "requests": report.requests,
            "outputs": report.outputs,
            "outputs_cached": report.outputs_cached,
            "problems_parsed": report.problems_parsed,
            "parse_failures": report.parse_failures,
            "duplicates": report.duplicates,
            "contaminated": report.contaminated,
            "solved": report.sent_to_teacher,
            "verified": report.verified,
            "vote_failures": dg.MetadataValue.json(report.vote_failures),
            "in_dense_cluster": report.in_dense,
            "accepted": report.accepted,
            "acceptance_rate": dg.MetadataValue.json({k: round(v, 4) for k, v in report.acceptance_rate.items()}),
            "pool_before": report.n_pool,
            "k": report.k,
            "n_sparse": report.n_sparse,
            "sparse_coverage": report.sparse_coverage,
            "g_vendi_before": report.g_vendi_before,
            "g_vendi_after": dg.MetadataValue.float(report.g_vendi_after),
            "g_vendi_random_control": report.g_vendi_random,
            "seconds_by_stage": dg.MetadataValue.json({k: round(v, 1) for k, v in report.seconds.items()}),
            "mlflow_run": dg.MetadataValue.url(mlflow.run_url(mlflow_run)),
            "mlflow_run_id": mlflow_run,
            "generator": gen.model_name,
            "teacher": tea.model_name,
            "g_vendi_per_round": dg.MetadataValue.md(plots.markdown_image(gv_png, "G-Vendi per round")),
            "accepted_per_round": dg.MetadataValue.md(plots.markdown_image(acc_png, "accepted per round")),
        })

    round_job = dg.define_asset_job("synthesis_round_job", selection=[synthesis_round], partitions_def=ROUNDS,
                                    tags=CONCURRENCY_TAG)

    @dg.schedule(job=round_job, cron_schedule="0 */6 * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
                 description="Adds and runs the next synthesis round (stopped by default).")
    def next_synthesis_round(context: dg.ScheduleEvaluationContext, store: MetadataStoreResource):
        db = store.open()
        upcoming = str(next_round(db))
        if ROUNDS.has_partition_key(upcoming, dynamic_partitions_store=context.instance) and \
                _round_in_flight(context.instance, upcoming):
            return dg.SkipReason(f"round {upcoming} is already running")
        if not context.instance.has_dynamic_partition(ROUNDS.name, upcoming):
            context.instance.add_dynamic_partitions(ROUNDS.name, [upcoming])
        return dg.RunRequest(partition_key=upcoming, tags=CONCURRENCY_TAG)

    return [synthesis_round], [round_job], [next_synthesis_round]


def _round_in_flight(instance: dg.DagsterInstance, partition: str) -> bool:
    runs = instance.get_runs(filters=dg.RunsFilter(
        tags={"dagster/partition": partition, **CONCURRENCY_TAG},
        statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    return bool(runs)


_ROUNDS_VIEW = (f"SELECT round, n_pool, n_accepted AS accepted, g_vendi_before, g_vendi_after, "
                f"g_vendi_random FROM {S.SYNTHESIS_ROUNDS}")
