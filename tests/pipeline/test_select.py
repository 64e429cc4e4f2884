"""select: the written subset, its score against an independent one, determinism, parameters, errors."""

from __future__ import annotations

import json
import math
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest

from prismatic_assets.core.gradient_spec import Embedding, GradientSpec, embedding_key
from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.records import LoadError
from prismatic_assets.core.samples import Rejection, Sample
from prismatic_assets.interfaces.api import proxy_embedder, score_dataset, select_subset
from prismatic_assets.pipeline.datasets import LoadedSet, load_set
from prismatic_assets.pipeline.select import (
    RANDOM_BASELINE_SEEDS,
    SubsetReport,
    baseline_seeds,
    check_request,
    select_from_set,
    write_subset,
)
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


# ---- edges the mutation run found

class ListEmbedder:
    """An `Embedder` without a model: each sample's vector is a seeded unit vector of its id's
    number; a prompt containing "broken" gets no vector (an error), like a non-finite loss."""

    dim = 8
    model_name = "list-embedder"
    model_fingerprint = "fp-list"
    projection_key = "proj-list"
    gradient = GradientSpec()

    @property
    def key(self) -> str:
        return embedding_key(self.model_fingerprint, self.projection_key, self.gradient)

    def embed_chunks(self, samples):
        out = []
        for s in samples:
            if "broken" in s.prompt:
                out.append(Embedding(None, 0.0, float("nan"), 0, False, 0.0, error="non-finite loss (nan)"))
            else:
                v = np.random.default_rng(int(s.sample_id.split("-")[1])).standard_normal(self.dim)
                out.append(Embedding((v / np.linalg.norm(v)).astype(np.float32), 1.0, 1.0, 3, False, 0.01))
        yield list(samples), out


def _loaded(n: int, broken: tuple[int, ...] = ()) -> LoadedSet:
    samples = [Sample(f"s-{i}", f"broken prompt {i}" if i in broken else f"prompt {i}", f"response {i}",
                      answer=str(i), category="cat", source="t.jsonl", source_ref=f"t.jsonl:{i + 1}")
               for i in range(n)]
    rejected = [Rejection("t.jsonl", "t.jsonl:99", 99, "empty response", "{}")]
    return LoadedSet("t", "t.jsonl", samples, rejected)


def _report(picks, q: float = 2.0) -> SubsetReport:
    return SubsetReport(
        source="t.jsonl", method="greedy", k=len(picks), seed=3, q=q, picks=picks, g_vendi=1.5,
        random_g_vendi=[1.0, 2.0, 4.0], random_seeds=[11, 12, 13], n_loaded=4, n_rejected=1, n_candidates=3,
        excluded={"s-9": "non-finite loss (nan)"}, rejections=[{"ref": "t.jsonl:99", "reason": "empty"}],
        params={"alpha": 2.0}, model="m", model_fingerprint="fp", projection="proj", embedding_key="ek",
        n_computed=2, n_cached=1, seconds=1.23456, select_seconds=0.12345, notes=["a note"])


def test_baseline_seeds_are_stable_across_versions():
    """Reports from different runs compare their random baselines: the seeds are pinned values."""
    assert baseline_seeds(3) == [432540817, 855644958, 831716053, 1213219606, 1000040014]
    assert baseline_seeds(0, count=2) == [1369798745, 663341227]


@pytest.mark.parametrize("k, method, q", [(1, "greedy", 0), (4, "random", 0.5), (np.int64(2), "cluster-balanced", 1),
                                          (1, "greedy", math.inf), (2, "greedy", 3)])
def test_check_request_accepts_k_up_to_the_set_and_any_q_at_least_0(k, method, q):
    check_request(_loaded(4), k, method, q)  # no error


