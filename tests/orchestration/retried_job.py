"""A job whose step process is killed (SIGKILL, as the out-of-memory killer does) on its first
attempt and succeeds on the retry; module level so the multiprocess executor can rebuild it."""

import os
import signal

import dagster as dg

from prismatic_assets.orchestration.retry import retry_note


@dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
def killed_once(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    if context.retry_number == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return dg.MaterializeResult(metadata={**retry_note(context), "value": 1})


killed_once_job = dg.define_asset_job("killed_once_job", selection=[killed_once])
defs = dg.Definitions(assets=[killed_once], jobs=[killed_once_job])


def job() -> dg.JobDefinition:
    return defs.resolve_job_def("killed_once_job")
