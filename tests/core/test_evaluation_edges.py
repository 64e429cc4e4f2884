"""Evaluation at its edges: what each record keeps, the scorer and stated-answer options, the
sampling and model a report names, empty reports, combined reports, GSM-style problems (their
defaults, fields and size), evaluation files in their shapes and limits, a blank gold answer,
and the overlap error's list."""

from __future__ import annotations

import dataclasses
import json

import pytest
import reasoning_gym

from prismatic_assets.core.evaluation import (
    EvalRecord,
    EvalReport,
    OverlapError,
    combine_reports,
    evaluate,
    gsm_symbolic_set,
    load_eval_file,
    score_response,
)
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.samples import Sample


class Scripted:
    """Answers each problem with the text listed for it (by a word of the problem)."""

    def __init__(self, answers: dict[str, list[str]], name: str | None = "scripted") -> None:
        self.answers = answers
        self.calls = 0
        if name is not None:
            self.model_name = name

    def chat(self, conversations, sampling):
        self.calls += 1
        return [next(v for k, v in self.answers.items() if k in c[-1]["content"]) for c in conversations]


SAMPLES = [Sample("e:1", "What is alpha?", "", answer="2"), Sample("e:2", "What is beta?", "", answer="3")]
GREEDY = SamplingConfig(n=1, temperature=0.0, max_tokens=8, seed=0)


def test_each_record_keeps_the_response_its_answer_and_the_gold():
    gen = Scripted({"alpha": ["so \\boxed{2}", "\\boxed{5}"], "beta": ["The answer is 3."]})
    report = evaluate(gen, SAMPLES, GREEDY, "unit")
    assert [dataclasses.astuple(r) for r in report.records] == [
        ("e:1", "unit", 0, "What is alpha?", "so \\boxed{2}", "2", "2", True),
        ("e:1", "unit", 1, "What is alpha?", "\\boxed{5}", "5", "2", False),
        ("e:2", "unit", 0, "What is beta?", "The answer is 3.", None, "3", False)]  # stated: off by default
    stated = evaluate(gen, SAMPLES, GREEDY, "unit", stated_answers=True)
    assert [(r.extracted, r.correct) for r in stated.records][2] == ("3", True)
    assert report.model == "scripted" and report.sampling == GREEDY.as_dict()


def test_a_tasks_own_scorer_sees_each_sample_and_response():
    seen = []

    def scorer(sample, response):
        seen.append((sample.sample_id, response))
        return response.upper(), sample.sample_id == "e:2"

    report = evaluate(Scripted({"alpha": ["a"], "beta": ["b"]}), SAMPLES, GREEDY, "unit", scorer=scorer)
    assert seen == [("e:1", "a"), ("e:2", "b")]
    assert [(r.extracted, r.correct) for r in report.records] == [("A", False), ("B", True)]


def test_a_report_names_its_sampling_whatever_its_type_and_the_model_when_known():
    @dataclasses.dataclass
    class Plain:
        temperature: float = 0.5

    gen = Scripted({"alpha": ["\\boxed{2}"], "beta": ["\\boxed{3}"]}, name=None)
    assert evaluate(gen, SAMPLES, Plain(), "u").sampling == {"temperature": 0.5}
    assert evaluate(gen, SAMPLES, object(), "u").sampling == {}
    assert evaluate(gen, SAMPLES, GREEDY, "u").model == ""
    asked = gen.calls
    empty = evaluate(gen, [], GREEDY, "u")
    assert gen.calls == asked  # nothing to ask: the engine is not called
    assert (empty.records, empty.overall, empty.macro, empty.model) == ((), 0.0, 0.0, "")


def test_empty_and_combined_reports():
    empty = EvalReport.from_records([])
    assert (empty.model, empty.overall, empty.macro, empty.sampling) == ("", 0.0, 0.0, {})
    assert empty.metrics() == {"accuracy/overall": 0.0, "accuracy/macro": 0.0, "answered/overall": 0.0}
    a = EvalReport.from_records([EvalRecord("x:1", "a", 0, "p", "r", "1", "1", True)], model="m", sampling={"n": 1})
    b = EvalReport.from_records([EvalRecord("y:1", "b", 0, "p", "r", None, "2", False),
                                 EvalRecord("y:2", "b", 0, "p", "r", "2", "2", True)], model="m", sampling={"n": 2})
    both = combine_reports([a, b])
    assert (both.model, both.sampling, both.accuracy) == ("m", {"n": 1}, {"a": 1.0, "b": 0.5})
    assert (both.overall, both.macro) == (pytest.approx(2 / 3), 0.75)
    assert both.metrics()["accuracy/macro"] == 0.75 and both.metrics()["answered/overall"] == pytest.approx(2 / 3)
    none = combine_reports([])
    assert (none.model, none.sampling, none.records) == ("", {}, ())


