"""Tests for prismatic_assets.core.answers: extraction, equivalence, grading, voting."""

from __future__ import annotations

import threading

import pytest

from prismatic_assets.core import answers
from prismatic_assets.core.answers import (
    Vote,
    answers_equivalent,
    extract_answer,
    extract_boxed,
    extract_stated,
    group_answers,
    is_correct,
    majority_vote,
    normalize_answer,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"The answer is \boxed{42}.", "42"),
        (r"so $\boxed{\frac{1}{2}}$", r"\frac{1}{2}"),
        (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{3}}{2}"),  # nested braces
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),  # escaped braces do not count
        (r"\boxed{\left\{ x \right.}", r"\left\{ x \right."),  # unbalanced escaped brace
        (r"first \boxed{1}, finally \boxed{2}", "2"),  # last of many
        (r"\boxed{3} (put answers in \boxed{})", "3"),  # empty box skipped
        (r"\boxed{  7  }", "7"),  # stripped
        (r"$\boxed 5$.", "5"),  # \boxed without braces
        (r"\fbox{7}", "7"),
        (r"\boxed{a \\ b}", r"a \\ b"),  # LaTeX line break inside
        ("no box here: 42", None),
        ("", None),
        (r"\boxed{\frac{1}{2}", None),  # truncated
        (r"\boxed{3} then, correcting, \boxed{4", None),  # last box truncated
        (r"we get \boxed", None),  # cut off right after the command
        (r"\boxedfoo{3}", None),  # a different command
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("1/2", r"\frac{1}{2}"),
        ("0.5", r"\frac{1}{2}"),
        ("1/2", "0.5"),
        (r"\dfrac12", "0.5"),
        ("x=3", "3"),
        ("x = 3", "3"),
        ("3", "3.0"),
        (r"2\sqrt{2}", r"\sqrt{8}"),
        ("n=2 or n=3", "2, 3"),
        ("2, 3", r"\{2,3\}"),
        ("3, 2", "2, 3"),  # sets are unordered
        ("(1, 2)", "(1,2)"),
        ("a+b", "b+a"),
        (r"10^\circ", "10"),
        (r"12 \text{ cm}", "12"),
        (r"\text{Monday}", "monday"),
        ("$3$", "3"),
        (r"\boxed{3}", "3"),  # a boxed gold answer
        ("1/3", "0.333333"),  # within math-verify's 6-digit rounding
    ],
)
def test_equivalent(a: str, b: str) -> None:
    assert answers_equivalent(a, b)
    assert answers_equivalent(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("3", "4"),
        ("-1", "1"),
        ("x=3", "y=3"),
        ("(2,3)", "(3,2)"),  # tuples are ordered
        ("0.333", "1/3"),
        (r"\pi", "3.14159"),
        ("yes", "sey"),  # words are not products of symbols
        ("Monday", "Sunday"),
        ("", ""),
        ("", "3"),
        ("3", r"\boxed{}"),
    ],
)
def test_not_equivalent(a: str, b: str) -> None:
    assert not answers_equivalent(a, b)
    assert not answers_equivalent(b, a)


@pytest.mark.parametrize(
    "junk",
    [r"\frac{", "}}}{{{", r"\left(", "x" * 5000, r"\sqrt[", "$$", r"\begin{pmatrix}"],
)
def test_equivalent_never_raises(junk: str) -> None:
    assert answers_equivalent(junk, "3") is False
    assert isinstance(answers_equivalent(junk, junk), bool)


def test_long_answers_fall_back_to_string_equality() -> None:
    long = "1+" * 200 + "1"
    assert len(long) > answers.MAX_ANSWER_CHARS
    assert answers_equivalent(long, long + " ")
    assert not answers_equivalent(long, "401")  # math-verify would say True; not called


