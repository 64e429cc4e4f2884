"""`prismatic study` refuses a pool too small for its sets at once, naming the setting (no Dagster run starts)."""

from __future__ import annotations

from prismatic_assets.interfaces.cli import main
from tests.conftest import write_profile


def test_a_pool_too_small_is_an_error_naming_the_setting(tmp_path, capsys):
    profile = write_profile(tmp_path, {"data_dir": str(tmp_path / "data"),
                                       "study": {"families": ["basic_arithmetic", "gcd"], "levels": [0],
                                                 "pool_size": 20, "designs": ["span:1:1", "span:2:1", "random:0"],
                                                 "set_size": 8, "eval_per_family": 2}})
    assert main(["study", "--profile", profile]) == 2
    err = capsys.readouterr().err
    assert err.startswith("prismatic: error: PoolTooSmall: study.pool=procedural: design")
    assert "raise study.pool_size (now 20)" in err
    assert not (tmp_path / "data" / "prismatic.duckdb").exists()  # nothing started


def test_a_bad_design_is_a_config_error(tmp_path, capsys):
    profile = write_profile(tmp_path, {"study": {"designs": ["span:1:1", "clusters"]}})
    assert main(["study", "--profile", profile]) == 2
    err = capsys.readouterr().err
    assert "study.designs" in err and "unknown design 'clusters'" in err
