"""The dataset_comparison asset through a real Dagster materialization with a tiny model."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from prismatic_assets.infra.config import CompareConfig
from prismatic_assets.orchestration.assets.comparison import dataset_comparison
from prismatic_assets.orchestration.resources import build_resources
from prismatic_assets.store.store import MetadataStore
from tests.conftest import write_profile
from tests.pipeline.test_compare import write_sets


def _profile(tmp_path, tiny_model_dir) -> str:
    seed = tmp_path / "seed.jsonl"
    seed.write_text("".join(json.dumps({"prompt": f"Compute {i} * {i + 3}.", "response": f"{i * (i + 3)}"}) + "\n"
                            for i in range(10)))
    return write_profile(tmp_path, {"data_dir": str(tmp_path / "data"),
                                    "seed": {"source": str(seed), "holdout_fraction": 0.2},
                                    "proxy": {"model": tiny_model_dir, "max_length": 128},
                                    "projection": {"dim": 64}})


def _materialize(tmp_path, tiny_model_dir, **run):
    return dg.materialize([dataset_comparison], resources=build_resources(_profile(tmp_path, tiny_model_dir)),
                          run_config={"ops": {"dataset_comparison": {"config": run}}})


def test_compares_the_seed_pool_with_configured_sets(tmp_path, tiny_model_dir):
    arith, salad = write_sets(tmp_path)
    result = _materialize(tmp_path, tiny_model_dir, datasets=[str(arith), str(salad)], names=["arith", "words"],
                          limit=3)
    assert result.success
    meta = result.asset_materializations_for_node("dataset_comparison")[0].metadata
    assert meta["sets"].value == ["seed", "arith", "words"]
    assert "G-Vendi q=1" in meta["metrics"].value and meta["cluster_shares"].value.startswith("![cluster shares](")
    html = tmp_path / "data" / "reports" / "dataset_comparison.html"
    assert meta["html_report"].value == str(html) and "<img" in html.read_text()
    store = MetadataStore(tmp_path / "data" / "prismatic.duckdb")
    scopes = store.query("SELECT DISTINCT scope FROM scores ORDER BY scope")["scope"].to_list()
    assert scopes == ["compare:arith", "compare:seed", "compare:words"]
    seed_n = store.query("SELECT n FROM scores WHERE scope = 'compare:seed' AND metric = 'g_vendi' LIMIT 1")["n"][0]
    assert seed_n == 8  # the pool: 10 rows minus the 20% hold-out


def test_without_configured_sets_reports_the_seed_pool_alone(tmp_path, tiny_model_dir):
    result = _materialize(tmp_path, tiny_model_dir)
    meta = result.asset_materializations_for_node("dataset_comparison")[0].metadata
    assert meta["sets"].value == ["seed"]
    assert any("compare.datasets" in note for note in meta["notes"].value)


def test_nothing_to_compare_fails_with_the_fix(tmp_path, tiny_model_dir):
    with pytest.raises(dg.Failure, match="compare.datasets"):
        _materialize(tmp_path, tiny_model_dir, include_seed=False)


def test_compare_config_is_strict():
    with pytest.raises(ValueError, match="extra"):
        CompareConfig(dataset=["x.jsonl"])
    assert CompareConfig().datasets == [] and CompareConfig().include_seed
