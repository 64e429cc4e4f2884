"""The proxy model's role, `Embedder`, and its in-process backend `LocalEmbedder`.

`Embedder` is everything a caller may ask of the proxy: the identity of its gradient
vectors (cache key, dimension, model fingerprint, projection key, gradient spec, how many
parameters the gradient spans), the vectors of samples chunk by chunk, and the mean-pooled
last hidden states of samples chunk by chunk (the embedding-Vendi baseline). The embedding
cache, the baselines, the rounds, compare/select and the distillation use nothing else, so
each of them runs on every backend:

- `LocalEmbedder` (here): the model in this process (`compute.backend: local`).
- `RayEmbeddingBackend` (`pipeline/ray_compute.py`): Ray Data actors, each holding the
  model (`compute.backend: ray`).

`load_gradient_embedder` loads the proxy and freezes what its vectors depend on; the local
backend and every Ray actor load it the same way. Which backend a stage gets is decided by
`pipeline.embeddings.open_embedder`. This module stores nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np

from prismatic_assets.core.diversity import mean_pooled_hidden_states
from prismatic_assets.core.gradient_spec import Embedding, GradientSpec
from prismatic_assets.core.models import load_causal_lm, model_fingerprint
from prismatic_assets.core.projection_spec import ProjectionSpec
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig

if TYPE_CHECKING:  # torch loads in seconds: only a process that embeds imports it (every step imports this module)
    from prismatic_assets.core.gradients import GradientEmbedder

#: Samples and their gradient results, in the same order.
GradientChunk = tuple[list[Sample], list[Embedding]]
#: Samples and their (n, h) float32 mean-pooled last hidden states, in the same order.
HiddenChunk = tuple[list[Sample], np.ndarray]

#: A chunk holds this many batches: results reach the caller (and its shards) chunk by chunk.
BATCHES_PER_CHUNK = 8


class Embedder(Protocol):
    """The proxy model as every caller sees it, whatever runs it (see the module docstring)."""

    @property
    def key(self) -> str:
        """The cache key of the gradient vectors (model fingerprint, projection, gradient spec)."""
        ...

    @property
    def dim(self) -> int:
        """The projected dimension d of every gradient vector."""
        ...

    @property
    def model_fingerprint(self) -> str: ...

    @property
    def projection_key(self) -> str: ...

    @property
    def gradient(self) -> GradientSpec: ...

    @property
    def input_dim(self) -> int:
        """How many parameters the gradient spans (before projection)."""
        ...

    @property
    def model_name(self) -> str:
        """How reports name the proxy: what the user wrote (a folder, a hub id)."""
        ...

    @property
    def hidden_dim(self) -> int:
        """The width h of the hidden states `hidden_chunks` returns."""
        ...

    def embed_chunks(self, samples: Sequence[Sample]) -> Iterator[GradientChunk]:
        """The projected gradient of every sample, chunk by chunk (chunks may come in any order)."""
        ...

    def hidden_chunks(self, samples: Sequence[Sample], *, max_length: int, batch_size: int
                      ) -> Iterator[HiddenChunk]:
        """The mean-pooled last hidden state of every chat-formatted sample, chunk by chunk
        (`core.diversity.mean_pooled_hidden_states`; chunks may come in any order)."""
        ...


def load_gradient_embedder(proxy: ProxyConfig, projection: ProjectionConfig,
                           batch_size: int = ComputeConfig().batch_size,
                           memory_gb: float | None = ComputeConfig().memory_gb) -> GradientEmbedder:
    """Load the proxy model and freeze everything its vectors depend on; batches are planned
    within `memory_gb` GiB (None: no budget; see core/gradient_memory.py)."""
    from prismatic_assets.core.gradient_memory import MemoryBudget
    from prismatic_assets.core.gradients import GradientEmbedder

    model, tokenizer = load_causal_lm(proxy.model, dtype=proxy.dtype, device=proxy.device,
                                      trust_remote_code=proxy.trust_remote_code)
    spec = ProjectionSpec(kind=projection.kind, dim=projection.dim, seed=projection.seed)
    gradient = GradientSpec(params=proxy.params, autocast=proxy.autocast, max_length=proxy.max_length)
    embedder = GradientEmbedder(model, tokenizer, spec, gradient, model_fingerprint(model, tokenizer),
                                memory=None if memory_gb is None else MemoryBudget.gb(memory_gb))
    embedder.batch_size = batch_size
    return embedder


class LocalEmbedder:
    """An `Embedder` whose model lives in this process: a `GradientEmbedder` and its model.

    `gradients` is the wrapped GradientEmbedder (its model and tokenizer included) for code
    that is local by nature (benchmarks, tests); callers of the role use the protocol only.
    """

    def __init__(self, gradients: GradientEmbedder, name: str | None = None) -> None:
        self.gradients = gradients
        self.model_name = name if name is not None else str(getattr(gradients.model.config, "_name_or_path", ""))

    @property
    def key(self) -> str:
        return self.gradients.key

    @property
    def dim(self) -> int:
        return self.gradients.dim

    @property
    def model_fingerprint(self) -> str:
        return self.gradients.model_fingerprint

    @property
    def projection_key(self) -> str:
        return self.gradients.projection_key

    @property
    def gradient(self) -> GradientSpec:
        return self.gradients.gradient

    @property
    def input_dim(self) -> int:
        return self.gradients.input_dim

    @property
    def hidden_dim(self) -> int:
        return int(self.gradients.model.config.hidden_size)

    def embed_chunks(self, samples: Sequence[Sample]) -> Iterator[GradientChunk]:
        # Chunks of a few batches: `embed_many` sorts each chunk by length, so padding stays low.
        step = max(1, self.gradients.batch_size) * BATCHES_PER_CHUNK
        for start in range(0, len(samples), step):
            chunk = list(samples[start:start + step])
            yield chunk, self.gradients.embed_many([(s.prompt, s.response) for s in chunk])

    def hidden_chunks(self, samples: Sequence[Sample], *, max_length: int, batch_size: int
                      ) -> Iterator[HiddenChunk]:
        step = max(1, batch_size) * BATCHES_PER_CHUNK
        for start in range(0, len(samples), step):
            chunk = list(samples[start:start + step])
            yield chunk, mean_pooled_hidden_states(self.gradients.model, self.gradients.tokenizer,
                                                   [s.prompt for s in chunk], [s.response for s in chunk],
                                                   batch_size=batch_size, max_length=max_length)


def build_embedder(proxy: ProxyConfig, projection: ProjectionConfig,
                   batch_size: int = ComputeConfig().batch_size,
                   memory_gb: float | None = ComputeConfig().memory_gb) -> LocalEmbedder:
    """The local backend: the proxy loaded in this process, named as the config names it."""
    return LocalEmbedder(load_gradient_embedder(proxy, projection, batch_size, memory_gb), name=proxy.model)
