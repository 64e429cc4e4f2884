"""Dagster resources: what assets are bound to, each built from one profile.

Every resource names the profile it serves (`profile`: a name in `resources/` or a YAML
path, shown pre-filled in the launchpad; empty means $PRISMATIC_PROFILE, else "local") and
reads its typed settings from
`config.load_config`: a setting is never copied into a resource field. Resources own what
they open: the proxy is held for one stage and freed, engines are opened per stage and
closed (`engines.EngineSet`), and whatever a step leaves open is closed when it ends.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import dagster as dg
from pydantic import PrivateAttr

from prismatic_assets.core.tracking import Tracker, default_tracking_uri
from prismatic_assets.infra.config import DEFAULT_PROFILE, Config, load_config
from prismatic_assets.infra.engines import EngineSet, visible_gpu_count
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import open_embedder
from prismatic_assets.store.store import MetadataStore


class ProfileResource(dg.ConfigurableResource):
    """The resolved configuration of a profile."""

    profile: str = ""

    def config(self) -> Config:
        return load_config(self.profile or None)


class StoreResource(ProfileResource):
    """The DuckDB metadata store (samples, provenance, embeddings, clusterings, scores)."""

    def open(self) -> MetadataStore:
        return MetadataStore(self.config().store_path)


class ProxyResource(ProfileResource):
    """The proxy model whose projected gradients embed samples, with its projection."""

    @contextlib.contextmanager
    def open(self) -> Iterator[Embedder]:
        """The embedder for one stage; the model's memory is freed on exit."""
        config = self.config()
        with open_embedder(config.proxy, config.projection, config.compute) as embedder:
            yield embedder


class EngineResource(ProfileResource):
    """The LLM engines of the profile: generator and teacher for rounds, the evaluation engine.

    `engines()` checks the placement (before anything starts) and returns an EngineSet; the
    step's teardown closes whatever is still open."""

    _open: list = PrivateAttr(default_factory=list)

    def engines(self, *roles: str) -> EngineSet:
        """An EngineSet for `roles` ("generator", "teacher", "student"; default the round's two)."""
        config = self.config()
        every = {"generator": config.synthesis.generator, "teacher": config.synthesis.teacher,
                 "student": config.evaluation.engine}
        unknown = sorted(set(roles) - set(every))
        if unknown:
            raise KeyError(f"engine roles {unknown}: choose from {sorted(every)}")
        engines = EngineSet({r: every[r] for r in roles or ("generator", "teacher")}, gpu_count=visible_gpu_count())
        self._open.append(engines)
        return engines

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        for engines in self._open:
            engines.close()
        self._open.clear()


class TrackerResource(ProfileResource):
    """MLflow tracking: `tracking.tracking_uri`, else $MLFLOW_TRACKING_URI, else SQLite under data_dir."""

    def uri(self) -> str:
        config = self.config()
        return config.tracking.tracking_uri or default_tracking_uri(config.data_path)

    def tracker(self) -> Tracker:
        return Tracker(self.uri(), experiment=self.config().tracking.experiment)


def build_resources(profile: str | None = None) -> dict[str, object]:
    """The resources every asset of the project is bound to, for one profile (None:
    $PRISMATIC_PROFILE, else "local"; the resolved name is what the launchpad shows)."""
    profile = profile or os.environ.get("PRISMATIC_PROFILE") or DEFAULT_PROFILE
    return {
        "profile": ProfileResource(profile=profile),
        "store": StoreResource(profile=profile),
        "proxy": ProxyResource(profile=profile),
        "engines": EngineResource(profile=profile),
        "tracker": TrackerResource(profile=profile),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),
    }
