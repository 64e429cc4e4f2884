"""select: the written subset, its score against an independent one, determinism, parameters, errors."""

from __future__ import annotations

import json

import pytest

from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.records import LoadError
from prismatic_assets.interfaces.api import proxy_embedder, score_dataset, select_subset
from prismatic_assets.pipeline.datasets import load_set
from prismatic_assets.pipeline.select import RANDOM_BASELINE_SEEDS, baseline_seeds, select_from_set, write_subset
from prismatic_assets.store.store import MetadataStore
from tests.pipeline.test_compare import shared_cache, write_sets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    arithmetic, salad = write_sets(tmp_path_factory.mktemp("sets"))
    both = arithmetic.parent / "both.jsonl"
    both.write_text(arithmetic.read_text() + salad.read_text())  # 22 rows and the broken one
    return both


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def fast(data, tiny_model_dir, cache):
    """select_from_set with one loaded set, model and store for the whole module (no reloads)."""
    loaded = load_set(data)
    embedder = proxy_embedder(model=tiny_model_dir, dim=64)
    store = MetadataStore(cache)

    def run(out=None, **kw):
        report = select_from_set(loaded, embedder, store, **{"k": 6, **kw})
        if out is not None:
            write_subset(report, out)
        return report

    return run


def _select(data, model, cache, out, **kw):
    return select_subset(data, **{"k": 6, "model": model, "dim": 64, "cache": cache, "out": out, **kw})


def test_written_subset_loads_again_and_scores_what_select_printed(data, tiny_model_dir, cache, tmp_path):
    out = tmp_path / "subset.jsonl"
    report = _select(data, tiny_model_dir, cache, out, method="greedy")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 6 and len({line["id"] for line in lines}) == 6
    assert [line["selection"]["rank"] for line in lines] == list(range(6))
    assert all(line["selection"]["gain"] > 0 for line in lines)
    assert report.n_loaded == 22 and report.n_rejected == 1 and report.n_candidates == 22
    # an independent score of the written file: the loaders and `score`, not select's own code
    rescored = score_dataset(out, model=tiny_model_dir, dim=64, cache=cache)
    assert rescored.n == 6 and rescored.g_vendi == pytest.approx(report.g_vendi, rel=1e-9)  # same rows, same order
    assert len(report.random_g_vendi) == RANDOM_BASELINE_SEEDS and report.random_std > 0
    assert load_samples(str(out)).n_loaded == 6


def test_the_subsets_and_the_random_baselines_scores_are_the_g_vendi_of_their_rows(fast, data, cache):
    """Each reported G-Vendi recomputed by the Vendi-Score package over the cached vectors of the
    rows it must cover: the picks, and each baseline's uniform draw of k rows with its seed."""
    import numpy as np
    from vendi_score import vendi

    report = fast(method="cluster-balanced", seed=2)
    samples = load_set(data).samples
    valid, vectors, _ = MetadataStore(cache).load_vectors([s.content_hash for s in samples], report.embedding_key, 64)
    assert valid.all() and report.n_candidates == len(samples) == 22
    row = {s.sample_id: i for i, s in enumerate(samples)}
    vectors = vectors.astype(np.float64)
    picked = vectors[[row[s.sample_id] for s, _ in report.picks]]
    assert report.g_vendi == pytest.approx(vendi.score_dual(picked), rel=1e-5)
    assert len(set(report.random_seeds)) == RANDOM_BASELINE_SEEDS and report.seed not in report.random_seeds
    expected = [vendi.score_dual(vectors[np.random.default_rng(seed).choice(22, size=6, replace=False)])
                for seed in report.random_seeds]
    assert report.random_g_vendi == pytest.approx(expected, rel=1e-5)
    assert (report.random_mean, report.random_std) == pytest.approx((np.mean(expected), np.std(expected)), rel=1e-4)


@pytest.mark.parametrize("method", ["greedy", "cluster-balanced", "random"])
def test_same_input_and_seed_give_the_same_file(fast, tmp_path, method):
    a = fast(tmp_path / "a.jsonl", method=method, seed=4)
    b = fast(tmp_path / "b.jsonl", method=method, seed=4)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert a.random_g_vendi == b.random_g_vendi
    other = fast(method=method, seed=5)
    assert {s.sample_id for s, _ in other.picks} != {s.sample_id for s, _ in a.picks}


def test_method_k_q_and_clusters_change_the_output(fast):
    base = fast(method="cluster-balanced")
    ids = {s.sample_id for s, _ in base.picks}
    assert {s.sample_id for s, _ in fast(method="greedy").picks} != ids
    assert fast(method="cluster-balanced", k=7).k == 7
    q2 = fast(method="cluster-balanced", q=2.0)
    assert {s.sample_id for s, _ in q2.picks} == ids  # q is the reported score's order, not the picks'
    assert q2.g_vendi != pytest.approx(base.g_vendi) and q2.random_mean != pytest.approx(base.random_mean)
    reasons = [why for _, why in base.picks]
    assert all("cluster" in why and "cluster_quota" in why for why in reasons)
    more = fast(method="cluster-balanced", clusters=6)
    assert more.params["n_clusters"] == 6 and {s.sample_id for s, _ in more.picks} != ids


def test_baseline_seeds_differ_from_the_selection_seed():
    seeds = baseline_seeds(3)
    assert len(set(seeds)) == RANDOM_BASELINE_SEEDS and 3 not in seeds and seeds != baseline_seeds(4)


def test_bad_inputs_give_the_errors_of_score(data, tiny_model_dir, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as from_score:
        score_dataset(missing, model=tiny_model_dir, cache=False)
    with pytest.raises(FileNotFoundError) as from_select:
        _select(missing, tiny_model_dir, False, tmp_path / "o.jsonl")
    assert str(from_select.value) == str(from_score.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(LoadError) as from_score:
        score_dataset(empty, model=tiny_model_dir, cache=False)
    with pytest.raises(LoadError) as from_select:
        _select(empty, tiny_model_dir, False, tmp_path / "o.jsonl")
    assert str(from_select.value) == str(from_score.value) and "no rows" in str(from_score.value)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("kw, message", [
    ({"k": 0}, "positive integer"),
    ({"k": 23}, "only 22 valid samples"),
    ({"method": "best"}, "choose one of"),
    ({"q": -1.0}, "q must be"),
])
def test_bad_parameters_fail_before_any_gradient(data, tiny_model_dir, tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        _select(data, tiny_model_dir, tmp_path / "fresh.duckdb", tmp_path / "o.jsonl", **kw)
    assert not (tmp_path / "o.jsonl").exists()
