"""The Dagster code location: `build_definitions(settings)` and the lazily built `defs`.

`dagster dev` (with the repo's workspace.yaml) and `dagster asset materialize -m
prismatic_assets.definitions` load `defs`, built from the profile named by
$PRISMATIC_PROFILE (default "local": resources/local.yaml).
"""

from __future__ import annotations

import dataclasses

import dagster as dg

from prismatic_assets.assets.backbone import build_backbone_assets
from prismatic_assets.assets.distillation import build_distillation_assets
from prismatic_assets.assets.synthesis import build_synthesis_assets
from prismatic_assets.checks import BACKBONE_CHECKS
from prismatic_assets.resources import (GeneratorResource, MetadataStoreResource, ProxyModelResource,
                                        SeedDataResource)
from prismatic_assets.settings import Settings, load_settings
from prismatic_assets.tracking_resource import TrackerResource


def build_resources(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    proxy, projection, seed = settings.proxy, settings.projection, settings.seed
    generator, teacher = settings.synthesis.generator, settings.synthesis.teacher
    return {
        "tracker": TrackerResource(data_dir=str(settings.data_path), tracking_uri=settings.tracking.tracking_uri,
                                   experiment=settings.tracking.experiment),
        "generator": GeneratorResource(**dataclasses.asdict(generator)),
        "teacher": GeneratorResource(**dataclasses.asdict(teacher)),
        "store": MetadataStoreResource(path=str(settings.store_path)),
        "proxy": ProxyModelResource(model=proxy.model, device=proxy.device, dtype=proxy.dtype, params=proxy.params,
                                    autocast=proxy.autocast, max_length=proxy.max_length,
                                    projection_kind=projection.kind, projection_dim=projection.dim,
                                    projection_seed=projection.seed),
        "seed_data": SeedDataResource(source=seed.source, fields=seed.fields, limit=seed.limit,
                                      holdout_fraction=seed.holdout_fraction, holdout_seed=seed.holdout_seed,
                                      max_chars=seed.max_chars),
    }


def build_definitions(settings: Settings) -> dg.Definitions:
    round_assets, round_jobs, round_schedules = build_synthesis_assets(settings)
    return dg.Definitions(
        assets=build_backbone_assets(settings) + round_assets + build_distillation_assets(settings),
        asset_checks=BACKBONE_CHECKS,
        jobs=round_jobs,
        schedules=round_schedules,
        resources=build_resources(settings),
        executor=dg.multiprocess_executor.configured({"max_concurrent": 2}),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
