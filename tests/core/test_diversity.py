"""Tests for prismatic_assets.core.diversity against independent computations."""

from __future__ import annotations

import gzip
import math
from types import SimpleNamespace

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.diversity import (
    cluster_coverage,
    compression_ratio,
    distinct_n,
    distinct_ns,
    embedding_vendi,
    hidden_state_key,
    mean_pooled_hidden_states,
    ngram_tokens,
    pca_2d,
    sample_text,
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


# ----------------------------------------------------------------------------- edges the mutation run found


def test_hidden_state_key_is_pinned():
    # Pinned: cached hidden states are stored under this string; changing it orphans the cache.
    assert hidden_state_key("abc", 512) == "hidden-8189a8fa55490939a9c9de1fe5"
    assert hidden_state_key("abc", np.int64(512)) == hidden_state_key("abc", 512)


def test_sample_text_is_prompt_newline_response():
    assert sample_text("What is 2+2?", "4") == "What is 2+2?\n4"


class _FakeTokenizer:
    """Renders a conversation as "role:content|role:content"; one token per character (its code point)."""

    def __init__(self, pad_token_id=None, batch_encoding=False):
        self.pad_token_id = pad_token_id
        self.batch_encoding = batch_encoding
        self.conversations = []

    def apply_chat_template(self, conversation, tokenize=False):
        self.conversations.append(conversation)
        text = "|".join(f"{m['role']}:{m['content']}" for m in conversation)
        if not tokenize:
            return text
        ids = [ord(c) for c in text]
        return {"input_ids": ids} if self.batch_encoding else ids


class _FakeDecoder:
    """Hidden state of token t is [t, 1]: the mean over the real tokens is [mean code point, 1].

    Records each call's input ids, mask and keyword arguments. As a whole model (no separate
    decoder) it answers only with `hidden_states` (the last one is the real one)."""

    def __init__(self, whole=False):
        import torch

        self.whole = whole
        self.calls = []
        self.base_model = self if whole else None
        self._weight = torch.zeros(1)

    def parameters(self):
        yield self._weight

    def __call__(self, input_ids, attention_mask, **kwargs):
        import torch

        self.calls.append((input_ids.clone(), attention_mask.clone(), kwargs))
        hidden = torch.stack([input_ids.float(), torch.ones(input_ids.shape)], dim=-1)  # (b, T, 2)
        if self.whole:
            assert kwargs.get("output_hidden_states") is True
            return SimpleNamespace(hidden_states=(hidden * 0 - 5, hidden * 0 + 7, hidden))
        return SimpleNamespace(last_hidden_state=hidden)


def _fake_model(whole=False):
    if whole:
        return _FakeDecoder(whole=True)
    decoder = _FakeDecoder()
    return SimpleNamespace(base_model=decoder, parameters=decoder.parameters), decoder


def _codes_mean(prompt, response, max_length=None):
    text = f"user:{prompt}|assistant:{response}"[:max_length]
    return [sum(map(ord, text)) / len(text), 1.0]


@pytest.mark.parametrize("batch_encoding", [False, True])
def test_mean_pooled_hidden_states_average_the_real_tokens_in_input_order(batch_encoding):
    prompts, responses = ["a much longer prompt here", "hi", "mid size"], ["x", "yes", "ok then"]
    model, decoder = _fake_model()
    tok = _FakeTokenizer(batch_encoding=batch_encoding)
    seen = []
    out = mean_pooled_hidden_states(model, tok, prompts, responses, batch_size=2,
                                    progress=lambda done, total: seen.append((done, total)))
    assert out.dtype == np.float32 and out.shape == (3, 2)
    np.testing.assert_allclose(out, [_codes_mean(p, r) for p, r in zip(prompts, responses)], rtol=1e-6)
    assert tok.conversations[0] == [{"role": "user", "content": prompts[0]},
                                    {"role": "assistant", "content": responses[0]}]
    assert seen == [(2, 3), (3, 3)]
    # Shortest samples first; the padded positions hold token 0 (no pad token) and are masked.
    ids, mask, kwargs = decoder.calls[0]
    lengths = [len(f"user:{prompts[i]}|assistant:{responses[i]}") for i in (1, 2)]
    assert ids.shape == (2, max(lengths)) and mask.sum(dim=1).tolist() == lengths
    assert ids[0, lengths[0]:].tolist() == [0] * (lengths[1] - lengths[0])
    assert kwargs == {"use_cache": False}


def test_mean_pooled_hidden_states_pad_with_the_pad_token_and_cut_at_max_length():
    model, decoder = _fake_model()
    out = mean_pooled_hidden_states(model, _FakeTokenizer(pad_token_id=7), ["p", "a longer prompt"], ["r", "s"],
                                    max_length=20)
    np.testing.assert_allclose(out, [_codes_mean("p", "r", 20), _codes_mean("a longer prompt", "s", 20)], rtol=1e-6)
    ids, mask, _ = decoder.calls[0]
    n = len("user:p|assistant:r")  # 18 tokens; the other sample is cut to 20
    assert ids.shape == (2, 20) and ids[0, n:].tolist() == [7, 7] and mask.sum(dim=1).tolist() == [n, 20]


def test_mean_pooled_hidden_states_cut_at_1024_tokens_by_default():
    model, decoder = _fake_model()
    long = "x" * 2000  # one token per character with the fake tokenizer
    out = mean_pooled_hidden_states(model, _FakeTokenizer(), [long, "p"], ["r", "s"])
    np.testing.assert_allclose(out, [_codes_mean(long, "r", 1024), _codes_mean("p", "s")], rtol=1e-6)
    assert decoder.calls[0][1].sum(dim=1).tolist() == [len("user:p|assistant:s"), 1024]


def test_mean_pooled_hidden_states_of_a_model_without_a_separate_decoder():
    model = _FakeDecoder(whole=True)
    out = mean_pooled_hidden_states(model, _FakeTokenizer(), ["q"], ["a"], batch_size=1)
    np.testing.assert_allclose(out, [_codes_mean("q", "a")], rtol=1e-6)


def test_mean_pooled_hidden_states_of_no_sample_is_empty():
    model, _ = _fake_model()
    out = mean_pooled_hidden_states(model, _FakeTokenizer(), [], [])
    assert out.shape == (0, 0) and out.dtype == np.float32


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": True}, "batch_size"), ({"batch_size": 2.0}, "batch_size"),
    ({"max_length": 0}, "max_length"), ({"max_length": True}, "max_length"), ({"max_length": 8.0}, "max_length"),
])
def test_mean_pooled_hidden_states_reject_bad_sizes(kwargs, match):
    model, _ = _fake_model()
    with pytest.raises(ValueError, match=match):
        mean_pooled_hidden_states(model, _FakeTokenizer(), ["q"], ["a"], **kwargs)