@pytest.mark.parametrize("k, q, message", [
    (0, 1.0, "positive integer"), (True, 1.0, "positive integer"), (2.5, 1.0, "positive integer"),
    ("2", 1.0, "positive integer"), (5, 1.0, r"only 4 valid samples \(1 rows rejected\): choose k <= 4"),
    (2, -0.5, "q must be a number >= 0"), (2, math.nan, "q must be a number >= 0"),
    (2, True, "q must be a number >= 0"), (2, "2", "q must be a number >= 0"),
])
def test_check_request_rejects_a_k_or_q_that_is_not_a_count_or_an_order(k, q, message):
    """check_request runs before any model is loaded: on its own it must catch every bad value."""
    with pytest.raises(ValueError, match=message):
        check_request(_loaded(4), k, "greedy", q)


def test_the_report_names_its_request_provenance_and_timing(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    loaded, embedder = _loaded(6, broken=(2,)), ListEmbedder()
    gradient_calls, step_calls = [], []
    began = time.perf_counter()
    report = select_from_set(loaded, embedder, store, k=3, method="greedy", seed=5, q=2, run_id="run-7",
                             gradient_progress=lambda done, total, s, e: gradient_calls.append((done, total)),
                             step_progress=lambda done, total: step_calls.append((done, total)))
    elapsed = time.perf_counter() - began
    assert (report.source, report.method, report.k, report.seed) == ("t.jsonl", "greedy", 3, 5)
    assert report.q == 2.0 and isinstance(report.q, float)
    assert (report.n_loaded, report.n_rejected, report.n_candidates) == (6, 1, 5)
    assert list(report.excluded) == ["s-2"] and "non-finite loss" in report.excluded["s-2"]
    assert report.rejections == [{"ref": "t.jsonl:99", "reason": "empty response"}]
    assert (report.model, report.model_fingerprint, report.projection) == ("list-embedder", "fp-list", "proj-list")
    assert report.embedding_key == embedder.key and (report.n_computed, report.n_cached) == (6, 0)
    assert gradient_calls == [(i, 6) for i in range(1, 7)] and step_calls == [(1, 3), (2, 3), (3, 3)]
    with store.connect() as con:  # not store.query: polars' thread pool deadlocks in mutmut's forked workers
        assert con.execute("SELECT DISTINCT run_id FROM embeddings").fetchall() == [("run-7",)]
    assert 0 < report.select_seconds <= report.seconds <= elapsed
    assert report.notes == [] and "s-2" not in {s.sample_id for s, _ in report.picks}
    again = select_from_set(loaded, embedder, store, k=3, method="greedy", seed=5, model="my-proxy")
    assert (again.n_computed, again.n_cached) == (0, 6) and again.model == "my-proxy"
    assert [s.sample_id for s, _ in again.picks] == [s.sample_id for s, _ in report.picks]


def test_cluster_progress_reaches_the_caller(tmp_path):
    calls = []
    select_from_set(_loaded(6), ListEmbedder(), MetadataStore(tmp_path / "m.duckdb"), k=4, method="cluster-balanced",
                    step_progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1] == (6, 6)


def test_k_equal_to_the_candidates_returns_them_all_with_a_note(tmp_path):
    """k may equal the candidates left after the samples without a vector (5 loaded, 1 excluded)."""
    report = select_from_set(_loaded(5, broken=(0,)), ListEmbedder(), MetadataStore(tmp_path / "m.duckdb"), k=4)
    assert sorted(s.sample_id for s, _ in report.picks) == ["s-1", "s-2", "s-3", "s-4"]
    assert report.notes == ["k equals the number of candidates: every method returns the whole set"]


def test_one_candidate_is_enough_and_none_is_an_error_naming_why(tmp_path):
    store = MetadataStore(tmp_path / "m.duckdb")
    report = select_from_set(_loaded(3, broken=(0, 2)), ListEmbedder(), store, k=1, method="random")
    assert [s.sample_id for s, _ in report.picks] == ["s-1"]
    with pytest.raises(ValueError, match="no sample has a valid gradient vector"):
        select_from_set(_loaded(2, broken=(0, 1)), ListEmbedder(), store, k=1)


def test_report_as_dict_is_the_documented_json():
    sample = Sample("s-0", "p", "r")
    report = _report([(sample, {"method": "greedy", "rank": 0, "gain": 0.5})], q=math.inf)
    mean = 7 / 3
    std = math.sqrt(((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 3)
    expected = {
        "source": "t.jsonl", "method": "greedy", "k": 1, "seed": 3, "q": "inf", "g_vendi": 1.5,
        "random_g_vendi": {"mean": pytest.approx(mean), "std": pytest.approx(std), "min": 1.0, "max": 4.0,
                           "values": [1.0, 2.0, 4.0], "seeds": [11, 12, 13]},
        "n_loaded": 4, "n_rejected": 1, "n_candidates": 3, "n_excluded": 1,
        "excluded": {"s-9": "non-finite loss (nan)"}, "rejections": [{"ref": "t.jsonl:99", "reason": "empty"}],
        "params": {"alpha": 2.0}, "model": "m", "model_fingerprint": "fp", "projection": "proj", "embedding_key": "ek",
        "vectors": {"computed": 2, "cached": 1}, "seconds": 1.23, "select_seconds": 0.123, "notes": ["a note"]}
    out = report.as_dict()
    assert out == expected and "picks" not in out
    assert isinstance(out["seconds"], float) and isinstance(out["select_seconds"], float)
    with_picks = report.as_dict(with_picks=True)
    assert with_picks["picks"] == [{"sample_id": "s-0", "method": "greedy", "rank": 0, "gain": 0.5}]
    assert _report([]).as_dict()["q"] == 2.0


def test_written_lines_carry_every_field_readable_utf8_shared_and_in_new_folders(tmp_path):
    sample = Sample("s-0", "Combien font 2 × 3 ?", "Six: 2 × 3 = 6.", answer="6", category="arithmétique",
                    source="f.jsonl", source_ref="f.jsonl:3")
    why = {"method": "greedy", "rank": 0, "gain": 0.25}
    out = write_subset(_report([(sample, why)]), tmp_path / "a" / "b" / "subset.jsonl")
    raw = out.read_bytes().decode("utf-8")
    assert "2 × 3" in raw and "\\u00d7" not in raw  # readable, not escaped
    assert json.loads(raw) == {"id": "s-0", "prompt": "Combien font 2 × 3 ?", "response": "Six: 2 × 3 = 6.",
                               "answer": "6", "category": "arithmétique", "source_ref": "f.jsonl:3",
                               "selection": why}
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    assert list(out.parent.iterdir()) == [out]


def test_the_subset_file_is_utf8_whatever_the_locale(tmp_path):
    import locale

    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # an ASCII default encoding, where Python is not in UTF-8 mode
    try:
        out = write_subset(_report([(Sample("s-0", "× é", "ü"), {"rank": 0})]), tmp_path / "subset.jsonl")
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert json.loads(out.read_bytes().decode("utf-8"))["prompt"] == "× é"


def test_the_subset_is_written_under_a_hidden_name_next_to_it_then_renamed(tmp_path, monkeypatch):
    """A reader globbing the folder never sees a half-written subset, and the rename stays on one file system."""
    renamed = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append((Path(src), Path(dst))), real(src, dst)))
    out = write_subset(_report([(Sample("s-0", "p", "r"), {"rank": 0})]), tmp_path / "subset.jsonl")
    ((src, dst),) = renamed
    assert dst == out and src.parent == tmp_path and src.name.startswith(".subset.jsonl-")


def test_a_failed_write_raises_its_own_error_and_leaves_the_old_file(tmp_path):
    out = tmp_path / "subset.jsonl"
    out.write_text("old\n")
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_subset(_report([(Sample("s-0", "p", "r"), {"rank": object()})]), out)
    assert out.read_text() == "old\n" and list(tmp_path.iterdir()) == [out]


def test_a_failed_write_whose_temp_file_is_already_gone_still_raises_its_own_error(tmp_path, monkeypatch):
    """E.g. a cleaner removed the hidden temp file: the caller sees the write's error, not the cleanup's."""
    def chmod_fails(path, mode):
        Path(path).unlink()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "chmod", chmod_fails)
    with pytest.raises(OSError, match="No space left on device"):
        write_subset(_report([(Sample("s-0", "p", "r"), {"rank": 0})]), tmp_path / "subset.jsonl")
    assert list(tmp_path.iterdir()) == []
