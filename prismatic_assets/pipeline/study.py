"""The correlation study (`prismatic study`): does G-Vendi rank accuracy across training sets of equal size?

The paper's first experiment on the user's data, in five stages:

1. **Sets.** One candidate pool (procedural reasoning-gym problems over `study.families` x
   `study.levels`, each verified by its task's scorer; or a file `prismatic score` reads,
   each row's response checked against its answer), duplicates and overlaps with the
   held-out problems removed. M sets of `study.set_size` are drawn from it by design
   (`core/study_sets.py`: family x level spans, random draws, cluster-balanced, greedy and
   single-cluster picks on the gradients) and stored with their members under a study id,
   the digest of the settings that define them (`set_settings`). A stored study is read
   back, never drawn again: a changed setting makes a new id.
2. **Gradients and measures.** The proxy's gradient vectors (the store's cache) of the pool
   (when a design picks by gradient) or of the members; per set, G-Vendi at q = 1, 2, inf,
   embedding Vendi, distinct-1/2/3, the compression ratio and the proxy-free entropy of the
   (family, level) mix. A measure that cannot be computed for a set is stored without a
   value and with its reason; the ranking leaves that set out for that measure.
3. **Students.** One student per set (and the untrained base model), the same base model,
   steps, batch, learning rate and seed, trained in its own process (`pipeline/distill.py`)
   and evaluated greedily on held-out problems of the pool's families (in distribution)
   and of `study.ood_families`, which no set contains (out of distribution), each graded
   by its task's scorer: n, accuracy and a 95% Wilson interval per split. Locally the
   students run one after another; with `compute.backend: ray` as Ray tasks, at most
   `compute.workers` at a time (`gpus_per_worker` GPUs each). A student's result is stored
   as soon as it finishes, keyed by (study id, set, run key = digest of the student,
   training and evaluation settings): a killed study resumes at the first student without
   a result, and a killed student resumes from its last checkpoint. A student that fails
   is stored as failed with its reason; the others go on; a rerun tries it again.
4. **Ranking.** For every measure, Spearman's rho against out-of-distribution and against
   in-distribution accuracy over the sets whose student finished, with a bootstrap 95%
   interval over the sets (`core/ranking.py`).
5. **Tracking.** One MLflow run per student, nested under one parent run for the study
   (the `mlflow.parentRunId` tag); the parent holds the table, the rho values and one
   scatter per measure.

No Dagster here: the caller passes how to open the proxy and, optionally, how to launch an
SFT command (Dagster Pipes in the asset) and a tracker.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from prismatic_assets.core.evaluation import EvalReport, combine_reports, evaluate, score_response
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.gradient_spec import Embedding
from prismatic_assets.core.ids import digest
from prismatic_assets.core.procedural import TaskItem, score_item, task_items, verify_item
from prismatic_assets.core.ranking import bootstrap_spearman, entropy
from prismatic_assets.core.samples import Sample, normalize_text
from prismatic_assets.core.study_sets import DrawnSet, PoolTooSmall, draw_label_sets, draw_vector_sets, parse_designs
from prismatic_assets.core.tracking import Tracker
from prismatic_assets.infra.config import Config, DistillConfig, EngineConfig, StudyConfig
from prismatic_assets.pipeline.baselines import embedding_metric, hidden_vectors, text_metrics
from prismatic_assets.pipeline.embeddings import embed_samples, open_embedder, pool_vectors
from prismatic_assets.pipeline.experiment import SPLITS, accuracy_rows, train_student
from prismatic_assets.pipeline.round import ProxyOpener
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.study_tables import (
    AccuracyRecord,
    MeasureRow,
    RankingRow,
    SetRecord,
    StudentRecord,
    finished_students,
    load_measures,
    load_rankings,
    load_sets,
    load_students,
    replace_measures,
    replace_rankings,
    study_exists,
    study_pool_size,
    write_student,
    write_study,
)

#: Every diversity measure of a set, in report order.
GVENDI_ORDERS = {"g_vendi_q1": 1.0, "g_vendi_q2": 2.0, "g_vendi_qinf": math.inf}
MEASURES = (*GVENDI_ORDERS, "embedding_vendi", "distinct_1", "distinct_2", "distinct_3", "compression_ratio",
            "family_level_entropy")
#: The untrained student's row: accuracy before any training, for reference (never ranked).
BASE = "base"
PROCEDURAL = "procedural"
#: The store lock a running study holds.
STUDY_LOCK = "study"
Log = Callable[[str], None]
Launch = Callable[[list[str]], object]  # the result, if any, is not used
EvalItem = TaskItem | Sample


# -- settings and ids ---------------------------------------------------------------------
def _gradient_settings(config: Config) -> dict:
    p = config.proxy
    return {"model": p.model, "params": p.params, "max_length": p.max_length, "dtype": p.dtype,
            "projection": config.projection.model_dump(mode="json")}


def set_settings(config: Config) -> dict:
    """The settings that define the sets (their digest is the study id)."""
    s = config.study
    out = {"pool": s.pool, "set_size": s.set_size, "disjoint": s.disjoint, "seed": s.seed,
           "designs": [d.spec for d in parse_designs(s.designs)]}
    if s.pool == PROCEDURAL:
        out.update(families=list(s.families), levels=list(s.levels), pool_size=s.pool_size)
    else:
        out.update(fields=s.fields, limit=s.limit)
    # Held-out problems are removed from the pool, so they shape it too.
    out.update(eval_per_family=s.eval_per_family, eval_seed=s.eval_seed, ood_families=list(s.ood_families))
    if any(d.needs_vectors for d in parse_designs(s.designs)):
        out.update(clusters=s.clusters, gradients=_gradient_settings(config))
    return out


def study_id(config: Config) -> str:
    return digest({"study": set_settings(config)})


def study_distill(config: Config) -> DistillConfig:
    """The profile's distill settings with the study's steps, batch, learning rate and checkpoint cadence."""
    import dataclasses

    s, ds = config.study, config.distill
    return ds.model_copy(update={"sft": dataclasses.replace(
        ds.sft, max_steps=s.max_steps, per_device_batch_size=s.batch_size, learning_rate=s.learning_rate,
        save_steps=s.save_steps)})


def student_settings(config: Config) -> dict:
    """What trains and evaluates a student (their digest is the run key)."""
    s, distill = config.study, study_distill(config)
    return {"student": distill.student, "sft": distill.sft.resume_relevant(),
            "engine": config.study.engine.model_dump(mode="json", exclude={"model", "keep_loaded"}),
            "max_tokens": s.max_tokens, "eval": {"families": list(s.families), "levels": list(s.levels),
                                                 "ood_families": list(s.ood_families),
                                                 "eval_per_family": s.eval_per_family, "eval_seed": s.eval_seed}}


def run_key(config: Config) -> str:
    return digest({"students": student_settings(config)})


# -- pool and held-out problems -----------------------------------------------------------
@dataclass
class Pool:
    samples: list[Sample]  # meta: family, level where known
    rejected: dict[str, int]  # reason -> count
    source: str


@dataclass
class Prepared:
    pool: Pool
    tasks: dict[str, Sequence[EvalItem]]  # split -> held-out items


def _family(sample: Sample) -> str | None:
    return sample.meta.get("family")


def _level(sample: Sample) -> int | None:
    return sample.meta.get("level")


def _dedupe(samples: Sequence[Sample], held_out: Sequence[Sample], rejected: Counter) -> list[Sample]:
    """Drop problems seen before in the pool or among the held-out problems (normalized text)."""
    banned = {normalize_text(s.prompt) for s in held_out}
    seen: set[str] = set()
    kept = []
    for s in samples:
        key = normalize_text(s.prompt)
        if key in banned:
            rejected["overlaps_held_out"] += 1
        elif key in seen:
            rejected["duplicate"] += 1
        else:
            seen.add(key)
            kept.append(s)
    return kept


def _ood(study: StudyConfig) -> list[EvalItem]:
    return list(task_items(study.ood_families, study.levels, study.eval_per_family * len(study.ood_families),
                           study.eval_seed, id_prefix="study-ood"))


def prepare(study: StudyConfig) -> Prepared:
    """The candidate pool and the held-out problems (deterministic in the settings)."""
    if study.pool == PROCEDURAL:
        held = list(task_items(study.families, study.levels, study.eval_per_family * len(study.families),
                               study.eval_seed, id_prefix="study-id"))
        items = task_items(study.families, study.levels, study.pool_size, study.seed, id_prefix="study")
        rejected: Counter = Counter()
        verified = []
        for item in items:
            reason = verify_item(item)
            if reason:
                rejected[reason] += 1
            else:
                verified.append(item.sample)
        pool = _dedupe(verified, [i.sample for i in held], rejected)
        return Prepared(Pool(pool, dict(rejected), PROCEDURAL), {SPLITS[0]: held, SPLITS[1]: _ood(study)})
    return _prepare_file(study)


def _prepare_file(study: StudyConfig) -> Prepared:
    """A pool file: rows whose response states their answer; a seeded hold-out per category is the ID split."""
    import dataclasses

    from prismatic_assets.pipeline.datasets import load_set

    loaded = load_set(study.pool, fields=study.fields, limit=study.limit)
    rejected: Counter = Counter(r.reason for r in loaded.rejections)
    verified = []
    for s in loaded.samples:
        if not (s.answer and s.answer.strip()):
            rejected["no_answer"] += 1
            continue
        extracted, correct = score_response(s.response, s.answer, stated_answers=True)
        if not correct:
            rejected["response_states_no_answer" if extracted is None else "response_disagrees_with_answer"] += 1
            continue
        meta = {**s.meta, **({"family": s.category} if s.category else {})}
        verified.append(dataclasses.replace(s, meta=meta))
    if not verified:
        raise ValueError(f"study.pool={study.pool}: no row has an answer that its response states ({dict(rejected)}); "
                         "a study needs samples of verified quality: map the answer field with study.fields "
                         "(e.g. answer=final) and make each response state it (\\boxed{...} or 'The answer is ...')")
    groups: dict[str | None, list[Sample]] = {}
    for s in verified:
        groups.setdefault(_family(s), []).append(s)
    rng = np.random.default_rng([study.eval_seed, 5])
    held: list[Sample] = []
    for key in sorted(groups, key=str):
        members = groups[key]
        take = min(study.eval_per_family, len(members) // 2)  # never more than half a category
        held += [members[i] for i in sorted(rng.choice(len(members), size=take, replace=False))]
    held_ids = {s.sample_id for s in held}
    pool = _dedupe([s for s in verified if s.sample_id not in held_ids], held, rejected)
    return Prepared(Pool(pool, dict(rejected), study.pool), {SPLITS[0]: held, SPLITS[1]: _ood(study)})


# -- sets -----------------------------------------------------------------------------------
def _fix(study: StudyConfig) -> str:
    if study.pool == PROCEDURAL:
        return (f"raise study.pool_size (now {study.pool_size}), or lower study.set_size (now {study.set_size}) or "
                f"the number of study.designs")
    return (f"use a larger pool file (study.limit={study.limit}), or lower study.set_size (now {study.set_size}) or "
            f"the number of study.designs")


def draw_labels(pool: Pool, study: StudyConfig) -> list[DrawnSet]:
    """The span and random sets; raises before any gradient when the pool is too small."""
    designs = parse_designs(study.designs)
    try:
        return draw_label_sets(designs, [_family(s) for s in pool.samples], [_level(s) for s in pool.samples],
                               study.set_size, disjoint=study.disjoint, seed=study.seed, fix=_fix(study))
    except PoolTooSmall as exc:
        raise PoolTooSmall(f"study.pool={study.pool}: {exc}") from None


def _set_records(drawn: Sequence[DrawnSet], pool: Pool) -> list[SetRecord]:
    return [SetRecord(d.name, i, d.design.kind, d.details, [pool.samples[int(r)] for r in d.members])
            for i, d in enumerate(drawn)]


# -- measures ------------------------------------------------------------------------------
def _gvendi_rows(name: str, vectors, excluded: Mapping[str, str], key: str) -> list[MeasureRow]:
    n = int(vectors.shape[0])
    if n < 2:
        example = list(excluded.items())[:2]
        reason = f"{n} member(s) with a valid gradient vector (excluded: {example}); diversity needs at least 2"
        return [MeasureRow(name, m, None, n, reason, key) for m in GVENDI_ORDERS]
    return [MeasureRow(name, m, score_vectors(vectors, q).score, n, None, key) for m, q in GVENDI_ORDERS.items()]


def set_measures(name: str, members: Sequence[Sample], vectors, excluded: Mapping[str, str], gradient_key: str,
                 hidden) -> list[MeasureRow]:
    """Every measure of one set; a measure that cannot be computed has no value and a reason."""
    rows = _gvendi_rows(name, vectors, excluded, gradient_key)
    emb = embedding_metric(hidden) if len(hidden.sample_ids) >= 2 else None
    rows.append(MeasureRow(name, "embedding_vendi", emb.value, emb.n, None, hidden.key) if emb is not None else
                MeasureRow(name, "embedding_vendi", None, len(hidden.sample_ids),
                           f"{len(hidden.sample_ids)} member(s) with a hidden state; diversity needs at least 2",
                           hidden.key))
    for m in text_metrics(members):
        ok = math.isfinite(m.value)
        rows.append(MeasureRow(name, m.metric, m.value if ok else None, m.n,
                               None if ok else f"undefined for these texts (e.g. no {m.metric[-1]}-word sequence)"))
    labels = [(_family(s), _level(s)) for s in members]
    if any(f is None for f, _ in labels):
        rows.append(MeasureRow(name, "family_level_entropy", None, len(members),
                               "members without a family (category): map one with study.fields"))
    else:
        rows.append(MeasureRow(name, "family_level_entropy", entropy(labels), len(members)))
    return rows


# -- students --------------------------------------------------------------------------------
@dataclass
class StudentJob:
    """Everything one student needs, picklable (it travels to a Ray worker)."""

    name: str  # a set, or BASE
    samples: list[Sample]  # empty for BASE: nothing to train
    distill: DistillConfig
    models_dir: str
    tasks: dict[str, Sequence[EvalItem]]
    engine: EngineConfig
    max_tokens: int
    keep_model: bool


@dataclass
class StudentOutcome:
    name: str
    status: str  # 'finished' | 'failed'
    reason: str | None = None
    report: EvalReport | None = None
    sft: dict | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    model: str | None = None


def _launch_logged(command: list[str]) -> None:
    """Run an SFT command in its own process; on failure raise with the end of its output."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-5:]
        raise RuntimeError(f"the SFT process exited with status {done.returncode}: {' | '.join(tail)}")


