"""record_baselines: stored rows, values against hand and independent computations, caching, idempotence."""

from __future__ import annotations

import math

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.diversity import mean_pooled_hidden_states
from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
from prismatic_assets.core.projection import ProjectionSpec
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.baselines import BASELINE_METRICS, hidden_vectors, record_baselines
from prismatic_assets.pipeline.embedder import LocalEmbedder
from prismatic_assets.store.store import MetadataStore

SAMPLES = [
    Sample("s:1", "the cat", "sat down"),
    Sample("s:2", "the cat", "ran off"),
    Sample("s:3", "a dog", "sat down"),
]
# texts: "the cat\nsat down", "the cat\nran off", "a dog\nsat down"
# unigrams: 12 total; unique {the, cat, sat, down, ran, off, a, dog} = 8
# bigrams: (the cat)(cat sat)(sat down) (the cat)(cat ran)(ran off) (a dog)(dog sat)(sat down): 9 total, 7 unique
# trigrams: (the cat sat)(cat sat down) (the cat ran)(cat ran off) (a dog sat)(dog sat down): 6 total, 6 unique


@pytest.fixture
def embedder(tiny_llama, packaged_tokenizer):
    return LocalEmbedder(GradientEmbedder(tiny_llama, packaged_tokenizer,
                                          ProjectionSpec(kind="countsketch", dim=32, seed=0),
                                          GradientSpec(max_length=64), model_fingerprint="tiny-test"))


def test_record_baselines_stores_each_metric_with_independent_values(embedder, tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    values = record_baselines(store, SAMPLES, scope="seed", embedder=embedder, run_id="r1")
    assert set(values) == set(BASELINE_METRICS)
    assert values["distinct_1"] == pytest.approx(8 / 12)
    assert values["distinct_2"] == pytest.approx(7 / 9)
    assert values["distinct_3"] == pytest.approx(1.0)
    hidden = mean_pooled_hidden_states(embedder.gradients.model, embedder.gradients.tokenizer,
                                       [s.prompt for s in SAMPLES], [s.response for s in SAMPLES],
                                       batch_size=1, max_length=64)
    assert values["embedding_vendi"] == pytest.approx(vendi.score_X(hidden.astype(np.float64)), rel=1e-4)
    rows = store.query("SELECT metric, q, value, entropy, n, dim, embedding_key, run_id FROM scores "
                       "WHERE scope = 'seed' ORDER BY metric")
    assert rows["metric"].to_list() == sorted(BASELINE_METRICS)
    emb = rows.filter(rows["metric"] == "embedding_vendi").row(0, named=True)
    assert emb["q"] == 1.0 and emb["entropy"] == pytest.approx(math.log(emb["value"]))
    assert emb["n"] == 3 and emb["dim"] == embedder.gradients.model.config.hidden_size and emb["run_id"] == "r1"
    assert emb["embedding_key"].startswith("hidden-")
    d2 = rows.filter(rows["metric"] == "distinct_2").row(0, named=True)
    assert math.isnan(d2["q"]) and d2["n"] == 3 and d2["embedding_key"] == "text-v1"


def test_record_baselines_replaces_its_rows_and_reuses_cached_hidden_states(embedder, tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    record_baselines(store, SAMPLES, scope="round:1:after", embedder=embedder)
    record_baselines(store, SAMPLES, scope="round:1:after", embedder=embedder)
    assert store.query("SELECT count(*) AS c FROM scores")["c"][0] == len(BASELINE_METRICS)
    again = hidden_vectors(SAMPLES + [Sample("s:4", "new", "one")], embedder, store)
    assert (again.n_cached, again.n_computed) == (3, 1)
    # a different scope gets its own rows
    record_baselines(store, SAMPLES[:2], scope="round:2:after", embedder=embedder)
    assert store.query("SELECT count(DISTINCT scope) AS c FROM scores")["c"][0] == 2


def test_record_baselines_max_length_changes_the_hidden_state_key(embedder, tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    full = hidden_vectors(SAMPLES, embedder, store)
    short = hidden_vectors(SAMPLES, embedder, store, max_length=3)
    assert full.key != short.key
    assert not np.allclose(full.vectors, short.vectors)


def test_record_baselines_needs_samples(embedder, tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        record_baselines(MetadataStore(tmp_path / "m.duckdb"), [], scope="seed", embedder=embedder)


def test_text_metrics_read_a_seeded_sample_of_large_sets():
    from prismatic_assets.core.diversity import distinct_n
    from prismatic_assets.pipeline.baselines import text_metrics

    many = [Sample(f"m:{i}", f"question {i} about item {i % 7}", f"answer {i * 3}") for i in range(50)]
    full = {m.metric: m for m in text_metrics(many, max_texts=None)}
    assert full["distinct_1"].n == 50 and "sampled_from" not in full["distinct_1"].details
    texts = [f"{s.prompt}\n{s.response}" for s in many]
    assert full["distinct_2"].value == pytest.approx(distinct_n(texts, 2).value)
    part = {m.metric: m for m in text_metrics(many, max_texts=10, seed=1)}
    assert part["distinct_1"].n == 10 and part["distinct_1"].details["sampled_from"] == 50
    assert part["distinct_1"].value != pytest.approx(full["distinct_1"].value)
    again = {m.metric: m for m in text_metrics(many, max_texts=10, seed=1)}
    other = {m.metric: m for m in text_metrics(many, max_texts=10, seed=2)}
    assert again["compression_ratio"].value == part["compression_ratio"].value
    assert other["distinct_2"].details["unique"] != part["distinct_2"].details["unique"] or \
        other["compression_ratio"].value != part["compression_ratio"].value