def test_equivalent_off_the_main_thread() -> None:
    # math-verify's signal-based timeout raises outside the main thread; we disable it there.
    results: list[bool] = []

    def work() -> None:
        results.append(answers_equivalent(r"2\sqrt{2}", r"\sqrt{8}"))
        results.append(answers_equivalent("x=3", "4"))

    t = threading.Thread(target=work)
    t.start()
    t.join(timeout=60)
    assert results == [True, False]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"$\text{Yes}$.", "yes"),
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\dfrac{1}{2}", r"\frac{1}{2}"),
        ("  A  B ", "ab"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    ("response", "gold", "expected"),
    [
        (r"... so the answer is \boxed{\frac{1}{2}}.", "0.5", True),
        (r"\boxed{3}", "x = 3", True),
        (r"\boxed{3}", r"$\boxed{3}$", True),
        (r"\boxed{(1, 2)}", "(1,2)", True),
        (r"\boxed{4}", "3", False),
        ("The answer is 3.", "3", False),  # no box: not graded as correct
        (r"\boxed{3} wait \boxed{", "3", False),  # truncated
        (r"\boxed{3}", "", False),
    ],
)
def test_is_correct(response: str, gold: str, expected: bool) -> None:
    assert is_correct(response, gold) is expected


def _r(answer: str | None) -> str:
    return "no final answer" if answer is None else f"Work... \\boxed{{{answer}}}"


@pytest.mark.parametrize(
    ("boxed", "min_agree", "accepted", "reason", "majority", "agreement"),
    [
        (["3", "3", "3"], 2, True, "accepted", (0, 1, 2), 3),
        (["1/2", "0.5", "7"], 2, True, "accepted", (0, 1), 2),
        (["7", "1/2", r"\frac{1}{2}"], 2, True, "accepted", (1, 2), 2),
        (["1", "2", "3"], 2, False, "disagreement", (), 1),
        ([None, None, None], 2, False, "no_answer", (), 0),
        ([None, "3", "3"], 2, True, "accepted", (1, 2), 2),
        ([None, "3", "4"], 2, False, "disagreement", (), 1),
        (["1", "2", "3"], 1, False, "tie", (), 1),  # three groups of one reach min_agree=1
        (["5", None, None], 1, True, "accepted", (0,), 1),
        (["1", "1", "2", "2"], 2, False, "tie", (), 2),
        (["1", "1", "2", "2", "2"], 2, True, "accepted", (2, 3, 4), 3),
        (["3", "3", "4"], 3, False, "disagreement", (), 2),  # min_agree changes the result
        ([], 2, False, "no_answer", (), 0),
    ],
)
def test_majority_vote(
    boxed: list[str | None],
    min_agree: int,
    accepted: bool,
    reason: str,
    majority: tuple[int, ...],
    agreement: int,
) -> None:
    vote = majority_vote([_r(b) for b in boxed], min_agree=min_agree)
    assert (vote.accepted, vote.reason, vote.majority, vote.agreement) == (
        accepted,
        reason,
        majority,
        agreement,
    )
    assert vote.answers == tuple(boxed)


def test_min_agree_changes_the_decision() -> None:
    responses = [_r("3"), _r("3"), _r("4")]
    assert majority_vote(responses, min_agree=2).accepted
    assert not majority_vote(responses, min_agree=3).accepted


def test_vote_keeps_evidence_separate_from_decision() -> None:
    vote = majority_vote([_r("x=3"), _r("3"), _r("4")])
    assert isinstance(vote, Vote)
    assert vote.groups == ((0, 1), (2,))
    assert vote.majority_answer == "x=3"
    rejected = majority_vote([_r("1"), _r("2"), _r("3")])
    assert rejected.groups == ((0,), (1,), (2,))  # the evidence is kept when rejected
    assert rejected.majority_answer is None


def test_majority_vote_rejects_bad_min_agree() -> None:
    with pytest.raises(ValueError, match="min_agree >= 1"):
        majority_vote([_r("3")], min_agree=0)