def _label(name: str) -> str:
    return "study-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _scorer(tasks: Mapping[str, Sequence[EvalItem]]):
    by_id = {(i.sample.sample_id if isinstance(i, TaskItem) else i.sample_id): i
             for items in tasks.values() for i in items}

    def score(sample: Sample, response: str):
        item = by_id[sample.sample_id]
        if isinstance(item, TaskItem):
            return score_item(item, response)
        return score_response(response, sample.answer or "", stated_answers=True)
    return score


def evaluate_items(generator, tasks: Mapping[str, Sequence[EvalItem]], max_tokens: int):
    """Greedy answers to every held-out problem, each graded by its task's scorer (procedural) or
    against its gold answer (a pool file's hold-out). `experiment.evaluate_student`, for both kinds."""
    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
    score = _scorer(tasks)
    return combine_reports([evaluate(generator, [i.sample if isinstance(i, TaskItem) else i for i in items],
                                     sampling, split, scorer=score) for split, items in tasks.items()])


def run_student(job: StudentJob, launch: Launch | None = None) -> StudentOutcome:
    """Train (unless BASE) and evaluate one student; a failure is returned with its reason, not raised.

    Runs in the caller's process or as a Ray task. SFT runs in its own process through
    `launch(command)` (default: a plain subprocess whose output tail becomes the reason).
    Without `keep_model`, the student's folder is removed once it has been evaluated.
    """
    from prismatic_assets.infra.engines import EngineSet

    outcome = StudentOutcome(job.name, "finished")
    model, output_dir = job.distill.student, None
    if job.samples:
        began = time.perf_counter()
        try:
            result = train_student(job.samples, job.distill, Path(job.models_dir), _label(job.name),
                                   launch or _launch_logged)
        except Exception as exc:
            return StudentOutcome(job.name, "failed", f"training failed: {type(exc).__name__}: {exc}",
                                  train_seconds=time.perf_counter() - began)
        outcome.train_seconds = time.perf_counter() - began
        outcome.sft = result
        model = str(result["final_model_dir"])
        output_dir = Path(model).parent
    outcome.model = model
    began = time.perf_counter()
    try:
        with EngineSet({"student": job.engine}).open("student", model=model) as generator:
            outcome.report = evaluate_items(generator, job.tasks, job.max_tokens)
    except Exception as exc:
        outcome.status, outcome.reason = "failed", f"evaluation failed: {type(exc).__name__}: {exc}"
    outcome.eval_seconds = time.perf_counter() - began
    if output_dir is not None and outcome.status == "finished" and not job.keep_model:
        shutil.rmtree(output_dir, ignore_errors=True)
    return outcome


