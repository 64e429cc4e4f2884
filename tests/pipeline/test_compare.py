"""compare: every number against an independent computation, parameters that must change it, errors."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
from vendi_score import vendi

from prismatic_assets.core.diversity import compression_ratio, distinct_n, mean_pooled_hidden_states
from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.records import LoadError
from prismatic_assets.interfaces.api import compare_datasets, score_dataset
from prismatic_assets.store.store import MetadataStore

INF = float("inf")


def write_sets(folder):
    """Two small sets that differ in kind: arithmetic Q&A and word salad (plus one broken row)."""
    rng = random.Random(0)
    arithmetic = folder / "arith.jsonl"
    with open(arithmetic, "w") as f:
        for _ in range(12):
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "response": f"{a} + {b} = {a + b}."}) + "\n")
    words = "apple river mountain quickly blue seven dance theory window".split()
    salad = folder / "salad.jsonl"
    with open(salad, "w") as f:
        for _ in range(10):
            f.write(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(6)) + "?",
                                "response": " ".join(rng.choice(words) for _ in range(12))}) + "\n")
        f.write('{"prompt": "cut off\n')
    return arithmetic, salad


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_sets(tmp_path_factory.mktemp("sets"))


def shared_cache(tmp_path_factory):
    """One vector cache for every toolkit test of the session (the same file `prismatic` uses
    with PRISMATIC_CACHE_DIR=<base>/toolkit-cache): the sets' gradients are computed once."""
    folder = tmp_path_factory.getbasetemp() / "toolkit-cache"
    folder.mkdir(exist_ok=True)
    return folder / "score-cache.duckdb"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return shared_cache(tmp_path_factory)


@pytest.fixture(scope="module")
def report(sets, tiny_model_dir, cache):
    return compare_datasets(list(sets), model=tiny_model_dir, dim=64, cache=cache)


def test_g_vendi_of_each_set_equals_score_and_vendi_score(report, sets, tiny_model_dir, cache):
    store = MetadataStore(cache)
    for summary, path in zip(report.sets, sets):
        scored = score_dataset(path, model=tiny_model_dir, dim=64, cache=cache)
        assert summary.g_vendi[1.0] == pytest.approx(scored.g_vendi, rel=1e-9)
        assert summary.n_vectors == scored.n
        samples = load_samples(str(path)).samples
        _, x, _ = store.load_vectors([s.content_hash for s in samples], report.embedding_key, 64)
        kernel = x.astype(np.float64) @ x.T.astype(np.float64)
        assert summary.g_vendi[2.0] == pytest.approx(vendi.score_K(kernel, q=2), rel=1e-5)
        assert summary.g_vendi[INF] == pytest.approx(vendi.score_K(kernel, q="inf"), rel=1e-5)


