"""The student comparison (`prismatic experiment`): one student per arm, trained alike, scored alike.

Each arm's final pool (the world's seed pool + everything the arm accepted) trains one
student with the profile's SFT settings, the same steps and batch for every arm
(`arms.experiment.max_steps`, `batch_size`). Every student, and the base model, answers the
same held-out problems: in distribution (the world's held-out problems, every family at
every level: never in a seed pool, never accepted) and out of distribution (task families no
arm was offered, `arms.experiment.ood_families`). Each answer is graded by its task's own
scorer. The table gives n, accuracy and a 95% Wilson interval per model and split.

`run_experiment` is the whole step without Dagster: the caller passes how to launch SFT
(a command runner) and how to open a student engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Mapping, Sequence

from prismatic_assets.core.evaluation import EvalReport, assert_disjoint, evaluate
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.ids import digest
from prismatic_assets.core.procedural import TaskItem, score_item
from prismatic_assets.core.samples import Sample
from prismatic_assets.core.world import check_world, held_out_items
from prismatic_assets.infra.config import Config, DistillConfig
from prismatic_assets.pipeline.arms import arm_pool
from prismatic_assets.pipeline.distill import RESULT_FILE, check_lengths, read_result, sft_command, write_training_set
from prismatic_assets.pipeline.evaluation import CachedGenerator, store_results
from prismatic_assets.pipeline.round_stages import load_pool
from prismatic_assets.pipeline.seed import world_held_out
from prismatic_assets.store.arms_tables import arm_history, completed_arm_rounds
from prismatic_assets.store.store import MetadataStore

SPLITS = ("in_distribution", "out_of_distribution")


class ExperimentNotReady(RuntimeError):
    """No arm round is complete: there is no final pool to train on."""


def held_out_tasks(config: Config) -> dict[str, list[TaskItem]]:
    """{split: items}: the world's held-out problems, and as many of each out-of-distribution family."""
    world, ex = config.world, config.arms.experiment
    check_world(ex.ood_families, world.levels, families_key="arms.experiment.ood_families", need_solutions=False)
    return {
        "in_distribution": world_held_out(world),
        "out_of_distribution": held_out_items(ex.ood_families, world.levels, world.held_out_per_family,
                                              world.held_out_seed, id_prefix="ood",
                                              max_attempts=world.generator.max_attempts),
    }


def held_out_samples(config: Config) -> list[Sample]:
    return [item.sample for items in held_out_tasks(config).values() for item in items]


def student_distill(config: Config) -> DistillConfig:
    """The profile's distill settings with the experiment's steps and batch (one for every arm)."""
    ds, ex = config.distill, config.arms.experiment
    sft = dataclasses.replace(ds.sft, max_steps=ex.max_steps, per_device_batch_size=ex.batch_size)
    return ds.model_copy(update={"sft": sft})


def train_student(samples: Sequence[Sample], distill: DistillConfig, models_dir: Path, arm: str,
                  launch: Callable[[list[str]], object]) -> dict:
    """SFT of the student on `samples` in its own process (`launch(command)`), unless a finished
    run of the same data and settings is there already. Returns rank 0's result."""
    key = digest({"student": distill.student, "ids": [s.sample_id for s in samples],
                  "sft": distill.sft.resume_relevant()})
    output_dir = models_dir / f"arm-{arm}-{key}"
    if (output_dir / RESULT_FILE).is_file():
        return {**read_result(output_dir), "reused": True}
    data = write_training_set(samples, output_dir / "train.jsonl")
    launch(sft_command(distill, data, output_dir))
    return {**read_result(output_dir), "reused": False}


def evaluate_student(generator, tasks: Mapping[str, Sequence[TaskItem]], max_tokens: int) -> EvalReport:
    """Greedy answers to every held-out task, each graded by its task's own scorer."""
    from prismatic_assets.core.evaluation import combine_reports

    by_id = {item.sample.sample_id: item for items in tasks.values() for item in items}
    sampling = SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
    return combine_reports([evaluate(generator, [i.sample for i in items], sampling, split,
                                     scorer=lambda s, response: score_item(by_id[s.sample_id], response))
                            for split, items in tasks.items()])