def test_group_answers_uses_first_member_as_representative() -> None:
    # 0.3333333 ~ 1/3 ~ 0.333333 within rounding; grouping is by the first member only.
    assert group_answers(["1/3", "0.333333", None, "0.5"]) == ((0, 1), (3,))
    assert group_answers([]) == ()


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("9^{9^{9}}", "9^{9^{9}}+1", False),  # sympy would compute 9^387420489 holding the GIL
        ("9^{9^{9}}", " 9^{9^{9}} ", True),  # string equality still applies
        ("9^9^9", "2", False),
        ("2^{100000}", "2^{100000}", True),
        ("100000!", "5", False),
        (r"\sum_{k=1}^{10^9} k", "5", False),
        ("2^{-10}", "1/1024", True),  # ordinary powers still go to math-verify
        ("10^9 + 7", "1000000007", True),
    ],
)
def test_huge_powers_skip_math_verify(a: str, b: str, expected: bool) -> None:
    assert answers_equivalent(a, b) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("12 + 30 = 42\n\nThe answer is 42.", "42"),  # how SmolLM2-135M ends
        ("So the final answer is $\\frac{1}{2}$. Done.", "\\frac{1}{2}"),
        ("**Answer:** 3.5", "3.5"),
        ("Time = 2 * 2 = 4\n\nThe answer is: 4", "4"),
        ("Final answer: x = 3\nThanks!", "x = 3"),
        ("The answer is 10.\nWait, the answer is 12.", "12"),  # the last statement wins
        ("I think the answer is that we need to consider every case " + "carefully " * 10, None),  # prose
        ("No statement of a result here.", None),
        ("", None),
    ],
)
def test_extract_stated(text: str, expected: str | None) -> None:
    assert extract_stated(text) == expected


def test_extract_answer_falls_back_only_when_asked_and_without_a_box() -> None:
    assert extract_answer("The answer is 42.") is None  # boxed only by default
    assert extract_answer("The answer is 42.", stated=True) == "42"
    assert extract_answer("The answer is 41. So \\boxed{42}", stated=True) == "42"  # a box wins
    assert extract_answer("The answer is 41. So \\boxed{4", stated=True) is None  # cut-off box: no fallback


def test_majority_vote_with_stated_answers() -> None:
    responses = ["2 + 2 = 4. The answer is 4.", "So \\boxed{4}", "The answer is 5."]
    assert majority_vote(responses).reason == "disagreement"  # one boxed answer only
    vote = majority_vote(responses, stated_answers=True)
    assert vote.accepted and vote.answers == ("4", "4", "5") and vote.majority == (0, 1)


# ----------------------------------------------------------------------------- edges the mutation run found


@pytest.mark.parametrize(
    "answer",
    [
        "__class__", "import os", "lambda x: x", "eval (1)", "exec(1)", "compile(s)", "open(f)", "getattr(x, y)",
        "setattr(a)", "globals()", "locals()", "system(c)", "popen(c)", "subprocess(x)", "breakpoint()", "input()",
        "os.path", "sys.exit", "builtins.x", "shutil.rmtree", "socket.socket", "$(ls)", "`ls`", "< script>",
        r"\input{f}", r"\include{f}", r"\write18{x}", r"\immediate", r"\openin", r"\openout", r"\read",
        r"\catcode", r"\csname", r"\def", r"\edef", r"\gdef", r"\let",
    ],
)
def test_an_answer_carrying_code_is_never_equivalent(answer: str) -> None:
    assert answers.compare_answers(answer, answer) == (False, "answer_has_code")
    assert answers.compare_answers("3", answer) == (False, "answer_has_code")


@pytest.mark.parametrize("answer", [r"\lambda", r"\lambda x: 3", r"\letter", r"\inputs", r"\import x", r"\open(1)",
                                    "x_{12}", r"\cos(x)"])
