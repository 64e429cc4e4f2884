"""Held-out evaluation sets and student accuracy.

The same sets serve twice: as the texts every synthetic problem is decontaminated against
(a round rejects an n-gram overlap with any of them), and as what the students are scored
on. Sets: the seed hold-out split, reasoning-gym's offline GSM8K-style problems, and any
configured benchmark files (MATH500, AIME, ...).

`evaluate_students` scores several students (base, distilled) on those sets, one engine at a
time, answers through the generation cache, rows into the store; `track_evaluation` logs the
accuracies to the distillation's MLflow run and onto the registered model version. No Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from prismatic_assets.core.evaluation import (
    EvalReport,
    assert_disjoint,
    combine_reports,
    evaluate,
    gsm_symbolic_set,
    load_eval_file,
)
from prismatic_assets.core.generation import Generator, SamplingConfig
from prismatic_assets.core.ids import digest
from prismatic_assets.core.samples import Sample
from prismatic_assets.core.tracking import Tracker
from prismatic_assets.infra.config import EvaluationConfig
from prismatic_assets.infra.engines import EngineSet
from prismatic_assets.pipeline.round_services import generate_cached
from prismatic_assets.reporting import plots
from prismatic_assets.store.evaluation_tables import replace_eval_results
from prismatic_assets.store.store import MetadataStore


def held_out_sets(store: MetadataStore, seed_source: str, holdout_ids: Sequence[str],
                  ev: EvaluationConfig, *, limit_holdout: bool = True) -> dict[str, list[Sample]]:
    """{name: samples} of every configured evaluation set.

    `limit_holdout`: apply `holdout_limit` (evaluation); decontamination uses every
    held-out problem."""
    sets: dict[str, list[Sample]] = {}
    if ev.gsm_symbolic:
        sets["gsm_symbolic"] = gsm_symbolic_set(ev.gsm_symbolic, seed=ev.gsm_symbolic_seed)
    if ev.holdout and holdout_ids:
        ids = list(holdout_ids)[:ev.holdout_limit] if (limit_holdout and ev.holdout_limit) else list(holdout_ids)
        sets[f"{seed_source}_holdout"] = store.load_samples(ids)
    for path in ev.files:
        sets[Path(path).stem] = load_eval_file(path)
    return sets


def decontamination_texts(store: MetadataStore, seed_source: str, holdout_ids: Sequence[str],
                          ev: EvaluationConfig) -> dict[str, list[str]]:
    """{label: problem texts} a synthetic problem must not overlap: every evaluation set,
    files included, and the whole seed hold-out split even when evaluation uses part of it."""
    sets = held_out_sets(store, seed_source, holdout_ids, ev, limit_holdout=False)
    if holdout_ids and f"{seed_source}_holdout" not in sets:
        sets[f"{seed_source}_holdout"] = store.load_samples(list(holdout_ids))
    return {name: [s.prompt for s in samples] for name, samples in sets.items() if samples}


def store_results(store: MetadataStore, evaluation_id: str, role: str, model: str, mlflow_run_id: str | None,
                  report: EvalReport, run_id: str | None) -> None:
    """Replace one evaluation's per-problem rows (`store.evaluation_tables`)."""
    replace_eval_results(store, evaluation_id, role=role, model=model, mlflow_run_id=mlflow_run_id,
                         records=report.records, run_id=run_id)


class CachedGenerator:
    """A student engine whose answers go through the generation cache (`generate_cached`).

    An evaluation killed part-way, run again, asks the engine only for the problems it had
    not answered yet (`called` counts what reached the engine, `cached` what did not).
    """

    def __init__(self, store: MetadataStore, inner: Generator, *, chunk_size: int, run_id: str | None,
                 stage: str = "evaluate") -> None:
        self.store, self.inner, self.chunk_size, self.run_id, self.stage = store, inner, chunk_size, run_id, stage
        self.model_name = inner.model_name
        self.fingerprint = inner.fingerprint
        self.cached = self.called = 0

    def chat(self, conversations, sampling) -> list[list[str]]:
        samplings = [sampling] * len(conversations) if isinstance(sampling, SamplingConfig) else list(sampling)
        _, outputs, stats = generate_cached(self.store, self.inner, [(list(c), s) for c, s in zip(conversations,
                                                                                                     samplings)],
                                            chunk_size=self.chunk_size, run_id=self.run_id, stage=self.stage)
        self.cached += stats.cached
        self.called += stats.called
        return outputs

    def close(self) -> None:
        """The inner engine belongs to whoever opened it."""


