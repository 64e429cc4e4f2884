"""`python -m tests.run_assets ASSET[,ASSET...] [PARTITION]`: materialize in this process.

The project's definitions (profile from $PRISMATIC_PROFILE), the instance of $DAGSTER_HOME,
the in-process executor: the same asset code as `dagster asset materialize`, without a
process per step, so a test that kills this process kills the step with it. Exit code 0
when the run succeeded.
"""

from __future__ import annotations

import sys

import dagster as dg

from prismatic_assets.orchestration.definitions import build_definitions


def main(selection: str, partition: str | None = None) -> int:
    job = build_definitions().resolve_implicit_global_asset_job_def().get_subset(
        asset_selection={dg.AssetKey(name) for name in selection.split(",")})
    with dg.DagsterInstance.get() as instance:
        result = job.execute_in_process(instance=instance, partition_key=partition, raise_on_error=False)
    for event in result.all_events:
        if event.is_failure:
            print(event.message, file=sys.stderr)
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
