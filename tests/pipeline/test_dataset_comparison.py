"""The dataset_comparison asset's work without Dagster: the sets, the stored rows, the report file."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path

import pytest

from prismatic_assets.infra.config import CompareConfig, SeedConfig, WorldConfig, WorldPoolConfig, with_overrides
from prismatic_assets.pipeline.dataset_comparison import SEED_SET, _write_atomic, compare_with_seed, comparison_sets
from prismatic_assets.pipeline.seed import load_seed
from prismatic_assets.store.store import MetadataStore
from tests.pipeline.test_compare import write_sets
from tests.pipeline.test_round import FailingOn


@pytest.fixture
def seed(tmp_path) -> SeedConfig:
    path = tmp_path / "seed.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Compute {i} * {i + 3}.", "response": f"{i * (i + 3)}"}) + "\n"
                            for i in range(10)))
    return SeedConfig(source=str(path), holdout_fraction=0.2)


def test_the_sets_are_the_seed_pool_then_the_named_files(tmp_path, seed):
    arith, salad = write_sets(tmp_path)
    chosen = comparison_sets(CompareConfig(datasets=[str(arith), str(salad)], names=["a", "s"], limit=3), seed)
    assert [s.name for s in chosen.sets] == [SEED_SET, "a", "s"] and not chosen.notes
    assert [len(s.samples) for s in chosen.sets] == [8, 3, 3]  # the pool: 10 rows minus the 20% hold-out
    alone = comparison_sets(CompareConfig(), seed)
    assert [s.name for s in alone.sets] == [SEED_SET] and "compare.datasets" in alone.notes[0]


@pytest.mark.parametrize("settings, match", [
    (CompareConfig(include_seed=False), "nothing to compare"),
    (CompareConfig(datasets=["x.jsonl"], names=["a", "b"]), "one name per data set"),
])
def test_bad_settings_are_refused_with_the_fix(seed, settings, match):
    with pytest.raises(ValueError, match=match):
        comparison_sets(settings, seed)


def test_run_overrides_replace_only_what_they_set():
    base = CompareConfig(datasets=["a.jsonl"], cluster_seed=3)
    merged = with_overrides(base, {"cluster_seed": None, "limit": 5, "include_seed": False})
    assert (merged.datasets, merged.cluster_seed, merged.limit, merged.include_seed) == (["a.jsonl"], 3, 5, False)
    with pytest.raises(ValueError, match="limit"):
        with_overrides(base, {"limit": 0})  # validated like a profile


def test_comparison_stores_rows_and_writes_the_report(tmp_path, seed, tiny_embedder):
    arith, _ = write_sets(tmp_path)
    store = MetadataStore(tmp_path / "data" / "prismatic.duckdb")
    settings = CompareConfig(datasets=[str(arith)], limit=4, qs=(2.0, float("inf")), clusters=2)
    logged: list[str] = []
    done = compare_with_seed(store, tiny_embedder, comparison_sets(settings, seed), settings, model="tiny",
                             run_id="r1", log=logged.append)
    assert done.set_names() == [SEED_SET, "arith"]
    assert set(done.g_vendi()[SEED_SET]) == {"2", "inf"}  # the configured orders, no others
    assert all(1.0 <= v <= 8 for v in done.g_vendi()[SEED_SET].values())
    assert done.html_path == tmp_path / "data" / "reports" / "dataset_comparison.html"
    assert "<img" in done.html_path.read_text() and "| G-Vendi q=2 |" in done.metric_table()
    rows = store.query("SELECT scope, metric, q FROM scores WHERE metric = 'g_vendi' ORDER BY scope, q").rows()
    assert [(s, q) for s, _, q in rows] == [("compare:arith", 2.0), ("compare:arith", math.inf),
                                            ("compare:seed", 2.0), ("compare:seed", math.inf)]
    assert done.n_score_rows == store.query("SELECT count(*) AS n FROM scores")["n"][0]
    # 12 samples: a line per gradient (every max(1, 12 // 20) = 1), per set
    assert [line for line in logged if re.fullmatch(r"gradients \d+/\d+", line)] \
        == [f"gradients {i}/8" for i in range(1, 9)] + [f"gradients {i}/4" for i in range(1, 5)]


def _seed_of(tmp_path, n: int) -> SeedConfig:
    path = tmp_path / f"seed{n}.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Add {i} and {2 * i}.", "response": f"{3 * i}"}) + "\n"
                            for i in range(n)))
    return SeedConfig(source=str(path), holdout_fraction=0.0)


def test_without_a_progress_callback_the_log_gets_every_20th_of_the_gradients_and_each_failure(tmp_path,
                                                                                                tiny_embedder):
    # 41 samples: a line every 41 // 20 = 2 gradients and at the last one; a failed gradient is logged by name
    seed = _seed_of(tmp_path, 41)
    settings = CompareConfig(qs=(1.0,), clusters=2)
    chosen = comparison_sets(settings, seed)
    failing = chosen.sets[0].samples[6].sample_id  # its prompt: "Add 6 and 12."
    logged: list[str] = []
    done = compare_with_seed(MetadataStore(tmp_path / "m.duckdb"), FailingOn(tiny_embedder, "Add 6 and 12."), chosen,
                             settings, model="tiny", log=logged.append)
    assert [line for line in logged if re.fullmatch(r"gradients \d+/\d+", line)] \
        == [f"gradients {i}/41" for i in range(2, 41, 2)] + ["gradients 41/41"]
    assert f"gradient of {failing} failed: non-finite loss (nan)" in logged
    assert done.report.sets[0].n_vectors == 40 and failing in done.report.sets[0].excluded
    assert all(isinstance(line, str) for line in logged)
    assert "no data sets listed under compare.datasets: the seed pool is reported alone; add files there to " \
           "compare them with it" in logged  # the sets' notes reach the log too


def test_a_progress_callback_sees_every_gradient_and_the_log_gets_the_stages(tmp_path, seed, tiny_embedder):
    arith, _ = write_sets(tmp_path)
    settings = CompareConfig(datasets=[str(arith)], limit=4, qs=(1.0,), clusters=2, examples=1, cluster_seed=7)
    seen: list[tuple[str, int, int]] = []
    logged: list[str] = []
    store = MetadataStore(tmp_path / "m.duckdb")
    done = compare_with_seed(store, tiny_embedder, comparison_sets(settings, seed), settings, model="proxy-x",
                             run_id="r9", log=logged.append, on_progress=lambda *a: seen.append(a))
    assert seen == [("gradients", i, 8) for i in range(1, 9)] + [("gradients", i, 4) for i in range(1, 5)]
    assert not [line for line in logged if re.fullmatch(r"gradients \d+/\d+", line)]  # the callback has them
    assert "gradients of seed (8 samples)" in logged and "coverage clustering" in logged
    report = done.report
    assert (report.model, report.coverage.k) == ("proxy-x", 2)  # the settings' K, not ~sqrt(12) = 3
    assert report.cluster_seed == 7
    assert report.examples and all(len(e.samples) == 1 for e in report.examples)  # settings.examples
    assert set(store.query("SELECT run_id FROM scores").rows()) == {("r9",)}
    assert set(store.query("SELECT run_id FROM embeddings").rows()) == {("r9",)}
    page = done.html_path.read_text()
    assert "<title>Data set comparison (dataset_comparison asset)</title>" in page


def test_the_metric_table_is_one_markdown_row_per_metric_and_a_column_per_set(tmp_path, seed, tiny_embedder):
    arith, _ = write_sets(tmp_path)
    settings = CompareConfig(datasets=[str(arith)], limit=4, qs=(2.0,), clusters=2)
    done = compare_with_seed(MetadataStore(tmp_path / "m.duckdb"), tiny_embedder, comparison_sets(settings, seed),
                             settings, model="tiny")
    lines = done.metric_table().split("\n")
    assert lines[:2] == ["| metric | seed | arith |", "|---|---|---|"]
    cells = [line[2:-2].split(" | ") for line in lines[2:]]
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines[2:])
    assert all(len(row) == 3 for row in cells)
    by_label = {row[0]: row[1:] for row in cells}
    g2 = done.g_vendi()
    assert [float(x.split()[0]) for x in by_label["G-Vendi q=2"]] \
        == pytest.approx([g2[SEED_SET]["2"], g2["arith"]["2"]], rel=1e-3)


def test_a_world_seed_pool_is_drawn_from_the_profiles_world(tmp_path):
    world = WorldConfig(pool=WorldPoolConfig(size=40, family_zipf=0.5), seed=5)
    seed = SeedConfig(source="world", holdout_fraction=0.25)
    chosen = comparison_sets(CompareConfig(), seed, world)
    assert [s.sample_id for s in chosen.sets[0].samples] == [s.sample_id for s in load_seed(seed, world).pool]
    assert len(chosen.sets[0].samples) == 30
    with pytest.raises(ValueError, match="world block"):
        comparison_sets(CompareConfig(), seed)


def test_the_data_sets_are_read_with_the_sections_field_mapping(tmp_path, seed):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}?", "solution": f"a{i}"}) + "\n" for i in range(5)))
    chosen = comparison_sets(CompareConfig(datasets=[str(path)], fields="prompt=question,response=solution",
                                           limit=3), seed)
    assert [(s.prompt, s.response) for s in chosen.sets[1].samples] == [("q0?", "a0"), ("q1?", "a1"), ("q2?", "a2")]


def test_the_report_is_written_whole_into_new_folders_and_readable_by_all(tmp_path):
    path = tmp_path / "a" / "b" / "report.html"
    _write_atomic(path, "première")
    _write_atomic(path, "zweite — ü")  # the folder exists now: written again
    assert path.read_bytes() == "zweite — ü".encode("utf-8")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.html"]


def test_a_failed_report_write_keeps_the_old_report_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "report.html"
    path.write_text("old")
    temporaries: list[Path] = []

    def failing_replace(src, dst):
        temporaries.append(Path(src))
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        _write_atomic(path, "new")
    (tmp,) = temporaries
    assert tmp.parent == path.parent and tmp.name.startswith(".report.html-")  # hidden, beside the report
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
