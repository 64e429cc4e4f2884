"""The end of the lineage: distilled_model (SFT of the student) and student_evaluation.

distilled_model trains the student on seed + accepted synthetic samples of the configured
rounds with TRL, resumes an interrupted training from its last checkpoint, logs the run
(hyperparameters, data snapshot with its G-Vendi, loss curve) to MLflow and registers the
student. student_evaluation scores the base and the distilled student on held-out problems
(per-problem rows in DuckDB, accuracies in MLflow and on the model version).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import Field

from prismatic_assets import plots
from prismatic_assets.pipeline.embeddings import embed_samples, pool_vectors
from prismatic_assets.core.ids import digest
from prismatic_assets.pipeline.scores import score_pool
from prismatic_assets.assets.backbone import EmbeddingSnapshot, SeedSnapshot
from prismatic_assets.core.evaluation import (assert_disjoint, combine_reports, evaluate, gsm_symbolic_set,
                                              load_eval_file)
from prismatic_assets.core.generation import SamplingConfig, make_generator
from prismatic_assets.core.models import resolve_model
from prismatic_assets.core.samples import Sample
from prismatic_assets.core.sft import SFTSettings, train_sft
from prismatic_assets.resources import MetadataStoreResource, ProxyModelResource
from prismatic_assets.settings import Settings
from prismatic_assets.store import schema as S
from prismatic_assets.tracking_resource import TrackerResource

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


def parse_rounds(spec: str, available: list[int]) -> list[int]:
    """'all' -> every completed round, 'none' -> [], '1,3' -> [1, 3] (each must be completed)."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(available)
    if spec in ("none", ""):
        return []
    try:
        wanted = sorted({int(part) for part in spec.split(",")})
    except ValueError:
        raise ValueError(f"rounds={spec!r}: write 'all', 'none' or a comma list of round numbers such as '1,2'") from None
    missing = [r for r in wanted if r not in available]
    if missing:
        raise ValueError(f"rounds {missing} are not completed (completed: {available or 'none'}): run them first "
                         "(prismatic rounds N) or choose other rounds")
    return wanted


def training_samples(store, seed_pool_ids: list[str], rounds: list[int]) -> list[Sample]:
    samples = store.load_samples(seed_pool_ids)
    if rounds:
        marks = ",".join("?" for _ in rounds)
        samples += store.load_samples(where=f"origin = 'synthetic' AND round IN ({marks})", params=rounds)
    return samples


def build_distillation_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    ds, ev = settings.distill, settings.evaluation

    class DistillConfig(dg.Config):
        rounds: str = Field(ds.rounds, description="'all', 'none' (seed only) or a comma list such as '1,2'")
        max_steps: int = Field(ds.max_steps, description="optimizer steps")
        learning_rate: float = Field(ds.learning_rate)

    @dg.asset(group_name=GROUP, kinds={"pytorch", "mlflow"}, deps=["synthesis_round"],
              description="The student fine-tuned (TRL SFT, assistant tokens only) on seed + accepted synthetic "
                          "samples; logged and registered in MLflow.")
    def distilled_model(context: dg.AssetExecutionContext, config: DistillConfig, seed_samples: SeedSnapshot,
                        gradient_embeddings: EmbeddingSnapshot, store: MetadataStoreResource,
                        proxy: ProxyModelResource, tracker: TrackerResource) -> dg.Output[DistilledSnapshot]:
        from prismatic_assets.store.synthesis_tables import completed_rounds

        db = store.open()
        rounds = parse_rounds(config.rounds, completed_rounds(db))
        samples = training_samples(db, seed_samples.pool_ids, rounds)
        # The training set's diversity, under the same proxy and projection as the pool.
        embedder = proxy.embedder()
        embed_samples(samples, embedder, db, context.run_id)
        vectors = pool_vectors(db, samples, embedder.key, embedder.projector.spec.dim)
        g_vendi = score_pool(db, vectors, settings.score.q, embedder.key, scope="distill:train",
                                       run_id=context.run_id).score
        sft = SFTSettings(max_steps=config.max_steps, learning_rate=config.learning_rate,
                          per_device_batch_size=ds.per_device_batch_size,
                          gradient_accumulation_steps=ds.gradient_accumulation_steps, max_length=ds.max_length,
                          bf16=ds.bf16, save_steps=ds.save_steps, seed=ds.seed)
        data_key = digest({"student": ds.student, "ids": [s.sample_id for s in samples],
                                     "sft": sft.resume_relevant()})
        output_dir = settings.data_path / "models" / f"distilled-{data_key}"
        t = tracker.tracker()
        run_id = t.start_run("distillation", tags={"dagster_run_id": context.run_id, "stage": "distillation"})
        t.log_params(run_id, {"student": ds.student, "rounds": ",".join(map(str, rounds)) or "none",
                              "n_train": len(samples), **sft.resume_relevant()})
        t.log_metrics(run_id, {"train/g_vendi": g_vendi, "train/samples": len(samples),
                               "train/synthetic": sum(1 for s in samples if s.sample_id.startswith("syn:"))})

        def progress(step: int, loss: float) -> None:
            context.log.info(f"SFT step {step}/{config.max_steps}: loss {loss:.4f}")

        try:
            result = train_sft(ds.student, samples, output_dir, sft, resume=True, callbacks=[progress])
        except BaseException:
            t.end_run(run_id, "FAILED")
            raise
        t.log_metric_history(run_id, "train/loss", result.loss_history)
        loss_png = plots.series_png([s for s, _ in result.loss_history], {"loss": [l for _, l in result.loss_history]},
                                    "step", "training loss", "SFT loss")
        png_path = output_dir / "loss.png"
        png_path.write_bytes(loss_png)
        t.log_artifact(run_id, png_path, "plots")
        _, version = t.log_transformers_model(run_id, result.final_model_dir, ds.registered_name,
                                              tags={"dagster_run_id": context.run_id, "g_vendi": g_vendi})
        t.end_run(run_id)
        snapshot = DistilledSnapshot(str(result.final_model_dir), ds.student, rounds, len(samples), g_vendi, run_id,
                                     ds.registered_name, version)
        return dg.Output(snapshot, metadata={
            "model_dir": dg.MetadataValue.path(str(result.final_model_dir)),
            "rounds": ",".join(map(str, rounds)) or "none (seed only)",
            "n_train": len(samples),
            "train_g_vendi": g_vendi,
            "steps": result.steps,
            "resumed_from": str(result.resumed_from) if result.resumed_from else "none",
            "final_loss": result.loss_history[-1][1] if result.loss_history else float("nan"),
            "train_seconds": round(result.seconds, 1),
            "mlflow_run": dg.MetadataValue.url(t.run_url(run_id)),
            "mlflow_run_id": run_id,
            "registered_model": f"{ds.registered_name} v{version}",
            "model_version": dg.MetadataValue.url(t.model_version_url(ds.registered_name, version)),
            "loss_curve": dg.MetadataValue.md(plots.markdown_image(loss_png, "loss curve")),
        })

    @dg.asset(group_name=GROUP, kinds={"vllm", "mlflow", "duckdb"},
              description="Accuracy of the base and the distilled student on held-out problems that no seed or "
                          "synthetic sample overlaps; per-problem results in DuckDB.")
    def student_evaluation(context: dg.AssetExecutionContext, distilled_model: DistilledSnapshot,
                           seed_samples: SeedSnapshot, store: MetadataStoreResource,
                           tracker: TrackerResource) -> dg.MaterializeResult:
        db = store.open()
        eval_sets = held_out_sets(db, seed_samples, settings)
        train = training_samples(db, seed_samples.pool_ids, distilled_model.rounds)
        for samples in eval_sets.values():
            assert_disjoint(samples, train)
        sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=ev.max_tokens, seed=0)
        results = {}
        for role, model in (("base", distilled_model.base_model), ("distilled", distilled_model.model_dir)):
            context.log.info(f"evaluating the {role} student ({model}) on {sum(map(len, eval_sets.values()))} problems")
            generator = _eval_generator(ev, model)
            try:
                report = combine_reports([evaluate(generator, samples, sampling, name, stated_answers=ev.stated_answers)
                                          for name, samples in eval_sets.items() if samples])
            finally:
                generator.close()
            evaluation_id = digest({"run": context.run_id, "role": role, "model": model})
            _store_results(db, evaluation_id, role, model, distilled_model.mlflow_run_id, report, context.run_id)
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
            "distilled_overall": dg.MetadataValue.float(results["distilled"].overall),
            "train_g_vendi": distilled_model.g_vendi,
            "problems": dg.MetadataValue.json(results["base"].problems),
            "mlflow_run": dg.MetadataValue.url(t.run_url(distilled_model.mlflow_run_id)),
            "accuracy_by_benchmark": dg.MetadataValue.md(plots.markdown_image(png, "accuracy by benchmark")),
        })

    return [distilled_model, student_evaluation]


