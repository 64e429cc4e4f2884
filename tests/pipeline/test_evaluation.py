"""Evaluation sets (decontamination covers every one, benchmark files included) and student scoring."""

from __future__ import annotations

import json

import pytest

from prismatic_assets.core.generation import BaseGenerator
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import build_config
from prismatic_assets.infra.engines import EngineSet
from prismatic_assets.pipeline.evaluation import (
    decontamination_texts,
    evaluate_students,
    evaluation_sets,
    held_out_sets,
    student_sampling,
)
from prismatic_assets.store.store import MetadataStore


def test_every_evaluation_set_is_decontaminated_against(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    held = [Sample(f"unit:h{i}", f"Held-out problem number {i} about prime gaps.", "x", source="unit")
            for i in range(5)]
    store.replace_samples(source="unit", origin="seed", samples=held, splits={s.sample_id: "holdout" for s in held},
                          rejections=[], run_id="r")
    bench = tmp_path / "math500.jsonl"
    bench.write_text("\n".join(json.dumps({"problem": f"Benchmark problem {i}: find x.", "answer": str(i)})
                               for i in range(3)))
    ev = build_config({"evaluation": {"gsm_symbolic": 2, "holdout": True, "holdout_limit": 2,
                                      "files": [str(bench)]}}).evaluation
    ids = [s.sample_id for s in held]
    texts = decontamination_texts(store, "unit", ids, ev)
    assert set(texts) == {"gsm_symbolic", "unit_holdout", "math500"}
    assert len(texts["unit_holdout"]) == 5  # every held-out problem, though evaluation uses the first 2
    assert texts["math500"] == [f"Benchmark problem {i}: find x." for i in range(3)]
    assert len(texts["gsm_symbolic"]) == 2
    assert len(held_out_sets(store, "unit", ids, ev)["unit_holdout"]) == 2
    # Evaluation switched off for the hold-out split: it is still kept out of the synthetic data.
    no_holdout = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": False}}).evaluation
    assert set(decontamination_texts(store, "unit", ids, no_holdout)) == {"unit_holdout"}


class _Answers(BaseGenerator):
    """A deterministic student: answers `\\boxed{gold}` for the problems in `right`, 0 for the others."""

    def __init__(self, right: dict[str, str]) -> None:
        super().__init__()
        self.model_name = "scripted-student"
        self.right = right
        self.asked = 0

    def _identity(self) -> str:
        return "scripted-student-v1"

    def chat(self, conversations, sampling):
        self.asked += len(conversations)
        out = []
        for conversation in conversations:
            text = conversation[-1]["content"]
            gold = next((g for problem, g in self.right.items() if problem in text), "0")
            out.append([f"The answer is \\boxed{{{gold}}}."])
        return out


def _evaluation_store(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    held = [Sample(f"unit:h{i}", f"Held-out problem {i}: what is {i} + {i}?", f"{2 * i}", answer=str(2 * i),
                   source="unit") for i in range(1, 5)]
    store.replace_samples(source="unit", origin="seed", samples=held, splits={s.sample_id: "holdout" for s in held},
                          rejections=[], run_id="r")
    return store, held


def test_students_are_scored_on_every_set_and_a_rerun_asks_the_engine_nothing(tmp_path):
    store, held = _evaluation_store(tmp_path)
    ev = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": True, "max_tokens": 8}}).evaluation
    sets = evaluation_sets(store, "unit", [s.sample_id for s in held], [], ev)
    assert list(sets) == ["unit_holdout"] and len(sets["unit_holdout"]) == 4
    student = _Answers({held[0].prompt: "2", held[1].prompt: "4"})  # two of four right
    scores = evaluate_students(store, EngineSet.of(student=student), {"base": "m0", "distilled": "m1"}, sets, ev,
                               mlflow_run_id="ml", run_id="r1")
    assert scores["base"].accuracy() == {"unit_holdout": 0.5} and scores["base"].engine_requests == 4
    # The same conversations for the second student: the generation cache answers them.
    assert scores["distilled"].engine_requests == 0 and scores["distilled"].cached_requests == 4
    rows = store.query("SELECT model_role, count(*) AS n, sum(correct::INT) AS right FROM eval_results "
                       "GROUP BY 1 ORDER BY 1").rows()
    assert rows == [("base", 4, 2), ("distilled", 4, 2)]
    again = evaluate_students(store, EngineSet.of(student=student), {"base": "m0"}, sets, ev, mlflow_run_id="ml",
                              run_id="r2")
    assert again["base"].engine_requests == 0 and student.asked == 4
    assert store.query("SELECT count(*) AS n FROM eval_results")["n"][0] == 8  # replaced, not added


def test_evaluation_sets_refuse_nothing_and_overlaps(tmp_path):
    store, held = _evaluation_store(tmp_path)
    ids = [s.sample_id for s in held]
    nothing = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": False}}).evaluation
    with pytest.raises(ValueError, match="no evaluation set configured"):
        evaluation_sets(store, "unit", ids, [], nothing)
    ev = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": True}}).evaluation
    with pytest.raises(ValueError, match="unit:h1"):
        evaluation_sets(store, "unit", ids, [held[0]], ev)  # a training sample is also a test problem


def test_greedy_student_sampling_follows_the_token_budget():
    ev = build_config({"evaluation": {"max_tokens": 17}}).evaluation
    sampling = student_sampling(ev)
    assert (sampling.n, sampling.temperature, sampling.max_tokens) == (1, 0.0, 17)
