"""Student evaluation's bookkeeping: the evaluation id (its payload spelled out here: a changed
payload would store a second copy instead of replacing), what reaches the engine set, the
cache wrapper, the stored rows' run ids, the greedy sampling, the log lines, and what
`track_evaluation` sends to the tracker (a recording tracker; the MLflow calls themselves are
tested with a real MLflow in tests/core/test_tracking.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest

from prismatic_assets.core.evaluation import gsm_symbolic_set
from prismatic_assets.core.generation import GenerationError, SamplingConfig
from prismatic_assets.core.ids import digest
from prismatic_assets.core.samples import Sample
from prismatic_assets.core.tracking import Tracker
from prismatic_assets.infra.config import build_config
from prismatic_assets.infra.engines import EngineSet
from prismatic_assets.pipeline import evaluation as E
from prismatic_assets.pipeline.evaluation import (
    CachedGenerator,
    StudentScore,
    decontamination_texts,
    evaluate_students,
    evaluation_id,
    held_out_sets,
    student_sampling,
    track_evaluation,
)
from prismatic_assets.store.store import MetadataStore
from tests.pipeline.test_evaluation import _Answers, _evaluation_store


def test_the_evaluation_id_is_the_digest_of_what_was_evaluated_and_how():
    sets = {"b": [Sample("s:2", "p", "r")], "a": [Sample("s:1", "p", "r"), Sample("s:3", "q", "r")]}
    sampling = SamplingConfig(n=1, temperature=0.0, max_tokens=9, seed=0)
    want = digest({"role": "base", "model": "m0", "sampling": sampling.key(), "stated_answers": True,
                   "sets": {"a": ["s:1", "s:3"], "b": ["s:2"]}})
    assert evaluation_id("base", "m0", sets, sampling, True) == want
    assert evaluation_id("base", "m0", dict(reversed(list(sets.items()))), sampling, True) == want  # set order
    others = {evaluation_id("distilled", "m0", sets, sampling, True), evaluation_id("base", "m1", sets, sampling, True),
              evaluation_id("base", "m0", sets, sampling, False),
              evaluation_id("base", "m0", sets, SamplingConfig(n=1, temperature=0.0, max_tokens=10, seed=0), True),
              evaluation_id("base", "m0", {"a": sets["a"]}, sampling, True)}
    assert want not in others and len(others) == 5


def test_student_sampling_is_greedy_seeded_and_bounded():
    ev = build_config({"evaluation": {"max_tokens": 17}}).evaluation
    assert student_sampling(ev) == SamplingConfig(n=1, temperature=0.0, top_p=1.0, max_tokens=17, seed=0)


def test_the_gsm_symbolic_set_follows_its_seed(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    ev = build_config({"evaluation": {"gsm_symbolic": 3, "gsm_symbolic_seed": 7, "holdout": False}}).evaluation
    got = held_out_sets(store, "unit", [], ev)["gsm_symbolic"]
    assert [s.prompt for s in got] == [s.prompt for s in gsm_symbolic_set(3, seed=7)]
    assert [s.prompt for s in got] != [s.prompt for s in gsm_symbolic_set(3, seed=1234)]


def test_decontamination_reads_only_the_held_out_rows_of_the_store(tmp_path):
    store, held = _evaluation_store(tmp_path)
    pool = [Sample(f"unit:p{i}", f"Pool problem {i}", "x", source="unit") for i in range(3)]
    store.replace_samples(source="unit", origin="seed", samples=held + pool,
                          splits={s.sample_id: "holdout" for s in held}, rejections=[], run_id="r")
    ev = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": False}}).evaluation
    assert decontamination_texts(store, "unit", [s.sample_id for s in held], ev) == {
        "unit_holdout": [s.prompt for s in held]}


class _RecordingEngines(EngineSet):
    def __init__(self, **generators: Any) -> None:
        super().__init__(borrowed=generators)
        self.asked: list[tuple[str, str | None]] = []

    def open(self, role: str, model: str | None = None):
        self.asked.append((role, model))
        return super().open(role, model)


class _InWords(_Answers):
    """Like _Answers, but the first problem's answer is stated in words, without a box."""

    def chat(self, conversations, sampling):
        out = super().chat(conversations, sampling)
        first = next(iter(self.right))
        return [["The answer is 2."] if first in c[-1]["content"] else o for c, o in zip(conversations, out)]


