"""The student comparison without Dagster: held-out sets disjoint from every pool, the students'
settings, and `run_experiment` end to end with a tiny model (SFT in real subprocesses, answers from
the transformers engine, graded by each task's scorer, stored)."""

from __future__ import annotations

import contextlib
import subprocess

import pytest

from prismatic_assets.core.samples import normalize_text
from prismatic_assets.infra.config import EngineConfig, build_config
from prismatic_assets.infra.engines import EngineSet
from prismatic_assets.pipeline.arms import run_arm_round
from prismatic_assets.pipeline.embeddings import embed_samples
from prismatic_assets.pipeline.experiment import (
    ExperimentNotReady,
    held_out_tasks,
    run_experiment,
    student_distill,
    track_experiment,
    wilson,
)
from prismatic_assets.pipeline.seed import load_seed, store_seed
from prismatic_assets.store.store import MetadataStore


def test_the_held_out_problems_never_enter_the_seed_pool():
    """products at level 0 has only 100 problems: a seed pool of ~40 of them and 10 held-out ones
    would share some by chance; the seed pool is drawn around the held-out set."""
    config = build_config({"seed": {"source": "world", "holdout_fraction": 0.0},
                           "world": {"families": ["products", "gcd"], "levels": [0, 1], "held_out_per_family": 20,
                                     "pool": {"size": 80, "family_zipf": 0.0, "level_decay": 0.5}},
                           "arms": {"experiment": {"ood_families": ["spell_backward"]}}})
    tasks = held_out_tasks(config)
    assert [i.family for i in tasks["in_distribution"]].count("products") == 20
    assert {i.family for i in tasks["out_of_distribution"]} == {"spell_backward"}
    pool = load_seed(config.seed, config.world).pool
    assert sum(s.meta == {"family": "products", "level": 0} for s in pool) == 27
    held = {normalize_text(i.sample.prompt) for items in tasks.values() for i in items}
    assert not held & {normalize_text(s.prompt) for s in pool}


def test_students_get_the_experiments_steps_and_batch():
    config = build_config({"distill": {"sft": {"learning_rate": 5e-5, "max_steps": 3}},
                           "arms": {"experiment": {"max_steps": 150, "batch_size": 8}}})
    sft = student_distill(config).sft
    assert (sft.max_steps, sft.per_device_batch_size, sft.learning_rate) == (150, 8, 5e-5)


def test_wilson_interval_matches_the_formula():
    low, high = wilson(13, 40)
    p, n, z = 13 / 40, 40, 1.959963984540054
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (
        4 * n * n)) ** 0.5
    assert (low, high) == pytest.approx((centre - half, centre + half), abs=1e-9)


def test_no_complete_round_means_no_experiment(tmp_path):
    with pytest.raises(ExperimentNotReady, match="no arm round is complete"):
        run_experiment(MetadataStore(tmp_path / "m.duckdb"), build_config({}), "world",
                       launch=lambda c: None, open_student=lambda m: contextlib.nullcontext(), run_id=None)