def _worker_engine(engine: EngineConfig, gpus: float) -> EngineConfig:
    """A Ray GPU task sees its own GPU as cuda:0: a transformers engine there uses it."""
    if gpus > 0 and engine.backend == "transformers":
        return engine.model_copy(update={"device": "cuda"})
    return engine


def run_students_ray(jobs: Sequence[StudentJob], config: Config, handle: Callable[[StudentOutcome], None]) -> None:
    """One Ray task per student, at most `compute.workers` in flight; `handle` each as it finishes."""
    from prismatic_assets.pipeline.ray_compute import ensure_ray

    compute = config.compute
    processes = config.distill.num_processes
    if processes > max(1, compute.gpus_per_worker):
        raise ValueError(f"compute.backend=ray trains each student in one Ray task with compute.gpus_per_worker="
                         f"{compute.gpus_per_worker} GPU(s), but distill.num_processes={processes}: set "
                         f"distill.num_processes to at most {max(1, int(compute.gpus_per_worker))} in the profile, or "
                         "use compute.backend: local (one student at a time on every GPU)")
    ray = ensure_ray(compute.ray_address)
    remote = ray.remote(num_cpus=compute.cpus_per_worker, num_gpus=compute.gpus_per_worker, max_retries=0)(run_student)
    queue = [StudentJob(**{**j.__dict__, "engine": _worker_engine(j.engine, compute.gpus_per_worker)}) for j in jobs]
    pending: dict = {}
    while queue or pending:
        while queue and len(pending) < compute.workers:
            job = queue.pop(0)
            pending[remote.remote(job)] = job
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            job = pending.pop(ref)
            try:
                outcome = ray.get(ref)
            except Exception as exc:  # the task itself died (worker lost, out of memory)
                outcome = StudentOutcome(job.name, "failed", f"Ray task failed: {type(exc).__name__}: {exc}")
            handle(outcome)