def test_embedding_vendi_equals_vendi_score_on_hidden_states(report, sets, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for summary, path in zip(report.sets, sets):
        samples = load_samples(str(path)).samples
        hidden = mean_pooled_hidden_states(model, tokenizer, [s.prompt for s in samples],
                                           [s.response for s in samples], batch_size=1)
        emb = summary.metric("embedding_vendi")
        assert emb.n == len(samples) and emb.dim == model.config.hidden_size
        assert emb.value == pytest.approx(vendi.score_X(hidden.astype(np.float64)), rel=1e-4)


def test_text_metrics_and_counts(report, sets):
    arith, salad = report.sets
    assert (arith.n_loaded, arith.n_rejected, salad.n_loaded, salad.n_rejected) == (12, 0, 10, 1)
    assert salad.rejections[0]["ref"].endswith("salad.jsonl:11") and "malformed_json" in salad.rejections[0]["reason"]
    texts = [f"{s.prompt}\n{s.response}" for s in load_samples(str(sets[1])).samples]
    assert salad.metric("distinct_2").value == pytest.approx(distinct_n(texts, 2).value)
    assert salad.metric("compression_ratio").value == pytest.approx(compression_ratio(texts).value)
    # Word salad from 9 words repeats unigrams far more than arithmetic with random numbers.
    assert salad.metric("distinct_1").value < arith.metric("distinct_1").value


def test_coverage_counts_every_sample_once(report):
    cov = report.coverage
    assert cov.counts.sum(axis=1).tolist() == [12, 10]
    np.testing.assert_allclose(cov.shares.sum(axis=1), 1.0)
    assert cov.sizes.sum() == 22
    for name, clusters in cov.exclusive.items():
        other = 1 - report.coverage.set_names.index(name)
        assert all(cov.counts[other, c] == 0 for c in clusters)
    assert 0 <= cov.entropy["arith"] <= math.log(cov.k) + 1e-12
    assert report.examples and report.examples[0].contrast == pytest.approx(max(cov.contrast))
    for example in report.examples:
        owner = report.coverage.set_names.index(example.set_name)
        assert example.samples and all(s["source_ref"].startswith(str(report.sets[owner].source))
                                       for s in example.samples)
    assert report.map_xy.shape == (22, 2)


def test_json_report_is_strict_json(report):
    text = json.dumps(report.as_dict(), allow_nan=False)
    data = json.loads(text)
    assert set(data["sets"][0]["g_vendi"]) == {"1", "2", "inf"}
    assert data["sets"][1]["metrics"]["distinct_3"]["n"] == 10


def test_json_report_holds_each_figure_under_its_own_key(report):
    """`prismatic compare --json`: every key against the report field it stands for, written out here."""
    data = report.as_dict()
    assert {k: data[k] for k in ("model", "model_fingerprint", "projection", "embedding_key", "dim")} == {
        "model": report.model, "model_fingerprint": report.model_fingerprint, "projection": report.projection,
        "embedding_key": report.embedding_key, "dim": 64}
    assert data["seconds"] == round(report.seconds, 2) and data["notes"] == report.notes
    assert data["coverage"] == {**report.coverage.as_dict(), "cluster_seed": report.cluster_seed}
    cov = report.coverage
    assert len(data["sets"]) == 2
    for got, s in zip(data["sets"], report.sets):
        metrics = {}
        for m in s.metrics:
            metrics[m.metric] = {"value": m.value, "n": m.n, **m.details}
            if m.dim:
                metrics[m.metric]["dim"] = m.dim
        assert got == {
            "name": s.name, "source": s.source, "n_loaded": s.n_loaded, "n_rejected": s.n_rejected,
            "rejections": s.rejections, "n": s.n_vectors, "n_excluded": len(s.excluded), "excluded": s.excluded,
            "g_vendi": {"1": s.g_vendi[1.0], "2": s.g_vendi[2.0], "inf": s.g_vendi[INF]},
            "metrics": metrics,
            "coverage_entropy": cov.entropy[s.name],
            "effective_clusters": pytest.approx(math.exp(cov.entropy[s.name])),
            "exclusive_clusters": cov.exclusive.get(s.name, []),
            "vectors": {"computed": s.n_computed, "cached": s.n_cached}}
    assert [s["n"] for s in data["sets"]] == [12, 10] and [s["n_rejected"] for s in data["sets"]] == [0, 1]
    assert data["examples"] == [{"cluster": e.cluster, "contrast": e.contrast, "shares": e.shares,
                                 "set": e.set_name, "samples": e.samples} for e in report.examples]
    assert data["examples"] and all(len(e["samples"]) == 2 for e in data["examples"])


def test_an_undefined_metric_is_null_in_the_json_report(report):
    from dataclasses import replace

    first = report.sets[0]
    nan_metric = replace(first.metrics[0], value=float("nan"))
    other = replace(report, sets=[replace(first, metrics=[nan_metric, *first.metrics[1:]]), *report.sets[1:]])
    metric = other.as_dict()["sets"][0]["metrics"][nan_metric.metric]
    assert metric["value"] is None and metric["n"] == nan_metric.n
    json.dumps(other.as_dict(), allow_nan=False)


def test_cluster_examples_are_the_owning_sets_members_nearest_the_centroid_ties_in_row_order():
    """A hand-made clustering: set A fills cluster 0 (17 members, tied similarities), B fills
    cluster 1; cluster 2 holds one of each and tells nothing apart."""
    from types import SimpleNamespace

    from prismatic_assets.core.diversity import cluster_coverage
    from prismatic_assets.core.samples import Sample
    from prismatic_assets.pipeline.compare import _distinguishing_examples

    sim_a = [0.912345, 0.7, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9, 0.7, 0.9, 0.7, 0.7, 0.9, 0.9, 0.7, 0.4]
    sim_b = [0.3, 0.8, 0.6, 0.2]
    assignments = np.array([0] * 17 + [2] + [1, 1, 1, 2])
    set_index = np.array([0] * 18 + [1] * 4)
    clustering = SimpleNamespace(assignments=assignments, similarities=np.array(sim_a + sim_b))
    coverage = cluster_coverage(assignments, set_index, ["A", "B"], 3)
    ids = [[f"a{i}" for i in range(18)], [f"b{i}" for i in range(4)]]
    samples = {(name, sid): Sample(sid, f"Question   {sid}\n about {'x' * 300}", f"Answer {sid}",
                                   source_ref=f"{name}:{sid}")
               for name, block in zip("AB", ids) for sid in block}
    vectors = [np.zeros((18, 4)), np.zeros((4, 4))]
    found = _distinguishing_examples(coverage, clustering, set_index, vectors, ids, ["A", "B"], samples,
                                     example_clusters=2, examples=5)
    # shares: each set's fraction of its own samples in the cluster
    assert [(e.cluster, e.set_name) for e in found] == [(0, "A"), (1, "B")]
    assert [e.shares for e in found] == [{"A": pytest.approx(17 / 18), "B": 0.0}, {"A": 0.0, "B": 0.75}]
    nearest_a = sorted(range(17), key=lambda i: (-sim_a[i], i))[:5]  # [0, 9, 11, 14, 15]
    assert [s["sample_id"] for s in found[0].samples] == [f"a{i}" for i in nearest_a]
    assert [s["sample_id"] for s in found[1].samples] == ["b1", "b2", "b0"]  # all 3, nearest first
    first = found[0].samples[0]
    assert first["similarity"] == 0.9123  # shown to 4 decimals
    assert first["source_ref"] == "A:a0" and first["response"] == "Answer a0"
    assert first["prompt"] == ("Question a0 about " + "x" * 300)[:237] + "..." and len(first["prompt"]) == 240


@pytest.mark.parametrize("n, k", [(1, 1), (2, 2), (4, 2), (5, 2), (8, 3), (9, 3), (30, 5), (10_000, 100),
                                  (20_000, 100)])
def test_default_coverage_clusters_are_about_the_square_root(n, k):
    from prismatic_assets.pipeline.compare import default_num_clusters

    assert default_num_clusters(n) == k


def test_excerpts_collapse_whitespace_and_cut_at_the_limit():
    from prismatic_assets.pipeline.compare import _excerpt

    assert _excerpt(" a \n\t b  ") == "a b"
    assert _excerpt("x" * 240) == "x" * 240  # at the limit: whole
    assert _excerpt("x" * 241) == "x" * 237 + "..."
    assert _excerpt("abcdefghij", limit=6) == "abc..."


def test_a_metric_a_set_lacks_is_none(report):
    assert report.sets[0].metric("no_such_metric") is None


@pytest.mark.parametrize("change", [{"clusters": 3}, {"cluster_seed": 5}])
def test_clustering_parameters_change_the_coverage(report, sets, tiny_model_dir, cache, change):
    other = compare_datasets(list(sets), model=tiny_model_dir, dim=64, cache=cache, **change)
    assert other.coverage.k == change.get("clusters", report.coverage.k)
    assert not np.array_equal(other.coverage.counts, report.coverage.counts) or other.coverage.k != report.coverage.k
    # metrics that do not depend on the clustering stay put
    assert other.sets[0].g_vendi[1.0] == pytest.approx(report.sets[0].g_vendi[1.0])


def test_projection_seed_qs_names_and_fields_change_the_report(report, sets, tiny_model_dir, cache, tmp_path):
    other = compare_datasets(list(sets), model=tiny_model_dir, dim=64, cache=cache, projection_seed=1, qs=(0.5,),
                             names=["A", "B"], examples=1, limit=4)
    assert [s.name for s in other.sets] == ["A", "B"]
    assert all(len(e.samples) == 1 for e in other.examples) and len(report.examples[0].samples) == 2
    assert [s.n_loaded for s in other.sets] == [4, 4]
    assert set(other.sets[0].g_vendi) == {0.5}
    assert other.projection != report.projection
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"q": r["prompt"], "a": r["response"]}) + "\n"
                               for r in map(json.loads, open(sets[0]))))
    mapped = compare_datasets([renamed, sets[1]], fields=["prompt=q,response=a", None], model=tiny_model_dir,
                              dim=64, cache=cache)
    assert mapped.sets[0].g_vendi[1.0] == pytest.approx(report.sets[0].g_vendi[1.0])