def held_out_sets(store, seed: SeedSnapshot, settings: Settings) -> dict[str, list[Sample]]:
    ev = settings.evaluation
    sets: dict[str, list[Sample]] = {}
    if ev.gsm_symbolic:
        sets["gsm_symbolic"] = gsm_symbolic_set(ev.gsm_symbolic, seed=ev.gsm_symbolic_seed)
    if ev.holdout and seed.holdout_ids:
        ids = seed.holdout_ids[:ev.holdout_limit] if ev.holdout_limit else seed.holdout_ids
        sets[f"{seed.source}_holdout"] = store.load_samples(ids)
    for path in ev.files:
        sets[Path(path).stem] = load_eval_file(path)
    if not sets:
        raise ValueError("no evaluation set configured: set evaluation.gsm_symbolic > 0, evaluation.holdout: true "
                         "(with seed.holdout_fraction > 0) or evaluation.files in the profile")
    return sets


def _eval_generator(ev, model: str):
    if ev.backend == "vllm":
        return make_generator("vllm", model=model, tensor_parallel_size=ev.tensor_parallel_size,
                              max_model_len=ev.max_model_len, engine_kwargs={"enforce_eager": True})
    return make_generator("transformers", model=resolve_model(model))


def _store_results(store, evaluation_id: str, role: str, model: str, mlflow_run_id: str, report, run_id: str) -> None:
    import pyarrow as pa

    rows = report.rows()
    table = pa.table({
        "evaluation_id": [evaluation_id] * len(rows), "model_role": [role] * len(rows), "model": [model] * len(rows),
        "mlflow_run_id": [mlflow_run_id] * len(rows), "sample_id": [r["sample_id"] for r in rows],
        "benchmark": [r["benchmark"] for r in rows], "completion": [r["completion"] for r in rows],
        "problem": [r["problem"] for r in rows], "response": [r["response"] for r in rows],
        "extracted": pa.array([r["extracted"] for r in rows], type=pa.string()),
        "gold": [r["gold"] for r in rows], "correct": [bool(r["correct"]) for r in rows],
        "run_id": [run_id] * len(rows)})
    with store.transaction() as con:
        con.execute(f"DELETE FROM {S.EVAL_RESULTS} WHERE evaluation_id = ?", [evaluation_id])
        con.register("incoming", table)
        con.execute(f"INSERT INTO {S.EVAL_RESULTS} (evaluation_id, model_role, model, mlflow_run_id, sample_id, "
                    f"benchmark, completion, problem, response, extracted, gold, correct, run_id) "
                    f"SELECT * FROM incoming")
