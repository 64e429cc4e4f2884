"""Tests for prismatic_assets.core.diversity against independent computations."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.diversity import (
    cluster_coverage,
    compression_ratio,
    distinct_n,
    embedding_vendi,
    hidden_state_key,
    mean_pooled_hidden_states,
    ngram_tokens,
    pca_2d,
)


def _embeddings(n: int, h: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, h)) @ np.diag(np.linspace(1.0, 0.1, h)) + 0.3


# ----------------------------------------------------------------------------- embedding Vendi


@pytest.mark.parametrize("n, h", [(3, 16), (40, 16), (25, 64)])
def test_embedding_vendi_equals_vendi_score_on_the_same_embeddings(n, h):
    x = _embeddings(n, h)
    assert embedding_vendi(x).score == pytest.approx(vendi.score_X(x), rel=1e-6)  # N x N kernel there
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    kernel = xn @ xn.T
    assert embedding_vendi(x, q=2.0).score == pytest.approx(vendi.score_K(kernel, q=2), rel=1e-6)
    assert embedding_vendi(x, q=float("inf")).score == pytest.approx(vendi.score_K(kernel, q="inf"), rel=1e-6)


def test_embedding_vendi_counts_distinct_directions():
    basis = np.eye(8)
    assert embedding_vendi(np.repeat(basis[:3], 5, axis=0)).score == pytest.approx(3.0)
    assert embedding_vendi(np.repeat(basis[:1], 5, axis=0) * 7).score == pytest.approx(1.0)


# ----------------------------------------------------------------------------- n-grams


def test_tokens_are_lowercased_words_and_single_punctuation():
    assert ngram_tokens("The cat, the CAT!  x+1") == ["the", "cat", ",", "the", "cat", "!", "x", "+", "1"]


def test_distinct_n_by_hand():
    texts = ["the cat sat", "the cat ran", "a dog"]
    # unigrams: the cat sat the cat ran a dog -> 8 total, unique {the, cat, sat, ran, a, dog} = 6
    # bigrams: (the cat)(cat sat) (the cat)(cat ran) (a dog) -> 5 total, 4 unique
    # trigrams: (the cat sat) (the cat ran) -> 2 total, 2 unique; "a dog" has none
    d1, d2, d3 = (distinct_n(texts, n) for n in (1, 2, 3))
    assert (d1.unique, d1.total, d1.value) == (6, 8, 6 / 8)
    assert (d2.unique, d2.total, d2.value) == (4, 5, 4 / 5)
    assert (d3.unique, d3.total, d3.value) == (2, 2, 1.0)


def test_distinct_n_does_not_cross_sample_boundaries():
    # Joined, "b a" would be a bigram; kept apart it is not.
    assert distinct_n(["a b", "a b"], 2).total == 2
    assert distinct_n(["a b", "a b"], 2).unique == 1


def test_distinct_n_without_ngrams_is_nan_and_bad_n_raises():
    assert math.isnan(distinct_n(["one"], 2).value)
    with pytest.raises(ValueError, match="positive integer"):
        distinct_n(["a"], 0)


def test_compression_ratio_matches_gzip_and_ranks_redundancy():
    texts = ["alpha beta gamma", "delta epsilon"]
    data = "alpha beta gamma\ndelta epsilon".encode()
    result = compression_ratio(texts)
    assert result.raw_bytes == len(data)
    assert result.compressed_bytes == len(gzip.compress(data, compresslevel=9, mtime=0))
    assert result.value == pytest.approx(len(data) / result.compressed_bytes)
    rng = np.random.default_rng(0)
    varied = ["".join(rng.choice(list("abcdefghij"), 40)) for _ in range(50)]
    repeated = ["the same sentence again and again"] * 50
    assert compression_ratio(repeated).value > 3 * compression_ratio(varied).value


# ----------------------------------------------------------------------------- coverage


def test_coverage_shares_exclusive_clusters_and_entropy():
    # set A: clusters 0,0,1,1 ; set B: clusters 1,2,2,2,2,2
    assignments = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    sets = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    cov = cluster_coverage(assignments, sets, ["A", "B"], k=4)
    np.testing.assert_allclose(cov.shares, [[0.5, 0.5, 0, 0], [0, 1 / 6, 5 / 6, 0]])
    assert cov.sizes.tolist() == [2, 3, 5, 0]
    assert cov.exclusive == {"A": [0], "B": [2]}  # cluster 1 is shared, cluster 3 empty
    assert cov.entropy["A"] == pytest.approx(math.log(2))
    assert cov.entropy["B"] == pytest.approx(-(1 / 6 * math.log(1 / 6) + 5 / 6 * math.log(5 / 6)))
    np.testing.assert_allclose(cov.composition[:, 1], [2 / 3, 1 / 3])
    assert cov.distinguishing(2) == [2, 0]  # B's cluster 2 (5/6 vs 0), then A's cluster 0 (1/2 vs 0)


def test_coverage_rejects_an_empty_set():
    with pytest.raises(ValueError, match="no sample"):
        cluster_coverage([0, 1], [0, 0], ["A", "B"], k=2)


# ----------------------------------------------------------------------------- PCA map


def test_pca_2d_finds_the_leading_axes():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 5)) * np.array([10.0, 3.0, 0.1, 0.1, 0.1])
    xy = pca_2d(x)
    centred = x - x.mean(axis=0)
    assert np.abs(np.corrcoef(xy[:, 0], centred[:, 0])[0, 1]) > 0.99
    assert np.abs(np.corrcoef(xy[:, 1], centred[:, 1])[0, 1]) > 0.99


# ----------------------------------------------------------------------------- hidden states


def test_mean_pooled_hidden_states_match_one_sample_at_a_time(tiny_llama, packaged_tokenizer):
    import torch

    prompts = ["What is 2 + 2?", "Name a prime number larger than one hundred, please.", "Hi"]
    responses = ["4", "101 is prime because no prime up to 10 divides it.", "Hello there, friend."]
    batched = mean_pooled_hidden_states(tiny_llama, packaged_tokenizer, prompts, responses, batch_size=2)
    assert batched.shape == (3, tiny_llama.config.hidden_size)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids = packaged_tokenizer.apply_chat_template(
            [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            out = tiny_llama(input_ids=torch.tensor([list(ids)]), output_hidden_states=True)
        expected = out.hidden_states[-1][0].mean(dim=0).numpy()
        np.testing.assert_allclose(batched[i], expected, rtol=1e-4, atol=1e-5)
    # The response matters: the same prompt with another answer gives another embedding.
    other = mean_pooled_hidden_states(tiny_llama, packaged_tokenizer, prompts[:1], ["5"])
    assert not np.allclose(other[0], batched[0])
    # max_length truncates.
    short = mean_pooled_hidden_states(tiny_llama, packaged_tokenizer, prompts[1:2], responses[1:2], max_length=4)
    assert not np.allclose(short[0], batched[1])


def test_hidden_state_key_depends_on_model_and_length():
    assert hidden_state_key("a", 512) != hidden_state_key("b", 512)
    assert hidden_state_key("a", 512) != hidden_state_key("a", 1024)