def test_mean_pooled_hidden_states_accept_the_smallest_sizes_and_need_one_response_per_prompt():
    model, _ = _fake_model()
    out = mean_pooled_hidden_states(model, _FakeTokenizer(), ["q", "qq"], ["a", "a"], batch_size=1, max_length=1)
    np.testing.assert_allclose(out, [[ord("u"), 1.0], [ord("u"), 1.0]])  # the first character, "u" of "user:"
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        mean_pooled_hidden_states(model, _FakeTokenizer(), ["q", "qq"], ["a"])


def test_distinct_ns_gives_every_n_and_counts_texts_without_ngrams():
    got = distinct_ns(["a", "", "b c a"], ns=[1, 2])
    assert set(got) == {1, 2}
    assert (got[1].unique, got[1].total, got[1].n_texts) == (3, 4, 3)
    assert (got[2].n, got[2].unique, got[2].total, got[2].value) == (2, 2, 2, 1.0)
    nothing = distinct_n([], 1)
    assert (nothing.unique, nothing.total, nothing.n_texts) == (0, 0, 0) and math.isnan(nothing.value)


def test_distinct_n_of_many_texts_is_exact():
    # Past 4096 texts the per-text n-grams are folded together: no n-gram is lost or counted twice.
    texts = [f"w{i} common" for i in range(5000)]
    uni, bi = distinct_ns(texts, (1, 2)).values()
    assert (uni.unique, uni.total) == (5001, 10000)
    assert (bi.unique, bi.total) == (5000, 5000)