# -- ranking and report ---------------------------------------------------------------------
def rankings(measures: Sequence[MeasureRow], students: Sequence[StudentRecord], study: StudyConfig
             ) -> list[RankingRow]:
    """Spearman's rho of every measure against each split's accuracy over the finished sets."""
    value = {(m.set_name, m.measure): m.value for m in measures}
    finished = [s for s in students if s.status == "finished" and s.set_name != BASE]
    rows = []
    for measure in MEASURES:
        for split in SPLITS:
            measured = [(value.get((s.set_name, measure)), next(a.accuracy for a in s.accuracy if a.split == split))
                        for s in finished]
            pairs = [(x, y) for x, y in measured if x is not None]
            result = bootstrap_spearman([x for x, _ in pairs], [y for _, y in pairs], study.bootstrap,
                                        study.bootstrap_seed)
            reason = None
            if result.rho is None:
                reason = (f"{len(pairs)} set(s) with a value and a finished student; rho needs at least 3"
                          if len(pairs) < 3 else "one side is constant over the sets: no ranking to correlate")
            elif result.low is None:
                reason = "every bootstrap resample was degenerate"
            rows.append(RankingRow(measure, split, result.rho, result.low, result.high, result.n, result.resamples,
                                   result.degenerate, result.seed, reason))
    return rows


