"""The proxy on Ray: `RayEmbeddingBackend`, an `Embedder` whose work runs on Ray Data actors.

`compute.backend: ray` sends the samples that miss a vector through
`ray.data.Dataset.map_batches` with `_GradientActor`, an actor class: each actor loads the
proxy once (one GPU per actor with `compute.gpus_per_worker: 1`), embeds its batches with
`GradientEmbedder.embed_many` and returns the rows. The hidden states of the baselines
(embedding Vendi) go the same way through `_HiddenActor`. The driver (the Dagster step or
the CLI) receives the results as they finish, writes them as Parquet shards or store rows
(pipeline/embeddings.py, pipeline/baselines.py): the actors need no shared file system and
never touch the DuckDB file.

Where Ray runs: `compute.ray_address`, else $RAY_ADDRESS (a cluster: `ray start --head` on
one node, `ray start --address=HEAD:6379` on the others), else a Ray started on this
machine for the duration of the process. Every node needs the same environment (this
package and its dependencies, the models or hub access).

The driver loads the proxy once on CPU to compute the embedding key (model fingerprint),
so that it can skip cached samples before any actor starts; each actor checks that its
own key (or, for hidden states, fingerprint) is the same, so a node with other weights or
library versions fails loudly instead of mixing vectors.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from prismatic_assets.core.diversity import mean_pooled_hidden_states
from prismatic_assets.core.gradient_spec import Embedding, GradientSpec, embedding_key
from prismatic_assets.core.models import load_causal_lm, model_fingerprint
from prismatic_assets.core.projection_spec import ProjectionSpec, projection_key
from prismatic_assets.core.samples import Sample
from prismatic_assets.infra.config import ComputeConfig, ProjectionConfig, ProxyConfig
from prismatic_assets.pipeline.embedder import BATCHES_PER_CHUNK, GradientChunk, HiddenChunk, load_gradient_embedder
from prismatic_assets.store.shards import vectors_to_arrow


def ensure_ray(address: str | None = None) -> ModuleType:
    """The `ray` module, connected: to `address`, else $RAY_ADDRESS, else a local Ray."""
    try:
        import ray
    except ImportError:
        raise ImportError("compute.backend=ray needs Ray: pip install 'prismatic[ray]' (ray[data])") from None
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        ray.init(address=address, ignore_reinit_error=True)
    return ray


def worker_device(compute: ComputeConfig) -> str:
    """The actors' torch device: Ray shows each GPU actor only its own GPU(s), as cuda:0."""
    return "cuda" if compute.gpus_per_worker > 0 else "cpu"


class _GradientActor:
    """A Ray Data actor: one proxy model, embedding batches of rows {i, prompt, response}."""

    def __init__(self, proxy: dict[str, Any], projection: dict[str, Any], batch_size: int, key: str,
                 memory_gb: float | None) -> None:
        self.embedder = load_gradient_embedder(ProxyConfig(**proxy), ProjectionConfig(**projection), batch_size,
                                               memory_gb)
        if self.embedder.key != key:
            raise RuntimeError(
                f"this Ray worker computes embedding key {self.embedder.key}, the driver expected {key}: the "
                "worker has other model weights, tokenizer or library versions; give every node the same "
                "environment and model files")

    def __call__(self, batch: pa.Table) -> pa.Table:
        pairs = list(zip(batch.column("prompt").to_pylist(), batch.column("response").to_pylist()))
        out = self.embedder.embed_many(pairs)
        return pa.table({
            "i": batch.column("i"),
            "vector": vectors_to_arrow([o.vector for o in out], self.embedder.dim),
            "grad_norm": pa.array([o.grad_norm for o in out], type=pa.float64()),
            "loss": pa.array([o.loss for o in out], type=pa.float64()),
            "n_response_tokens": pa.array([o.n_response_tokens for o in out], type=pa.int32()),
            "truncated": pa.array([o.truncated for o in out], type=pa.bool_()),
            "seconds": pa.array([o.seconds for o in out], type=pa.float64()),
            "error": pa.array([o.error for o in out], type=pa.string()),
        })


class _HiddenActor:
    """A Ray Data actor: one proxy model, mean-pooled hidden states of rows {i, prompt, response}."""

    def __init__(self, proxy: dict[str, Any], fingerprint: str, max_length: int, batch_size: int) -> None:
        settings = ProxyConfig(**proxy)
        self.model, self.tokenizer = load_causal_lm(settings.model, dtype=settings.dtype, device=settings.device,
                                                    trust_remote_code=settings.trust_remote_code)
        found = model_fingerprint(self.model, self.tokenizer)
        if found != fingerprint:
            raise RuntimeError(
                f"this Ray worker loads a proxy with fingerprint {found}, the driver expected {fingerprint}: the "
                "worker has other model weights or tokenizer files; give every node the same model files")
        self.max_length, self.batch_size = max_length, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        pooled = mean_pooled_hidden_states(self.model, self.tokenizer, batch.column("prompt").to_pylist(),
                                           batch.column("response").to_pylist(), batch_size=self.batch_size,
                                           max_length=self.max_length)  # (b, h)
        return pa.table({"i": batch.column("i"), "vector": vectors_to_arrow(list(pooled), pooled.shape[1])})