def test_a_blank_gold_answer_is_never_matched():
    assert score_response("\\boxed{1}", "  ") == ("1", False)
    assert score_response("\\boxed{1}", "") == ("1", False)
    assert score_response("\\boxed{1}", "1") == ("1", True)


def test_gsm_problems_default_to_50_of_seed_1234_with_their_fields():
    default = gsm_symbolic_set()
    assert [s.sample_id for s in default] == [s.sample_id for s in gsm_symbolic_set(50, seed=1234)]
    one = gsm_symbolic_set(1, seed=3)
    (s,) = one
    index = s.meta["index"]
    assert (s.sample_id, s.source_ref) == (f"gsm_symbolic:3:{index}", f"gsm_symbolic:seed=3:{index}")
    assert set(s.meta) == {"seed", "index", "reasoning_gym_version"} and s.meta["seed"] == 3
    assert s.meta["reasoning_gym_version"] not in ("", "unknown")
    assert s.response.endswith(f"\nThe final answer is \\boxed{{{s.answer}}}.") and "####" not in s.response
    entry = reasoning_gym.create_dataset("gsm_symbolic", size=index + 1, seed=3)[index]  # the reference
    cot = entry["metadata"]["answer_cot"]
    assert s.response == cot[:cot.rindex("\n####")].strip() + f"\nThe final answer is \\boxed{{{s.answer}}}."
    suffix = " Give the result as your final answer. Do not include units."
    assert entry["question"].endswith(suffix) and s.prompt == entry["question"][:-len(suffix)].strip()
    assert len(gsm_symbolic_set(100, seed=3)) == 100  # asks reasoning-gym for enough problems


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_eval_files_keep_problem_answer_source_and_an_empty_response(tmp_path):
    path = _write(tmp_path / "bench.jsonl", [{"problem": "p1", "answer": 3.0, "id": "a"},
                                             {"problem": "p2", "answer": 4}])
    got = load_eval_file(path)
    assert [(s.sample_id, s.prompt, s.response, s.answer, s.source, s.source_ref) for s in got] == [
        ("bench:1", "p1", "", "3", "bench", f"{path}:1"), ("bench:2", "p2", "", "4", "bench", f"{path}:2")]
    assert [s.sample_id for s in load_eval_file(path, id_field="id", source="b", limit=1)] == ["b:a"]


def test_eval_file_shapes(tmp_path):
    lines = tmp_path / "lines.json"
    lines.write_text('{"problem": "p1", "answer": "1"}\n\n{"problem": "p2", "answer": "2"}\n')
    assert [s.sample_id for s in load_eval_file(lines)] == ["lines:1", "lines:3"]  # a blank line in between
    array = tmp_path / "array.json"
    array.write_text('\n  [{"problem": "p1", "answer": "1"}, {"problem": "p2", "answer": "2"}]')
    assert [s.sample_id for s in load_eval_file(array)] == ["array:1", "array:2"]
    one_line = tmp_path / "one.jsonl"
    one_line.write_text('[{"problem": "p1", "answer": "1"}]\n')
    with pytest.raises(ValueError, match=r"one.jsonl row 1: expected an object .* got list"):
        load_eval_file(one_line)  # an array in JSON Lines is one row


@pytest.mark.parametrize("kwargs, rows, match", [
    ({"limit": 0}, [{"problem": "p", "answer": "1"}], r"^limit=0: must be None or an int >= 1"),
    ({}, [{"problem": "p"}], r"row 1: missing field 'answer' \(fields present: \['problem'\]\)"),
    ({"id_field": "id"}, [{"problem": "p", "answer": "1"}], r"row 1: missing field 'id'"),
])
def test_eval_file_errors_name_the_file_and_row(tmp_path, kwargs, rows, match):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=match) as err:
        load_eval_file(path, **kwargs)
    assert kwargs.get("limit") == 0 or str(err.value).startswith(f"evaluation file {path} row 1: ")


@pytest.mark.parametrize("n, tail", [(10, ""), (11, " and 1 more"), (12, " and 2 more")])
def test_the_overlap_error_lists_ten_pairs_and_counts_the_rest(n, tail):
    pairs = [(f"e:{i}", f"t:{i}") for i in range(n)]
    shown = ", ".join(f"e:{i} = t:{i}" for i in range(10))
    assert str(OverlapError(pairs)) == (
        f"{n} evaluation problem(s) also occur in the training data (eval id = train id): {shown}{tail}. Remove "
        "them from the training samples (or pick another held-out set/seed) before training: an overlapping "
        "evaluation measures memorization.")
