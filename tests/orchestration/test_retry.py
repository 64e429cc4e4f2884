"""Only transient step failures are retried by Dagster; the rest fail once, with their message."""

from __future__ import annotations

import dagster as dg
import pytest

from prismatic_assets.core.generation import GenerationError, PartialGenerationError
from prismatic_assets.orchestration.assets.backbone import gradient_embeddings
from prismatic_assets.orchestration.assets.rounds import synthesis_round
from prismatic_assets.orchestration.retry import TRANSIENT_RETRY, retry_transient_only
from prismatic_assets.pipeline.round_stages import RoundOrderError
from prismatic_assets.store.store import StoreBusy, StoreDiskFull, StoreLockTimeout


def test_the_resumable_assets_carry_the_retry_policy():
    for asset in (gradient_embeddings, synthesis_round):
        assert asset.node_def.retry_policy == TRANSIENT_RETRY


@pytest.mark.parametrize("error", [GenerationError("server down"), PartialGenerationError("half", {0: ["x"]}),
                                   StoreLockTimeout("locked"), ConnectionResetError("reset")])
def test_transient_errors_reach_the_retry_policy(error):
    with pytest.raises(type(error)):
        with retry_transient_only():
            raise error


@pytest.mark.parametrize("error", [RoundOrderError("run round 1 first"), StoreBusy("round 1 is running"),
                                   StoreDiskFull("the disk is full"), ValueError("bad setting"),
                                   RuntimeError("no seed pool")])
def test_other_errors_fail_once_with_their_message(error):
    with pytest.raises(dg.Failure) as caught:
        with retry_transient_only():
            raise error
    assert caught.value.allow_retries is False and str(error) in caught.value.description
    assert caught.value.__cause__ is error


def test_a_retried_step_runs_again_and_a_refused_one_does_not(tmp_path):
    attempts = {"transient": 0, "permanent": 0}

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=2))
    def transient() -> int:
        attempts["transient"] += 1
        with retry_transient_only():
            if attempts["transient"] < 3:
                raise GenerationError("server restarting")
        return 1

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=2))
    def permanent() -> int:
        attempts["permanent"] += 1
        with retry_transient_only():
            raise ValueError("synthesis.min_agree > n_solutions")

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert dg.materialize([transient], instance=instance).success
        result = dg.materialize([permanent], instance=instance, raise_on_error=False)
    assert not result.success
    assert attempts == {"transient": 3, "permanent": 1}


def test_a_step_killed_by_sigkill_is_retried_and_the_run_says_so(tmp_path):
    """The executor hands a killed step process to the retry policy; the attempt that succeeds
    tags the run and names the earlier failure in its metadata."""
    from dagster._core.definitions.reconstruct import reconstructable

    from prismatic_assets.orchestration.retry import RETRIED_TAG
    from tests.orchestration import retried_job

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with dg.execute_job(reconstructable(retried_job.job), instance=instance) as result:
            assert result.success
            run = instance.get_run_by_id(result.run_id)
            metadata = result.asset_materializations_for_node("killed_once")[0].metadata
    assert "killed_once: 1 failed attempt(s)" in run.tags[RETRIED_TAG]
    assert "killed by signal 9 (SIGKILL), likely out of memory" in run.tags[RETRIED_TAG]
    assert metadata["attempt"].value == 2
    assert metadata["earlier_failures"].value == ["step process killed by signal 9 (SIGKILL), likely out of memory"]


def test_a_first_attempt_adds_no_retry_note(tmp_path):
    from prismatic_assets.orchestration.retry import RETRIED_TAG, retry_note

    @dg.asset
    def plain(context) -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={**retry_note(context), "value": 1})

    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.materialize([plain], instance=instance)
        assert RETRIED_TAG not in instance.get_run_by_id(result.run_id).tags
    assert set(result.asset_materializations_for_node("plain")[0].metadata) == {"value"}
