"""Tests for prismatic_assets.core.decontamination: n-gram overlap and duplicates."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from prismatic_assets.core import decontamination as d
from prismatic_assets.core.decontamination import (
    DuplicateMatch,
    Match,
    NGramIndex,
    find_duplicates,
    tokenize,
)

EVAL = (
    "Let ABC be a triangle with AB = 13, BC = 14 and CA = 15. "
    "Find the radius of the inscribed circle of triangle ABC."
)
EVAL_TOKENS = tokenize(EVAL)


def _index(n: int = 10, label: str = "aime") -> NGramIndex:
    index = NGramIndex(n=n)
    index.add([EVAL], label=label)
    return index


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("Find $x$ if $x^2 = 4$.", ["find", "x", "if", "x", "2", "4"]),
        (r"Compute \frac{1}{2} + f_1", ["compute", "frac", "1", "2", "f", "1"]),
        ("ＦＵＬＬ width, CAPS", ["full", "width", "caps"]),  # NFKC + case
        ("don't  stop", ["don", "t", "stop"]),
        ("", []),
    ],
)
def test_tokenize(text: str, tokens: list[str]) -> None:
    assert tokenize(text) == tokens


def test_exact_ten_gram_is_a_hit() -> None:
    ten = " ".join(EVAL_TOKENS[3:13])
    match = _index().is_contaminated(f"A brand new question. {ten}. What follows?")
    assert match == Match(label="aime", ngram=ten, eval_index=0)


def test_nine_gram_is_not_a_hit_at_n_10() -> None:
    nine = " ".join(EVAL_TOKENS[3:12])
    assert _index().is_contaminated(f"A brand new question. {nine}. What follows?") is None


def test_n_changes_the_result() -> None:
    nine = " ".join(EVAL_TOKENS[3:12])
    text = f"A brand new question. {nine}. What follows?"
    assert _index(n=10).is_contaminated(text) is None
    assert _index(n=9).is_contaminated(text) is not None


def test_formatting_does_not_hide_overlap() -> None:
    reformatted = EVAL.upper().replace(" ", "  \n").replace(",", " ;")
    assert _index().is_contaminated(reformatted) is not None


def test_label_reported_and_each_benchmark_named() -> None:
    index = NGramIndex(n=5)
    index.add(["how many positive divisors does 360 have"], label="math500")
    index.add(["a farmer has 12 cows and 7 pigs", "how many positive divisors does 360 have"], "gsm8k")
    found = index.overlaps("Question: how many positive divisors does 360 have in total?")
    assert {m.label for m in found} == {"math500", "gsm8k"}
    assert {m.ngram for m in found} == {
        "how many positive divisors does",
        "many positive divisors does 360",
        "positive divisors does 360 have",
    }
    assert index.labels == ("math500", "gsm8k")
    assert index.n_texts == 3
    by_label = {m.label: m.eval_index for m in found}
    assert by_label == {"math500": 0, "gsm8k": 2}
    assert index.is_contaminated("a farmer has 12 cows and 7 pigs").label == "gsm8k"


def test_overlaps_lists_grams_in_text_order_once() -> None:
    index = NGramIndex(n=2)
    index.add(["a b c", "a b c"], label="x")
    assert [m.ngram for m in index.overlaps("a b c a b")] == ["a b", "b c"]


@pytest.mark.parametrize(
    ("eval_text", "query", "hit"),
    [
        ("Find x.", "find X", True),  # short texts: whole-text match
        ("Find x.", "Find x if x + 1 = 2.", False),  # not searched inside longer texts
        ("Find x if x + 1 = 2.", "Find x.", False),
        ("", "", False),
        ("...", "!!!", False),  # no tokens at all
    ],
)
def test_short_text_rule(eval_text: str, query: str, hit: bool) -> None:
    index = NGramIndex(n=10)
    index.add([eval_text], label="s")
    assert (index.is_contaminated(query) is not None) is hit


def test_add_after_query_and_empty_index() -> None:
    index = NGramIndex(n=3)
    assert index.is_contaminated("one two three") is None
    index.add(["one two three"], label="a")
    assert index.is_contaminated("one two three four") is not None
    index.add(["four five six"], label="b")
    assert index.is_contaminated("four five six").label == "b"
    assert len(index) == 2
    assert index.check(["one two three", "nope"]) == [
        Match("a", "one two three", 0),
        None,
    ]


def test_windows_do_not_cross_text_boundaries() -> None:
    index = NGramIndex(n=3)
    index.add(["a b", "c d"], label="x")  # short texts; "a b c" spans two texts
    assert index.is_contaminated("a b c d") is None


def test_many_texts_index_quickly() -> None:
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{v}" for v in rng.integers(0, 1000, 40)) for _ in range(5000)]
    index = NGramIndex()
    index.add(texts, label="big")
    assert index.is_contaminated(texts[1234]).eval_index == 1234
    assert index.is_contaminated("nothing " * 20) is None


def test_bad_n() -> None:
    with pytest.raises(ValueError, match="n >= 1"):
        NGramIndex(n=0)


POOL = ["What is 2 + 2?", "Find all primes p such that p + 2 is prime."]


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        (["A new problem."], [None]),
        (["What is 2 + 2?"], [DuplicateMatch("exact", "pool", 0)]),
        (["  what is 2  +  2?  "], [DuplicateMatch("normalized", "pool", 0)]),
        (["FIND ALL PRIMES P SUCH THAT P + 2 IS PRIME."], [DuplicateMatch("normalized", "pool", 1)]),
        (["New one.", "New one."], [None, DuplicateMatch("exact", "batch", 0)]),
        (["New one.", "x", "new   ONE."], [None, None, DuplicateMatch("normalized", "batch", 0)]),
        (
            ["What is 2 + 2?", "What is 2 + 2?"],  # a pool copy twice: both name the pool
            [DuplicateMatch("exact", "pool", 0), DuplicateMatch("exact", "pool", 0)],
        ),
        (["What is 2 + 3?"], [None]),  # different numbers are different problems
        ([], []),
    ],
)
def test_find_duplicates(candidates: list[str], expected: list[DuplicateMatch | None]) -> None:
    assert find_duplicates(candidates, POOL) == expected


def test_find_duplicates_reports_pool_ids() -> None:
    got = find_duplicates(["what is 2 + 2?"], POOL, pool_ids=["s1", "s2"])
    assert got == [DuplicateMatch("normalized", "pool", 0, pool_id="s1")]
    assert find_duplicates(["what is 2 + 2?"], POOL)[0].pool_id is None


def test_find_duplicates_rejects_misaligned_ids() -> None:
    with pytest.raises(ValueError, match="one id per pool problem"):
        find_duplicates(["x"], POOL, pool_ids=["only-one"])


def test_find_duplicates_with_empty_pool() -> None:
    assert find_duplicates(["a", "a"], []) == [None, DuplicateMatch("exact", "batch", 0)]


# ----------------------------------------------------------------------------- edges the mutation run found


def test_default_n_is_the_papers_10_and_n_1_is_allowed():
    assert NGramIndex().n == 10
    unigrams = NGramIndex(n=1)
    unigrams.add(["alpha beta"], label="b")
    assert unigrams.is_contaminated("gamma beta") == Match("b", "beta", 0)


def test_a_text_shorter_than_n_is_one_gram_of_its_own_even_of_one_word():
    index = NGramIndex(n=5)
    index.add(["Two words", "hello"], label="b")
    assert index.is_contaminated("two WORDS") == Match("b", "two words", 0)
    assert index.is_contaminated("Hello!") == Match("b", "hello", 1)
    assert index.is_contaminated("two words more") is None  # three tokens: another whole-text gram


def test_empty_texts_index_nothing_and_match_nothing():
    index = NGramIndex(n=3)
    index.add(["", "a b c"], label="b")
    assert len(index) == 1 and index.n_texts == 2
    assert index.overlaps("") == [] and index.is_contaminated("xxxx") is None
    index.add(["xxxx"], label="b")
    assert index.overlaps("") == []


def test_the_first_evaluation_text_holding_a_gram_is_the_one_named():
    """Equal hashes keep the order the texts were added in (a stable sort), so the match
    names the first evaluation text with the n-gram, however many share it."""
    index = NGramIndex(n=3)
    index.add([f"w{i} x y z" for i in range(40)] + ["a b c"] * 60, label="b")
    assert index.is_contaminated("so a b c") == Match("b", "a b c", 40)


def test_the_index_keeps_compact_dtypes():
    """64-bit hashes (float64 would merge distinct ones) and 32-bit text and label ids: memory at 1M grams."""
    index = NGramIndex(n=2)
    index.add(["a b c", "d e"], label="one")
    index.add(["f g"], label="two")
    assert len(index) == 4
    assert (index._hashes.dtype, index._sources.dtype, index._label_ids.dtype) == (np.uint64, np.uint32, np.uint32)
    assert NGramIndex()._hashes.dtype == np.uint64 and NGramIndex()._sources.dtype == np.uint32


def test_gram_hashes_are_the_documented_polynomial_hash_and_short_texts_are_salted():
    # Reference in Python integers: sum_k h(t_k) * P^(n-1-k) mod 2^64 over BLAKE2b-64 token
    # hashes; a text shorter than n is one gram of all its tokens, XOR the salt.
    def h(token: str) -> int:
        return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little")

    def poly(tokens: list[str]) -> int:
        acc = 0
        for t in tokens:
            acc = (acc * int(d._P) + h(t)) % 2**64
        return acc

    salt = int(d._SHORT_SALT)
    docs = [["a", "b", "c", "d"], ["x", "y"], [], ["é", "b", "c"]]
    hashes, owners = d._GramHasher()(docs, 3)
    assert owners.tolist() == [0, 0, 3, 1]
    assert [int(x) for x in hashes] == [poly(["a", "b", "c"]), poly(["b", "c", "d"]), poly(["é", "b", "c"]),
                                        poly(["x", "y"]) ^ salt]
