"""Procedural tasks from reasoning-gym: which problems `task_items` draws (spread, levels, ids,
determinism), the response a student is trained on, and grading by each task's own scorer.

Real reasoning-gym generators and scorers; answers are checked against values computed here
(math.gcd, the product of the expression's factors), not against the module's own fields."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest
from reasoning_gym.factory import DATASETS

from prismatic_assets.core.procedural import (
    PROCEDURAL_SOURCE,
    TaskItem,
    check_families,
    response_for,
    score_item,
    task_items,
    verify_item,
)
from prismatic_assets.core.samples import Sample


def test_known_families_pass_and_unknown_ones_are_named_with_the_setting_and_the_known_list():
    check_families(["gcd", "products"])
    check_families([])
    with pytest.raises(ValueError) as err:
        check_families(["gcd", "no_such_task", "nor_this"], key="study.families")
    message = str(err.value)
    assert message.startswith("study.families: unknown reasoning-gym task(s) ['no_such_task', 'nor_this']")
    assert message.endswith(f"; known tasks: {sorted(DATASETS)}")
    with pytest.raises(ValueError, match=r"^arms\.source\.families: "):
        check_families(["no_such_task"])


@pytest.mark.parametrize("answer, text", [(" 42 ", "The answer is \\boxed{42}."), (7, "The answer is \\boxed{7}."),
                                          ("a b", "The answer is \\boxed{a b}.")])
def test_the_training_response_states_the_answer_boxed(answer, text):
    assert response_for({"answer": answer, "question": "ignored"}) == text


def test_problems_are_spread_evenly_over_every_family_and_level_in_blocks():
    items = task_items(["gcd", "products"], [0, 1], 7, seed=3, id_prefix="t")
    assert [i.sample.sample_id for i in items] == ["t:gcd:0:0", "t:gcd:0:1", "t:gcd:1:0", "t:gcd:1:1",
                                                   "t:products:0:0", "t:products:0:1", "t:products:1:0"]
    assert Counter((i.family, i.level) for i in items) == {("gcd", 0): 2, ("gcd", 1): 2, ("products", 0): 2,
                                                           ("products", 1): 1}
    few = task_items(["gcd", "products"], [0, 1], 3, seed=3, id_prefix="t")  # fewer problems than pairs
    assert [(i.family, i.level) for i in few] == [("gcd", 0), ("gcd", 1), ("products", 0)]


def test_each_item_is_a_sample_whose_answer_is_right():
    items = task_items(["gcd", "products"], [0, 1], 8, seed=11, id_prefix="p")
    for item in items:
        s, entry = item.sample, item.entry
        if item.family == "gcd":
            want = math.gcd(*entry["metadata"]["numbers"])
        else:
            want = math.prod(int(x) for x in entry["metadata"]["expression"].split("*"))
        assert s.answer == str(want) and s.response == f"The answer is \\boxed{{{want}}}."
        assert s.prompt == entry["question"].strip() and s.prompt
        number = s.sample_id.rsplit(":", 1)[1]
        assert (s.category, s.source, s.meta) == (item.family, PROCEDURAL_SOURCE,
                                                  {"family": item.family, "level": item.level})
        assert s.source_ref == f"reasoning_gym:{item.family}:level={item.level}:seed=11:{number}"
        assert entry["metadata"]["source_index"] == int(number)


def test_levels_are_reasoning_gyms_curriculum_levels_clamped_to_the_top_one():
    def difficulty(family: str, level: int) -> dict:
        (item,) = task_items([family], [level], 1, seed=0, id_prefix="lv")
        return item.entry["metadata"]["difficulty"]

    # gcd's curriculum: num_terms levels [2, 3, 4, 5], value levels [100, 1000, 10000, 100000]
    assert difficulty("gcd", 0) == {"num_terms": (2, 2), "value": (100, 1000)}
    assert difficulty("gcd", 1) == {"num_terms": (2, 3), "value": (100, 10000)}
    assert difficulty("gcd", 3) == difficulty("gcd", 99) == {"num_terms": (2, 5), "value": (100, 100000)}
    # products: 11 num_terms levels but 10 num_digits levels: the top is the shortest list's last
    assert difficulty("products", 99) == {"num_terms": (2, 11), "num_digits": (1, 10)}


def test_a_family_without_a_curriculum_ignores_the_level_and_is_still_seeded():
    items = task_items(["acre"], [0, 5], 4, seed=3, id_prefix="t")
    assert [(i.level, i.sample.sample_id) for i in items] == [(0, "t:acre:0:0"), (0, "t:acre:0:1"),
                                                              (5, "t:acre:5:0"), (5, "t:acre:5:1")]
    assert all(i.sample.prompt and i.sample.answer for i in items)
    # pinned, like the gcd problems below: the same request draws the same problems in every run
    prompts = "\n".join(i.sample.prompt for i in items)
    assert [i.sample.answer for i in items] == ["undetermined", "on", "on", "off"]
    assert hashlib.sha256(prompts.encode()).hexdigest()[:16] == "5a735c6efcac9c73"


def test_items_are_deterministic_in_the_seed_and_the_prefix_and_differ_otherwise():
    def prompts(seed: int, prefix: str) -> list[str]:
        return [i.sample.prompt for i in task_items(["gcd"], [2], 6, seed=seed, id_prefix=prefix)]

    same = prompts(5, "a")
    assert prompts(5, "a") == same
    assert prompts(6, "a") != same and prompts(5, "b") != same
    assert len(set(same)) == 6
    # pinned: a change of how seeds derive from (seed, prefix, family, level) redraws every user's problems
    assert same[0] == ("Find the Greatest Common Divisor (GCD) of these numbers: 68769, 80436, 68758. "
                       "Give only the GCD as your final answer.")


@pytest.mark.parametrize("n, families, levels, match", [
    (0, ["gcd"], [0], "n=0: ask for at least one problem"),
    (-2, ["gcd"], [0], "n=-2"),
    (3, [], [0], "no \\(family, level\\) pair"),
    (3, ["gcd"], [], "no \\(family, level\\) pair"),
    (3, ["nope"], [0], "unknown reasoning-gym task"),
])
def test_bad_requests_are_refused(n, families, levels, match):
    with pytest.raises(ValueError, match=match):
        task_items(families, levels, n, seed=0, id_prefix="x")


def _gcd_item() -> TaskItem:
    (item,) = task_items(["gcd"], [0], 1, seed=3, id_prefix="t")  # GCD of 939 and 201: 3
    assert math.gcd(*item.entry["metadata"]["numbers"]) == 3
    return item


@pytest.mark.parametrize("response, want", [
    ("so \\boxed{3}", ("3", True)),
    ("The answer is 3.", ("3", True)),
    ("\\boxed{1}", ("1", False)),
    ("\\boxed{3.0}", ("3.0", False)),  # the scorer gives partial credit (1/3): not correct
    ("no answer here", (None, False)),
])
def test_a_response_is_graded_on_its_stated_answer_by_the_tasks_own_scorer(response, want):
    assert score_item(_gcd_item(), response) == want


def test_a_scorer_that_cannot_read_the_entry_counts_the_answer_wrong():
    broken = TaskItem(Sample("b:0", "p", "r"), "gcd", 0, {})  # gcd's scorer raises KeyError on it
    assert score_item(broken, "\\boxed{3}") == ("3", False)


def test_an_item_verifies_when_its_own_response_is_graded_correct():
    item = _gcd_item()
    assert verify_item(item) is None

    def with_response(text: str) -> TaskItem:
        return TaskItem(Sample(item.sample.sample_id, item.sample.prompt, text), item.family, item.level, item.entry)

    assert verify_item(with_response("\\boxed{7}")) == "scorer_rejects_answer"
    assert verify_item(with_response("I do not know")) == "no_answer_in_response"
