"""Seed data: load and validate the configured source, split off the hold-out, store it.

Sources: a file, a Hugging Face data set, CHAMP (`core/loaders.py`), or `world`: the
procedural world's skewed seed pool (`core/world.py`, shaped by the profile's `world` block),
drawn so that it never holds one of the world's held-out problems.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from prismatic_assets.core.holdout import split_holdout
from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.procedural import TaskItem
from prismatic_assets.core.records import FieldMap, LoadResult
from prismatic_assets.core.samples import Sample, normalize_text
from prismatic_assets.core.world import (
    WORLD_SOURCE,
    WorldError,
    check_world,
    held_out_items,
    seed_counts,
    seed_pool_items,
)
from prismatic_assets.infra.config import SeedConfig, WorldConfig
from prismatic_assets.store.store import MetadataStore


@dataclass(frozen=True)
class SeedData:
    result: LoadResult
    pool: list[Sample]
    holdout: list[Sample]


def world_held_out(world: WorldConfig) -> list[TaskItem]:
    """The world's held-out problems: `held_out_per_family` of each family, spread over the levels."""
    return held_out_items(world.families, world.levels, world.held_out_per_family, world.held_out_seed,
                          id_prefix="heldout", max_attempts=world.generator.max_attempts)


def load_world_seed(world: WorldConfig) -> LoadResult:
    """The world's seed pool, `world.pool` shaped, disjoint from the world's held-out problems."""
    check_world(world.families, world.levels)
    counts = seed_counts(world.families, world.levels, world.pool.size, world.pool.family_zipf,
                         world.pool.level_decay)
    held = {normalize_text(i.sample.prompt) for i in world_held_out(world)}
    items = seed_pool_items(counts, world.seed, max_attempts=world.generator.max_attempts, exclude=held)
    return LoadResult(samples=[i.sample for i in items], rejections=[], source=WORLD_SOURCE)


def load_seed(settings: SeedConfig, world: WorldConfig | None = None) -> SeedData:
    """The seed source's samples split into pool and hold-out. `world`: the profile's world
    block, needed when `settings.source` is 'world'."""
    if settings.source == WORLD_SOURCE:
        if world is None:
            raise ValueError("seed.source=world needs the profile's world block: load_seed(config.seed, config.world)")
        if settings.fields or settings.limit:
            raise ValueError("seed.source=world draws its own problems: drop seed.fields and seed.limit (the pool's "
                             "size and shape are world.pool.size, family_zipf and level_decay)")
        result = load_world_seed(world)
    else:
        fields = FieldMap.parse(settings.fields) if settings.fields else None
        result = load_samples(settings.source, fields=fields, limit=settings.limit, max_chars=settings.max_chars)
    if settings.holdout_fraction > 0:
        pool, holdout = split_holdout(result.samples, settings.holdout_fraction, seed=settings.holdout_seed)
    else:
        pool, holdout = list(result.samples), []
    if settings.source == WORLD_SOURCE and world is not None:  # world is set: checked above
        left = Counter(s.category for s in pool)
        empty = [f for f in world.families if not left[f]]
        if empty:
            raise WorldError(f"world: after seed.holdout_fraction={settings.holdout_fraction} no seed pool problem of "
                             f"{empty} is left: raise world.pool.size, lower world.pool.family_zipf or "
                             "seed.holdout_fraction")
    return SeedData(result=result, pool=pool, holdout=holdout)


def store_seed(store: MetadataStore, seed: SeedData, run_id: str | None) -> None:
    splits = {s.sample_id: "holdout" for s in seed.holdout}
    store.replace_samples(source=seed.result.source, origin="seed", samples=seed.result.samples,
                          splits=splits, rejections=seed.result.rejections, run_id=run_id)
