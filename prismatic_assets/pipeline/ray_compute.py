"""Gradient embeddings on Ray: Ray Data actors that each hold one proxy model.

`compute.backend: ray` sends the samples that miss a vector through
`ray.data.Dataset.map_batches` with `_EmbedActor`, an actor class: each actor loads the
proxy once (one GPU per actor with `compute.gpus_per_worker: 1`), embeds its batches with
`GradientEmbedder.embed_many` and returns the rows. The driver (the Dagster step or the
CLI) receives the results as they finish, writes them as Parquet shards and loads them
into the store once (pipeline/embeddings.py): the actors need no shared file system and
never touch the DuckDB file.

Where Ray runs: `compute.ray_address`, else $RAY_ADDRESS (a cluster: `ray start --head` on
one node, `ray start --address=HEAD:6379` on the others), else a Ray started on this
machine for the duration of the process. Every node needs the same environment (this
package and its dependencies, the models or hub access).

The driver loads the proxy once on CPU to compute the embedding key (model fingerprint),
so that it can skip cached samples before any actor starts; each actor checks that its
own key is the same, so a node with other weights or library versions fails loudly
instead of mixing vectors.
"""

from __future__ import annotations

import os
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig
from prismatic_assets.core.gradients import Embedding, GradientSpec, embedding_key, select_parameters
from prismatic_assets.core.models import load_causal_lm, model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec, projection_key
from prismatic_assets.core.samples import Sample

#: Samples per Ray Data batch (one actor call): this many batches of `compute.batch_size`.
BATCHES_PER_TASK = 8


def ensure_ray(address: str | None = None):
    """The `ray` module, connected: to `address`, else $RAY_ADDRESS, else a local Ray."""
    try:
        import ray
    except ImportError:
        raise ImportError("compute.backend=ray needs Ray: pip install 'prismatic[ray]' (ray[data])") from None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, ignore_reinit_error=True)
    return ray


def worker_device(proxy: ProxyConfig, compute: ComputeConfig) -> str:
    """The actors' torch device: Ray shows each GPU actor only its own GPU(s), as cuda:0."""
    return "cuda" if compute.gpus_per_worker > 0 else "cpu"


class _EmbedActor:
    """A Ray Data actor: one proxy model, embedding batches of rows {i, prompt, response}."""

    def __init__(self, proxy: dict, projection: dict, batch_size: int, key: str, memory_gb: float | None) -> None:
        from prismatic_assets.pipeline.embeddings import build_embedder

        self.embedder = build_embedder(ProxyConfig(**proxy), ProjectionConfig(**projection), batch_size, memory_gb)
        if self.embedder.key != key:
            raise RuntimeError(
                f"this Ray worker computes embedding key {self.embedder.key}, the driver expected {key}: the "
                "worker has other model weights, tokenizer or library versions; give every node the same "
                "environment and model files")

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = list(zip(batch.column("prompt").to_pylist(), batch.column("response").to_pylist()))
        out = self.embedder.embed_many(pairs)
        dim = self.embedder.dim
        from prismatic_assets.store.shards import vectors_to_arrow

        return pa.table({
            "i": batch.column("i"),
            "vector": vectors_to_arrow([o.vector for o in out], dim),
            "grad_norm": pa.array([o.grad_norm for o in out], type=pa.float64()),
            "loss": pa.array([o.loss for o in out], type=pa.float64()),
            "n_response_tokens": pa.array([o.n_response_tokens for o in out], type=pa.int32()),
            "truncated": pa.array([o.truncated for o in out], type=pa.bool_()),
            "seconds": pa.array([o.seconds for o in out], type=pa.float64()),
            "error": pa.array([o.error for o in out], type=pa.string()),
        })


def _embeddings(table: pa.Table, dim: int) -> list[Embedding]:
    column = table.column("vector").combine_chunks()
    valid = np.asarray(column.is_valid())
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    rows = iter(flat)
    cols = {name: table.column(name).to_pylist()
            for name in ("grad_norm", "loss", "n_response_tokens", "truncated", "seconds", "error")}
    return [Embedding(next(rows) if ok else None, cols["grad_norm"][k], cols["loss"][k],
                      cols["n_response_tokens"][k], cols["truncated"][k], cols["seconds"][k], cols["error"][k])
            for k, ok in enumerate(valid)]


class RayEmbeddingBackend:
    """An `EmbeddingBackend` whose work runs on Ray Data actors (see the module docstring)."""

    def __init__(self, proxy: ProxyConfig, projection: ProjectionConfig, compute: ComputeConfig) -> None:
        self.compute = compute
        self.projection = projection
        self.worker_proxy = proxy.model_copy(update={"device": worker_device(proxy, compute)})
        self.gradient = GradientSpec(params=proxy.params, autocast=proxy.autocast, max_length=proxy.max_length)
        # The key needs the weights' fingerprint: read them once here, on CPU, then let go.
        model, tokenizer = load_causal_lm(proxy.model, dtype=proxy.dtype, device="cpu")
        self.model_fingerprint = model_fingerprint(model, tokenizer)
        self.input_dim = sum(p.numel() for _, p in select_parameters(model, proxy.params))
        del model, tokenizer
        spec = ProjectionSpec(kind=projection.kind, dim=projection.dim, seed=projection.seed)
        self.projection_key = projection_key(spec, self.input_dim, self.worker_proxy.device)
        self.key = embedding_key(self.model_fingerprint, self.projection_key, self.gradient)

    @property
    def dim(self) -> int:
        return self.projection.dim

    def map_options(self) -> dict[str, Any]:
        """The resources of `map_batches`: one proxy per actor, `workers` actors."""
        options: dict[str, Any] = {"concurrency": self.compute.workers, "num_cpus": self.compute.cpus_per_worker}
        if self.compute.gpus_per_worker > 0:
            options["num_gpus"] = self.compute.gpus_per_worker
        return options

    def embed_chunks(self, samples: Sequence[Sample]) -> Iterator[tuple[list[Sample], list[Embedding]]]:
        if not samples:
            return
        ray = ensure_ray(self.compute.ray_address)
        rows = max(1, self.compute.batch_size * BATCHES_PER_TASK)
        # One block per task-sized slice, so every actor gets work from the start.
        blocks = [pa.table({"i": pa.array(range(s, min(s + rows, len(samples))), type=pa.int64()),
                            "prompt": [x.prompt for x in samples[s:s + rows]],
                            "response": [x.response for x in samples[s:s + rows]]})
                  for s in range(0, len(samples), rows)]
        dataset = ray.data.from_arrow(blocks).map_batches(
            _EmbedActor, batch_size=rows, batch_format="pyarrow",
            fn_constructor_kwargs={"proxy": self.worker_proxy.model_dump(), "projection": self.projection.model_dump(),
                                   "batch_size": self.compute.batch_size, "key": self.key,
                                   "memory_gb": self.compute.memory_gb},
            **self.map_options())
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            index = table.column("i").to_pylist()
            yield [samples[i] for i in index], _embeddings(table, self.dim)
