"""Properties of the majority vote (Hypothesis), against a direct count of the boxed answers.

Answers are drawn from a few words and small integers, some responses carry no box: the
vote must group equal answers, accept exactly when one group is the unique largest and
reaches min_agree, and say why otherwise. Word answers and identical strings are decided
without math-verify, integers go through it (a handful of distinct pairs, cached).
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from prismatic_assets.core.answers import majority_vote

ANSWERS = ["alpha", "beta", "gamma", "3", "4"]
responses = st.lists(st.one_of(st.sampled_from(ANSWERS), st.none()), min_size=0, max_size=7)


def _text(answer: str | None, i: int) -> str:
    if answer is None:
        return f"Response {i} works it out but never states a final answer."
    return f"Response {i}: after some steps the result follows. \\boxed{{{answer}}}"


def expected_vote(answers: list[str | None], min_agree: int) -> tuple[bool, str, tuple[int, ...]]:
    """(accepted, reason, majority indices) by counting the answers directly."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return False, "no_answer", ()
    ranked = counts.most_common()
    top_answer, top = ranked[0]
    if top < min_agree:
        return False, "disagreement", ()
    if len(ranked) > 1 and ranked[1][1] == top:
        return False, "tie", ()
    return True, "accepted", tuple(i for i, a in enumerate(answers) if a == top_answer)


@settings(max_examples=120, deadline=None)
@given(answers=responses, min_agree=st.integers(1, 4))
def test_majority_vote_matches_a_direct_count(answers, min_agree):
    vote = majority_vote([_text(a, i) for i, a in enumerate(answers)], min_agree=min_agree)
    accepted, reason, majority = expected_vote(answers, min_agree)
    assert (vote.accepted, vote.reason, vote.majority) == (accepted, reason, majority)
    assert vote.answers == tuple(answers)
    assert vote.agreement == max(Counter(a for a in answers if a is not None).values(), default=0)
    assert vote.majority_answer == (answers[majority[0]] if accepted else None)
    # Groups: every answered response in exactly one group of equal answers, largest first.
    grouped = [i for g in vote.groups for i in g]
    assert sorted(grouped) == [i for i, a in enumerate(answers) if a is not None]
    assert all(len({answers[i] for i in g}) == 1 for g in vote.groups)
    assert len(vote.groups) == len({a for a in answers if a is not None})
    assert [len(g) for g in vote.groups] == sorted((len(g) for g in vote.groups), reverse=True)


@settings(max_examples=60, deadline=None)
@given(answers=responses, min_agree=st.integers(1, 4), data=st.data())
def test_the_decision_does_not_depend_on_the_order_of_the_solutions(answers, min_agree, data):
    order = data.draw(st.permutations(range(len(answers))))
    vote = majority_vote([_text(a, i) for i, a in enumerate(answers)], min_agree=min_agree)
    shuffled = majority_vote([_text(answers[j], i) for i, j in enumerate(order)], min_agree=min_agree)
    assert (shuffled.accepted, shuffled.reason, shuffled.agreement) == (vote.accepted, vote.reason, vote.agreement)
    assert shuffled.majority_answer == vote.majority_answer