@pytest.mark.parametrize("n", [0, -1, True, 1.0])
def test_distinct_ns_rejects_a_bad_n(n):
    with pytest.raises(ValueError, match="positive integer"):
        distinct_ns(["a b"], (1, n))


def test_compression_ratio_of_nothing_is_nan():
    for texts, n_texts, raw in [([], 0, 0), ([""], 1, 0), (["", ""], 2, 1)]:
        result = compression_ratio(texts)
        assert (result.raw_bytes, result.n_texts) == (raw, n_texts)
        assert math.isnan(result.value) == (raw == 0)
    assert compression_ratio([]).compressed_bytes == 0
    assert compression_ratio(iter(["é"])).raw_bytes == 2  # UTF-8 bytes, from any iterable


def _tie_coverage():
    # A (3 samples): clusters 0, 1, 4; B (6 samples): 1, 1, 2, 2, 4, 4; cluster 3 is empty.
    # shares A = [1/3, 1/3, 0, 0, 1/3], B = [0, 1/3, 1/3, 0, 1/3]: contrast [1/3, 0, 1/3, 0, 0].
    return cluster_coverage([0, 1, 4, 1, 1, 2, 2, 4, 4], [0, 0, 0, 1, 1, 1, 1, 1, 1], ["A", "B"], k=5)


def test_distinguishing_breaks_ties_by_cluster_size_then_index_and_skips_empty_clusters():
    cov = _tie_coverage()
    assert cov.sizes.tolist() == [1, 3, 2, 0, 3]
    assert cov.distinguishing() == [2, 0, 1]  # 2 and 0 tie on contrast: the larger cluster 2 first
    assert cov.distinguishing(10) == [2, 0, 1, 4]  # cluster 3 is empty
    assert cov.exclusive == {"A": [0], "B": [2]}
    assert np.isnan(cov.composition[:, 3]).all()
    np.testing.assert_allclose(cov.composition[:, 1], [1 / 3, 2 / 3])
    assert cov.effective_clusters("A") == pytest.approx(3.0) and cov.effective_clusters("B") == pytest.approx(3.0)


def test_coverage_as_dict():
    d = _tie_coverage().as_dict()
    third = 0.333333
    assert d["sets"] == ["A", "B"] and d["k"] == 5 and d["sizes"] == [1, 3, 2, 0, 3]
    assert d["counts"] == {"A": [1, 1, 0, 0, 1], "B": [0, 2, 2, 0, 2]}
    assert d["shares"]["A"] == pytest.approx([third, third, 0, 0, third], abs=1e-12)
    assert d["shares"]["B"] == pytest.approx([0, third, third, 0, third], abs=1e-12)
    assert d["contrast"] == pytest.approx([third, 0, third, 0, 0], abs=1e-12)
    assert d["exclusive"] == {"A": [0], "B": [2]}
    assert d["entropy"] == pytest.approx({"A": math.log(3), "B": math.log(3)})
    assert d["effective_clusters"] == pytest.approx({"A": 3.0, "B": 3.0})
    assert set(d) == {"sets", "k", "sizes", "counts", "shares", "contrast", "exclusive", "entropy",
                      "effective_clusters"}


def test_one_set_has_no_exclusive_clusters():
    cov = cluster_coverage([0, 1, 1], [0, 0, 0], ["A"], k=np.int64(2))
    assert cov.exclusive == {"A": []} and cov.k == 2
    np.testing.assert_allclose(cov.shares, [[1 / 3, 2 / 3]])
    np.testing.assert_allclose(cov.contrast, [0.0, 0.0])


