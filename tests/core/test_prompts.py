"""Tests for prismatic_assets.core.prompts: requests, the problem parser, few-shot draws."""

from __future__ import annotations

import random

import numpy as np
import pytest

from prismatic_assets.core.prompts import (
    CLOSE_TAG,
    FEW_SHOT_STRATEGIES,
    OPEN_TAG,
    FewShotDraw,
    ParsedProblems,
    build_problem_request,
    build_solution_request,
    draw_few_shot,
    parse_problems,
    sample_few_shot,
    sample_few_shot_from_cluster,
)

SHOTS = [
    "How many positive divisors does 360 have?",
    "Find the remainder when 2^{100} is divided by 7.",
    "Solve for real x: x^2 - 5x + 6 = 0.",
    "What is the sum of the first 50 odd numbers?",
    "A fair die is rolled twice. What is the probability that the sum is 7?",
]
P1 = "Find the number of ordered pairs (a, b) of positive integers with a + b = 20."
P2 = "Let x be a real number with x + 1/x = 3. Compute x^2 + 1/x^2."
P3 = "How many trailing zeros does 100! have in base 10?"


# ---------------------------------------------------------------- build_problem_request


def _user(messages: list[dict[str, str]]) -> str:
    assert messages[-1]["role"] == "user"
    return messages[-1]["content"]


def test_problem_request_shows_examples_and_format() -> None:
    messages = build_problem_request(SHOTS, n_new=2)
    assert [m["role"] for m in messages] == ["system", "user"]
    user = _user(messages)
    for shot in SHOTS:
        assert f"{OPEN_TAG}\n{shot}\n{CLOSE_TAG}" in user  # shown in the answer's own format
    assert [user.index(shot) for shot in SHOTS] == sorted(user.index(shot) for shot in SHOTS)  # rng=None: in order
    assert "Write 2 new math problems that are similar to the examples or harder." in user
    assert "No multiple-choice problems." in user
    # 5 examples + intro line + rule line + 2 format blocks
    assert user.count(OPEN_TAG) == 9 and user.count(CLOSE_TAG) == 9


def test_problem_request_rng_shuffles_examples() -> None:
    def order(seed: int) -> tuple[int, ...]:
        user = _user(build_problem_request(SHOTS, rng=random.Random(seed)))
        return tuple(sorted(range(len(SHOTS)), key=lambda i: user.index(SHOTS[i])))

    orders = {order(seed) for seed in range(5)}
    assert len(orders) > 1  # shuffled
    shown = [_user(build_problem_request(SHOTS, rng=random.Random(seed))) for seed in range(5)]
    assert all(all(s in u for s in SHOTS) for u in shown)  # nothing lost
    assert _user(build_problem_request(SHOTS, rng=random.Random(3))) == _user(
        build_problem_request(SHOTS, rng=random.Random(3))
    )


def test_problem_request_n_new_changes_the_request() -> None:
    one = _user(build_problem_request(SHOTS, n_new=1))
    three = _user(build_problem_request(SHOTS, n_new=3))
    assert "Write 1 new math problem that is similar" in one
    assert "Write 3 new math problems that are similar" in three
    assert one.count(CLOSE_TAG) == 8 and three.count(CLOSE_TAG) == 10


def test_problem_request_subject_and_system() -> None:
    nli = build_problem_request(SHOTS, subject="logic")
    assert "example logic problems" in _user(nli)
    assert "logic problems" in nli[0]["content"]
    assert [m["role"] for m in build_problem_request(SHOTS, include_system=False)] == ["user"]


