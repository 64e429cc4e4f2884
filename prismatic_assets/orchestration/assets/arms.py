"""Arms compared round by round (`arm_round`), and one student per arm (`arm_students`).

`arm_round` is dynamically partitioned by round ("1", "2", ...), like `synthesis_round`:
each partition generates the round's procedural candidates once, embeds them once, and lets
every arm (prismatic, random, naive) accept the same budget into its own pool. Its metadata
shows G-Vendi per arm per round as a line chart, also logged to MLflow as a PNG. The round
itself is `prismatic_assets.pipeline.arms.run_arm_round`.

`arm_students` (`prismatic experiment`) trains one student per arm on the arm's final pool
through Dagster Pipes, the same steps for each, and scores them and the base model on
held-out tasks in and out of distribution (`pipeline/experiment.py`).
"""

import dagster as dg

from prismatic_assets.reporting import plots
from prismatic_assets.orchestration.assets.backbone import EmbeddingSnapshot, SeedSnapshot
from prismatic_assets.orchestration.metadata import chart, figure
from prismatic_assets.orchestration.progress import StepProgress
from prismatic_assets.orchestration.retry import TRANSIENT_RETRY, retry_note, retry_transient_only
from prismatic_assets.orchestration.round_keys import partition_round
from prismatic_assets.orchestration.assets.rounds import CONCURRENCY_TAG  # one synthesis or arm round at a time
from prismatic_assets.core.evaluation import assert_disjoint
from prismatic_assets.core.ids import digest
from prismatic_assets.orchestration.resources import EngineResource, ProfileResource, ProxyResource, StoreResource, \
    TrackerResource
from prismatic_assets.pipeline.arms import (ArmRoundReport, arm_history, arm_pool, completed_arm_rounds,
                                            run_arm_round, summary_lines)
from prismatic_assets.pipeline.evaluation import CachedGenerator, decontamination_texts, store_results
from prismatic_assets.pipeline.experiment import (accuracy_rows, accuracy_table, evaluate_student, held_out_samples,
                                                  held_out_tasks, intervals_overlap, student_distill, train_student)
from prismatic_assets.pipeline.distill import check_lengths
from prismatic_assets.pipeline.round_services import load_pool

GROUP = "arms"
ARM_ROUNDS = dg.DynamicPartitionsDefinition(name="arm_rounds")


def _gvendi_chart(db):
    hist = arm_history(db)
    series = {}
    for arm in sorted(set(hist["arm"].to_list())):
        rows = hist.filter(hist["arm"] == arm).sort("round")
        series[arm] = [rows["g_vendi_before"][0]] + rows["g_vendi_after"].to_list()
    rounds = [0] + sorted(set(hist["round"].to_list()))
    return plots.series_png(rounds, series, "round (0: seed pool)", "G-Vendi of the arm's pool",
                            "G-Vendi per arm per round"), hist


@dg.asset(group_name=GROUP, partitions_def=ARM_ROUNDS, kinds={"pytorch", "duckdb", "mlflow"},
          op_tags=CONCURRENCY_TAG, retry_policy=TRANSIENT_RETRY,
          description="One round of the arms: procedural candidates generated and embedded once; the prismatic "
                      "(sparse clusters), random and naive arms each accept the same budget into their own pool.")
