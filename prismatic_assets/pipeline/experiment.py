"""The student comparison (`prismatic experiment`): one student per arm, trained alike, scored alike.

Each arm's final pool (seed pool + everything the arm accepted) trains one student with the
same SFT settings and the same number of steps (`arms.experiment.max_steps`). Every
student, and the base model, answers the same held-out problems: in distribution (new
problems of the candidate families, drawn with a seed no candidate uses) and out of
distribution (task families never used for candidates). Each answer is graded by its task's
own scorer. The table gives n, accuracy and a 95% Wilson interval per model and split.
No Dagster here: the caller passes how to launch SFT and how to open a student engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from prismatic_assets.infra.config import ArmsConfig, Config, DistillConfig
from prismatic_assets.core.evaluation import EvalReport, evaluate
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.ids import digest
from prismatic_assets.core.procedural import TaskItem, score_item, task_items
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.distill import RESULT_FILE, read_result, sft_command, write_training_set

SPLITS = ("in_distribution", "out_of_distribution")


def held_out_tasks(arms: ArmsConfig) -> dict[str, list[TaskItem]]:
    """{split: items}: new problems of the candidate families, and of families never used."""
    ex, src = arms.experiment, arms.source
    return {
        "in_distribution": task_items(src.families, src.levels, ex.eval_per_family * len(src.families), ex.eval_seed,
                                      id_prefix="heldout"),
        "out_of_distribution": task_items(ex.ood_families, src.levels, ex.eval_per_family * len(ex.ood_families),
                                          ex.eval_seed, id_prefix="ood"),
    }


def held_out_samples(arms: ArmsConfig) -> list[Sample]:
    return [item.sample for items in held_out_tasks(arms).values() for item in items]


def student_distill(config: Config) -> DistillConfig:
    """The profile's distill settings with the experiment's step count (one for every arm)."""
    ds = config.distill
    return ds.model_copy(update={"sft": dataclasses.replace(ds.sft, max_steps=config.arms.experiment.max_steps)})


def train_student(samples: Sequence[Sample], distill: DistillConfig, models_dir: Path, arm: str,
                  launch: Callable[[list[str]], None]) -> dict:
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