def test_latex_that_looks_like_code_is_not_code(answer: str) -> None:
    assert answers.compare_answers(answer, answer) == (True, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"\boxed  {5}", "5"),  # space before the brace
        ("\\boxed\n{5}", "5"),
        (r"\boxed   ", None),  # only spaces after the command: cut off
        (r"\boxed{3} then $\boxed$", "3"),  # a bare box with no argument is empty: skipped
        (r"\boxed{x} \fboxes{3}", "x"),  # another command
    ],
)
def test_extract_boxed_edges(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is **$12$**.", "12"),
        ("The answer is 12!", "12"),
        ("Answer = 7", "7"),
        ("the ANSWER IS: 9", "9"),
        ("The answer is 3.5 apples. Then more.", "3.5 apples"),
        ("The answer is 4.", "4"),
        ("The answer is " + "x" * 60, "x" * 60),  # exactly max_chars
        ("The answer is " + "x" * 61, None),
    ],
)
def test_extract_stated_edges(text: str, expected: str | None) -> None:
    assert extract_stated(text) == expected


def test_extract_stated_max_chars() -> None:
    assert extract_stated("The answer is 12345", max_chars=5) == "12345"
    assert extract_stated("The answer is 123456", max_chars=5) is None


def test_an_empty_box_prevents_the_stated_fallback() -> None:
    assert extract_answer(r"\boxed{} The answer is 5.", stated=True) is None
    assert extract_answer("", stated=True) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (r"1\,000", "1000"),
        (r"1\!2", "12"),
        (r"\tfrac{1}{2}", r"\frac{1}{2}"),
        (r"\text{\textbf{A}}", "a"),  # wrappers inside wrappers
        (r"\mathrm{kg}\mathbf{B}\textit{c}\mbox{d}", "kgbcd"),
        ("$5$.", "5"),
        (" 5. ", "5"),
    ],
)
def test_normalize_answer_edges(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_two_letters_are_a_word_one_letter_is_a_symbol() -> None:
    # Words compare as strings ("ab" is not "ba"); a single letter is a variable for math-verify.
    assert not answers_equivalent("ab", "ba")
    assert not answers_equivalent("don't", "tnod'")
    assert answers_equivalent("x", "y = x")  # math-verify reads an assignment as its value


def test_nesting_depth() -> None:
    assert answers._nesting("(a[b{c}])") == 3
    assert answers._nesting("())((") == 2  # a stray closer does not go below zero
    assert answers._nesting("abc") == 0


@pytest.mark.parametrize(
    ("answer", "expensive"),
    [
        ("(" * 8 + "1" + ")" * 8, False),
        ("(" * 9 + "1" + ")" * 9, True),
        ("1" * 300, False),
        ("1" * 301, True),
        ("1000!", True),
        ("999!", False),
        ("2^{10000}", True),
        ("2^{9999}", False),
        ("2^{-10000}", True),
        (r"3\uparrow\uparrow 3", True),
        ("9^{2^3}", True),
        ("9^9^9", True),
        ("9^{9}", False),
    ],
)
def test_what_skips_math_verify(answer: str, expensive: bool) -> None:
    assert answers._too_expensive(answer) is expensive


def test_answers_up_to_the_extraction_limit_are_compared() -> None:
    limit = answers.MAX_EXTRACTED_CHARS
    assert answers.compare_answers("1" * limit, "1" * limit) == (True, None)
    assert answers.compare_answers(" " + "1" * (limit + 1), "1" * (limit + 1)) == (True, "answer_too_long")
    assert answers.compare_answers("1" * (limit + 1), "2") == (False, "answer_too_long")
    assert answers.compare_answers("3", "1" * (limit + 1)) == (False, "answer_too_long")


def test_majority_vote_names_each_rejected_answer() -> None:
    limit = answers.MAX_EXTRACTED_CHARS
    vote = majority_vote([_r("__import__"), _r("9" * (limit + 1)), _r("9" * limit), _r("9" * limit)])
    assert vote.issues == ("response 0: answer_has_code ('__import__')",
                           f"response 1: answer_too_long ({limit + 1} chars, limit {limit})")
    assert vote.answers == (None, None, "9" * limit, "9" * limit)
    assert vote.accepted and vote.reason == "accepted"  # issues do not undo an accepted vote
    no_answer = majority_vote([_r("__import__")])
    assert (no_answer.reason, no_answer.agreement, no_answer.groups) == ("unverifiable", 0, ())
    tie = majority_vote([_r("1"), _r("2"), _r("eval(1)")], min_agree=1)
    assert tie.reason == "unverifiable" and tie.groups == ((0,), (1,))


def test_group_answers_records_undecided_comparisons(monkeypatch) -> None:
    monkeypatch.setattr(answers, "compare_answers", lambda a, b: (False, "verify_timeout"))
    issues: list[str] = []
    assert group_answers(["a", None, "b", "c"], issues) == ((0,), (2,), (3,))
    assert issues == ["responses 0, 2: verify_timeout", "responses 0, 3: verify_timeout",
                      "responses 2, 3: verify_timeout"]
    assert group_answers(["a", "b"]) == ((0,), (1,))  # without a list to fill


def test_the_signal_timeout_applies_in_the_main_thread_only() -> None:
    assert answers._timeout() == answers.MATH_VERIFY_TIMEOUT_S == 5
    seen: list = []
    t = threading.Thread(target=lambda: seen.append(answers._timeout()))
    t.start()
    t.join(10)
    assert seen == [None]


def test_in_process_verification(monkeypatch) -> None:
    monkeypatch.setenv("PRISMATIC_VERIFY_IN_PROCESS", "1")
    answers._math_equal.cache_clear()
    try:
        assert answers.compare_answers(r"\frac{1}{2}", "0.5") == (True, None)
        assert answers.compare_answers("0.5", r"\frac{1}{2}") == (True, None)
        assert answers.compare_answers(r"\frac{1}{3}", "0.5") == (False, None)
        assert answers.compare_answers(r"x \in [1, 2]", "[1, 2]") == answers.compare_answers("[1, 2]", r"x \in [1, 2]")
        assert answers.compare_answers(r"\frac{", "1") == (False, None)  # unparseable
    finally:
        answers._math_equal.cache_clear()


# ----------------------------------------------------------------------------- edges the mutation run found


def _compare_in_process(a: str, b: str, *, thread: bool) -> tuple[bool, str | None]:
    """compare_answers with math-verify in this process, in the main thread (its signal timeout
    on) or in a worker thread (no signal there: the timeout must be off)."""
    answers._math_equal.cache_clear()
    answers._parse.cache_clear()
    try:
        if not thread:
            return answers.compare_answers(a, b)
        seen: list = []
        t = threading.Thread(target=lambda: seen.append(answers.compare_answers(a, b)))
        t.start()
        t.join(60)
        return seen[0]
    finally:
        answers._math_equal.cache_clear()
        answers._parse.cache_clear()


def test_math_verify_is_tried_in_both_directions(monkeypatch) -> None:
    from math_verify import verify

    # math-verify's verify(gold, target) holds one way only for this pair: an inequality is the
    # interval, an interval is not the inequality.
    ineq, interval = r"x\le 3", r"(-\infty,3]"
    p_ineq, p_interval = answers._parse(ineq, None), answers._parse(interval, None)
    assert verify(list(p_ineq), list(p_interval)) and not verify(list(p_interval), list(p_ineq))
    assert answers.compare_answers(ineq, interval) == answers.compare_answers(interval, ineq) == (True, None)  # worker
    monkeypatch.setenv("PRISMATIC_VERIFY_IN_PROCESS", "1")
    for thread in (False, True):
        assert _compare_in_process(ineq, interval, thread=thread) == (True, None), thread
        assert _compare_in_process(interval, ineq, thread=thread) == (True, None), thread
        assert _compare_in_process(interval, "(-\\infty,4]", thread=thread) == (False, None), thread


def test_a_failing_math_verify_means_not_equal(monkeypatch) -> None:
    import math_verify

    def broken(*args, **kwargs):
        raise RuntimeError("math-verify failed")

    monkeypatch.setenv("PRISMATIC_VERIFY_IN_PROCESS", "1")
    monkeypatch.setattr(math_verify, "verify", broken)
    assert _compare_in_process(r"\frac{1}{2}", "0.5", thread=False) == (False, None)


def test_an_answer_that_normalizes_to_nothing_equals_nothing() -> None:
    # "." parses as "0." in math-verify, which then equals "0."; a normalized-empty side must stop first.
    assert normalize_answer(".") == "" and normalize_answer("0.") == "0"
    assert answers.compare_answers(".", "0.") == (False, None)
    assert answers.compare_answers("0.", ".") == (False, None)
    assert answers.compare_answers("$.$", ".") == (False, None)


def test_a_side_of_words_or_too_costly_never_reaches_math_verify() -> None:
    # math-verify reads "ab" as a*b, and a deep nest of parentheses around 1 as 1.
    deep = "(" * 9 + "1" + ")" * 9
    for words, math in [("ab", r"a \cdot b"), (r"\text{ab}", "a*b")]:
        assert answers.compare_answers(words, math) == (False, None)
        assert answers.compare_answers(math, words) == (False, None)
    assert answers.compare_answers(deep, "1") == answers.compare_answers("1", deep) == (False, None)
    assert answers.compare_answers("(" * 8 + "1" + ")" * 8, "1") == (True, None)  # one level less: compared


def test_a_comparison_that_raises_is_not_equal() -> None:
    assert answers.compare_answers(None, "1") == (False, None)  # type: ignore[arg-type]
    assert answers.compare_answers("1", None) == (False, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ("$yes$", True),
        ("$yes.$", True),
        ("$yes$.", True),
        (r"\text{yes}.", True),
        ("IX", True),  # two capitals: a word (Roman numerals compare as strings)
        (r"\text{a}", False),  # one letter inside a wrapper is still a symbol
        ("a", False),
        ("x+y", False),
    ],
)
def test_what_counts_as_words(answer: str, words: bool) -> None:
    assert answers._is_words(answer) is words