def _matrix(table: pa.Table, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The `vector` column as a (rows with a vector, dim) float32 matrix, and which rows have one."""
    column = table.column("vector").combine_chunks()
    valid = np.asarray(column.is_valid())
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    return flat, valid


def _embeddings(table: pa.Table, dim: int) -> list[Embedding]:
    flat, valid = _matrix(table, dim)
    rows = iter(flat)
    cols = {name: table.column(name).to_pylist()
            for name in ("grad_norm", "loss", "n_response_tokens", "truncated", "seconds", "error")}
    return [Embedding(next(rows) if ok else None, cols["grad_norm"][k], cols["loss"][k],
                      cols["n_response_tokens"][k], cols["truncated"][k], cols["seconds"][k], cols["error"][k])
            for k, ok in enumerate(valid)]


def _blocks(samples: Sequence[Sample], rows: int) -> list[pa.Table]:
    """One Arrow block {i, prompt, response} per task-sized slice, so every actor gets work from the start."""
    return [pa.table({"i": pa.array(range(s, min(s + rows, len(samples))), type=pa.int64()),
                      "prompt": [x.prompt for x in samples[s:s + rows]],
                      "response": [x.response for x in samples[s:s + rows]]})
            for s in range(0, len(samples), rows)]


class RayEmbeddingBackend:
    """An `Embedder` whose work runs on Ray Data actors (see the module docstring)."""

    def __init__(self, proxy: ProxyConfig, projection: ProjectionConfig, compute: ComputeConfig) -> None:
        self.compute = compute
        self.projection = projection
        self.model_name = proxy.model
        self.worker_proxy = proxy.model_copy(update={"device": worker_device(compute)})
        self.gradient = GradientSpec(params=proxy.params, autocast=proxy.autocast, max_length=proxy.max_length)
        # The key needs the weights' fingerprint: read them once here, on CPU, then let go.
        model, tokenizer = load_causal_lm(proxy.model, dtype=proxy.dtype, device="cpu",
                                          trust_remote_code=proxy.trust_remote_code)
        self.model_fingerprint = model_fingerprint(model, tokenizer)
        from prismatic_assets.core.gradients import select_parameters  # torch: only where a model is

        self.input_dim = sum(p.numel() for _, p in select_parameters(model, proxy.params))
        self.hidden_dim = int(model.config.hidden_size)
        del model, tokenizer
        spec = ProjectionSpec(kind=projection.kind, dim=projection.dim, seed=projection.seed)
        self.projection_key = projection_key(spec, self.input_dim, self.worker_proxy.device)
        self.key = embedding_key(self.model_fingerprint, self.projection_key, self.gradient)

    @property
    def dim(self) -> int:
        return self.projection.dim

    def map_options(self, tasks: int | None = None) -> dict[str, Any]:
        """The resources of `map_batches`: one proxy per actor, `workers` actors, or fewer when
        there are only `tasks` blocks of work (an idle actor would still load the model)."""
        actors = self.compute.workers if tasks is None else max(1, min(self.compute.workers, tasks))
        options: dict[str, Any] = {"concurrency": actors, "num_cpus": self.compute.cpus_per_worker}
        if self.compute.gpus_per_worker > 0:
            options["num_gpus"] = self.compute.gpus_per_worker
        return options

    def _map(self, samples: Sequence[Sample], rows: int, actor: type, kwargs: dict[str, Any]
             ) -> Iterator[tuple[list[Sample], pa.Table]]:
        """Run `actor` over the samples on Ray; yield each finished batch with its samples."""
        ray = ensure_ray(self.compute.ray_address)
        blocks = _blocks(samples, rows)
        dataset = ray.data.from_arrow(blocks).map_batches(
            actor, batch_size=rows, batch_format="pyarrow", fn_constructor_kwargs=kwargs,
            **self.map_options(len(blocks)))
        for table in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            yield [samples[i] for i in table.column("i").to_pylist()], table

    def embed_chunks(self, samples: Sequence[Sample]) -> Iterator[GradientChunk]:
        if not samples:
            return
        kwargs = {"proxy": self.worker_proxy.model_dump(), "projection": self.projection.model_dump(),
                  "batch_size": self.compute.batch_size, "key": self.key, "memory_gb": self.compute.memory_gb}
        for chunk, table in self._map(samples, self.compute.batch_size * BATCHES_PER_CHUNK, _GradientActor, kwargs):
            yield chunk, _embeddings(table, self.dim)

    def hidden_chunks(self, samples: Sequence[Sample], *, max_length: int, batch_size: int
                      ) -> Iterator[HiddenChunk]:
        if not samples:
            return
        kwargs = {"proxy": self.worker_proxy.model_dump(), "fingerprint": self.model_fingerprint,
                  "max_length": max_length, "batch_size": batch_size}
        for chunk, table in self._map(samples, batch_size * BATCHES_PER_CHUNK, _HiddenActor, kwargs):
            flat, valid = _matrix(table, self.hidden_dim)
            if not valid.all():
                raise RuntimeError(f"a Ray worker returned {int((~valid).sum())} rows without a hidden state")
            yield chunk, flat
