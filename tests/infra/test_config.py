"""The typed configuration: one default per setting, profiles that only override, strict errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from prismatic_assets.infra.config import (
    Config,
    ConfigError,
    available_profiles,
    build_config,
    defaults,
    defaults_markdown,
    describe,
    load_config,
)
from tests.conftest import write_profile

ROOT = Path(__file__).resolve().parents[2]


def test_documented_defaults_are_the_resolved_config_without_a_profile(tmp_path):
    """docs/CONFIG.md is generated from the one definition; an empty profile resolves to it."""
    assert (ROOT / "docs" / "CONFIG.md").read_text() == defaults_markdown()
    empty = load_config(write_profile(tmp_path, {}, name="empty"))
    assert empty.model_dump() == Config(profile="empty").model_dump()
    documented = dict(defaults())
    assert documented["synthesis.few_shot"] == 5 and documented["synthesis.problem_sampling.temperature"] == 1.0
    assert documented["distill.sft.max_steps"] == 10  # core.sft.SFTSettings' own default, not a copy


def test_profiles_override_only_what_they_write():
    local = {k: (v, o) for k, v, o in describe("local")}
    assert local["synthesis.few_shot"] == (3, str(ROOT / "resources" / "local.yaml"))
    assert local["synthesis.n_solutions"] == (3, "default")
    # A partial block keeps the rest of the defaults (top_p stays the paper's 0.95).
    assert local["synthesis.problem_sampling.temperature"][0] == 0.7
    assert local["synthesis.problem_sampling.top_p"] == (0.95, "default")
    paper = {k: (v, o) for k, v, o in describe("paper-1gpu")}
    assert paper["synthesis.generator.tensor_parallel_size"][0] == 1  # paper-1gpu.yaml
    assert paper["synthesis.teacher.max_model_len"] == (16384, str(ROOT / "resources" / "paper.yaml"))


@pytest.mark.parametrize("profile", available_profiles())
def test_every_shipped_profile_loads(profile):
    config = load_config(profile)
    assert config.synthesis.min_agree <= config.synthesis.n_solutions


@pytest.mark.parametrize("values, match", [
    ({"synthesis": {"few_shott": 3}}, r"unknown key 'synthesis.few_shott'; known keys here: \[.*'few_shot'"),
    ({"synthesis": {"problem_sampling": {"temprature": 1}}}, r"unknown key .*temprature.*'temperature'"),
    ({"synthesis": {"strategy": "nearest"}}, r"synthesis.strategy: Input should be 'random' or 'sparse_cluster'"),
    ({"proxy": {"max_length": "long"}}, r"proxy.max_length: Input should be a valid integer"),
    ({"synthesis": {"min_agree": 4}}, r"min_agree=4 > n_solutions=3"),
    ({"projection": {"kind": "rademacher"}}, r"set projection.kind: countsketch"),
    ({"synthesis": {"teacher": {"tensor_parallel_size": 2, "devices": [0]}}}, r"one GPU per shard"),
    ({"distill": {"sft": {"sharding": "zero2"}}}, r"sharding='zero2': choose one of"),
    ({"arms": {"budget": 31}}, r"arms.budget=31 > arms.requests_per_round x world.generator.new_per_request = 30"),
    ({"arms": {"arms": ["random", "random"]}}, r"names an arm twice"),
    ({"arms": {"arms": ["prismatic", "greedy"]}}, r"arms.arms.1: Input should be 'prismatic', 'prismatic_targeted'"),
    ({"arms": {"experiment": {"ood_families": ["gcd"]}}}, r"ood_families \['gcd'\] are also in world.families"),
    ({"world": {"generator": {"same_cell": 0.8}}}, r"same_cell \+ neighbour_level \+ new_family = 1.1"),
    ({"world": {"levels": [0]}}, r"neighbour_level=0.2 but world.levels=\[0\] has one level"),
])
def test_bad_profiles_name_the_file_the_key_and_the_choices(tmp_path, values, match):
    path = write_profile(tmp_path, values, name="bad")
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert path in str(info.value)


def test_missing_profile_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"available profiles: \['local', 'paper'"):
        load_config("papr")


def test_extends_loops_are_refused(tmp_path):
    a = write_profile(tmp_path, {"extends": str(tmp_path / "b.yaml")}, name="a")
    write_profile(tmp_path, {"extends": a}, name="b")
    with pytest.raises(ConfigError, match="loops"):
        load_config(a)


def test_config_show_cli_prints_values_and_origins(tmp_path):
    show = [sys.executable, "-m", "prismatic_assets.interfaces.cli", "config", "show", "--profile"]
    out = subprocess.run(show + ["paper"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("synthesis.generator.model"))
    assert "Qwen/Qwen2.5-72B-Instruct" in line and line.rstrip().endswith("paper.yaml")
    assert any(x.startswith("synthesis.n_solutions") and x.rstrip().endswith("default") for x in out.splitlines())
    bad = subprocess.run(show + ["nope"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "ConfigError: profile 'nope'" in bad.stderr


def test_build_config_merges_overrides_key_by_key():
    config = build_config({"synthesis": {"solution_sampling": {"max_tokens": 99}}})
    assert config.synthesis.solution_sampling.max_tokens == 99
    assert config.synthesis.solution_sampling.temperature == 0.75


def test_probe_assignment_needs_the_two_level_method():
    from pydantic import ValidationError

    from prismatic_assets.infra.config import ClusteringConfig

    with pytest.raises(ValidationError, match="set clustering.method: two_level or clustering.assign: exact"):
        ClusteringConfig(assign="probe")
    assert ClusteringConfig(method="two_level", assign="probe").assign == "probe"
