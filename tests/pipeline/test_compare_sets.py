"""compare_sets called directly (the step under `prismatic compare` and the dataset_comparison
asset): what it passes on (run id, token budget, progress, stages), what the report names, and
the 2-D map at and around its point cap. Every expected value is written from the arguments
or the inputs, not read from the code under test."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import pytest

from prismatic_assets.core.diversity import hidden_state_key
from prismatic_assets.core.samples import Rejection, Sample
from prismatic_assets.pipeline import compare
from prismatic_assets.pipeline.compare import compare_sets
from prismatic_assets.pipeline.datasets import LoadedSet
from prismatic_assets.store.store import MetadataStore


def _sets() -> list[LoadedSet]:
    rng = random.Random(3)
    arithmetic = []
    for i in range(6):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        arithmetic.append(Sample(sample_id=f"a{i}", prompt=f"What is {a} + {b}?", response=f"{a} + {b} = {a + b}.",
                                 source="a.jsonl", source_ref=f"a.jsonl:{i + 1}"))
    words = "apple river mountain quickly blue seven dance theory window".split()
    salad = [Sample(sample_id=f"s{i}", prompt=" ".join(rng.choice(words) for _ in range(5)) + "?",
                    response=" ".join(rng.choice(words) for _ in range(9)), source="s.jsonl",
                    source_ref=f"s.jsonl:{i + 1}") for i in range(5)]
    rejected = [Rejection(source="s.jsonl", source_ref=f"s.jsonl:{100 + i}", line=100 + i,
                          reason=f"reason {i}", raw="{") for i in range(25)]
    return [LoadedSet("a", "a.jsonl", arithmetic, []), LoadedSet("s", "data/s.jsonl", salad, rejected)]


SETS = _sets()


class NoHiddenStates:
    """The embedder with its hidden-state path returning nothing (every sample failed there)."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def hidden_chunks(self, samples, *, max_length, batch_size):
        return iter(())


class BatchesSeen:
    """The embedder, noting the batch size each hidden-state pass is asked for."""

    def __init__(self, inner):
        self._inner = inner
        self.batch_sizes: list[int] = []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def hidden_chunks(self, samples, *, max_length, batch_size):
        self.batch_sizes.append(batch_size)
        return self._inner.hidden_chunks(samples, max_length=max_length, batch_size=batch_size)


@dataclass
class Run:
    store: MetadataStore
    report: compare.ComparisonReport
    stages: list
    grads: list  # (done, total) of the gradient progress
    hidden: list  # (done, total) of the hidden-state progress
    wall: float  # seconds around the call


@pytest.fixture(scope="module")
def run(tiny_embedder, tmp_path_factory) -> Run:
    """One comparison with every argument set, and what it called back."""
    store = MetadataStore(tmp_path_factory.mktemp("compare") / "m.duckdb")
    stages, grads, hidden = [], [], []
    began = time.perf_counter()
    report = compare_sets(SETS, tiny_embedder, store, qs=(1, 2), clusters=5, cluster_seed=7, max_length=64,
                          model="my-proxy", run_id="run-1", on_stage=stages.append,
                          gradient_progress=lambda done, total, *_: grads.append((done, total)),
                          hidden_progress=lambda done, total: hidden.append((done, total)))
    wall = time.perf_counter() - began
    return Run(store, report, stages, grads, hidden, wall)


def test_the_report_names_what_it_was_given(run, tiny_embedder):
    report, wall = run.report, run.wall
    assert report.model == "my-proxy"
    assert report.model_fingerprint == tiny_embedder.model_fingerprint and report.model_fingerprint
    assert report.projection == tiny_embedder.projection_key and report.embedding_key == tiny_embedder.key
    assert report.qs == (1.0, 2.0) and all(type(q) is float for q in report.qs)
    assert report.cluster_seed == 7 and report.dim == 32
    assert report.notes == []
    assert 0 < report.seconds <= wall


def test_without_a_model_name_the_report_takes_the_embedders(tiny_embedder, tmp_path):
    assert tiny_embedder.model_name != "my-proxy"
    report = compare_sets(SETS, tiny_embedder, MetadataStore(tmp_path / "m.duckdb"), clusters=2)
    assert report.model == tiny_embedder.model_name


def test_each_stage_is_announced_in_order(run):
    assert run.stages == ["gradients of a (6 samples)", "hidden states of a",
                      "gradients of s (5 samples)", "hidden states of s", "coverage clustering"]


def test_progress_reaches_both_callbacks(run):
    grads, hidden = run.grads, run.hidden
    assert grads and grads[-1] == (5, 5) and (6, 6) in grads
    assert hidden and hidden[-1] == (5, 5) and (6, 6) in hidden


def test_vectors_are_stored_under_the_run_and_the_token_budget_asked_for(run, tiny_embedder):
    store = run.store
    rows = store.query("SELECT embedding_key, run_id, count(*) FROM embeddings GROUP BY ALL ORDER BY ALL").rows()
    hidden_key = hidden_state_key(tiny_embedder.model_fingerprint, 64)
    assert sorted(rows) == sorted([(tiny_embedder.key, "run-1", 11), (hidden_key, "run-1", 11)])