def evaluation_id(role: str, model: str, eval_sets: dict[str, list[Sample]], sampling: SamplingConfig,
                  stated_answers: bool) -> str:
    """One evaluation's id, from what it evaluated and how (not from the run): a rerun after a
    crash replaces the same rows instead of adding a second copy."""
    return digest({"role": role, "model": model, "sampling": sampling.key(), "stated_answers": stated_answers,
                   "sets": {name: [s.sample_id for s in samples] for name, samples in sorted(eval_sets.items())}})


# -- scoring students ----------------------------------------------------------------------
def student_sampling(ev: EvaluationConfig) -> SamplingConfig:
    """Greedy, one answer per problem: a student's most likely answer, the same on every rerun."""
    return SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=ev.max_tokens, seed=0)


def evaluation_sets(store: MetadataStore, seed_source: str, holdout_ids: Sequence[str],
                    training: Sequence[Sample], ev: EvaluationConfig) -> dict[str, list[Sample]]:
    """The non-empty evaluation sets, each checked to share no problem with the training set."""
    sets = {name: samples for name, samples in held_out_sets(store, seed_source, holdout_ids, ev).items() if samples}
    if not sets:
        raise ValueError("no evaluation set configured: set evaluation.gsm_symbolic > 0, evaluation.holdout: true "
                         "(with seed.holdout_fraction > 0) or evaluation.files in the profile")
    for samples in sets.values():
        assert_disjoint(samples, training)
    return sets


@dataclass(frozen=True)
class StudentScore:
    """One student's evaluation: its report, and how many answers the engine had to produce."""

    role: str
    model: str
    evaluation_id: str
    report: EvalReport
    engine_requests: int
    cached_requests: int

    def accuracy(self, digits: int = 4) -> dict[str, float]:
        """Accuracy per benchmark, rounded for display."""
        return {b: round(a, digits) for b, a in self.report.accuracy.items()}


def evaluate_students(store: MetadataStore, engines: EngineSet, students: Mapping[str, str],
                      sets: Mapping[str, Sequence[Sample]], ev: EvaluationConfig, *, mlflow_run_id: str | None,
                      run_id: str | None, log: Callable[[str], None] = lambda _: None) -> dict[str, StudentScore]:
    """Score each student ({role: model}) on every set, one engine open at a time (its memory
    freed before the next starts); answers through the generation cache, rows into the store."""
    sampling = student_sampling(ev)
    n_problems = sum(len(samples) for samples in sets.values())
    scores: dict[str, StudentScore] = {}
    for role, model in students.items():
        log(f"evaluating the {role} student ({model}) on {n_problems} problems")
        with engines.open("student", model=model) as engine:
            generator = CachedGenerator(store, engine, chunk_size=ev.chunk_size, run_id=run_id)
            report = combine_reports([evaluate(generator, list(samples), sampling, name,
                                               stated_answers=ev.stated_answers) for name, samples in sets.items()])
        eval_id = evaluation_id(role, model, {k: list(v) for k, v in sets.items()}, sampling, ev.stated_answers)
        store_results(store, eval_id, role, model, mlflow_run_id, report, run_id)
        scores[role] = StudentScore(role, model, eval_id, report, generator.called, generator.cached)
    return scores


def track_evaluation(tracker: Tracker, mlflow_run_id: str, scores: Mapping[str, StudentScore], *,
                     registered_name: str, version: str, registered_role: str, plot_path: Path) -> bytes:
    """Log every student's metrics to the run, tag the registered version with its student's
    accuracies, and attach a bar chart of accuracy per benchmark and student (returned as PNG)."""
    for role, score in scores.items():
        tracker.log_metrics(mlflow_run_id, {f"{role}/{k}": v for k, v in score.report.metrics().items()})
    tracker.set_model_version_tags(registered_name, version, {
        f"eval/{k}": round(v, 4) for k, v in scores[registered_role].report.metrics().items()})
    benchmarks = sorted({b for score in scores.values() for b in score.report.accuracy})
    labels = [f"{b} ({role})" for b in benchmarks for role in scores]
    values = [scores[role].report.accuracy[b] for b in benchmarks for role in scores]
    png = plots.bars_png(labels, values, "accuracy", "Accuracy by benchmark")
    plot_path.write_bytes(png)
    tracker.log_artifact(mlflow_run_id, plot_path, "plots")
    return png