def test_each_student_is_opened_by_its_model_scored_and_stored_under_its_run(tmp_path):
    store, held = _evaluation_store(tmp_path)
    ev = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": True, "max_tokens": 8,
                                      "stated_answers": True}}).evaluation
    sets = {"unit_holdout": held}
    student = _InWords({held[0].prompt: "2", held[1].prompt: "4"})
    engines = _RecordingEngines(student=student)
    logged: list[str] = []
    scores = evaluate_students(store, engines, {"base": "m0", "distilled": "m1"}, sets, ev, mlflow_run_id="ml",
                               run_id="r1", log=logged.append)
    assert engines.asked == [("student", "m0"), ("student", "m1")]
    assert logged == ["evaluating the base student (m0) on 4 problems",
                      "evaluating the distilled student (m1) on 4 problems"]
    sampling = student_sampling(ev)
    for role, model in (("base", "m0"), ("distilled", "m1")):
        score = scores[role]
        assert (score.role, score.model) == (role, model)
        assert score.evaluation_id == evaluation_id(role, model, sets, sampling, True)
    rows = store.query("SELECT DISTINCT evaluation_id, model_role, model, mlflow_run_id, run_id FROM eval_results "
                       "ORDER BY model_role").rows()
    assert rows == [(scores["base"].evaluation_id, "base", "m0", "ml", "r1"),
                    (scores["distilled"].evaluation_id, "distilled", "m1", "ml", "r1")]
    assert store.query("SELECT DISTINCT run_id FROM generation_cache").rows() == [("r1",)]
    # with stated_answers the answer said in words ("The answer is 2.") counts too: 2 of 4, not 1
    assert scores["base"].report.accuracy == {"unit_holdout": 0.5}


