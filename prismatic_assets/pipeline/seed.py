"""Seed data: load and validate the configured source, split off the hold-out, store it."""

from __future__ import annotations

from dataclasses import dataclass

from prismatic_assets.core.holdout import split_holdout
from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.records import FieldMap, LoadResult
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import SeedConfig
from prismatic_assets.store.store import MetadataStore


@dataclass(frozen=True)
class SeedData:
    result: LoadResult
    pool: list[Sample]
    holdout: list[Sample]


def load_seed(settings: SeedConfig) -> SeedData:
    fields = FieldMap.parse(settings.fields) if settings.fields else None
    result = load_samples(settings.source, fields=fields, limit=settings.limit, max_chars=settings.max_chars)
    if settings.holdout_fraction > 0:
        pool, holdout = split_holdout(result.samples, settings.holdout_fraction, seed=settings.holdout_seed)
    else:
        pool, holdout = list(result.samples), []
    return SeedData(result=result, pool=pool, holdout=holdout)


def store_seed(store: MetadataStore, seed: SeedData, run_id: str | None) -> None:
    splits = {s.sample_id: "holdout" for s in seed.holdout}
    store.replace_samples(source=seed.result.source, origin="seed", samples=seed.result.samples,
                          splits=splits, rejections=seed.result.rejections, run_id=run_id)