def arm_round(context: dg.AssetExecutionContext, seed_samples: SeedSnapshot, gradient_embeddings: EmbeddingSnapshot,
              profile: ProfileResource, store: StoreResource, proxy: ProxyResource,
              tracker: TrackerResource) -> dg.MaterializeResult:
    round_number = partition_round(context)
    retried = retry_note(context)
    config, db = profile.config(), store.open()
    eval_texts = decontamination_texts(db, seed_samples.source, seed_samples.holdout_ids, config.evaluation)
    mlflow = tracker.tracker()
    run = mlflow.start_run(f"arms-round-{round_number}", tags={"dagster_run_id": context.run_id, "stage": "arms",
                                                               "round": round_number})
    try:
        with retry_transient_only():
            report = run_arm_round(db, round_number, proxy=proxy.open, config=config, seed_source=seed_samples.source,
                                   eval_texts=eval_texts, held_out=held_out_samples(config.arms), run_id=context.run_id,
                                   progress=StepProgress(context.log.info))
        png, hist = _gvendi_chart(db)
        path = config.data_path / "plots" / f"arms-round-{round_number}-g_vendi.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        mlflow.log_params(run, {"round": round_number, **config.arms.model_dump(mode="json", exclude={"experiment"})})
        mlflow.log_metrics(run, {f"{arm}/{k}": v for arm, r in report.arms.items() for k, v in
                                 (("g_vendi_after", r.g_vendi_after), ("gain", r.gain),
                                  ("accepted", len(r.accepted)), ("in_sparse", sum(r.in_sparse)))},
                           step=round_number)
        mlflow.log_artifact(run, path, "plots")
    except BaseException:
        mlflow.end_run(run, "FAILED")
        raise
    mlflow.end_run(run)
    for line in _log_lines(report):
        context.log.info(line)
    return dg.MaterializeResult(metadata={
        "candidates": report.n_candidates, "verified": report.n_verified,
        "rejected": dg.MetadataValue.json(report.rejected),
        "per_arm": dg.MetadataValue.md(_arm_table(report)),
        "prismatic_gain_minus_random_gain": figure(report.arms["prismatic"].gain - report.arms["random"].gain
                                                   if {"prismatic", "random"} <= set(report.arms) else None),
        "removed_later_rounds": dg.MetadataValue.json(report.removed_rounds),
        "g_vendi_per_arm": chart(context, png, "g_vendi_per_arm", "G-Vendi per arm per round"),
        # one numeric series per arm for the asset's Plots view (x: round)
        **{f"g_vendi/{arm}": figure(r.g_vendi_after) for arm, r in report.arms.items()},
        **{f"accepted/{arm}": len(r.accepted) for arm, r in report.arms.items()},
        **retried,
        "history": dg.MetadataValue.md("\n".join(summary_lines(db, config.arms.arms))),
        "seconds_by_stage": dg.MetadataValue.json({k: round(v, 1) for k, v in report.seconds.items()}),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(run)),
    })


def _arm_table(report: ArmRoundReport) -> str:
    lines = ["| arm | accepted (in sparse) | G-Vendi | gain |", "|---|---|---|---|"]
    for arm, r in report.arms.items():
        lines.append(f"| {arm} | {len(r.accepted)} ({sum(r.in_sparse)}) | {r.g_vendi_before:.3f} → "
                     f"{r.g_vendi_after:.3f} | {r.gain:+.3f} |")
    return "\n".join(lines)


def _log_lines(report: ArmRoundReport) -> list[str]:
    lines = [f"arm round {report.round}: {report.n_verified} of {report.n_candidates} candidates verified "
             f"(rejected: {report.rejected or 'none'})"]
    lines += [f"  {arm}: accepted {len(r.accepted)} ({sum(r.in_sparse)} in sparse clusters), G-Vendi "
              f"{r.g_vendi_before:.3f} -> {r.g_vendi_after:.3f} ({r.gain:+.3f})" for arm, r in report.arms.items()]
    if report.removed_rounds:
        lines.append(f"  rounds {report.removed_rounds} were built on this round's earlier acceptances and were "
                     "removed: run them again")
    return lines


arm_round_job = dg.define_asset_job("arm_round_job", selection=[arm_round], partitions_def=ARM_ROUNDS,
                                    tags=CONCURRENCY_TAG)


@dg.asset(group_name=GROUP, kinds={"pytorch", "vllm", "mlflow", "duckdb"}, deps=[arm_round],
          description="One student per arm, trained on the arm's final pool for the same steps through Pipes; it and "
                      "the base model scored on held-out tasks in and out of distribution (95% Wilson intervals).")
