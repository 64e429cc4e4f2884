"""The backbone through real Dagster materializations, a real DuckDB file and real models.

The packaged SmolLM2 runs on a small CHAMP subset; the shipped multiprocess executor runs
through the `dagster` CLI with a tiny random-init model (same code path, seconds not minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from prismatic_assets.infra.config import load_config
from prismatic_assets.orchestration.definitions import build_definitions
from prismatic_assets.store.store import MetadataStore
from tests.conftest import write_profile

ROOT = Path(__file__).resolve().parents[3]

BACKBONE = "seed_samples,gradient_embeddings,gradient_clusters,g_vendi"


def _materialize(profile: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    defs = build_definitions(profile)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(key) for key in BACKBONE.split(",")})
    return job.execute_in_process(instance=instance)


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    return {event.asset_key.to_user_string(): event.event_specific_data.materialization.metadata
            for event in result.get_asset_materialization_events()}


@pytest.mark.integration
def test_materialize_backbone_with_packaged_model(tmp_path):
    profile = write_profile(tmp_path, {"data_dir": str(tmp_path / "data"),
                                       "seed": {"source": "champ", "limit": 10, "holdout_fraction": 0.2},
                                       "proxy": {"max_length": 384}, "clustering": {"ratio": 0.3}})
    with dg.instance_for_test() as instance:
        result = _materialize(profile, instance)
        assert result.success
        meta = _metadata(result)
        assert meta["seed_samples"]["n_pool"].value == 8 and meta["seed_samples"]["n_holdout"].value == 2
        emb = meta["gradient_embeddings"]
        assert emb["n_valid"].value == 8 and emb["n_computed"].value == 8
        assert emb["parameters"].value == "134515008"  # a setting: text, not plotted
        score = meta["g_vendi"]["g_vendi"].value
        assert 1.0 <= score <= 8.0
        checks = result.get_asset_check_evaluations()
        assert len(checks) == 4 and all(c.passed for c in checks)

        # A second materialization reuses every vector and replaces, never duplicates, rows.
        again = _materialize(profile, instance)
        meta2 = _metadata(again)
        assert meta2["gradient_embeddings"]["n_cached"].value == 8
        assert meta2["gradient_embeddings"]["n_computed"].value == 0
        assert meta2["g_vendi"]["g_vendi"].value == pytest.approx(score, rel=1e-9)

    store = MetadataStore(load_config(profile).store_path)
    counts = store.query("SELECT (SELECT count(*) FROM samples) AS s, (SELECT count(*) FROM embeddings) AS e, "
                         "(SELECT count(*) FROM scores) AS g, (SELECT count(*) FROM clusterings) AS c").row(0)
    assert counts == (10, 16, 6, 1)  # 8 gradient vectors + 8 hidden states; G-Vendi + 5 baselines
    runs = store.query("SELECT DISTINCT run_id FROM scores")["run_id"].to_list()
    assert len(runs) == 1 and runs[0]  # the Dagster run id is stored with the score


def test_shipped_multiprocess_executor_via_dagster_cli(tmp_path, tiny_model_dir):
    """`dagster asset materialize` with the definitions' own executor (parallel processes, one DuckDB file)."""
    profile = load_config("local")
    values = {
        "profile": "test", "data_dir": str(tmp_path / "data"),
        "seed": {"source": "champ", "limit": 24, "holdout_fraction": 0.25},
        "proxy": {"model": tiny_model_dir, "autocast": None, "max_length": 256},
        "projection": {"kind": profile.projection.kind, "dim": 128, "seed": 0},
        "clustering": {"ratio": 0.2},
    }
    config = tmp_path / "test.yaml"
    config.write_text(yaml.safe_dump(values))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PRISMATIC_PROFILE": str(config)}
    proc = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "--select", BACKBONE,
                           "-m", "prismatic_assets.orchestration.definitions"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RUN_SUCCESS" in proc.stderr + proc.stdout
    store = MetadataStore(tmp_path / "data" / "prismatic.duckdb")
    score = store.query("SELECT value, n, dim FROM scores WHERE metric = 'g_vendi'").row(0)
    assert 1.0 <= score[0] <= min(score[1], score[2]) and score[1] == 18
    instance_runs = list((home / "storage").iterdir()) if (home / "storage").exists() else []
    assert instance_runs, "the run should be recorded in the Dagster instance"


def test_an_asset_materializes_without_definitions(tmp_path):
    """Assets are module-level: bind resources and materialize one, no Definitions built."""
    from prismatic_assets.orchestration.assets.backbone import seed_samples
    from prismatic_assets.orchestration.resources import ProfileResource, StoreResource

    profile = write_profile(tmp_path, {"data_dir": str(tmp_path / "data"),
                                       "seed": {"source": "champ", "limit": 10, "holdout_fraction": 0.2}})
    result = dg.materialize([seed_samples], resources={"profile": ProfileResource(profile=profile),
                                                        "store": StoreResource(profile=profile)})
    assert result.success
    snapshot = result.output_for_node("seed_samples")
    assert len(snapshot.pool_ids) == 8 and len(snapshot.holdout_ids) == 2
    assert MetadataStore(load_config(profile).store_path).query("SELECT count(*) AS n FROM samples")["n"][0] == 10
