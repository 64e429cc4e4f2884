"""Services that synthesis rounds, arm rounds and the evaluation share.

- `generate_cached`: outputs for (messages, sampling) requests through the generation
  cache: only what is missing reaches the engine, chunk by chunk, and every result is
  stored as it arrives (a crashed stage, run again, pays only for the rest).
- `judge_candidates`: the sparse-cluster filter: assign candidate vectors to the nearest
  pool centroid and accept those whose cluster is sparse.
- `load_pool`: a round's pool (the seed pool plus every sample accepted before it).

No Dagster and no model loading: engines, stores and vectors are passed in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from prismatic_assets.core.clustering import assign_to_centroids
from prismatic_assets.core.generation import GenerationError, Generator, PartialGenerationError, SamplingConfig
from prismatic_assets.core.samples import Sample
from prismatic_assets.store.store import MetadataStore
from prismatic_assets.store.synthesis_tables import (
    SYNTHESIS_SOURCE,
    GenerationRow,
    generation_key,
    get_generations,
    pool_samples,
    put_generations,
)

#: progress(stage, done, total)
StageProgress = Callable[[str, int, int], None]


# -- LLM calls through the generation cache ----------------------------------------------
@dataclass
class CallStats:
    cached: int = 0
    called: int = 0


def _chat(generator: Generator, conversations: list[list[dict[str, str]]],
          samplings: list[SamplingConfig]) -> list[list[str]]:
    """One chunk of conversations in one call, each with its own sampling (its own seed).

    Generators draw completion j of a conversation with seed + j whatever else is in the
    batch, so chunking does not change the outputs, only how many are lost to a crash."""
    outputs = generator.chat(conversations, samplings)
    if len(outputs) != len(conversations):
        raise RuntimeError(f"generator {generator.model_name!r} returned {len(outputs)} results for "
                           f"{len(conversations)} conversations: a Generator returns one list per conversation")
    return [[str(o) for o in out] for out in outputs]


def _stream_chunk(store: MetadataStore, generator: Any, requests: Sequence[tuple[list[dict], SamplingConfig]],
                  keys: Sequence[str], chunk: Sequence[int], found: dict[str, list[str]], stats: CallStats,
                  run_id: str | None, stage: str, n_todo: int) -> None:
    """One engine call whose results are stored as they arrive (`chat_stream`: one transaction
    per batch of results that returned together), so a process killed mid-call keeps every
    request that had come back."""
    began = time.monotonic()
    pending: list[GenerationRow] = []
    seen: set[int] = set()

    def flush() -> None:
        put_generations(store, pending)
        pending.clear()

    try:
        for batch in generator.chat_stream([requests[i][0] for i in chunk], [requests[i][1] for i in chunk]):
            for j, out in batch:
                i = chunk[j]
                outputs = [str(o) for o in out]
                pending.append(GenerationRow(gen_key=keys[i], model=generator.model_name, messages=requests[i][0],
                                             sampling=requests[i][1].as_dict(), outputs=outputs,
                                             seconds=time.monotonic() - began, run_id=run_id))
                found[keys[i]] = outputs
                seen.add(j)
                stats.called += 1
            flush()
    except GenerationError as error:
        flush()
        raise GenerationError(f"{stage}: {error}. The {stats.called} completed requests are stored in the "
                              f"generation cache; run the stage again to ask only for the other "
                              f"{n_todo - stats.called}.") from error
    except BaseException:
        flush()
        raise
    flush()
    if len(seen) != len(chunk):
        raise RuntimeError(f"generator {generator.model_name!r} delivered {len(seen)} of {len(chunk)} conversations "
                           "without an error: a Generator's chat_stream yields every conversation once")


def generate_cached(store: MetadataStore, generator: Generator, requests: Sequence[tuple[list[dict], SamplingConfig]],
                    *, chunk_size: int, run_id: str | None, stage: str,
                    progress: StageProgress | None = None) -> tuple[list[str], list[list[str]], CallStats]:
    """Outputs for each (messages, sampling), from the generation cache or the generator.

    Missing requests go to the generator `chunk_size` at a time, and each chunk is stored
    before the next is asked for, so a crash loses at most one chunk. When a backend fails
    part-way through a chunk (`PartialGenerationError`: a server that gave up on some
    requests), the requests it did complete are stored before the error goes on, so a rerun
    pays only for the rest. Returns the cache keys and the outputs, in request order, and
    how many came from where.
    """
    keys = [generation_key(generator.fingerprint, messages, sampling.key()) for messages, sampling in requests]
    found = get_generations(store, keys)
    stats = CallStats(cached=sum(1 for k in keys if k in found))
    todo: list[int] = []
    pending: set[str] = set()
    for i, k in enumerate(keys):
        if k not in found and k not in pending:  # identical requests are asked once
            pending.add(k)
            todo.append(i)
    total = len(keys)
    if progress:
        progress(stage, stats.cached, total)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start:start + chunk_size]
        began = time.perf_counter()
        if progress:  # one event per engine call: a stage should need one (or chunks of chunk_size)
            progress(f"engine_call:{stage}", len(chunk), len(todo))
        if hasattr(generator, "chat_stream"):
            _stream_chunk(store, generator, requests, keys, chunk, found, stats, run_id, stage, len(todo))
            if progress:
                progress(stage, stats.cached + stats.called, total)
            continue
        try:
            outputs = _chat(generator, [requests[i][0] for i in chunk], [requests[i][1] for i in chunk])
        except PartialGenerationError as error:  # keep what was paid for, then fail
            done = sorted(error.completed)
            put_generations(store, [GenerationRow(
                gen_key=keys[chunk[j]], model=generator.model_name, messages=requests[chunk[j]][0],
                sampling=requests[chunk[j]][1].as_dict(), outputs=[str(o) for o in error.completed[j]],
                seconds=time.perf_counter() - began, run_id=run_id) for j in done])
            raise PartialGenerationError(
                f"{stage}: {error} The {len(done)} completed requests are stored in the generation cache; run the "
                f"stage again to ask only for the other {len(todo) - stats.called - len(done)}.",
                error.completed) from error
        seconds = time.perf_counter() - began
        rows = [GenerationRow(gen_key=keys[i], model=generator.model_name, messages=requests[i][0],
                              sampling=requests[i][1].as_dict(), outputs=out, seconds=seconds, run_id=run_id)
                for i, out in zip(chunk, outputs)]
        put_generations(store, rows)
        found.update({keys[i]: out for i, out in zip(chunk, outputs)})
        stats.called += len(chunk)
        if progress:
            progress(stage, stats.cached + stats.called, total)
    return keys, [found[k] for k in keys], stats


# -- the cluster filter ------------------------------------------------------------------
@dataclass(frozen=True)
class ClusterJudgement:
    """Where each candidate falls in the pool clustering, and the decision derived from it."""

    assignments: np.ndarray  # (m,) nearest centroid by cosine
    similarities: np.ndarray  # (m,) cosine to it
    cluster_sizes: np.ndarray  # (m,) pool size of that cluster
    accepted: np.ndarray  # (m,) bool: the cluster is sparse


def judge_candidates(vectors: np.ndarray, centroids: np.ndarray, sparse: np.ndarray,
                     sizes: np.ndarray | None = None) -> ClusterJudgement:
    """Assign (m, d) candidate vectors to the nearest of the (K, d) pool centroids; accept
    those whose cluster is sparse. All candidates of a round are judged against the same
    clustering: accepting one does not change the clusters the next one is judged against."""
    sparse = np.asarray(sparse, dtype=bool)  # (K,)
    centroids = np.asarray(centroids)
    if sparse.shape != (centroids.shape[0],):
        raise ValueError(f"sparse has shape {sparse.shape} but there are {centroids.shape[0]} centroids: "
                         "pass one flag per cluster")
    vectors = np.asarray(vectors, dtype=np.float32)  # (m, d)
    if vectors.size == 0:
        vectors = vectors.reshape(0, centroids.shape[1])
    assignments, similarities = assign_to_centroids(vectors, centroids)
    sizes = np.zeros(len(sparse), dtype=np.int64) if sizes is None else np.asarray(sizes, dtype=np.int64)
    return ClusterJudgement(assignments=assignments, similarities=similarities,
                            cluster_sizes=sizes[assignments], accepted=sparse[assignments])


# -- the pool --------------------------------------------------------------------------
def load_pool(store: MetadataStore, round: int, seed_source: str | None = None) -> list[Sample]:
    """Seed pool samples (of `seed_source`, or every seed source) plus samples accepted before `round`."""
    pool = pool_samples(store, round, seed_source)
    if not any(s.source != SYNTHESIS_SOURCE for s in pool):
        where = f" of source {seed_source!r}" if seed_source else ""
        raise RuntimeError(f"no seed pool samples{where} in {store.path}: materialize seed_samples first "
                           "(or pass the seed source the store was filled from)")
    return pool
