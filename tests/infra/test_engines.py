"""Engine lifecycles and the placement check (real processes; GPUs only as configuration)."""

from __future__ import annotations

import pytest

from prismatic_assets.infra.config import EngineConfig, load_config
from prismatic_assets.infra.engines import EngineSet, PlacementError, check_placement


def gpu(devices, util=0.9, keep=False, model="m", tp=None) -> EngineConfig:
    return EngineConfig(model=model, devices=tuple(devices), tensor_parallel_size=tp or len(devices),
                        gpu_memory_utilization=util, keep_loaded=keep)


def test_two_resident_engines_on_the_same_gpus_are_refused_before_anything_starts():
    with pytest.raises(PlacementError, match=r"GPU 0 would hold 2 engines at once .* sums to 1.80 > 0.95.*"
                                             r"disjoint `devices`.*keep_loaded: false"):
        EngineSet({"generator": gpu([0, 1, 2, 3], keep=True, model="a"),
                   "teacher": gpu([0, 1, 2, 3], keep=True, model="b")})


@pytest.mark.parametrize("engines", [
    # one at a time on the same GPUs (the default: closed after each stage)
    {"generator": gpu([0, 1, 2, 3], model="a"), "teacher": gpu([0, 1, 2, 3], model="b")},
    # resident together, disjoint GPUs (the paper profile on 8 GPUs)
    {"generator": gpu([0, 1, 2, 3], keep=True, model="a"), "teacher": gpu([4, 5, 6, 7], keep=True, model="b")},
    # resident together, sharing a GPU within the budget
    {"generator": gpu([0], 0.45, keep=True, model="a"), "teacher": gpu([0], 0.45, keep=True, model="b")},
    # the same configuration in two roles is one engine
    {"generator": gpu([0], keep=True), "teacher": gpu([0], keep=True)},
])
def test_placements_that_fit_are_accepted(engines):
    check_placement(engines, gpu_count=8)


def test_devices_must_exist_and_match_tensor_parallelism():
    with pytest.raises(PlacementError, match=r"GPU\(s\) \[4, 5, 6, 7\].*has 4 GPU"):
        check_placement({"teacher": gpu([4, 5, 6, 7])}, gpu_count=4)
    with pytest.raises(ValueError, match="one GPU per shard"):
        EngineConfig(devices=(0, 1), tensor_parallel_size=4)


@pytest.mark.parametrize("profile", ["local", "paper", "paper-1gpu"])
def test_shipped_profiles_place(profile):
    config = load_config(profile)
    check_placement({"generator": config.synthesis.generator, "teacher": config.synthesis.teacher,
                     "student": config.evaluation.engine}, gpu_count=8)


class Counted:
    def __init__(self, name):
        self.model_name, self.closed = name, 0

    def close(self):
        self.closed += 1


def test_shared_engine_stays_open_until_every_role_is_served(monkeypatch):
    opened = []
    monkeypatch.setattr("prismatic_assets.infra.engines.open_engine", lambda cfg, model=None: opened.append(cfg.model)
                        or Counted(cfg.model))
    same = EngineConfig(backend="transformers", model="one")
    engines = EngineSet({"generator": same, "teacher": same})
    with engines.open("generator") as g:
        pass
    assert g.closed == 0  # the teacher still needs it
    with engines.open("teacher") as t:
        assert t is g
    assert g.closed == 1 and opened == ["one"]
    assert engines.calls == [("open", "generator"), ("reuse", "teacher"), ("close", "teacher")]

    other = EngineSet({"generator": EngineConfig(backend="transformers", model="a"),
                       "teacher": EngineConfig(backend="transformers", model="b")})
    with other.open("generator") as a:
        pass
    assert a.closed == 1  # closed before the teacher's engine opens
    with other.open("teacher") as b:
        pass
    assert b.closed == 1 and [e for e, _ in other.calls] == ["open", "close", "open", "close"]
