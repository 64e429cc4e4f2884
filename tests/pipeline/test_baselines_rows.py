"""The baselines' bookkeeping with a model-free embedder: what each stored hidden-state row holds
(unit vector, norm, error rows, spec, timing per sample), what is computed once, progress, the
options record_baselines passes on, and the score rows' ids, members and configs.

The hidden states are hand-made vectors; the values are checked against numpy and the
vendi_score package, the ids against the payload spelled out here (a changed payload would
leave old rows beside new ones instead of replacing them)."""

from __future__ import annotations

import json
import math
import time
from typing import Iterator, Sequence, cast

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.diversity import hidden_state_key
from prismatic_assets.core.gradient_spec import GradientSpec
from prismatic_assets.core.ids import digest
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.baselines import (
    HiddenVectors,
    embedding_metric,
    hidden_vectors,
    record_baselines,
    text_metrics,
)
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.store.store import MetadataStore

H = 4
SLEEP = 0.02  # seconds the fake model spends on each chunk


def _vector(i: int) -> np.ndarray:
    """Sample i's hidden state: every 5th is non-finite, every 7th zero, sample 1 already unit length,
    sample 2 too large for float32 squares."""
    if i % 5 == 4:
        return np.array([1.0, np.nan, 0.0, 0.0], np.float32)
    if i % 7 == 6:
        return np.zeros(H, np.float32)
    if i == 1:
        return np.array([0.0, 1.0, 0.0, 0.0], np.float32)
    if i == 2:  # its squares overflow float32: the norm is taken in float64
        return np.full(H, 1e20, np.float32)
    return np.array([1.0 + i, 0.3 * i, -0.7, 0.1 * i * i], np.float32)


class FakeHidden:
    """The Embedder protocol's hidden-state side: sample i (its id's number) gets `_vector(i)`."""

    model_fingerprint, hidden_dim = "fp-h", H
    gradient = GradientSpec(max_length=48)

    def __init__(self, chunk_sizes: Sequence[int] = (4, 1, 100), drop_last: bool = False) -> None:
        self.chunk_sizes, self.drop_last = list(chunk_sizes), drop_last
        self.asked: list[str] = []
        self.calls: list[tuple[int, int]] = []

    def hidden_chunks(self, samples: Sequence[Sample], *, max_length: int, batch_size: int
                      ) -> Iterator[tuple[list[Sample], np.ndarray]]:
        self.calls.append((max_length, batch_size))
        start = 0
        for size in self.chunk_sizes:
            part = list(samples[start:start + size])
            if not part:
                return
            start += size
            self.asked += [s.sample_id for s in part]
            time.sleep(SLEEP)
            pooled = np.stack([_vector(int(s.sample_id.split(":")[1])) for s in part])
            yield part, pooled[:-1] if self.drop_last else pooled


def as_embedder(fake: FakeHidden) -> Embedder:
    return cast(Embedder, fake)  # the hidden-state side of the protocol is all these functions use


def _samples(n: int) -> list[Sample]:
    return [Sample(f"s:{i}", f"problem {i} asks", f"answer {i} says") for i in range(n)]


