"""Held-out evaluation sets and student accuracy.

The same sets serve twice: as the texts every synthetic problem is decontaminated against
(a round rejects an n-gram overlap with any of them), and as what the students are scored
on. Sets: the seed hold-out split, reasoning-gym's offline GSM8K-style problems, and any
configured benchmark files (MATH500, AIME, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from prismatic_assets.infra.config import EvaluationConfig
from prismatic_assets.core.evaluation import EvalReport, gsm_symbolic_set, load_eval_file
from prismatic_assets.core.generation import Generator, SamplingConfig
from prismatic_assets.core.ids import digest
from prismatic_assets.core.samples import Sample
from prismatic_assets.pipeline.round_services import generate_cached
from prismatic_assets.store.evaluation_tables import replace_eval_results
from prismatic_assets.store.store import MetadataStore


def held_out_sets(store: MetadataStore, seed_source: str, holdout_ids: Sequence[str],
                  ev: EvaluationConfig, *, limit_holdout: bool = True) -> dict[str, list[Sample]]:
    """{name: samples} of every configured evaluation set.

    `limit_holdout`: apply `holdout_limit` (evaluation); decontamination uses every
    held-out problem."""
    sets: dict[str, list[Sample]] = {}
    if ev.gsm_symbolic:
        sets["gsm_symbolic"] = gsm_symbolic_set(ev.gsm_symbolic, seed=ev.gsm_symbolic_seed)
    if ev.holdout and holdout_ids:
        ids = list(holdout_ids)[:ev.holdout_limit] if (limit_holdout and ev.holdout_limit) else list(holdout_ids)
        sets[f"{seed_source}_holdout"] = store.load_samples(ids)
    for path in ev.files:
        sets[Path(path).stem] = load_eval_file(path)
    return sets


def decontamination_texts(store: MetadataStore, seed_source: str, holdout_ids: Sequence[str],
                          ev: EvaluationConfig) -> dict[str, list[str]]:
    """{label: problem texts} a synthetic problem must not overlap: every evaluation set,
    files included, and the whole seed hold-out split even when evaluation uses part of it."""
    sets = held_out_sets(store, seed_source, holdout_ids, ev, limit_holdout=False)
    if holdout_ids and f"{seed_source}_holdout" not in sets:
        sets[f"{seed_source}_holdout"] = store.load_samples(list(holdout_ids))
    return {name: [s.prompt for s in samples] for name, samples in sets.items() if samples}


def store_results(store: MetadataStore, evaluation_id: str, role: str, model: str, mlflow_run_id: str | None,
                  report: EvalReport, run_id: str | None) -> None:
    """Replace one evaluation's per-problem rows (`store.evaluation_tables`)."""
    replace_eval_results(store, evaluation_id, role=role, model=model, mlflow_run_id=mlflow_run_id,
                         records=report.records, run_id=run_id)


class CachedGenerator:
    """A student engine whose answers go through the generation cache (`generate_cached`).

    An evaluation killed part-way, run again, asks the engine only for the problems it had
    not answered yet (`called` counts what reached the engine, `cached` what did not).
    """

    def __init__(self, store: MetadataStore, inner: Generator, *, chunk_size: int, run_id: str | None,
                 stage: str = "evaluate") -> None:
        self.store, self.inner, self.chunk_size, self.run_id, self.stage = store, inner, chunk_size, run_id, stage
        self.model_name = inner.model_name
        self.fingerprint = inner.fingerprint
        self.cached = self.called = 0

    def chat(self, conversations, sampling) -> list[list[str]]:
        samplings = [sampling] * len(conversations) if isinstance(sampling, SamplingConfig) else list(sampling)
        _, outputs, stats = generate_cached(self.store, self.inner, [(list(c), s) for c, s in zip(conversations,
                                                                                                     samplings)],
                                            chunk_size=self.chunk_size, run_id=self.run_id, stage=self.stage)
        self.cached += stats.cached
        self.called += stats.called
        return outputs

    def close(self) -> None:
        """The inner engine belongs to whoever opened it."""


def evaluation_id(role: str, model: str, eval_sets: dict[str, list[Sample]], sampling: SamplingConfig,
                  stated_answers: bool) -> str:
    """One evaluation's id, from what it evaluated and how (not from the run): a rerun after a
    crash replaces the same rows instead of adding a second copy."""
    return digest({"role": role, "model": model, "sampling": sampling.key(), "stated_answers": stated_answers,
                   "sets": {name: [s.sample_id for s in samples] for name, samples in sorted(eval_sets.items())}})