@pytest.mark.parametrize(
    ("few_shot", "n_new", "match"),
    [([], 2, "few_shot is empty"), (["  "], 2, "few_shot is empty"), (SHOTS, 0, "n_new >= 1")],
)
def test_problem_request_rejects_bad_input(few_shot: list[str], n_new: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_problem_request(few_shot, n_new=n_new)


def test_solution_request() -> None:
    messages = build_solution_request(f"  {P1}\n")
    assert messages == [
        {
            "role": "user",
            "content": f"{P1}\n\nSolve this problem step by step. "
            "Write the final answer inside \\boxed{}.",
        }
    ]
    with pytest.raises(ValueError, match="problem is empty"):
        build_solution_request(" ")


def test_filled_format_round_trips() -> None:
    user = _user(build_problem_request(SHOTS, n_new=2))
    template = user[user.index("Output format:\n") + len("Output format:\n") :]
    filled = template.replace("...", P1, 1).replace("...", P2, 1)
    assert parse_problems(filled, 2, SHOTS) == ParsedProblems([P1, P2], [], 2)
    # A model that copies the template verbatim yields nothing.
    echoed = parse_problems(template, 2, SHOTS)
    assert echoed.problems == []
    assert "problem 1: too short (1 words < 5)" in echoed.issues


def test_echoed_examples_are_dropped_and_new_problems_kept() -> None:
    # A small model that copies the shown blocks before writing its own: the copies are examples.
    user = _user(build_problem_request(SHOTS[:3], n_new=2))
    shown = user[user.index(f"{OPEN_TAG}\n") : user.index("Write 2 new")]
    parsed = parse_problems(shown + tagged(P1, P2), 2, SHOTS[:3])
    assert parsed.problems == [P1, P2]
    assert [i for i in parsed.issues if "copies a few-shot example" in i] == [
        f"problem {n}: copies a few-shot example" for n in (1, 2, 3)]


# ---------------------------------------------------------------- parse_problems

T = f"{OPEN_TAG}\n{{}}\n{CLOSE_TAG}"


def tagged(*problems: str) -> str:
    return "\n".join(T.format(p) for p in problems)


@pytest.mark.parametrize(
    ("name", "text", "problems", "issues"),
    [
        ("well-formed", tagged(P1, P2), [P1, P2], []),
        ("one line", f"<problem>{P1}</problem><problem>{P2}</problem>", [P1, P2], []),
        ("extra text", f"Sure! Here you go:\n{tagged(P1, P2)}\nHope this helps.", [P1, P2], []),
        ("extra whitespace", f"<problem>\n\n   {P1}   \n\n</problem>\n\n\n<problem>  {P2}</problem>", [P1, P2], []),
        ("numbered tags", f"<Problem 1>{P1}</Problem 1>\n<problem_2>{P2}</problem_2>", [P1, P2], []),
        ("label inside", f"<problem>**Problem 1:** {P1}</problem>{tagged(P2)}", [P1, P2], []),
        ("code fence", f"```\n<problem>\n{P1}\n</problem>\n```\n{tagged(P2)}", [P1, P2], []),
        (
            "truncated, complete sentence",
            f"{tagged(P1)}\n<problem>\n{P2}",
            [P1, P2],
            ["problem 2: truncated: unterminated block"],
        ),
        (
            "truncated mid-sentence",
            f"{tagged(P1)}\n<problem>\nLet x be a real number with x + 1/x = 3. Compute",
            [P1],
            [
                "problem 2: truncated: unterminated block",
                "problem 2: dropped, ends mid-sentence",
                "expected 2 problems, got 1",
            ],
        ),
        (
            "missing closing tag in the middle",
            f"<problem>{P1}\n<problem>{P2}</problem>",
            [P1, P2],
            ["problem 1: missing closing tag"],
        ),
        ("stray closing tag ignored", f"{P3}</problem>\n{tagged(P1, P2)}", [P1, P2], []),
        (
            "headers instead of tags",
            f"### Problem 1\n{P1}\n\n### Problem 2\n{P2}",
            [P1, P2],
            ["no <problem> tags; split on 'Problem/Example/Question N' headers"],
        ),
        (
            "bold headers",
            f"Here are two:\n**Problem 1:** {P1}\n**New Problem 2.** {P2}",
            [P1, P2],
            ["no <problem> tags; split on 'Problem/Example/Question N' headers"],
        ),
        (
            "example headers, as SmolLM2-135M writes them, with an echoed example",
            f"Here are 2 more math problems.\n\nExample 1:\n{P1}\n\nExample 2:\n{SHOTS[0]}\n\nExample 3:\n{P2}",
            [P1, P2],
            ["no <problem> tags; split on 'Problem/Example/Question N' headers",
             "problem 2: copies a few-shot example"],
        ),
        (
            "question headers",
            f"Question 1. {P1}\nQuestion 2. {P2}",
            [P1, P2],
            ["no <problem> tags; split on 'Problem/Example/Question N' headers"],
        ),
        (
            "numbered list",
            f"1. {P1}\n2) {P2}",
            [P1, P2],
            ["no <problem> tags; split on a numbered list"],
        ),
        ("no delimiters", f"{P1} {P2}", [], ["no delimiters found"]),
        ("empty output", "", [], ["no delimiters found"]),
        (
            "fewer problems",
            tagged(P1),
            [P1],
            ["expected 2 problems, got 1"],
        ),
        (
            "more problems",
            tagged(P1, P2, P3),
            [P1, P2],
            ["expected 2 problems, got 3: kept the first 2"],
        ),
        (
            "empty block",
            f"<problem>\n</problem>{tagged(P1, P2)}",
            [P1, P2],
            ["problem 1: empty"],
        ),
        (
            "too short",
            f"<problem>Find x.</problem>{tagged(P1)}",
            [P1],
            ["problem 1: too short (2 words < 5)", "expected 2 problems, got 1"],
        ),
        (
            "multiple choice, parenthesized",
            tagged(f"{P1} (A) 19 (B) 20 (C) 21", P2),
            [P2],
            ["problem 1: multiple-choice options detected", "expected 2 problems, got 1"],
        ),
        (
            "multiple choice, lines",
            tagged(f"{P1}\nA. 19\nB. 20\nC. 21", P2),
            [P2],
            ["problem 1: multiple-choice options detected", "expected 2 problems, got 1"],
        ),
        (
            "multiple choice, textbf",
            tagged(f"{P1} $\\textbf{{(A)}}\\ 19 \\qquad \\textbf{{(B)}}\\ 20$", P2),
            [P2],
            ["problem 1: multiple-choice options detected", "expected 2 problems, got 1"],
        ),
        (
            "P(A) and P(B) are not options",
            tagged("Events A and B are independent with P(A) = 0.5 and P(B) = 0.4. Find P(A or B).", P2),
            ["Events A and B are independent with P(A) = 0.5 and P(B) = 0.4. Find P(A or B).", P2],
            [],
        ),
        (
            "echoed example",
            tagged(SHOTS[0], P1, P2),
            [P1, P2],
            ["problem 1: copies a few-shot example"],
        ),
        (
            "echoed example with label and case change",
            tagged(f"Example 1: {SHOTS[1].upper()}", P1, P2),
            [P1, P2],
            ["problem 1: copies a few-shot example"],
        ),
        (
            "duplicate in response",
            tagged(P1, P1.lower(), P2),
            [P1, P2],
            ["problem 2: duplicate of problem 1"],
        ),
        (
            "solution appended",
            tagged(f"{P1}\n\nSolution: a can be 1..19, so 19.", P2),
            [P1, P2],
            ["problem 1: solution/answer text removed"],
        ),
        (
            "answer appended, markdown",
            tagged(f"{P1}\n**Answer:** 19", P2),
            [P1, P2],
            ["problem 1: solution/answer text removed"],
        ),
    ],
)
def test_parse_problems(name: str, text: str, problems: list[str], issues: list[str]) -> None:
    parsed = parse_problems(text, n_expected=2, few_shot=SHOTS)
    assert parsed.problems == problems, name
    assert parsed.issues == issues, name


@pytest.mark.parametrize("junk", [None, "<problem", "</problem>" * 3, "<problem></problem>" * 50, "\x00\ufffd"])
def test_parse_problems_never_raises(junk: str) -> None:
    parsed = parse_problems(junk, 2)  # type: ignore[arg-type]
    assert isinstance(parsed, ParsedProblems)
    assert parsed.problems == []


def test_parse_n_expected_changes_output() -> None:
    text = tagged(P1, P2, P3)
    assert parse_problems(text, n_expected=3).problems == [P1, P2, P3]
    assert parse_problems(text, n_expected=1).problems == [P1]
    assert parse_problems(text, n_expected=3).n_found == 3


def test_parse_few_shot_changes_output() -> None:
    text = tagged(SHOTS[0], P1)
    assert parse_problems(text, few_shot=()).problems == [SHOTS[0], P1]
    assert parse_problems(text, few_shot=SHOTS).problems == [P1]


def test_parse_min_words_changes_output() -> None:
    text = tagged("Find x if 2x = 6.", P1)
    assert parse_problems(text, min_words=6).problems == ["Find x if 2x = 6.", P1]
    assert parse_problems(text, min_words=7).problems == [P1]


# ---------------------------------------------------------------- few-shot draws

POOL = [f"s{i}" for i in range(20)]
ASSIGN = {pid: (0 if i < 12 else 1 if i < 18 else 2) for i, pid in enumerate(POOL)}  # sizes 12/6/2


def test_strategies_named() -> None:
    assert FEW_SHOT_STRATEGIES == ("random", "sparse_cluster")


def test_sample_few_shot() -> None:
    got = sample_few_shot(POOL, 5, random.Random(0))
    assert len(got) == 5 and len(set(got)) == 5 and set(got) <= set(POOL)
    assert got == sample_few_shot(POOL, 5, random.Random(0))  # seeded
    assert got != sample_few_shot(POOL, 5, random.Random(1))  # rng matters
    assert len(sample_few_shot(POOL, 3, random.Random(0))) == 3  # k matters


@pytest.mark.parametrize(("k", "match"), [(0, "k >= 1"), (21, "add seed problems")])
def test_sample_few_shot_rejects_bad_k(k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_few_shot(POOL, k, random.Random(0))


def test_cluster_draw_stays_in_cluster() -> None:
    draw = sample_few_shot_from_cluster(POOL, ASSIGN, 1, 5, random.Random(0))
    assert draw.strategy == "sparse_cluster" and draw.cluster == 1 and draw.topped_up == 0
    assert len(set(draw.ids)) == 5 and all(ASSIGN[i] == 1 for i in draw.ids)
    other = sample_few_shot_from_cluster(POOL, ASSIGN, 0, 5, random.Random(0))
    assert all(ASSIGN[i] == 0 for i in other.ids)  # cluster matters


def test_small_cluster_is_topped_up_and_recorded() -> None:
    draw = sample_few_shot_from_cluster(POOL, ASSIGN, 2, 5, random.Random(0))
    assert draw.topped_up == 3
    assert set(draw.ids[:2]) == {"s18", "s19"}  # members first
    assert all(ASSIGN[i] != 2 for i in draw.ids[2:]) and len(set(draw.ids)) == 5
    empty = sample_few_shot_from_cluster(POOL, ASSIGN, 7, 5, random.Random(0))
    assert empty.topped_up == 5


@pytest.mark.parametrize(
    "assignments",
    [
        [ASSIGN[p] for p in POOL],
        np.array([ASSIGN[p] for p in POOL], dtype=np.int64),
        ASSIGN,
    ],
    ids=["list", "numpy", "mapping"],
)
def test_cluster_draw_accepts_mapping_or_aligned_array(assignments: object) -> None:
    draw = sample_few_shot_from_cluster(POOL, assignments, 1, 4, random.Random(0))
    assert draw == sample_few_shot_from_cluster(POOL, ASSIGN, 1, 4, random.Random(0))


@pytest.mark.parametrize(
    ("assignments", "match"),
    [([0, 1], "one cluster per pool id"), ({"s0": 0}, "no cluster assignment")],
)
def test_cluster_draw_rejects_bad_assignments(assignments: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sample_few_shot_from_cluster(POOL, assignments, 0, 2, random.Random(0))


def test_draw_few_shot_by_name() -> None:
    rnd = draw_few_shot("random", POOL, 5, random.Random(0))
    assert rnd == FewShotDraw(tuple(sample_few_shot(POOL, 5, random.Random(0))), "random")
    sc = draw_few_shot("sparse_cluster", POOL, 5, random.Random(0), assignments=ASSIGN, cluster=1)
    assert sc == sample_few_shot_from_cluster(POOL, ASSIGN, 1, 5, random.Random(0))
    with pytest.raises(ValueError, match="needs assignments"):
        draw_few_shot("sparse_cluster", POOL, 5, random.Random(0))
    with pytest.raises(ValueError, match="use one of"):
        draw_few_shot("nearest", POOL, 5, random.Random(0))


# ----------------------------------------------------------------------------- edges the mutation run found


def test_one_example_and_the_whole_pool_are_valid_few_shot_counts():
    assert sample_few_shot(["a"], 1, random.Random(0)) == ["a"]
    assert sorted(sample_few_shot(["a", "b"], 2, random.Random(0))) == ["a", "b"]
    with pytest.raises(ValueError, match="k=0"):
        sample_few_shot(["a"], 0, random.Random(0))
    with pytest.raises(ValueError, match="the pool has 1 problems but k=2"):
        sample_few_shot(["a"], 2, random.Random(0))


def test_a_topped_up_cluster_draw_still_names_its_strategy_and_cluster():
    draw = sample_few_shot_from_cluster(["a", "b", "c", "d"], [1, 0, 0, 0], 1, 3, random.Random(0))
    assert (draw.ids[0], draw.strategy, draw.cluster, draw.topped_up) == ("a", "sparse_cluster", 1, 2)
    assert set(draw.ids[1:]) <= {"b", "c", "d"} and len(set(draw.ids)) == 3


@pytest.mark.parametrize("assignments, cluster", [([0, 1], None), (None, 1)])
def test_sparse_cluster_draws_need_both_assignments_and_a_cluster(assignments, cluster):
    with pytest.raises(ValueError, match="needs assignments"):
        draw_few_shot("sparse_cluster", ["a", "b"], 1, random.Random(0), assignments=assignments, cluster=cluster)


def test_the_request_shows_examples_and_the_expected_blocks_exactly():
    messages = build_problem_request(["First example problem.", "Second example problem."])
    user = messages[-1]["content"]
    assert "2 new math problems" in user  # two by default
    assert "<problem>\nFirst example problem.\n</problem>\n\n<problem>\nSecond example problem.\n</problem>" in user
    assert "<problem>\n...\n</problem>\n<problem>\n...\n</problem>" in user
    assert "<problem>\n...\n</problem>\n<problem>\n...\n</problem>\n<problem>" not in user


def test_two_problems_are_expected_by_default():
    text = "".join(f"<problem>Find the value of x when x + {i} = 10.</problem>" for i in range(3))
    parsed = parse_problems(text)
    assert len(parsed.problems) == 2 and parsed.n_found == 3
    assert parsed.issues == ["expected 2 problems, got 3: kept the first 2"]


@pytest.mark.parametrize("wrapped", ["**Find the value of x in 2x = 6.**", "__Find the value of x in 2x = 6.__",
                                     '"Find the value of x in 2x = 6."', "```\nFind the value of x in 2x = 6.\n```"])
def test_emphasis_quotes_and_fences_around_a_problem_are_removed(wrapped):
    assert parse_problems(f"<problem>{wrapped}</problem>", 1).problems == ["Find the value of x in 2x = 6."]


def test_emphasis_on_one_side_only_is_kept():
    problem = "**Find** the value of x in 2x = 6."
    assert parse_problems(f"<problem>{problem}</problem>", 1).problems == [problem]


@pytest.mark.parametrize("block", ["****", "***"])
def test_a_block_of_bare_markers_is_too_short_not_empty(block):
    assert parse_problems(f"<problem>{block}</problem>", 1).issues[0] == "problem 1: too short (1 words < 5)"


def test_answer_choices_named_in_words_are_multiple_choice():
    parsed = parse_problems("<problem>Answer the question below. Options: red, green or blue?</problem>", 1)
    assert parsed.issues[0] == "problem 1: multiple-choice options detected"


def test_no_delimiters_and_a_parser_error_find_zero_blocks():
    assert parse_problems("just some words", 1) == ParsedProblems([], ["no delimiters found"], 0)
    broken = parse_problems(123, 1)  # type: ignore[arg-type]  # a bad generation must not raise
    assert (broken.problems, broken.n_found) == ([], 0)
    assert broken.issues == ["parser error: TypeError: expected string or bytes-like object, got 'int'"]