def test_the_cache_wrapper_keeps_the_engines_identity_and_counts_across_calls(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    inner = _Answers({})
    wrapped = CachedGenerator(store, inner, chunk_size=2, run_id="r5")
    assert (wrapped.model_name, wrapped.fingerprint) == (inner.model_name, inner.fingerprint)
    greedy = SamplingConfig(n=1, temperature=0.0, max_tokens=4, seed=0)
    one = [[{"role": "user", "content": "What is 1?"}]]
    two = [[{"role": "user", "content": "What is 2?"}], [{"role": "user", "content": "What is 3?"}]]
    assert wrapped.chat(one, greedy) == [["The answer is \\boxed{0}."]]
    assert wrapped.chat(one + two, [greedy, greedy, greedy]) == [["The answer is \\boxed{0}."]] * 3
    assert (wrapped.called, wrapped.cached, inner.asked) == (3, 1, 3)
    wrapped.chat(two, greedy)
    assert (wrapped.called, wrapped.cached, inner.asked) == (3, 3, 3)  # counts add up over calls
    assert store.query("SELECT DISTINCT run_id FROM generation_cache").rows() == [("r5",)]
    wrapped.close()
    assert wrapped.chat(one, greedy) == [["The answer is \\boxed{0}."]]  # the inner engine is not closed


class _Failing(_Answers):
    def chat(self, conversations, sampling):
        raise GenerationError("the server went away")


def test_a_failed_evaluation_call_is_named_by_its_stage(tmp_path):
    wrapped = CachedGenerator(MetadataStore(tmp_path / "m.duckdb"), _Failing({}), chunk_size=2, run_id=None)
    with pytest.raises(GenerationError, match=r"^evaluate: "):
        wrapped.chat([[{"role": "user", "content": "x"}]], SamplingConfig(temperature=0.0, seed=0))
    other = CachedGenerator(MetadataStore(tmp_path / "n.duckdb"), _Failing({}), chunk_size=2, run_id=None,
                            stage="probe")
    with pytest.raises(GenerationError, match=r"^probe: "):
        other.chat([[{"role": "user", "content": "x"}]], SamplingConfig(temperature=0.0, seed=0))


def _score(role: str, accuracy: dict[str, float], tmp_path: Path) -> StudentScore:
    store, held = _evaluation_store(tmp_path / role)
    right = {s.prompt: str(2 * (i + 1)) for i, s in enumerate(held) if i < round(accuracy["unit_holdout"] * 4)}
    ev = build_config({"evaluation": {"gsm_symbolic": 0, "holdout": True, "max_tokens": 8}}).evaluation
    return evaluate_students(store, EngineSet.of(student=_Answers(right)), {role: "m"}, {"unit_holdout": held}, ev,
                             mlflow_run_id=None, run_id=None)[role]


def test_accuracies_are_rounded_to_4_digits_by_default(tmp_path):
    score = _score("base", {"unit_holdout": 0.25}, tmp_path)
    third = StudentScore("base", "m", "e", dataclasses.replace(score.report, accuracy={"unit_holdout": 1 / 3}), 0, 0)
    assert third.accuracy() == {"unit_holdout": 0.3333} and third.accuracy(2) == {"unit_holdout": 0.33}


class _RecordingTracker:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def log_metrics(self, run_id: str, metrics: dict) -> None:
        self.calls.append(("metrics", run_id, dict(metrics)))

    def set_model_version_tags(self, name: str, version: str, tags: dict) -> None:
        self.calls.append(("tags", name, version, dict(tags)))

    def log_artifact(self, run_id: str, path: Path, artifact_path: str) -> None:
        self.calls.append(("artifact", run_id, Path(path).read_bytes()[:8], artifact_path))


def test_tracking_logs_every_students_metrics_tags_the_registered_one_and_plots_each_benchmark(tmp_path, monkeypatch):
    scores = {"base": _score("base", {"unit_holdout": 0.25}, tmp_path),
              "distilled": _score("distilled", {"unit_holdout": 0.75}, tmp_path)}
    distilled = scores["distilled"]  # an overall of 1/3: its tag is rounded to 4 digits
    scores["distilled"] = dataclasses.replace(distilled, report=dataclasses.replace(distilled.report, overall=1 / 3))
    drawn: list[tuple] = []
    real = E.plots.bars_png
    monkeypatch.setattr(E.plots, "bars_png", lambda *a: drawn.append(a) or real(*a))
    tracker = _RecordingTracker()
    plot = tmp_path / "accuracy.png"
    png = track_evaluation(cast(Tracker, tracker), "run-9", scores, registered_name="student", version="3",
                           registered_role="distilled", plot_path=plot)
    assert png.startswith(b"\x89PNG") and plot.read_bytes() == png
    metrics = {role: score.report.metrics() for role, score in scores.items()}
    assert tracker.calls == [
        ("metrics", "run-9", {f"base/{k}": v for k, v in metrics["base"].items()}),
        ("metrics", "run-9", {f"distilled/{k}": v for k, v in metrics["distilled"].items()}),
        ("tags", "student", "3", {f"eval/{k}": round(v, 4) for k, v in metrics["distilled"].items()}),
        ("artifact", "run-9", b"\x89PNG\r\n\x1a\n", "plots")]
    assert tracker.calls[2][3]["eval/accuracy/unit_holdout"] == 0.75
    assert tracker.calls[2][3]["eval/accuracy/overall"] == 0.3333
    assert drawn == [(["unit_holdout (base)", "unit_holdout (distilled)"], [0.25, 0.75], "accuracy",
                      "Accuracy by benchmark")]
