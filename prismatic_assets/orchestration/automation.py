"""Round partitions kept in order, and the schedule that runs the arm rounds.

Rounds build on each other, so the partitions of `synthesis_round` and `arm_round` are
numbers and run in order. The sensor `add_next_round_partitions` (running by default; it
launches nothing) keeps, for each of the two assets, the next round's partition ready to
launch from the UI: the smallest number not yet materialized. It refuses partitions added
by hand that break the order (a name that is not a round number, or a round beyond the
next one that never ran): they are deleted and the tick says why. The round assets also
refuse an out-of-order round when it runs (`round_keys.partition_round` and the pipeline's
order checks). `arm_round_every_hour` (stopped by default) runs the next arm round while fewer
than the profile's `arms.rounds` are done; `synthesis_round_every_6_hours` in
assets/rounds.py does the same for synthesis rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import dagster as dg

from prismatic_assets.orchestration.assets.arms import ARM_ROUND_PARTITIONS, ARM_ROUNDS, arm_round, arm_round_job
from prismatic_assets.orchestration.assets.rounds import (
    CONCURRENCY_TAG,
    ROUND_PARTITIONS,
    ROUNDS,
    synthesis_round,
    synthesis_round_job,
)
from prismatic_assets.orchestration.resources import ProfileResource
from prismatic_assets.orchestration.round_keys import is_round_key

_JOBS = {synthesis_round.key: synthesis_round_job.name, arm_round.key: arm_round_job.name}
_IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED]


@dataclass(frozen=True)
class PartitionPlan:
    next_round: int
    add: list[str]
    remove: dict[str, str]  # key -> why it is refused


def plan_partitions(existing: Sequence[str], materialized: set[str], in_flight: set[str]) -> PartitionPlan:
    """What the sensor does to one round asset's partitions (pure: tested without Dagster)."""
    done = {int(k) for k in materialized if is_round_key(k)}
    upcoming = next(r for r in range(1, len(done) + 2) if r not in done)
    remove = {}
    for key in existing:
        if not is_round_key(key):
            remove[key] = "not a round number"
        elif int(key) > upcoming and key not in materialized and key not in in_flight:
            remove[key] = f"round {key} cannot run before round {upcoming}"
    add = [] if str(upcoming) in existing else [str(upcoming)]
    return PartitionPlan(upcoming, add, remove)


def _in_flight_partitions(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> set[str]:
    """Partitions of `asset_key` that a queued or running run materializes."""
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=_IN_FLIGHT))
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags and
            (asset_key in (r.asset_selection or ()) or r.job_name == _JOBS[asset_key])}


@dg.sensor(minimum_interval_seconds=15, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Keeps the next round's partition of synthesis_round and arm_round ready to launch and "
                       "deletes partitions that break the round order. Launches nothing.")
def add_next_round_partitions(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    instance, notes = context.instance, []
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    for asset, partitions, name in ((synthesis_round, ROUNDS, ROUND_PARTITIONS),
                                    (arm_round, ARM_ROUNDS, ARM_ROUND_PARTITIONS)):
        existing = instance.get_dynamic_partitions(name)
        plan = plan_partitions(existing, instance.get_materialized_partitions(asset.key),
                               _in_flight_partitions(instance, asset.key))
        if plan.add:
            requests.append(partitions.build_add_request(plan.add))
        if plan.remove:
            requests.append(partitions.build_delete_request(list(plan.remove)))
            notes.append(f"{asset.key.to_user_string()}: deleted " +
                         ", ".join(f"{k!r} ({why})" for k, why in plan.remove.items()))
        notes.append(f"{asset.key.to_user_string()}: next round {plan.next_round}" +
                     (" (partition added)" if plan.add else ""))
    return dg.SensorResult(dynamic_partitions_requests=requests, skip_reason="; ".join(notes))


@dg.schedule(job=arm_round_job, cron_schedule="0 * * * *", default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Runs the next arm round every hour until the profile's arms.rounds are done "
                         "(stopped by default).")
def arm_round_every_hour(context: dg.ScheduleEvaluationContext, profile: ProfileResource):
    instance = context.instance
    plan = plan_partitions(instance.get_dynamic_partitions(ARM_ROUND_PARTITIONS),
                           instance.get_materialized_partitions(arm_round.key),
                           _in_flight_partitions(instance, arm_round.key))
    wanted = profile.config().arms.rounds
    if plan.next_round > wanted:
        return dg.SkipReason(f"all {wanted} arm rounds are done (arms.rounds in the profile)")
    if _in_flight_partitions(instance, arm_round.key):
        return dg.SkipReason("an arm round is running")
    if plan.add:
        instance.add_dynamic_partitions(ARM_ROUND_PARTITIONS, plan.add)
    return dg.RunRequest(partition_key=str(plan.next_round), tags=CONCURRENCY_TAG)


AUTOMATION = {"sensors": [add_next_round_partitions], "schedules": [arm_round_every_hour]}
