"""Round partitions stay in order: the sensor proposes the next round and refuses the rest; the
arm-round schedule stops at the profile's number of rounds; round assets refuse a bad key."""

from __future__ import annotations

import dagster as dg
import pytest

from prismatic_assets.orchestration.assets.arms import ARM_ROUNDS, arm_round
from prismatic_assets.orchestration.assets.rounds import ROUNDS
from prismatic_assets.orchestration.automation import add_next_round_partitions, arm_round_every_hour, plan_partitions
from prismatic_assets.orchestration.resources import ProfileResource
from prismatic_assets.orchestration.round_keys import is_round_key, partition_round
from tests.conftest import write_profile


@pytest.mark.parametrize("existing,materialized,in_flight,upcoming,add,removed", [
    ([], set(), set(), 1, ["1"], []),                                       # a fresh instance: round 1 proposed
    (["1"], {"1"}, set(), 2, ["2"], []),                                    # after round 1: round 2
    (["1", "2"], {"1", "2"}, set(), 3, ["3"], []),
    (["1", "foo", "01"], set(), set(), 1, [], ["foo", "01"]),               # not round numbers
    (["1", "5"], {"1"}, set(), 2, ["2"], ["5"]),                            # round 5 before round 2: refused
    (["1", "2", "3"], {"1", "3"}, set(), 2, [], []),                        # round 2 stale (wiped): 3 stays
    (["1", "2", "3"], {"1"}, {"3"}, 2, [], []),                             # a running round is never removed
])
def test_plan_partitions(existing, materialized, in_flight, upcoming, add, removed):
    plan = plan_partitions(existing, materialized, in_flight)
    assert (plan.next_round, plan.add, sorted(plan.remove)) == (upcoming, add, sorted(removed))


def test_round_keys():
    assert [k for k in ("1", "12", "0", "01", "-1", "x", "1.0", "") if is_round_key(k)] == ["1", "12"]


def test_the_sensor_adds_the_next_round_and_deletes_out_of_order_ones(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions(ARM_ROUNDS.name, ["1", "7", "round-2"])
        instance.report_runless_asset_event(dg.AssetMaterialization(arm_round.key, partition="1"))
        result = add_next_round_partitions(dg.build_sensor_context(instance=instance))
        requests = {(type(r).__name__, r.partitions_def_name): sorted(r.partition_keys)
                    for r in result.dynamic_partitions_requests}
    assert requests == {("AddDynamicPartitionsRequest", ROUNDS.name): ["1"],
                        ("AddDynamicPartitionsRequest", ARM_ROUNDS.name): ["2"],
                        ("DeleteDynamicPartitionsRequest", ARM_ROUNDS.name): ["7", "round-2"]}
    assert "round 7 cannot run before round 2" in result.skip_reason.skip_message


def test_the_arm_schedule_runs_the_next_round_then_stops_at_arms_rounds(tmp_path):
    profile = ProfileResource(profile=write_profile(tmp_path, {"arms": {"rounds": 2}}))
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        context = dg.build_schedule_context(instance=instance, resources={"profile": profile})
        first = arm_round_every_hour(context)
        assert isinstance(first, dg.RunRequest) and first.partition_key == "1"
        assert instance.has_dynamic_partition(ARM_ROUNDS.name, "1")
        for key in ("1", "2"):
            instance.add_dynamic_partitions(ARM_ROUNDS.name, [key])
            instance.report_runless_asset_event(dg.AssetMaterialization(arm_round.key, partition=key))
        done = arm_round_every_hour(context)
    assert isinstance(done, dg.SkipReason) and "all 2 arm rounds are done" in done.skip_message


def test_a_round_asset_refuses_a_key_that_is_not_a_round_number_without_retrying(tmp_path):
    parts = dg.DynamicPartitionsDefinition(name="rounds_under_test")
    attempts = []

    @dg.asset(partitions_def=parts, retry_policy=dg.RetryPolicy(max_retries=2))
    def some_round(context) -> None:
        attempts.append(1)
        partition_round(context)

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions(parts.name, ["next"])
        result = dg.materialize([some_round], instance=instance, partition_key="next", raise_on_error=False)
    assert not result.success and len(attempts) == 1
    failure = result.get_step_failure_events()[0].step_failure_data
    assert "partition 'next' is not a round number" in failure.user_failure_data.description