@dataclass(frozen=True)
class AccuracyRow:
    model: str  # 'base' or an arm
    split: str
    n: int
    correct: int
    low: float
    high: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def wilson(correct: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion (scipy)."""
    from scipy.stats import binomtest

    if n == 0:
        return 0.0, 1.0
    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_rows(reports: Mapping[str, EvalReport]) -> list[AccuracyRow]:
    rows = []
    for model, report in reports.items():
        for split in SPLITS:
            records = [r for r in report.records if r.benchmark == split]
            correct = sum(bool(r.correct) for r in records)
            rows.append(AccuracyRow(model, split, len(records), correct, *wilson(correct, len(records))))
    return rows


def accuracy_table(rows: Sequence[AccuracyRow], g_vendi: Mapping[str, float]) -> str:
    """Markdown: n, accuracy and 95% interval per model and split, with each pool's G-Vendi."""
    lines = ["| model | training pool G-Vendi | split | n | accuracy | 95% Wilson interval |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        gv = f"{g_vendi[r.model]:.2f}" if r.model in g_vendi else "-"
        lines.append(f"| {r.model} | {gv} | {r.split} | {r.n} | {r.accuracy:.3f} | [{r.low:.3f}, {r.high:.3f}] |")
    return "\n".join(lines)


def intervals_overlap(rows: Sequence[AccuracyRow], split: str) -> bool:
    """Whether every model's interval on `split` overlaps every other's (differences within noise)."""
    chosen = [r for r in rows if r.split == split]
    return all(a.low <= b.high and b.low <= a.high for a in chosen for b in chosen)


@dataclass
class ExperimentResult:
    rows: list[AccuracyRow]
    table: str
    g_vendi: dict[str, float]  # arm -> its final pool's G-Vendi
    pool_sizes: dict[str, int]
    rounds: int
    steps: int
    png: bytes  # G-Vendi against in-distribution accuracy, one point per arm

    def within_noise(self) -> dict[str, bool]:
        return {split: intervals_overlap(self.rows, split) for split in SPLITS}


def run_experiment(store: MetadataStore, config: Config, seed_source: str | None, *,
                   launch: Callable[[list[str]], object], open_student: Callable[[str], ContextManager],
                   run_id: str | None, log: Callable[[str], object] = print) -> ExperimentResult:
    """Train one student per arm on its final pool, score them and the base model, and store
    every answer (`eval_results`, role ``arm:<model>``).

    launch(command): runs one SFT command (Pipes under Dagster, a subprocess elsewhere).
    open_student(model): a context manager giving a chat generator for a model folder."""
    from prismatic_assets.reporting import plots

    arms = config.arms.arms
    done = completed_arm_rounds(store, arms)
    if not done:
        raise ExperimentNotReady("no arm round is complete: run the arm rounds first (prismatic demo, or "
                                 "materialize arm_round partitions 1, 2, ...)")
    last = max(done)
    distill = student_distill(config)
    check_lengths(distill, config.evaluation)
    tasks = held_out_tasks(config)
    seed_pool = load_pool(store, 1, seed_source)
    hist = arm_history(store)
    hist = hist.filter(hist["round"] == last)
    students = {"base": distill.student}
    gvendi: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for arm in arms:
        pool = arm_pool(store, arm, last + 1, seed_pool)
        assert_disjoint([i.sample for items in tasks.values() for i in items], pool)
        log(f"training the {arm} student on {len(pool)} samples ({distill.sft.max_steps} steps of "
            f"{distill.sft.per_device_batch_size})")
        students[arm] = train_student(pool, distill, config.data_path / "models", arm, launch)["final_model_dir"]
        gvendi[arm] = float(hist.filter(hist["arm"] == arm)["g_vendi_after"][0])
        sizes[arm] = len(pool)
    reports = {}
    task_ids = sorted(i.sample.sample_id for items in tasks.values() for i in items)
    for role, model in students.items():
        with open_student(model) as engine:
            generator = CachedGenerator(store, engine, chunk_size=config.evaluation.chunk_size, run_id=run_id)
            reports[role] = evaluate_student(generator, tasks, config.arms.experiment.max_tokens)
        eval_id = digest({"experiment": role, "model": model, "tasks": task_ids})
        store_results(store, eval_id, f"arm:{role}", model, "", reports[role], run_id)
    rows = accuracy_rows(reports)
    png = plots.scatter_png([gvendi[a] for a in arms],
                            [next(r.accuracy for r in rows if r.model == a and r.split == "in_distribution")
                             for a in arms], list(arms), "training pool G-Vendi", "in-distribution accuracy",
                            "G-Vendi vs accuracy per arm")
    return ExperimentResult(rows, accuracy_table(rows, gvendi), gvendi, sizes, last, distill.sft.max_steps, png)


def track_experiment(tracker, config: Config, result: ExperimentResult, dagster_run_id: str | None) -> str:
    """One MLflow run `arm-students` (through `Tracker.run`: FAILED on an exception): settings,
    accuracy per model and split, the table and the scatter as artifacts. Returns the run id."""
    with tracker.run("arm-students", tags={"dagster_run_id": dagster_run_id, "stage": "experiment"}) as run:
        ex = config.arms.experiment
        tracker.log_params(run, {"steps_per_student": ex.max_steps, "batch_size": ex.batch_size,
                                 "held_out_per_family": config.world.held_out_per_family,
                                 "ood_families": ",".join(ex.ood_families), "rounds": result.rounds})
        tracker.log_metrics(run, {f"{r.model}/{r.split}/accuracy": r.accuracy for r in result.rows})
        folder = config.data_path / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "arms-g_vendi_vs_accuracy.png").write_bytes(result.png)
        (folder / "arms-accuracy.md").write_text(result.table + "\n")
        tracker.log_artifact(run, folder / "arms-g_vendi_vs_accuracy.png", "plots")
        tracker.log_artifact(run, folder / "arms-accuracy.md", "tables")
    return run


def arm_round_guards(store: MetadataStore, config: Config, seed_source: str, seed_holdout_ids: Sequence[str]
                     ) -> tuple[dict[str, list[str]], list[Sample]]:
    """What an arm round keeps out of every pool: (evaluation texts no candidate may share an
    n-gram with, problems no arm may accept by exact text).

    The world's problems share their task's template, so the n-gram test would reject whole
    families that appear in the seed hold-out; the seed hold-out and the students' held-out
    problems are therefore matched by exact normalized text, the other evaluation sets
    (gsm_symbolic, benchmark files) by n-grams."""
    from prismatic_assets.pipeline.evaluation import decontamination_texts

    texts = decontamination_texts(store, seed_source, seed_holdout_ids, config.evaluation)
    texts.pop(f"{seed_source}_holdout", None)
    held = held_out_samples(config) + (store.load_samples(list(seed_holdout_ids)) if seed_holdout_ids else [])
    return texts, held