def test_gold_answers_in_a_box_or_dollars_are_unwrapped() -> None:
    assert answers._strip_outer_box(r"\boxed{\text{Monday}}") == r"\text{Monday}"
    assert answers._strip_outer_box(" $X$ ") == "X"
    assert answers.compare_answers(r"\boxed{\text{Monday}}", "Monday") == (True, None)
    assert answers.compare_answers("X", "X") == (True, None)
    assert is_correct(r"so \boxed{Monday}", r"\boxed{\text{Monday}}")


@pytest.mark.parametrize(("raw", "expected"), [("IX", "ix"), ("$3.$", "3"), ("$IX.$", "ix"), ("X.", "x")])
def test_normalize_answer_keeps_letters_at_the_ends(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_nesting_counts_only_brackets() -> None:
    assert answers._nesting("X(X)") == 1
    assert answers._nesting("((X(") == 3
    assert answers._nesting("((x)((y)))") == 3


@pytest.mark.parametrize("text", ["The answer is X.", "The final answer is X", "Answer: $X$", "answer = **X**!",
                                  "The answer is **X,**", "The answer is $X!$"])
def test_a_stated_letter_survives_the_trimming(text: str) -> None:
    assert extract_stated(text) == "X"


def test_code_in_an_answer_of_exactly_the_limit_is_named_at_extraction() -> None:
    limit = answers.MAX_EXTRACTED_CHARS
    code = "eval(1)" + "1" * (limit - len("eval(1)"))
    assert len(code) == limit
    vote = majority_vote([_r(code), _r("2"), _r("2")])
    assert vote.issues == ("response 0: answer_has_code ('eval(')",)
    assert vote.answers == (None, "2", "2") and vote.accepted


def test_a_tie_keeps_its_issues() -> None:
    tie = majority_vote([_r("1"), _r("2")], min_agree=1)
    assert (tie.reason, tie.issues) == ("tie", ())
    unverifiable = majority_vote([_r("1"), _r("1"), _r("2"), _r("2"), _r("eval(1)")])
    assert unverifiable.groups == ((0, 1), (2, 3)) and not unverifiable.accepted
    assert (unverifiable.reason, unverifiable.issues) == ("unverifiable", ("response 4: answer_has_code ('eval(')",))