def test_every_stored_hidden_state_row_holds_its_unit_vector_norm_and_spec(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(8)
    seen: list[tuple[int, int]] = []
    began = time.perf_counter()
    got = hidden_vectors(samples, as_embedder(FakeHidden()), store, run_id="run-3",
                         progress=lambda d, t: seen.append((d, t)))
    wall = time.perf_counter() - began
    key = hidden_state_key("fp-h", 48)  # the embedder's gradient token budget
    rows = {r["content_hash"]: r for r in store.query("SELECT * FROM embeddings").to_dicts()}
    assert len(rows) == 8
    for i, sample in enumerate(samples):
        row, v = rows[sample.content_hash], _vector(i).astype(np.float64)
        assert (row["embedding_key"], row["model_fingerprint"], row["projection_key"], row["dim"], row["run_id"]) \
            == (key, "fp-h", "none", H, "run-3")
        assert json.loads(row["gradient_spec"]) == {"kind": "mean_last_hidden_state",
                                                    "text": "chat-formatted prompt and response", "max_length": 48}
        assert (row["n_response_tokens"], row["truncated"]) == (None, None) and math.isnan(row["loss"])
        if i % 5 == 4:
            assert (row["vector"], row["error"]) == (None, "non-finite hidden state")
        elif i % 7 == 6:
            assert (row["vector"], row["error"], row["grad_norm"]) == (None, "zero hidden state", 0.0)
        else:
            norm = float(np.sqrt((v * v).sum()))
            assert row["error"] is None and row["grad_norm"] == pytest.approx(norm, rel=1e-12)
            assert row["vector"] == pytest.approx((v / norm).tolist(), rel=1e-6)
        size = 4 if i < 4 else 1 if i == 4 else 3  # the chunk it came in
        assert SLEEP / size <= row["seconds"] <= wall / size  # its chunk's time, per sample of the chunk
    assert seen == [(4, 8), (5, 8), (8, 8)]
    assert (got.key, got.dim, got.n_cached, got.n_computed) == (key, H, 0, 8)
    assert got.sample_ids == ["s:0", "s:1", "s:2", "s:3", "s:5", "s:7"]
    assert got.excluded == {"s:4": "non-finite hidden state", "s:6": "zero hidden state"}


def test_each_content_is_computed_once_and_then_read_from_the_cache(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    twice = _samples(3) + [Sample("s:9", "problem 0 asks", "answer 0 says")]  # s:9 has s:0's content
    fake = FakeHidden()
    first = hidden_vectors(twice, as_embedder(fake), store, max_length=16, batch_size=3)
    assert fake.asked == ["s:0", "s:1", "s:2"] and fake.calls == [(16, 3)]
    assert (first.n_cached, first.n_computed) == (1, 3)  # s:9 needs no pass of its own
    assert first.sample_ids == ["s:0", "s:1", "s:2", "s:9"]
    again = FakeHidden()
    second = hidden_vectors(twice, as_embedder(again), store, max_length=16, batch_size=3)
    assert again.asked == [] and (second.n_cached, second.n_computed) == (4, 0)
    assert np.array_equal(first.vectors, second.vectors)


def test_a_chunk_with_fewer_hidden_states_than_samples_is_an_error(tmp_path):
    with pytest.raises(ValueError):
        hidden_vectors(_samples(3), as_embedder(FakeHidden(drop_last=True)), MetadataStore(tmp_path / "m.duckdb"))


def _gram_vendi(x: np.ndarray, q: float) -> float:
    """Vendi of order q from the eigenvalues of the cosine kernel over n (the paper's definition)."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(u @ u.T / len(u)), 0, None)
    lam = lam[lam > 1e-12]
    if q == 1:
        return float(np.exp(-(lam * np.log(lam)).sum()))
    return float((lam ** q).sum() ** (1 / (1 - q)))


@pytest.mark.parametrize("q", [1.0, 2.0])
def test_the_embedding_metric_is_the_vendi_score_of_its_order(q):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    hidden = HiddenVectors(key="hidden-abc", dim=5, sample_ids=[f"s:{i}" for i in range(6)], vectors=x,
                           excluded={"s:9": "zero hidden state"})
    m = embedding_metric(hidden, q=q)
    assert m is not None
    assert m.value == pytest.approx(_gram_vendi(x.astype(np.float64), q), rel=1e-5)
    if q == 1.0:
        assert m.value == pytest.approx(vendi.score_X(x.astype(np.float64)), rel=1e-5)
    assert (m.metric, m.q, m.n, m.dim, m.n_excluded, m.key) == ("embedding_vendi", q, 6, 5, 1, "hidden-abc")
    assert m.details == {"pooling": "mean of the last hidden state over the chat-formatted sample"}
    assert embedding_metric(HiddenVectors("k", 5, [], np.zeros((0, 5), np.float32), {"s:1": "x"})) is None


def test_text_metrics_details_say_what_was_read_and_how():
    samples = [Sample(f"t:{i}", f"alpha{i} beta{i}", f"gamma{i}") for i in range(4)]
    metrics = {m.metric: m for m in text_metrics(samples)}
    assert list(metrics) == ["distinct_1", "distinct_2", "distinct_3", "compression_ratio"]
    # each text: alphaI betaI \n gammaI -> 3 tokens, 2 bigrams, 1 trigram, none shared between texts
    for n, total in ((1, 12), (2, 8), (3, 4)):
        m = metrics[f"distinct_{n}"]
        assert (m.value, m.n) == (1.0, 4)
        assert m.details == {"ngram": n, "unique": total, "total": total,
                             "tokens": "lowercased words and punctuation marks"}
    c = metrics["compression_ratio"]
    raw = len("\n".join(f"alpha{i} beta{i}\ngamma{i}" for i in range(4)).encode())
    assert c.details["raw_bytes"] == raw and c.value == pytest.approx(raw / c.details["compressed_bytes"])
    assert c.details == {"raw_bytes": raw, "compressed_bytes": c.details["compressed_bytes"], "codec": "gzip level 9",
                         "reading": "higher = more redundant"}


def test_large_sets_are_read_through_a_seeded_sample_without_repeats():
    samples = [Sample(f"t:{i}", f"w{i}a w{i}b", f"w{i}c") for i in range(12)]  # no word shared between samples
    exact = {m.metric: m for m in text_metrics(samples, max_texts=12)}
    assert exact["distinct_1"].n == 12 and "sampled_from" not in exact["distinct_1"].details
    read = {m.metric: m for m in text_metrics(samples, max_texts=11)}
    d1 = read["distinct_1"]
    assert (d1.n, d1.value, d1.details["total"]) == (11, 1.0, 33)  # 11 different samples, 3 words each
    assert (d1.details["sampled_from"], d1.details["sample_seed"]) == (12, 0)
    assert read["compression_ratio"].details["sample_seed"] == 0

    def chosen(seed: int | None) -> list[int]:
        ms = text_metrics(samples, max_texts=3) if seed is None else text_metrics(samples, max_texts=3, seed=seed)
        return [ms[-1].details["raw_bytes"], ms[0].details["unique"]]

    assert chosen(None) == chosen(0)  # seed 0 by default
    assert {tuple(chosen(s)) for s in range(6)} != {tuple(chosen(0))}


def _payload(scope: str, metric: str, q: float | None, members: list[str], key: str) -> str:
    return digest({"scope": scope, "metric": metric, "q": q, "members": members, "key": key})


def test_record_baselines_stores_each_metric_under_its_stable_id_with_its_members(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = _samples(6)  # s:4 has no hidden state
    fake = FakeHidden()
    progress: list[tuple[int, int]] = []
    values = record_baselines(store, samples, scope="round:2:after", embedder=as_embedder(fake), run_id="r7",
                              batch_size=5, max_length=20, progress=lambda d, t: progress.append((d, t)))
    assert list(values) == ["embedding_vendi", "distinct_1", "distinct_2", "distinct_3", "compression_ratio"]
    assert fake.calls == [(20, 5)] and progress == [(4, 6), (5, 6), (6, 6)]
    key = hidden_state_key("fp-h", 20)
    assert store.query("SELECT DISTINCT embedding_key, run_id FROM embeddings").rows() == [(key, "r7")]
    rows = {r["metric"]: r for r in store.query("SELECT * FROM scores").to_dicts()}
    ids = [s.sample_id for s in samples]
    with_vector = ["s:0", "s:1", "s:2", "s:3", "s:5"]
    assert rows["embedding_vendi"]["score_id"] == _payload("round:2:after", "embedding_vendi", 1.0, with_vector, key)
    assert rows["distinct_2"]["score_id"] == _payload("round:2:after", "distinct_2", None, ids, "text-v1")
    assert (rows["embedding_vendi"]["n"], rows["embedding_vendi"]["n_excluded"]) == (5, 1)
    assert json.loads(rows["embedding_vendi"]["config"]) == {
        "pooling": "mean of the last hidden state over the chat-formatted sample"}
    assert json.loads(rows["distinct_1"]["config"])["ngram"] == 1
    assert {r["run_id"] for r in rows.values()} == {"r7"}
    x = np.stack([_vector(int(i.split(":")[1])) for i in with_vector]).astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert values["embedding_vendi"] == pytest.approx(vendi.score_X(x), rel=1e-5)


def test_an_undefined_metric_is_skipped_and_the_others_still_stored(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    samples = [Sample("s:0", "hi", "yo"), Sample("s:1", "ok", "no")]  # two tokens each: distinct-3 is undefined
    values = record_baselines(store, samples, scope="seed", embedder=as_embedder(FakeHidden()))
    assert list(values) == ["embedding_vendi", "distinct_1", "distinct_2", "compression_ratio"]
    assert sorted(store.query("SELECT metric FROM scores")["metric"].to_list()) == sorted(values)