def arm_students(context: dg.AssetExecutionContext, seed_samples: SeedSnapshot, profile: ProfileResource,
                 store: StoreResource, engines: EngineResource, tracker: TrackerResource,
                 pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    config, db = profile.config(), store.open()
    arms = config.arms.arms
    done = completed_arm_rounds(db, arms)
    if not done:
        raise dg.Failure(description="no arm round is complete: materialize arm_round partitions 1, 2, ... first "
                                     "(prismatic demo does)", allow_retries=False)
    distill = student_distill(config)
    check_lengths(distill, config.evaluation)
    tasks = held_out_tasks(config.arms)
    seed_pool = load_pool(db, 1, seed_samples.source)
    students, gvendi = {"base": distill.student}, {}
    hist = arm_history(db)
    hist = hist.filter(hist["round"] == max(done))
    for arm in arms:
        pool = arm_pool(db, arm, max(done) + 1, seed_pool)
        assert_disjoint([i.sample for items in tasks.values() for i in items], pool)
        context.log.info(f"training the {arm} student on {len(pool)} samples ({distill.sft.max_steps} steps)")
        result = train_student(pool, distill, config.data_path / "models", arm,
                               lambda command: pipes_subprocess_client.run(command=command, context=context))
        students[arm] = result["final_model_dir"]
        gvendi[arm] = float(hist.filter(hist["arm"] == arm)["g_vendi_after"][0])
    reports = {}
    for role, model in students.items():
        with engines.engines("student").open("student", model=model) as engine:
            generator = CachedGenerator(db, engine, chunk_size=config.evaluation.chunk_size, run_id=context.run_id)
            reports[role] = evaluate_student(generator, tasks, config.arms.experiment.max_tokens)
        eval_id = digest({"experiment": role, "model": model, "tasks": sorted(i.sample.sample_id for items in
                                                                          tasks.values() for i in items)})
        store_results(db, eval_id, f"arm:{role}", model, "", reports[role], context.run_id)
    rows = accuracy_rows(reports)
    table = accuracy_table(rows, gvendi)
    png = plots.scatter_png([gvendi[a] for a in arms],
                            [next(r.accuracy for r in rows if r.model == a and r.split == "in_distribution")
                             for a in arms], list(arms), "training pool G-Vendi", "in-distribution accuracy",
                            "G-Vendi vs accuracy per arm")
    _track_experiment(tracker.tracker(), config, context.run_id, rows, png, table)
    context.log.info("\n" + table)
    return dg.MaterializeResult(metadata={
        "accuracy": dg.MetadataValue.md(table),
        "within_noise": dg.MetadataValue.json({split: intervals_overlap(rows, split)
                                               for split in ("in_distribution", "out_of_distribution")}),
        "g_vendi_vs_accuracy": chart(context, png, "g_vendi_vs_accuracy", "G-Vendi vs accuracy"),
        **{f"accuracy/{r.model}/{r.split}": figure(r.accuracy) for r in rows},
        "rounds": max(done), "steps_per_student": distill.sft.max_steps,
    })


def _track_experiment(t, config, dagster_run_id: str, rows, png: bytes, table: str) -> None:
    run = t.start_run("arm-students", tags={"dagster_run_id": dagster_run_id, "stage": "experiment"})
    try:
        t.log_params(run, {"steps_per_student": config.arms.experiment.max_steps,
                           "eval_per_family": config.arms.experiment.eval_per_family,
                           "ood_families": ",".join(config.arms.experiment.ood_families)})
        t.log_metrics(run, {f"{r.model}/{r.split}/accuracy": r.accuracy for r in rows})
        folder = config.data_path / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "arms-g_vendi_vs_accuracy.png").write_bytes(png)
        (folder / "arms-accuracy.md").write_text(table + "\n")
        t.log_artifact(run, folder / "arms-g_vendi_vs_accuracy.png", "plots")
        t.log_artifact(run, folder / "arms-accuracy.md", "tables")
    except BaseException:
        t.end_run(run, "FAILED")
        raise
    t.end_run(run)