def test_run_experiment_trains_and_scores_one_student_per_arm(tmp_path, tiny_embedder, tiny_model_dir):
    config = build_config({
        "data_dir": str(tmp_path / "data"), "seed": {"source": "world", "holdout_fraction": 0.0},
        "clustering": {"ratio": 0.2},
        "world": {"families": ["basic_arithmetic", "gcd", "leg_counting"], "levels": [0, 1],
                  "pool": {"size": 12, "family_zipf": 1.0}, "held_out_per_family": 2},
        "distill": {"student": tiny_model_dir, "launcher": "python", "sft": {"save_steps": 1, "max_length": 256}},
        "evaluation": {"engine": {"backend": "transformers"}, "max_tokens": 8},
        "arms": {"arms": ["random", "naive"], "requests_per_round": 3, "budget": 2,
                 "experiment": {"max_steps": 1, "batch_size": 2, "ood_families": ["spell_backward"],
                                "max_tokens": 4}}})
    store = MetadataStore(config.store_path)
    seed = load_seed(config.seed, config.world)
    store_seed(store, seed, "seed")
    embed_samples(seed.pool, tiny_embedder, store)
    run_arm_round(store, 1, proxy=lambda: contextlib.nullcontext(tiny_embedder), config=config, seed_source="world")
    commands = []

    def launch(command):
        commands.append(command)
        subprocess.run(command, check=True, capture_output=True, timeout=600)

    engines = EngineSet({"student": EngineConfig(backend="transformers", model=tiny_model_dir)})
    asked: list[int] = []
    weights: set[str] = set()

    @contextlib.contextmanager
    def counted(model, fail_on_call=None):
        """The student engine, counting the problems that reach it; raising on one call if told to."""
        with engines.open("student", model=model) as engine:
            weights.add(engine.fingerprint)
            yield _Counting(engine, asked, fail_on_call)

    result = run_experiment(store, config, "world", launch=launch, run_id="exp", open_student=counted)
    # Each distinct model (students of equal weights share answers) answers 6 + 2 problems once.
    assert sum(asked) == 8 * len(weights) and len(weights) >= 2
    assert len(commands) == 2 and all('"max_steps": 1' in " ".join(c) for c in commands)
    assert result.pool_sizes == {"random": 12 + 2, "naive": 12 + 2} and result.rounds == 1
    assert [(r.model, r.split, r.n) for r in result.rows] == [
        (m, s, n) for m in ("base", "random", "naive") for s, n in (("in_distribution", 6), ("out_of_distribution", 2))]
    stored = store.query("SELECT model_role, count(*) AS n FROM eval_results GROUP BY 1 ORDER BY 1").rows()
    assert stored == [("arm:base", 8), ("arm:naive", 8), ("arm:random", 8)]
    assert "| random |" in result.table and result.png.startswith(b"\x89PNG")
    # the models already trained are reused: a second run launches nothing
    asked.clear()
    again = run_experiment(store, config, "world", launch=launch, run_id="exp2", open_student=counted)
    assert len(commands) == 2 and [r.correct for r in again.rows] == [r.correct for r in result.rows]
    assert asked == []  # every answer comes from the generation cache

    # An evaluation stopped part-way keeps its finished chunks: the rerun asks only for the rest.
    longer = config.model_copy(update={
        "arms": config.arms.model_copy(update={"experiment": config.arms.experiment.model_copy(
            update={"max_tokens": 5})}),  # other answers: nothing cached yet
        "evaluation": config.evaluation.model_copy(update={"chunk_size": 2})})
    with pytest.raises(RuntimeError, match="engine stopped"):
        run_experiment(store, longer, "world", launch=launch, run_id="exp3",
                       open_student=lambda model: counted(model, fail_on_call=2))
    assert asked == [2]  # the base model's first chunk of 2, stored; its second call stopped the run
    asked.clear()
    run_experiment(store, longer, "world", launch=launch, run_id="exp4", open_student=counted)
    assert sum(asked) == 8 * len(weights) - 2 and max(asked) <= 2
    engines.close()

    from prismatic_assets.core.tracking import Tracker
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = track_experiment(tracker, config, result, "dagster-run")
    info = tracker.client.get_run(run)
    assert info.info.status == "FINISHED" and info.data.metrics["random/in_distribution/accuracy"] == \
        result.rows[2].accuracy


class _Counting:
    """A generator that passes calls to `inner` and appends each call's problem count to `asked`."""

    def __init__(self, inner, asked: list[int], fail_on_call: int | None) -> None:
        self.inner, self.asked, self.fail_on_call, self.calls = inner, asked, fail_on_call, 0
        self.model_name, self.fingerprint = inner.model_name, inner.fingerprint

    def chat(self, conversations, sampling):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("engine stopped")
        self.asked.append(len(conversations))
        return self.inner.chat(conversations, sampling)
