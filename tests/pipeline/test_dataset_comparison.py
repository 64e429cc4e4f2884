"""The dataset_comparison asset's work without Dagster: the sets, the stored rows, the report file."""

from __future__ import annotations

import json
import math

import pytest

from prismatic_assets.infra.config import CompareConfig, SeedConfig, with_overrides
from prismatic_assets.pipeline.dataset_comparison import SEED_SET, compare_with_seed, comparison_sets
from prismatic_assets.store.store import MetadataStore
from tests.pipeline.test_compare import write_sets


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
    assert any(line.startswith("gradients ") for line in logged)