@pytest.mark.parametrize("assignments, set_index, k, match", [
    ([[0, 1]], [[0, 0]], 2, "1-D"),
    ([0, 1], [0], 2, "same length"),
    ([0, 1], [0, 0], 0, "k must"),
    ([0, 1], [0, 0], True, "k must"),
    ([0, 1], [0, 0], 2.0, "k must"),
    ([0, 2], [0, 0], 2, "assignments must lie"),
    ([-1, 1], [0, 0], 2, "assignments must lie"),
    ([0, 1], [0, 1], 2, "set_index must lie"),
    ([0, 1], [-1, 0], 2, "set_index must lie"),
    ([], [], 2, "no sample"),
])
def test_coverage_rejects_bad_input(assignments, set_index, k, match):
    with pytest.raises(ValueError, match=match):
        cluster_coverage(np.array(assignments, dtype=np.int64), np.array(set_index, dtype=np.int64), ["A"], k)


def test_coverage_accepts_the_largest_cluster_and_set():
    cov = cluster_coverage([1, 0], [1, 0], ["A", "B"], k=2)
    assert cov.counts.tolist() == [[1, 0], [0, 1]] and cov.exclusive == {"A": [0], "B": [1]}


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_pca_2d_coordinates_follow_the_positive_axes(sign):
    # Axes e1 (variance 4.5) and e2 (0.5); eigh may return -e1 or -e2: the map must not flip.
    x = sign * np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + [10.0, -2.0]
    xy = pca_2d(x)
    assert xy.dtype == np.float32
    np.testing.assert_allclose(xy, sign * np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]), atol=1e-6)
    np.testing.assert_allclose(pca_2d(x, batch_size=1), xy, atol=1e-6)


def test_pca_2d_rejects_bad_shapes():
    for bad in (np.zeros(3), np.zeros((0, 2))):
        with pytest.raises(ValueError, match="non-empty"):
            pca_2d(bad)


def test_pca_2d_of_one_dimensional_vectors_is_the_centred_value_and_zero():
    coords = pca_2d(np.array([[1.0], [2.0], [6.0]]))  # mean 3
    np.testing.assert_array_equal(coords, np.array([[-2.0, 0.0], [-1.0, 0.0], [3.0, 0.0]], dtype=np.float32))


def test_coverage_of_one_cluster_singletons_and_empty_clusters():
    from prismatic_assets.core.diversity import cluster_coverage

    one = cluster_coverage([0, 0, 0], [0, 1, 1], ["a", "b"], 1)  # K = 1 is a clustering too
    assert one.shares.tolist() == [[1.0], [1.0]] and one.composition.tolist() == [[1 / 3], [2 / 3]]
    cov = cluster_coverage([0, 2, 2, 2], [0, 1, 1, 0], ["a", "b"], 4)  # cluster 0 has one member; 1 and 3 none
    assert cov.counts.dtype == np.int64 and cov.counts.tolist() == [[1, 0, 1, 0], [0, 0, 2, 0]]
    assert cov.composition[:, 0].tolist() == [1.0, 0.0]  # a singleton: all of it from set a
    assert np.isnan(cov.composition[:, [1, 3]]).all()
    assert cov.exclusive == {"a": [0], "b": []}
    assert cov.as_dict()["counts"] == {"a": [1, 0, 1, 0], "b": [0, 0, 2, 0]}


@pytest.mark.parametrize("n, d, batch", [(50, 6, 65536), (50, 6, 7), (9, 2, 4), (5, 1, 2)])
def test_the_2d_map_is_the_projection_on_the_two_leading_principal_axes(n, d, batch):
    from prismatic_assets.core.diversity import pca_2d

    rng = np.random.default_rng(n + d)
    x = (rng.normal(size=(n, d)) * np.arange(d, 0, -1)).astype(np.float32)  # distinct variances
    got = pca_2d(x, batch_size=batch) if batch != 65536 else pca_2d(x)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2].T  # (d, <=2)
    axes = axes * np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    want = centred @ axes
    if d == 1:
        want = np.hstack([want, np.zeros((n, 1))])
    assert got.shape == (n, 2) and got.dtype == np.float32
    assert np.allclose(got, want, atol=1e-4)