def test_store_scores_writes_every_metric_per_set(sets, tiny_model_dir, cache, tmp_path):
    store = MetadataStore(tmp_path / "meta.duckdb")
    for _ in range(2):  # a second run replaces its rows
        compare_datasets(list(sets), model=tiny_model_dir, dim=64, cache=cache, store_scores=store)
    rows = store.query("SELECT scope, metric, count(*) AS c FROM scores GROUP BY ALL ORDER BY ALL")
    assert set(rows["scope"]) == {"compare:arith", "compare:salad"}
    assert set(rows["metric"]) == {"g_vendi", "embedding_vendi", "distinct_1", "distinct_2", "distinct_3",
                                   "compression_ratio"}
    assert rows.filter(rows["metric"] == "g_vendi")["c"].to_list() == [3, 3]  # q = 1, 2, inf
    assert rows.filter(rows["metric"] != "g_vendi")["c"].to_list() == [1] * 10


def test_stored_comparison_rows_carry_the_reports_figures_under_score_pools_ids(report, sets, tmp_path):
    """Each set's G-Vendi rows keyed like `pipeline.scores.score_pool`'s (sha256 of the sorted-key
    JSON of scope, metric, q, members, key, first 24 hex digits), then one row per defined metric."""
    import hashlib
    from dataclasses import replace

    from prismatic_assets.pipeline.compare import store_comparison
    from prismatic_assets.pipeline.datasets import load_sets

    loaded = load_sets(list(sets))
    store = MetadataStore(tmp_path / "meta.duckdb")
    assert store_comparison(store, report, loaded, run_id="run-1") == 2 * (3 + 5)  # 3 q's + 5 metrics a set
    rows = {(r["scope"], r["metric"], r["q"] if r["metric"] == "g_vendi" else None): r
            for r in store.query("SELECT * FROM scores").iter_rows(named=True)}
    assert len(rows) == 16
    for summary, one in zip(report.sets, loaded):
        scope = f"compare:{summary.name}"
        members = [s.sample_id for s in one.samples]
        for q, value in summary.g_vendi.items():
            row = rows[(scope, "g_vendi", q)]
            payload = {"key": report.embedding_key, "members": members, "metric": "g_vendi", "q": q, "scope": scope}
            text = json.dumps(payload, sort_keys=True, default=str)
            assert row["score_id"] == hashlib.sha256(text.encode()).hexdigest()[:24]
            assert (row["value"], row["n"], row["dim"], row["n_excluded"], row["embedding_key"], row["run_id"]) == (
                value, summary.n_vectors, 64, 0, report.embedding_key, "run-1")
            assert row["entropy"] == pytest.approx(math.log(value))
            assert json.loads(row["config"]) == {"q": "inf" if q == INF else q, "source": str(one.source)}
        for m in summary.metrics:
            row = rows[(scope, m.metric, None)]
            assert row["value"] == pytest.approx(m.value) and row["run_id"] == "run-1"
    # An undefined metric is not stored, and the set's other metrics still are.
    first = report.sets[0]
    undefined = [replace(first.metrics[0], value=float("nan")), *first.metrics[1:]]
    other = replace(report, sets=[replace(first, metrics=undefined), *report.sets[1:]])
    again = MetadataStore(tmp_path / "again.duckdb")
    assert store_comparison(again, other, loaded, scope_prefix="cmp") == 15
    stored = again.query("SELECT scope, metric FROM scores WHERE scope = 'cmp:arith' AND metric != 'g_vendi'")
    assert sorted(stored["metric"]) == sorted(m.metric for m in first.metrics[1:])


def test_bad_inputs_give_the_errors_of_score(sets, tiny_model_dir, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError) as from_score:
        score_dataset(missing, model=tiny_model_dir, cache=False)
    with pytest.raises(FileNotFoundError) as from_compare:
        compare_datasets([sets[0], missing], model=tiny_model_dir, cache=False)
    assert str(from_compare.value) == str(from_score.value) and "nope.jsonl" in str(from_score.value)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"question": "q?", "solution": "s."}) + "\n")
    with pytest.raises(LoadError) as from_score:
        score_dataset(wrong, model=tiny_model_dir, cache=False)
    with pytest.raises(LoadError) as from_compare:
        compare_datasets([sets[0], wrong], model=tiny_model_dir, cache=False)
    assert str(from_compare.value) == str(from_score.value)
    assert "wrong.jsonl:1" in str(from_score.value) and "--fields" in str(from_score.value)
