"""The end of the lineage: distilled_model (SFT of the student) and student_evaluation.

distilled_model writes the training set (seed + accepted samples of the configured rounds),
checks the lengths against the student's context, and launches SFT in its own processes
(`accelerate launch` / `torchrun` / python, per the profile) through Dagster Pipes: the
training log streams into the run, rank 0 reports the result. The asset then logs the run
to MLflow (hyperparameters, data snapshot with its G-Vendi, loss curve) and registers the
student. student_evaluation scores the base and the distilled student on held-out problems
(per-problem rows in DuckDB, accuracies in MLflow and on the model version).
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from prismatic_assets.reporting import plots
from prismatic_assets.orchestration.assets.backbone import EmbeddingSnapshot, SeedSnapshot
from prismatic_assets.core.evaluation import assert_disjoint, combine_reports, evaluate
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.ids import digest
from prismatic_assets.orchestration.resources import EngineResource, ProfileResource, ProxyResource, StoreResource, \
    TrackerResource
from prismatic_assets.pipeline.distill import (check_lengths, parse_rounds, read_result, sft_command,
                                               training_samples, write_training_set)
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors
from prismatic_assets.pipeline.evaluation import CachedGenerator, evaluation_id, held_out_sets, store_results
from prismatic_assets.pipeline.scores import score_pool
from prismatic_assets.store.synthesis_tables import completed_rounds, refresh_staleness

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
    sft_changes = {k: v for k, v in (("max_steps", config.max_steps), ("learning_rate", config.learning_rate))
                   if v is not None}
    ds = settings.distill.model_copy(update={"sft": type(settings.distill.sft)(**{**asdict(settings.distill.sft),
                                                                                  **sft_changes})})
    check_lengths(ds, settings.evaluation)
    rounds = parse_rounds(config.rounds or ds.rounds, completed_rounds(db))
    stale = {r: why for r, why in refresh_staleness(db).items() if r in rounds}
    if stale:  # trained on rounds whose diversity filter judged against a pool that is gone
        raise dg.Failure(description=f"distillation would train on stale round(s) {sorted(stale)}: "
                                     f"{stale[min(stale)]}", allow_retries=False)
    samples = training_samples(db, seed_samples.pool_ids, rounds)
    with proxy.open() as embedder:  # the training set's diversity, under the pool's proxy and projection
        embed_samples(samples, embedder, db, context.run_id)
        vectors = pool_vectors(db, samples, embedder.key, embedder.dim)
        g_vendi = score_pool(db, vectors, settings.score.q, embedder.key, scope="distill:train",
                             run_id=context.run_id).score
    data_key = digest({"student": ds.student, "ids": [s.sample_id for s in samples],
                       "sft": ds.sft.resume_relevant()})
    output_dir = settings.data_path / "models" / f"distilled-{data_key}"
    data = write_training_set(samples, output_dir / "train.jsonl")
    t = tracker.tracker()
    tags = {"dagster_run_id": context.run_id, "stage": "distillation"}
    with t.run("distillation", tags=tags) as run_id:  # ends FAILED if anything below raises
        t.log_params(run_id, {"student": ds.student, "rounds": ",".join(map(str, rounds)) or "none",
                              "n_train": len(samples), "launcher": ds.launcher, "num_processes": ds.num_processes,
                              **ds.sft.resume_relevant()})
        t.log_metrics(run_id, {"train/g_vendi": g_vendi, "train/samples": len(samples),
                               "train/synthetic": sum(1 for s in samples if s.sample_id.startswith("syn:"))})
        command = sft_command(ds, data, output_dir)
        context.log.info(f"launching SFT: {' '.join(command[:8])} ...")
        reported = pipes_subprocess_client.run(command=command, context=context).get_materialize_result()
        result = read_result(output_dir)
        version, metadata = _track_student(t, run_id, ds.registered_name, result, output_dir, context.run_id, g_vendi)
    snapshot = DistilledSnapshot(result["final_model_dir"], ds.student, rounds, len(samples), g_vendi, run_id,
                                 ds.registered_name, version)
    return dg.Output(snapshot, metadata={
        **(reported.metadata or {}), **metadata,
        "rounds": ",".join(map(str, rounds)) or "none (seed only)", "n_train": len(samples),
        "train_g_vendi": g_vendi, "mlflow_run": dg.MetadataValue.url(t.run_url(run_id)), "mlflow_run_id": run_id,
        "registered_model": f"{ds.registered_name} v{version}",
        "model_version": dg.MetadataValue.url(t.model_version_url(ds.registered_name, version)),
    })


def _track_student(t, run_id: str, registered_name: str, result: dict, output_dir: Path, dagster_run_id: str,
                   g_vendi: float) -> tuple[str, dict]:
    """Log the loss curve and register the final model; return its version and asset metadata."""
    history = [(int(s), float(v)) for s, v in result["loss_history"]]
    t.log_metric_history(run_id, "train/loss", history)
    loss_png = plots.series_png([s for s, _ in history], {"loss": [v for _, v in history]}, "step", "training loss",
                                "SFT loss")
    png_path = output_dir / "loss.png"
    png_path.write_bytes(loss_png)
    t.log_artifact(run_id, png_path, "plots")
    _, version = t.log_transformers_model(run_id, Path(result["final_model_dir"]), registered_name,
                                          tags={"dagster_run_id": dagster_run_id, "g_vendi": g_vendi})
    return version, {
        "model_dir": dg.MetadataValue.path(result["final_model_dir"]),
        "steps": result["steps"], "world_size": result["world_size"],
        "resumed_from": result["resumed_from"] or "none",
        "final_loss": history[-1][1] if history else float("nan"),
        "train_seconds": round(result["seconds"], 1),
        "loss_curve": dg.MetadataValue.md(plots.markdown_image(loss_png, "loss curve")),
    }


@dg.asset(group_name=GROUP, kinds={"vllm", "mlflow", "duckdb"},
          description="Accuracy of the base and the distilled student on held-out problems that no seed or "
                      "synthetic sample overlaps; per-problem results in DuckDB.")
def student_evaluation(context: dg.AssetExecutionContext, distilled_model: DistilledSnapshot,
                       seed_samples: SeedSnapshot, profile: ProfileResource, store: StoreResource,
                       engines: EngineResource, tracker: TrackerResource) -> dg.MaterializeResult:
    db, ev = store.open(), profile.config().evaluation
    eval_sets = {k: v for k, v in held_out_sets(db, seed_samples.source, seed_samples.holdout_ids, ev).items() if v}
    if not eval_sets:
        raise ValueError("no evaluation set configured: set evaluation.gsm_symbolic > 0, evaluation.holdout: true "
                         "(with seed.holdout_fraction > 0) or evaluation.files in the profile")
    train = training_samples(db, seed_samples.pool_ids, distilled_model.rounds)
    for samples in eval_sets.values():
        assert_disjoint(samples, train)
    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=ev.max_tokens, seed=0)
    results, requests = {}, {}
    students = engines.engines("student")
    for role, model in (("base", distilled_model.base_model), ("distilled", distilled_model.model_dir)):
        context.log.info(f"evaluating the {role} student ({model}) on {sum(map(len, eval_sets.values()))} problems")
        with students.open("student", model=model) as engine:  # closed (memory freed) before the next
            generator = CachedGenerator(db, engine, chunk_size=ev.chunk_size, run_id=context.run_id)
            report = combine_reports([evaluate(generator, samples, sampling, name, stated_answers=ev.stated_answers)
                                      for name, samples in eval_sets.items()])
        requests[role] = {"engine": generator.called, "cached": generator.cached}
        eval_id = evaluation_id(role, model, eval_sets, sampling, ev.stated_answers)
        store_results(db, eval_id, role, model, distilled_model.mlflow_run_id, report, context.run_id)
        results[role] = report
    t = tracker.tracker()
    for role, report in results.items():
        t.log_metrics(distilled_model.mlflow_run_id, {f"{role}/{k}": v for k, v in report.metrics().items()})
    t.set_model_version_tags(distilled_model.registered_name, distilled_model.version,
                             {f"eval/{k}": round(v, 4) for k, v in results["distilled"].metrics().items()})
    benchmarks = sorted(results["base"].accuracy)
    labels = [f"{b} ({role})" for b in benchmarks for role in ("base", "distilled")]
    values = [results[role].accuracy[b] for b in benchmarks for role in ("base", "distilled")]
    png = plots.bars_png(labels, values, "accuracy", "Accuracy by benchmark")
    png_path = Path(distilled_model.model_dir).parent / "accuracy.png"
    png_path.write_bytes(png)
    t.log_artifact(distilled_model.mlflow_run_id, png_path, "plots")
    return dg.MaterializeResult(metadata={
        "base_accuracy": dg.MetadataValue.json({b: round(a, 4) for b, a in results["base"].accuracy.items()}),
        "distilled_accuracy": dg.MetadataValue.json(
            {b: round(a, 4) for b, a in results["distilled"].accuracy.items()}),
        "base_overall": results["base"].overall,
        "llm_requests": dg.MetadataValue.json(requests),
        "distilled_overall": dg.MetadataValue.float(results["distilled"].overall),
        "train_g_vendi": distilled_model.g_vendi,
        "problems": dg.MetadataValue.json(results["base"].problems),
        "mlflow_run": dg.MetadataValue.url(t.run_url(distilled_model.mlflow_run_id)),
        "accuracy_by_benchmark": dg.MetadataValue.md(plots.markdown_image(png, "accuracy by benchmark")),
    })