def test_each_set_summary_carries_its_source_counts_and_first_rejections(run):
    report = run.report
    a, s = report.sets
    assert (a.name, a.source, a.n_loaded, a.n_rejected, a.rejections) == ("a", "a.jsonl", 6, 0, [])
    assert (s.name, s.source, s.n_loaded, s.n_rejected) == ("s", "data/s.jsonl", 5, 25)
    assert s.rejections == [{"ref": f"s.jsonl:{100 + i}", "reason": f"reason {i}"} for i in range(20)]
    assert (a.n_computed, a.n_cached, s.n_computed, s.n_cached) == (6, 0, 5, 0)


def test_a_second_comparison_reads_every_vector_from_the_cache(run, tiny_embedder):
    store = run.store
    again = compare_sets(SETS, tiny_embedder, store, clusters=5, cluster_seed=7, max_length=64)
    assert [(x.n_computed, x.n_cached) for x in again.sets] == [(0, 6), (0, 5)]


def test_examples_come_from_the_three_most_distinguishing_clusters(run):
    report = run.report
    filled = int((report.coverage.sizes > 0).sum())
    assert filled >= 4  # so that a default other than 3 would show
    assert len(report.examples) == 3
    contrast = report.coverage.contrast
    assert [e.cluster for e in report.examples] == sorted(
        (c for c in range(report.coverage.k) if report.coverage.sizes[c] > 0),
        key=lambda c: (-contrast[c], -report.coverage.sizes[c], c))[:3]


def test_the_map_shows_every_sample_up_to_the_cap(run, monkeypatch, tiny_embedder):
    store, report = run.store, run.report
    assert report.map_xy.shape == (11, 2) and report.map_xy.dtype == np.float32
    assert list(report.map_set) == [0] * 6 + [1] * 5
    # the map's cluster of each point, counted per set, is the coverage table
    counts = np.zeros_like(report.coverage.counts)
    np.add.at(counts, (report.map_set, report.map_cluster), 1)
    assert (counts == report.coverage.counts).all()
    assert np.abs(report.map_xy).max() > 0 and np.allclose(report.map_xy.mean(axis=0), 0, atol=1e-5)
    # exactly at the cap: still every sample, no note
    monkeypatch.setattr(compare, "MAP_MAX_POINTS", 11)
    at_cap = compare_sets(SETS, tiny_embedder, store, clusters=5, cluster_seed=7, max_length=64)
    assert at_cap.map_xy.shape == (11, 2) and at_cap.notes == []
    np.testing.assert_allclose(at_cap.map_xy, report.map_xy, atol=1e-5)


def test_above_the_cap_the_map_is_a_seeded_draw_without_repeats(run, monkeypatch, tiny_embedder):
    store = run.store
    monkeypatch.setattr(compare, "MAP_MAX_POINTS", 10)
    first = compare_sets(SETS, tiny_embedder, store, clusters=5, cluster_seed=7, max_length=64)
    again = compare_sets(SETS, tiny_embedder, store, clusters=5, cluster_seed=7, max_length=64)
    assert first.notes == ["the 2-D map shows a random 10 of 11 samples"]
    assert first.map_xy.shape == (10, 2) and len(first.map_set) == len(first.map_cluster) == 10
    assert len({tuple(np.round(p, 5)) for p in first.map_xy}) == 10  # ten different samples
    assert list(first.map_set) == sorted(first.map_set)  # in the union's order
    assert 5 <= int((first.map_set == 0).sum()) <= 6 and 4 <= int((first.map_set == 1).sum()) <= 5
    np.testing.assert_array_equal(first.map_xy, again.map_xy)
    np.testing.assert_array_equal(first.map_set, again.map_set)


def test_one_set_has_no_cluster_examples_and_one_sample_sits_at_the_origin(tiny_embedder, tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    one_set = compare_sets(SETS[:1], tiny_embedder, store, clusters=3)
    assert one_set.examples == []
    two = LoadedSet("two", "two.jsonl", SETS[0].samples[:2], [])
    pair = compare_sets([two], tiny_embedder, store, clusters=1)
    assert pair.map_xy.shape == (2, 2) and np.abs(pair.map_xy).max() > 0
    single = LoadedSet("one", "one.jsonl", SETS[0].samples[:1], [])
    alone = compare_sets([single], tiny_embedder, store, clusters=1)
    assert alone.map_xy.dtype == np.float32
    np.testing.assert_array_equal(alone.map_xy, np.zeros((1, 2), dtype=np.float32))


def test_a_set_without_hidden_states_has_no_embedding_metric(tiny_embedder, tmp_path):
    report = compare_sets(SETS, NoHiddenStates(tiny_embedder), MetadataStore(tmp_path / "m.duckdb"), clusters=2)
    for summary in report.sets:
        assert None not in summary.metrics
        assert "embedding_vendi" not in [m.metric for m in summary.metrics]
        assert summary.metrics  # the text metrics are still there


@pytest.mark.parametrize("batch_size", [1, 3])
def test_the_hidden_state_pass_runs_in_the_batch_size_asked_for(tiny_embedder, tmp_path, batch_size):
    seen = BatchesSeen(tiny_embedder)
    compare_sets(SETS, seen, MetadataStore(tmp_path / "m.duckdb"), clusters=2, batch_size=batch_size)
    assert seen.batch_sizes == [batch_size, batch_size]  # one pass a set