@dataclass
class StudyReport:
    study_id: str
    run_key: str
    sets: list[SetRecord]
    measures: list[MeasureRow]
    students: list[StudentRecord]
    rankings: list[RankingRow]
    seconds: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)  # students run in this run (trained or failed; base evaluated)
    n_pool: int | None = None
    rejected: dict[str, int] = field(default_factory=dict)

    def value(self, set_name: str, measure: str) -> float | None:
        return next((m.value for m in self.measures if m.set_name == set_name and m.measure == measure), None)

    def student(self, name: str) -> StudentRecord | None:
        return next((s for s in self.students if s.set_name == name), None)

    def accuracy(self, name: str, split: str) -> AccuracyRecord | None:
        s = self.student(name)
        return None if s is None or s.status != "finished" else next(a for a in s.accuracy if a.split == split)

    @property
    def failed(self) -> dict[str, str]:
        return {s.set_name: s.reason or "" for s in self.students if s.status == "failed"}

    def ranking(self, measure: str, split: str) -> RankingRow:
        return next(r for r in self.rankings if r.measure == measure and r.split == split)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def ranking_table(report: StudyReport) -> str:
    """Markdown: rho and its 95% bootstrap interval per measure, OOD and ID."""
    if not report.rankings:
        return "(no ranking yet: the study's students have not all run; run the study again)"
    lines = ["| measure | rho vs OOD accuracy | 95% interval | rho vs ID accuracy | 95% interval | sets |",
             "|---|---|---|---|---|---|"]
    for measure in MEASURES:
        ood, idd = report.ranking(measure, SPLITS[1]), report.ranking(measure, SPLITS[0])
        cells = []
        for r in (ood, idd):
            cells += [_fmt(r.rho, 2), f"[{_fmt(r.low, 2)}, {_fmt(r.high, 2)}]" if r.rho is not None else
                      (r.reason or "-")]
        lines.append(f"| {measure} | {' | '.join(cells)} | {ood.n_sets} |")
    return "\n".join(lines)


