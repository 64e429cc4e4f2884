"""Rounds that build on each other stay consistent: re-running an earlier round marks the
later ones stale and nothing builds on them until they are rebuilt; one round at a time
per store; a backend failing mid-stage keeps what it delivered.

Same tiny proxy and scripted LLMs as test_round.py (their fixtures are imported).
"""

from __future__ import annotations

import threading

import pytest

from prismatic_assets.core.generation import PartialGenerationError
from prismatic_assets.pipeline.round import ROUND_LOCK
from prismatic_assets.pipeline.round_stages import RoundOrderError
from prismatic_assets.store import schema as S
from prismatic_assets.store.store import StoreBusy
from prismatic_assets.store.synthesis_tables import completed_rounds, refresh_staleness, stale_rounds
from tests.pipeline.test_round import SETTINGS, ScriptedLLM, _run, _with, embedder, make_generator, make_teacher, seeded  # noqa: F401


def _accepted(store, round: int) -> set[str]:
    return set(store.query(f"SELECT sample_id FROM {S.SAMPLES} WHERE origin = 'synthetic' AND round = ?",
                           [round])["sample_id"].to_list())


def test_rerunning_an_earlier_round_marks_later_rounds_stale_and_blocks_building_on_them(tmp_path, seeded,
                                                                                          embedder):
    store = seeded(tmp_path / "m.duckdb")
    for r in (1, 2, 3):
        _run(store, embedder, round=r)
    assert stale_rounds(store) == {} and refresh_staleness(store) == {}
    first = _accepted(store, 1)
    assert first  # round 1 accepted something: round 2's pool depends on it

    # Round 1 again, with other seeds: other problems, another accepted set.
    _run(store, embedder, round=1, settings=_with(SETTINGS, seed=7))
    assert _accepted(store, 1) != first
    stale = stale_rounds(store)  # stored by the round write itself
    assert sorted(stale) == [2, 3]
    assert "pool that no longer exists" in stale[2] and "re-materialize round 2" in stale[2]
    assert "built on round 2, which is stale" in stale[3]
    assert completed_rounds(store) == [1, 2, 3]  # kept, marked, not deleted

    # Nothing builds on a stale round; the message names the round and the fix.
    generator = make_generator()
    with pytest.raises(RoundOrderError, match=r"round 4 would build on round 2, which is stale.*Re-run round 2 first"):
        _run(store, embedder, round=4, generator=generator)
    with pytest.raises(RoundOrderError, match="would build on round 2"):
        _run(store, embedder, round=3, generator=generator)
    assert generator.calls == []  # refused before any request

    # Rebuilding in order clears the marks.
    _run(store, embedder, round=2)
    assert sorted(stale_rounds(store)) == [3]
    _run(store, embedder, round=3)
    assert stale_rounds(store) == {} and refresh_staleness(store) == {}
    _run(store, embedder, round=4)
    assert completed_rounds(store) == [1, 2, 3, 4]


def test_a_changed_seed_pool_makes_rounds_stale(tmp_path, seeded, embedder):
    store = seeded(tmp_path / "m.duckdb")
    _run(store, embedder, round=1)
    assert refresh_staleness(store) == {}
    with store.transaction() as con:  # a re-materialized seed set lost one pool sample
        con.execute(f"DELETE FROM {S.SAMPLES} WHERE sample_id = 'unit:00'")
    assert list(refresh_staleness(store)) == [1]
    with pytest.raises(RoundOrderError, match="round 2 would build on round 1, which is stale"):
        _run(store, embedder, round=2)


class _Blocking(ScriptedLLM):
    """A generator that stops inside its first call until released (a round in flight)."""

    def __init__(self) -> None:
        inner = make_generator()
        super().__init__(inner.model_name, inner.respond)
        self.entered, self.release = threading.Event(), threading.Event()

    def chat(self, conversations, sampling):
        self.entered.set()
        assert self.release.wait(60)
        return super().chat(conversations, sampling)


def test_a_second_run_of_a_round_in_flight_is_refused_and_writes_nothing(tmp_path, seeded, embedder):
    store = seeded(tmp_path / "m.duckdb")
    slow = _Blocking()
    errors: list[BaseException] = []

    def first() -> None:
        try:
            _run(store, embedder, round=1, generator=slow)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert slow.entered.wait(120)
        before = store.query(f"SELECT count(*) AS n FROM {S.GENERATIONS}")["n"][0]
        second = make_generator()
        with pytest.raises(StoreBusy, match=r"round 1 was refused: round 1 holds .*synthesis-round.lock "
                                             r"\(pid \d+, round 1, run_id run-1, since"):
            _run(store, embedder, round=1, generator=second)
        assert second.calls == []
        assert store.query(f"SELECT count(*) AS n FROM {S.GENERATIONS}")["n"][0] == before
    finally:
        slow.release.set()
        thread.join(120)
    assert errors == [] and completed_rounds(store) == [1]
    assert store.path.with_name(f"{store.path.name}.{ROUND_LOCK}.lock").read_text() == ""  # released
    _run(store, embedder, round=1)  # and the lock is free again


class _GivesUpHalfway(ScriptedLLM):
    """A backend that answers some conversations of a call and fails the rest (a server that gave up)."""

    def __init__(self, inner: ScriptedLLM, fail_every: int) -> None:
        super().__init__(inner.model_name, inner.respond, inner.fingerprint)
        self.fail_every = fail_every

    def chat(self, conversations, sampling):
        samplings = sampling if isinstance(sampling, list) else [sampling] * len(conversations)
        out = super().chat(conversations, samplings)
        done = {i: o for i, o in enumerate(out) if i % self.fail_every}
        if len(done) < len(out):
            raise PartialGenerationError("server returned HTTP 500 for some requests", done)
        return out


def test_a_backend_failing_mid_stage_keeps_what_it_delivered(tmp_path, seeded, embedder):
    store = seeded(tmp_path / "m.duckdb")
    failing = _GivesUpHalfway(make_generator(), fail_every=2)  # conversations 0, 2 of each call fail
    with pytest.raises(PartialGenerationError, match=r"generate: .*completed requests are stored"):
        _run(store, embedder, round=1, generator=failing, settings=_with(SETTINGS, chunk_size=8))
    kept = store.query(f"SELECT count(*) AS n FROM {S.GENERATIONS}")["n"][0]
    assert kept == 4  # of 8 problem requests in one call, the 4 that came back
    again = make_generator()
    report = _run(store, embedder, round=1, generator=again, settings=_with(SETTINGS, chunk_size=8))
    assert sum(again.calls) == 4 and report.outputs_cached == 4  # only the missing ones asked again