def sets_table(report: StudyReport) -> str:
    """Markdown: each set's design, measures and its student's accuracy (n, accuracy, 95% Wilson interval)."""
    head = ["set", "kind", "spans", "OOD accuracy", "ID accuracy", *MEASURES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(BASE, "untrained", "-")] + [(s.name, s.kind, _spans(s)) for s in report.sets]
    for name, kind, spans in rows:
        cells = [name, kind, spans]
        for split in (SPLITS[1], SPLITS[0]):
            a = report.accuracy(name, split)
            student = report.student(name)
            cells.append(f"{a.correct}/{a.n} = {a.accuracy:.3f} [{a.low:.3f}, {a.high:.3f}]" if a else
                         ("failed: " + (student.reason or "")[:80] if student is not None else "not trained"))
        cells += ["" if name == BASE else _fmt(report.value(name, m), 3) for m in MEASURES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spans(s: SetRecord) -> str:
    families = sorted({_family(m) or "?" for m in s.members})
    levels = sorted({lv for m in s.members if (lv := _level(m)) is not None})
    return f"{len(families)} families x {len(levels) or 1} levels"


def ranking_numbers(report: StudyReport) -> dict[str, float]:
    """Each finite rho as `rho_id/<measure>` or `rho_ood/<measure>` (what the asset's Plots tab charts)."""
    return {f"rho_{'ood' if r.split == 'out_of_distribution' else 'id'}/{r.measure}": float(r.rho)
            for r in report.rankings if r.rho is not None and math.isfinite(r.rho)}


def scatter_pngs(report: StudyReport) -> dict[str, bytes]:
    """One PNG per measure: the measure against each split's accuracy (95% Wilson bars), rho in the title."""
    from prismatic_assets.reporting.plots import interval_scatter_png

    out = {}
    for measure in MEASURES:
        names = [s.name for s in report.sets if report.value(s.name, measure) is not None
                 and report.accuracy(s.name, SPLITS[0]) is not None]
        if not names:
            continue
        x = [v for n in names if (v := report.value(n, measure)) is not None]  # every name has a value
        series = {}
        for split, label in ((SPLITS[1], "OOD"), (SPLITS[0], "ID")):
            # A finished student has a record for every split, so nothing is dropped here.
            acc = [a for n in names if (a := report.accuracy(n, split)) is not None]
            assert len(acc) == len(names)
            r = report.ranking(measure, split)
            series[f"{label} (rho {_fmt(r.rho, 2)} [{_fmt(r.low, 2)}, {_fmt(r.high, 2)}])"] = (
                [a.accuracy for a in acc], [a.low for a in acc], [a.high for a in acc])
        out[measure] = interval_scatter_png(x, series, names, measure, "accuracy",
                                            f"{measure} vs accuracy, {len(names)} sets")
    return out


def load_report(store: MetadataStore, config: Config) -> StudyReport | None:
    """The stored study of these settings (None if its sets were never drawn)."""
    sid, key = study_id(config), run_key(config)
    if not study_exists(store, sid):
        return None
    return StudyReport(sid, key, load_sets(store, sid), load_measures(store, sid), load_students(store, sid, key),
                       load_rankings(store, sid, key), n_pool=study_pool_size(store, sid))


# -- the study -------------------------------------------------------------------------------
def _evaluation_id(sid: str, name: str, key: str) -> str:
    return digest({"study": sid, "set": name, "run_key": key})


def _track_student(tracker: Tracker, parent: str, sid: str, outcome: StudentOutcome, record_accuracy,
                   set_record: SetRecord | None, measures: Mapping[str, float | None], settings: dict) -> str:
    tags = {"mlflow.parentRunId": parent, "stage": "study", "study_id": sid, "set": outcome.name,
            "status": outcome.status}
    with tracker.run(f"study-{sid[:8]}-{outcome.name}", tags=tags,
                     end_status=lambda: "FINISHED" if outcome.status == "finished" else "FAILED") as run:
        tracker.log_params(run, {"set": outcome.name, "kind": set_record.kind if set_record else "untrained",
                                 "size": len(set_record.members) if set_record else 0, **settings})
        metrics = {f"{a.split}/accuracy": a.accuracy for a in record_accuracy}
        metrics.update({f"{a.split}/n": a.n for a in record_accuracy})
        metrics.update({f"measure/{m}": v for m, v in measures.items() if v is not None and math.isfinite(v)})
        metrics.update({"train_seconds": outcome.train_seconds, "eval_seconds": outcome.eval_seconds})
        tracker.log_metrics(run, metrics)
        if outcome.sft and outcome.sft.get("loss_history"):
            tracker.log_metric_history(run, "train/loss", [tuple(p) for p in outcome.sft["loss_history"]])
        if outcome.reason:
            tracker.set_tags(run, {"failure": outcome.reason[:5000]})
    return run


def run_study(store: MetadataStore, config: Config, *, proxy: ProxyOpener | None = None,
              launch: Launch | None = None, tracker: Tracker | None = None, run_id: str | None = None,
              log: Log = lambda line: None) -> StudyReport:
    """Draw (or read back) the sets, measure them, train and evaluate what is missing, rank; see the docstring.

    proxy: opens the gradient proxy (default: the profile's, on its compute backend).
    launch: runs an SFT command (default: a subprocess); used by the local backend only.
    """
    sid = study_id(config)
    # Two runs of one study would train the same students twice: the second is refused (StoreBusy).
    with store.exclusive(STUDY_LOCK, f"study {sid}", study_id=sid):
        return _run_study(store, config, proxy=proxy, launch=launch, tracker=tracker, run_id=run_id, log=log)


def _run_study(store: MetadataStore, config: Config, *, proxy: ProxyOpener | None, launch: Launch | None,
               tracker: Tracker | None, run_id: str | None, log: Log) -> StudyReport:
    study = config.study
    proxy = proxy or (lambda: open_embedder(config.proxy, config.projection, config.compute))
    seconds: dict[str, float] = {}
    sid = study_id(config)
    began = time.perf_counter()
    prepared = prepare(study)
    existing = study_exists(store, sid)
    designs = parse_designs(study.designs)
    drawn = [] if existing else draw_labels(prepared.pool, study)
    seconds["sets"] = time.perf_counter() - began
    log(f"study {sid}: pool {len(prepared.pool.samples)} samples (rejected {prepared.pool.rejected or 'none'}); "
        f"{'sets read back from the store' if existing else f'{len(drawn)} of {len(designs)} sets drawn by label'}")

    began = time.perf_counter()
    with proxy() as embedder:
        if existing:
            needed = [m for s in load_sets(store, sid) for m in s.members]
        elif any(d.needs_vectors for d in designs):
            needed = prepared.pool.samples
        else:
            needed = [prepared.pool.samples[int(r)] for d in drawn for r in d.members]
        report = _embed_study_samples(store, embedder, needed, run_id, log)
        seconds["gradients"] = time.perf_counter() - began
        log(f"gradients: {report.n_computed} computed, {report.n_cached} cached ({seconds['gradients']:.0f} s)")
        if not existing:
            began = time.perf_counter()
            _draw_vector_sets(store, config, prepared, designs, drawn, embedder.key, embedder.dim, run_id)
            seconds["sets"] += time.perf_counter() - began
        sets = load_sets(store, sid)
        began = time.perf_counter()
        rows = _measure_sets(store, config, embedder, sets, run_id)
        replace_measures(store, sid, rows)
        seconds["measures"] = time.perf_counter() - began
    return _train_and_rank(store, config, prepared, sets, rows, launch=launch, tracker=tracker, run_id=run_id,
                           log=log, seconds=seconds)


def _embed_study_samples(store: MetadataStore, embedder, needed: Sequence[Sample], run_id: str | None, log: Log):
    """The gradients of `needed` (cached ones are read back), with a progress line per tenth."""
    def progress(i: int, n: int, sample: Sample, outcome: Embedding) -> None:
        if i == n or i % max(1, n // 10) == 0:
            log(f"gradients {i}/{n}")

    return embed_samples(needed, embedder, store, run_id=run_id, progress=progress)


def _draw_vector_sets(store: MetadataStore, config: Config, prepared, designs, drawn, gradient_key: str, dim: int,
                      run_id: str | None) -> None:
    """Draw the designs that need gradients (beside those drawn by label) and store every set."""
    study, sid = config.study, study_id(config)
    vectors = pool_vectors(store, prepared.pool.samples, gradient_key, dim)
    row_of = {sid_: i for i, sid_ in enumerate(vectors.sample_ids)}
    ids = [s.sample_id for s in prepared.pool.samples]

    def vectors_of(rows: np.ndarray):
        kept = np.array([r for r in rows if ids[r] in row_of], dtype=np.int64)
        return kept, vectors.vectors[[row_of[ids[r]] for r in kept]]
    drawn = draw_vector_sets(designs, drawn, len(ids), vectors_of, study.set_size, disjoint=study.disjoint,
                             seed=study.seed, n_clusters=study.clusters)
    write_study(store, study_id=sid, settings=set_settings(config), pool_source=prepared.pool.source,
                n_pool=len(ids), rejections=prepared.pool.rejected, set_size=study.set_size,
                disjoint=study.disjoint, sets=_set_records(drawn, prepared.pool), run_id=run_id)


def _measure_sets(store: MetadataStore, config: Config, embedder, sets, run_id: str | None) -> list:
    """Every diversity measure of every set; hidden states from the proxy's own model when it is in
    this process, else from a local copy."""
    hidden_model = embedder if hasattr(embedder, "model") else None
    with (contextlib.nullcontext(hidden_model) if hidden_model is not None
          else open_embedder(config.proxy, config.projection)) as local:
        rows = []
        for s in sets:
            pv = pool_vectors(store, s.members, embedder.key, embedder.dim)
            hidden = hidden_vectors(s.members, local, store, run_id=run_id)
            rows += set_measures(s.name, s.members, pv.vectors, pv.excluded, embedder.key, hidden)
    return rows


def _student_record(outcome: StudentOutcome, key: str, settings: dict, mlflow_run: str | None,
                    accuracy: list[AccuracyRecord]) -> StudentRecord:
    loss = outcome.sft["loss_history"][-1][1] if outcome.sft and outcome.sft.get("loss_history") else None
    return StudentRecord(
        set_name=outcome.name, run_key=key, status=outcome.status, settings=settings, reason=outcome.reason,
        model=outcome.model, steps=outcome.sft["steps"] if outcome.sft else 0, final_loss=loss,
        train_seconds=outcome.train_seconds, eval_seconds=outcome.eval_seconds, mlflow_run_id=mlflow_run,
        accuracy=accuracy, answers=outcome.report.rows() if outcome.report is not None else [])


def _train_and_rank(store: MetadataStore, config: Config, prepared, sets, rows, *, launch: Launch | None,
                    tracker: Tracker | None, run_id: str | None, log: Log, seconds: dict[str, float]
                    ) -> StudyReport:
    """Train and evaluate every student without a result (a killed study resumes here), then rank."""
    study = config.study
    sid, key = study_id(config), run_key(config)
    done = finished_students(store, sid, key)
    distill = study_distill(config)
    models_dir = str(config.data_path / "study" / sid / "models")
    todo = [StudentJob(name, list(members), distill, models_dir, prepared.tasks, study.engine, study.max_tokens,
                       study.keep_models)
            for name, members in [(BASE, [])] + [(s.name, s.members) for s in sets] if name not in done]
    how = f"Ray, {config.compute.workers} at a time" if config.compute.backend == "ray" else "one after another"
    log(f"students: {len(done)} with a result, {len(todo)} to run ({how})")
    measures_by_set = {s.name: {m.measure: m.value for m in rows if m.set_name == s.name} for s in sets}
    set_by_name = {s.name: s for s in sets}
    settings = {**student_settings(config), "study_id": sid, "run_key": key}
    trained: list[str] = []
    totals = {"training": 0.0, "evaluation": 0.0}

    def handle(outcome: StudentOutcome, parent: str | None) -> None:
        accuracy = []
        if outcome.status == "finished":
            assert outcome.report is not None  # a finished student has been evaluated
            accuracy = [AccuracyRecord(r.split, r.n, r.correct, r.accuracy, r.low, r.high)
                        for r in accuracy_rows({outcome.name: outcome.report})]
        mlflow_run = _track_student(tracker, parent, sid, outcome, accuracy, set_by_name.get(outcome.name),
                                    measures_by_set.get(outcome.name, {}), settings) if tracker and parent else None
        write_student(store, sid, _student_record(outcome, key, settings, mlflow_run, accuracy),
                      evaluation_id=_evaluation_id(sid, outcome.name, key), run_id=run_id)
        totals["training"] += outcome.train_seconds
        totals["evaluation"] += outcome.eval_seconds
        trained.append(outcome.name)
        summary = ", ".join(f"{a.split} {a.correct}/{a.n}" for a in accuracy) or outcome.reason
        resumed = outcome.sft.get("resumed_from") if outcome.sft else None
        log(f"student {outcome.name}: {outcome.status} ({summary}; train {outcome.train_seconds:.0f} s"
            f"{', resumed from ' + Path(resumed).name if resumed else ''}, evaluation {outcome.eval_seconds:.0f} s)")

    began = time.perf_counter()
    with (tracker.run(f"study-{sid[:8]}", tags={"stage": "study", "study_id": sid, "run_key": key,
                                                "dagster_run_id": run_id or ""})
          if tracker else contextlib.nullcontext(None)) as parent:
        if tracker is not None and parent is not None:  # parent: the run opened just above
            tracker.log_params(parent, {"study_id": sid, "run_key": key, **set_settings(config),
                                        "students": student_settings(config)})
        if config.compute.backend == "ray":
            run_students_ray(todo, config, lambda o: handle(o, parent))
        else:
            for job in todo:
                log(f"student {job.name}: training on {len(job.samples)} samples, {distill.sft.max_steps} steps"
                    if job.samples else "student base: evaluating the untrained model")
                handle(run_student(job, launch), parent)
        seconds["students_wall"] = time.perf_counter() - began
        seconds.update(totals)
        students = load_students(store, sid, key)
        ranked = rankings(rows, students, study)
        replace_rankings(store, sid, key, ranked)
        result = StudyReport(sid, key, sets, load_measures(store, sid), students, ranked, seconds, trained,
                             len(prepared.pool.samples), prepared.pool.rejected)
        if tracker is not None and parent is not None:
            _track_study(tracker, parent, config, result)
    return result


def _track_study(tracker: Tracker, run: str, config: Config, report: StudyReport) -> None:
    """The parent run: rho per measure and split, the tables, one scatter per measure."""
    metrics = {}
    for r in report.rankings:
        if r.rho is not None:
            metrics[f"rho/{r.split}/{r.measure}"] = r.rho
        if r.low is not None and r.high is not None:  # an interval has both ends or none
            metrics[f"rho_low/{r.split}/{r.measure}"] = r.low
            metrics[f"rho_high/{r.split}/{r.measure}"] = r.high
    metrics.update({f"seconds/{k}": v for k, v in report.seconds.items()})
    metrics["students_finished"] = sum(s.status == "finished" for s in report.students if s.set_name != BASE)
    tracker.log_metrics(run, metrics)
    folder = config.data_path / "study" / report.study_id / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ranking.md").write_text(ranking_table(report) + "\n")
    (folder / "sets.md").write_text(sets_table(report) + "\n")
    for measure, png in scatter_pngs(report).items():
        (folder / f"scatter-{measure}.png").write_bytes(png)
    tracker.log_artifact(run, folder, "study")
