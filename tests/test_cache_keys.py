"""Cache keys are complete by construction.

Every cached value (projected gradients, hidden states, generations, clusterings, scores) is
reused only when its key matches. Each test here reads the fields of a spec from the spec
itself (`dataclasses.fields`, pydantic `model_fields`, a function's signature, the config a
model reports, the files a model folder holds) and sorts every one of them into either

- CHANGES: another valid value, which must change the key, or
- NOT_IN_KEY: the reason the field must not change it (checked where it can be: the value
  is the same with either setting).

A field added later lands in neither table and fails `_complete` with the fix in the
message; a field dropped from a key fails the comparison for that field.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from prismatic_assets.core import diversity, gradient_spec, projection_spec
from prismatic_assets.core.diversity import hidden_state_key
from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.gradients import GradientSpec, embedding_key
from prismatic_assets.core.models import _CONFIG_KEYS_IGNORED, folder_fingerprint, model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec, make_projector, projection_key
from prismatic_assets.core.samples import Sample, content_hash
from prismatic_assets.infra.config import (
    ClusteringConfig,
    ComputeConfig,
    EngineConfig,
    ProjectionConfig,
    ProxyConfig,
    ScoreConfig,
)
from prismatic_assets.store.synthesis_tables import generation_key
from tests.conftest import make_tiny_llama


def _complete(fields, changes, not_in_key, where: str) -> None:
    """Every field is either changed (and must move the key) or excluded with a reason."""
    fields = set(fields)
    missing = fields - set(changes) - set(not_in_key)
    assert not missing, (f"{where}: {sorted(missing)} are new: add each to the key and give it another value in "
                         f"the CHANGES table of {__name__}, or list it in NOT_IN_KEY with the reason it must not "
                         "change the key")
    assert not (set(changes) | set(not_in_key)) - fields, f"{where}: the tables name fields that no longer exist"
    assert not set(changes) & set(not_in_key), f"{where}: a field is both in and out of the key"
    assert all(isinstance(reason, str) and len(reason) > 20 for reason in not_in_key.values())


def _names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p != "self"]


# -- gradient spec -> embedding key ------------------------------------------------------
GRADIENT_CHANGES = {"params": r"layers\.1\.", "autocast": "bf16", "max_length": 512}
EMBEDDING_KEY_CHANGES = {"model_fingerprint": "other-weights", "projection_key": "other-projection",
                         "gradient": GradientSpec(max_length=4096)}


def test_every_gradient_spec_field_changes_the_embedding_key():
    _complete(_names(GradientSpec), GRADIENT_CHANGES, {}, "GradientSpec")
    _complete(_params(embedding_key), EMBEDDING_KEY_CHANGES, {}, "embedding_key")
    base = GradientSpec()
    args = {"model_fingerprint": "weights", "projection_key": "projection", "gradient": base}
    key = embedding_key(**args)
    for name, value in GRADIENT_CHANGES.items():
        assert value != getattr(base, name)
        assert embedding_key(**{**args, "gradient": dataclasses.replace(base, **{name: value})}) != key, name
    for name, value in EMBEDDING_KEY_CHANGES.items():
        assert embedding_key(**{**args, name: value}) != key, name
    assert embedding_key(**args) == key


def test_the_gradient_algorithm_version_changes_the_embedding_key(monkeypatch):
    key = embedding_key("weights", "projection", GradientSpec())
    monkeypatch.setattr(gradient_spec, "GRADIENT_ALGORITHM_VERSION", gradient_spec.GRADIENT_ALGORITHM_VERSION + 1)
    assert embedding_key("weights", "projection", GradientSpec()) != key


# -- projection spec -> projection key ---------------------------------------------------
PROJECTION_CHANGES = {"kind": "rademacher", "dim": 512, "seed": 1}
#: make_projector's arguments: those in `projection_key` change it, the others must not change a vector.
PROJECTOR_CHANGES = {"spec": ProjectionSpec(seed=9), "input_dim": 301}
PROJECTOR_NOT_IN_KEY = {
    "device": "signs and buckets are integer hashes, identical on every device (a dense projector's device only "
              "picks its default compute dtype, which `compute_dtype` below keys)",
    "cache_bytes": "whether the hash table is kept or regenerated per call: the same table either way",
    "allow_slow": "a guard against minutes-long dense projections on CPU: it permits, it does not compute",
    "compute_dtype": "keyed by projection_key for dense projections (bf16 adds '-bf16'); CountSketch has none",
    "block_bytes": "rows of the dense sign matrix made at once: the same signs, float32 accumulation",
}


def test_every_projection_spec_field_and_argument_changes_the_projection_key():
    _complete(_names(ProjectionSpec), PROJECTION_CHANGES, {}, "ProjectionSpec")
    _complete(_params(make_projector), PROJECTOR_CHANGES, PROJECTOR_NOT_IN_KEY, "make_projector")
    base = ProjectionSpec()
    for name, value in PROJECTION_CHANGES.items():
        assert projection_key(dataclasses.replace(base, **{name: value}), 300) != projection_key(base, 300), name
    for name, value in PROJECTOR_CHANGES.items():
        args = {"spec": base, "input_dim": 300, name: value}
        assert projection_key(**args) != projection_key(base, 300), name
    # A dense projection's compute dtype changes its vectors and its key; a GPU defaults to bf16.
    dense = ProjectionSpec(kind="rademacher")
    assert projection_key(dense, 300, compute_dtype="bfloat16") != projection_key(dense, 300, compute_dtype="float32")
    assert projection_key(dense, 300, "cuda") == projection_key(dense, 300, compute_dtype="bfloat16")


def test_the_projection_algorithm_version_changes_the_key(monkeypatch):
    key = projection_key(ProjectionSpec(), 300)
    monkeypatch.setattr(projection_spec, "ALGORITHM_VERSION", projection_spec.ALGORITHM_VERSION + 1)
    assert projection_key(ProjectionSpec(), 300) != key


@pytest.mark.parametrize("kind", ["countsketch", "rademacher"])
@pytest.mark.parametrize("name, value", [("cache_bytes", 0), ("block_bytes", 4096), ("allow_slow", True)])
def test_arguments_outside_the_key_leave_the_vectors_unchanged(kind, name, value):
    spec = ProjectionSpec(kind=kind, dim=16, seed=3)
    gradient = [torch.randn(200, generator=torch.Generator().manual_seed(0)), torch.randn(100)]
    base = make_projector(spec, 300)
    other = make_projector(spec, 300, **{name: value})
    assert other.key == base.key == projection_key(spec, 300)
    torch.testing.assert_close(other.project(gradient), base.project(gradient), rtol=1e-5, atol=1e-5)


# -- proxy settings -> the embedder's key ------------------------------------------------
PROXY_NOT_IN_KEY = {
    "device": "the vectors are device-independent: the projection hashes are (see PROJECTOR_NOT_IN_KEY) and the "
              "gradient differs by float round-off only; a dense projection's bf16 default on GPUs is keyed",
    "trust_remote_code": "a permission to run a model's own code: the model that loads is the same either way",
}
PROJECTION_CONFIG_CHANGES = {"kind": "rademacher", "dim": 8, "seed": 1}
COMPUTE_NOT_IN_KEY = {
    "backend": "local or Ray actors run the same GradientEmbedder (tests/pipeline/test_ray_compute.py)",
    "ray_address": "where the Ray actors run, not what they compute",
    "workers": "how many actors share the work: each sample's vector is computed alone",
    "gpus_per_worker": "the actors' device: vectors are device-independent (see PROXY_NOT_IN_KEY)",
    "cpus_per_worker": "CPU cores per actor: scheduling only",
    "batch_size": "batched gradients equal one-at-a-time ones within float32 round-off (test_gradients)",
    "shard_rows": "how often finished vectors are written to a Parquet shard, not what they are",
    "shard_seconds": "how often finished vectors are written to a Parquet shard, not what they are",
    "memory_gb": "how samples are grouped into steps and how much is recomputed, not the vectors: budgeted steps "
                 "equal one-at-a-time ones (tests/core/test_gradient_memory.py)",
}


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory, packaged_tokenizer) -> str:
    """A tiny model with other weights (seed 1) than `tiny_model_dir` (seed 0)."""
    path = tmp_path_factory.mktemp("tiny-llama-other")
    make_tiny_llama(packaged_tokenizer, seed=1).save_pretrained(path)
    packaged_tokenizer.save_pretrained(path)
    return str(path)


def test_every_proxy_and_projection_setting_changes_the_embedders_key(tiny_model_dir, other_model_dir, monkeypatch):
    import functools

    from prismatic_assets.pipeline import embedder
    from prismatic_assets.pipeline.embedder import build_embedder

    # Each distinct (model, dtype, ...) is loaded once: most settings change only the spec.
    monkeypatch.setattr(embedder, "load_causal_lm", functools.lru_cache(embedder.load_causal_lm))

    proxy_changes = {"model": other_model_dir, "dtype": "bfloat16", "params": r"layers\.1\.self_attn",
                     "autocast": "bf16", "max_length": 64}
    _complete(ProxyConfig.model_fields, proxy_changes, PROXY_NOT_IN_KEY, "ProxyConfig")
    _complete(ProjectionConfig.model_fields, PROJECTION_CONFIG_CHANGES, {}, "ProjectionConfig")
    _complete(ComputeConfig.model_fields, {}, COMPUTE_NOT_IN_KEY, "ComputeConfig")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        proxy = ProxyConfig(model=tiny_model_dir, params=r"layers\.1\.mlp", max_length=128)
        proj = ProjectionConfig(dim=16)
        key = build_embedder(proxy, proj).key
        assert build_embedder(proxy, proj).key == key
        for name, value in proxy_changes.items():
            assert build_embedder(proxy.model_copy(update={name: value}), proj).key != key, f"proxy.{name}"
        for name, value in PROJECTION_CONFIG_CHANGES.items():
            assert build_embedder(proxy, proj.model_copy(update={name: value})).key != key, f"projection.{name}"
        assert build_embedder(proxy.model_copy(update={"trust_remote_code": True}), proj).key == key
    finally:
        torch.set_num_threads(threads)


# -- model fingerprint: every config entry, every tensor, the tokenizer -------------------
def _leaves(value, path=()):
    """(path, value) of every leaf of nested dicts (lists are leaves)."""
    if isinstance(value, dict) and value:
        for k, v in value.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, value


def _other(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return value + [0]
    if value is None:
        return 1
    if isinstance(value, dict):  # an empty dict
        return {"added": 1}
    raise AssertionError(f"no other value known for {value!r}: extend _other")


def _with(tree: dict, path: tuple, value) -> dict:
    out = copy.deepcopy(tree)
    node = out
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return out


def _as_model(config: dict, state: dict):
    """What model_fingerprint reads of a model: `config.to_dict()` and `state_dict()`."""
    return types.SimpleNamespace(config=types.SimpleNamespace(to_dict=lambda: config), state_dict=lambda: state)


#: Config entries that say where from or with which library version a model was loaded.
CONFIG_NOT_IN_KEY = {
    "_name_or_path": "the folder or hub id it was loaded from: two copies of one model must share vectors",
    "_commit_hash": "private (leading underscore): loading metadata, not architecture",
    **{k: "where from / with which library version the model was loaded, not what it computes"
       for k in _CONFIG_KEYS_IGNORED},
}


def test_every_config_entry_and_tensor_enters_the_model_fingerprint(tiny_llama):
    config = tiny_llama.config.to_dict()
    state = dict(tiny_llama.state_dict())
    base = model_fingerprint(_as_model(config, state))
    leaves = [(path, value) for path, value in _leaves(config) if path[0] not in CONFIG_NOT_IN_KEY]
    assert len(leaves) > 25  # the tiny Llama's architecture: sizes, rope, norms, token ids, ...
    for path, value in leaves:
        assert model_fingerprint(_as_model(_with(config, path, _other(value)), state)) != base, path
    for name in CONFIG_NOT_IN_KEY:
        assert model_fingerprint(_as_model({**config, name: "elsewhere"}, state)) == base, name
    for name, tensor in state.items():
        changed = tensor.clone()
        changed.view(-1)[-1] += 1e-3
        assert model_fingerprint(_as_model(config, {**state, name: changed})) != base, name
    first = next(iter(state))
    assert model_fingerprint(_as_model(config, {**state, first: state[first].double()})) != base  # dtype
    renamed = {("renamed." + k if k == first else k): v for k, v in state.items()}
    assert model_fingerprint(_as_model(config, renamed)) != base


def test_the_tokenizer_enters_the_model_fingerprint(tiny_llama, packaged_tokenizer):
    from tokenizers import normalizers

    base = model_fingerprint(tiny_llama, packaged_tokenizer)
    assert model_fingerprint(tiny_llama, copy.deepcopy(packaged_tokenizer)) == base
    changes = {
        "chat_template": lambda t: setattr(t, "chat_template", "{{ messages[0]['content'] }}"),
        "added token": lambda t: t.add_tokens(["<|new-token|>"]),
        "special token": lambda t: t.add_special_tokens({"pad_token": "<|endoftext|>"}),
        "normalizer": lambda t: setattr(t.backend_tokenizer, "normalizer", normalizers.Lowercase()),
    }
    for what, change in changes.items():
        tokenizer = copy.deepcopy(packaged_tokenizer)
        change(tokenizer)
        assert model_fingerprint(tiny_llama, tokenizer) != base, what


def _edit(path: Path) -> None:
    """Change a file's content the way an update would: a JSON value, or bytes of a binary file."""
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        data["added_by_an_update"] = 1
        path.write_text(json.dumps(data))
    else:
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0xFF
        path.write_bytes(bytes(raw))


def test_every_file_of_a_model_folder_enters_its_fingerprint(tiny_model_dir, tmp_path):
    import shutil

    base = folder_fingerprint(tiny_model_dir, tmp_path / "digests-0")
    files = sorted(p.name for p in Path(tiny_model_dir).iterdir() if p.is_file())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(files)
    for i, name in enumerate(files):
        folder = tmp_path / f"copy-{i}"
        shutil.copytree(tiny_model_dir, folder)
        _edit(folder / name)
        assert folder_fingerprint(folder, tmp_path / f"digests-{i + 1}") != base, name


# -- generation: sampling, request, engine ----------------------------------------------
SAMPLING_CHANGES = {"n": 3, "temperature": 0.5, "top_p": 0.9, "max_tokens": 64, "seed": 7}
GENERATION_KEY_CHANGES = {"model_fingerprint": "other-weights",
                          "messages": [{"role": "user", "content": "What is 2 + 3?"}],
                          "sampling_key": SamplingConfig(seed=1).key()}


def test_every_sampling_field_and_request_part_changes_the_generation_key():
    _complete(_names(SamplingConfig), SAMPLING_CHANGES, {}, "SamplingConfig")
    _complete(_params(generation_key), GENERATION_KEY_CHANGES, {}, "generation_key")
    base = SamplingConfig(n=1, temperature=1.0, top_p=1.0, max_tokens=32, seed=0)
    for name, value in SAMPLING_CHANGES.items():
        assert dataclasses.replace(base, **{name: value}).key() != base.key(), name
    assert dataclasses.replace(base, seed=None).key() != base.key()  # unseeded is not seed 0
    args = {"model_fingerprint": "weights", "messages": [{"role": "user", "content": "What is 2 + 2?"}],
            "sampling_key": base.key()}
    key = generation_key(**args)
    for name, value in GENERATION_KEY_CHANGES.items():
        assert generation_key(**{**args, name: value}) != key, name
    # Every part of a message counts: its role, and a system message in front.
    assert generation_key(**{**args, "messages": [{"role": "system", "content": "What is 2 + 2?"}]}) != key
    assert generation_key(**{**args, "messages": [{"role": "system", "content": ""}, *args["messages"]]}) != key


#: EngineConfig fields that do not decide what a generator writes, and why.
ENGINE_NOT_IN_KEY = {
    "tensor_parallel_size": "GPUs the same weights are split over: the same model, round-off apart",
    "devices": "which GPUs the engine runs on, not what it computes",
    "gpu_memory_utilization": "memory for the KV cache: how many sequences run at once, not their text",
    "keep_loaded": "how long the engine stays open between stages",
    "enforce_eager": "CUDA graphs and torch.compile run the same computation as eager mode",
    "base_url": "where a served model is reached: the served id and `revision` name its weights",
    "max_concurrency": "requests in flight: each completion is seeded on its own (seed + j)",
    "device": "where HF generate holds the same weights (round-off apart)",
    "trust_remote_code": "a permission to run a model's own code: the model that loads is the same either way",
}


def test_every_engine_setting_that_decides_the_text_changes_the_generator_fingerprint(
        tiny_model_dir, other_model_dir, monkeypatch):
    from prismatic_assets.infra.engines import open_engine

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    changes = {"backend": "openai", "model": other_model_dir, "revision": "2026-12-01",
               # vLLM stops a completion where prompt + completion fill the context: a longer
               # context gives longer texts for the same request, so cached cut texts must not return.
               "max_model_len": 4096}
    _complete(EngineConfig.model_fields, changes, ENGINE_NOT_IN_KEY, "EngineConfig")
    base = EngineConfig(backend="vllm", model=tiny_model_dir, base_url="http://127.0.0.1:9/v1")
    fingerprint = open_engine(base).fingerprint
    assert open_engine(base).fingerprint == fingerprint
    for name, value in changes.items():
        assert open_engine(base.model_copy(update={name: value})).fingerprint != fingerprint, name
    for name, value in {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "keep_loaded": True,
                        "enforce_eager": False, "base_url": "http://127.0.0.1:8/v1", "max_concurrency": 3,
                        "device": "cuda", "trust_remote_code": True}.items():
        assert open_engine(base.model_copy(update={name: value})).fingerprint == fingerprint, name


# -- hidden states -----------------------------------------------------------------------
HIDDEN_KEY_CHANGES = {"model_fingerprint": "other-weights", "max_length": 512}


def test_every_hidden_state_setting_changes_its_key(monkeypatch):
    _complete(_params(hidden_state_key), HIDDEN_KEY_CHANGES, {}, "hidden_state_key")
    args = {"model_fingerprint": "weights", "max_length": 1024}
    key = hidden_state_key(**args)
    for name, value in HIDDEN_KEY_CHANGES.items():
        assert hidden_state_key(**{**args, name: value}) != key, name
    monkeypatch.setattr(diversity, "HIDDEN_STATE_VERSION", diversity.HIDDEN_STATE_VERSION + 1)
    assert hidden_state_key(**args) != key


# -- samples -> content hash (the vector cache's other half) ------------------------------
SAMPLE_CHANGES = {"prompt": "What is 2 + 3?", "response": "5"}
SAMPLE_NOT_IN_KEY = {
    "sample_id": "a name: two samples with the same text have the same gradient and share one vector",
    "answer": "the gradient reads the prompt and response only; the answer is metadata for voting and evaluation",
    "category": "a label, not part of the text the gradient reads",
    "source": "where the sample came from, not part of its text",
    "source_ref": "where the sample came from, not part of its text",
    "meta": "provenance (round, parents, cluster), not part of the text",
}


def test_every_text_field_of_a_sample_changes_its_content_hash():
    _complete(_names(Sample), SAMPLE_CHANGES, SAMPLE_NOT_IN_KEY, "Sample")
    base = Sample(sample_id="s1", prompt="What is 2 + 2?", response="4", answer="4", category="a", source="x",
                  source_ref="x:1", meta={"round": 1})
    for name, value in SAMPLE_CHANGES.items():
        assert dataclasses.replace(base, **{name: value}).content_hash != base.content_hash, name
    others = {"sample_id": "s2", "answer": "5", "category": "b", "source": "y", "source_ref": "y:2",
              "meta": {"round": 2}}
    assert set(others) == set(SAMPLE_NOT_IN_KEY)
    for name, value in others.items():
        assert dataclasses.replace(base, **{name: value}).content_hash == base.content_hash, name
    # The boundary between prompt and response counts: ("ab", "c") is not ("a", "bc").
    assert content_hash("ab", "c") != content_hash("a", "bc")


# -- clusterings and scores --------------------------------------------------------------
CLUSTERING_CHANGES = {"ratio": 0.5, "niter": 3, "seed": 1, "sparse_ratio": 0.25, "max_points_per_centroid": 4,
                      "method": "two_level"}
#: Settings of the two-level method only: each changes the id of a two-level clustering (they are
#: ignored by, and left out of the id of, a flat one).
TWO_LEVEL_CHANGES = {"coarse": 2, "refine": 1, "probe": 1, "assign": "probe"}


def test_every_clustering_setting_changes_the_clustering_id(tmp_path):
    from prismatic_assets.pipeline.clusters import cluster_pool
    from prismatic_assets.pipeline.embeddings import PoolVectors
    from prismatic_assets.store.store import MetadataStore

    _complete(ClusteringConfig.model_fields, {**CLUSTERING_CHANGES, **TWO_LEVEL_CHANGES}, {}, "ClusteringConfig")
    store = MetadataStore(tmp_path / "m.duckdb")
    rows = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    pool = PoolVectors([f"s{i}" for i in range(12)], rows / np.linalg.norm(rows, axis=1, keepdims=True), {})
    base = ClusteringConfig(ratio=0.25, niter=5)
    key, _ = cluster_pool(store, pool, base, "emb", "round:1")
    assert cluster_pool(store, pool, base, "emb", "round:1")[0] == key
    for name, value in CLUSTERING_CHANGES.items():
        assert value != getattr(base, name)
        assert cluster_pool(store, pool, base.model_copy(update={name: value}), "emb", "round:1")[0] != key, name
    two_level = base.model_copy(update={"method": "two_level"})
    two_key = cluster_pool(store, pool, two_level, "emb", "round:1")[0]
    for name, value in TWO_LEVEL_CHANGES.items():
        assert value != getattr(two_level, name)
        assert cluster_pool(store, pool, two_level.model_copy(update={name: value}), "emb", "round:1")[0] != two_key, \
            name
    assert cluster_pool(store, pool, base, "emb-other", "round:1")[0] != key
    assert cluster_pool(store, pool, base, "emb", "round:2")[0] != key
    fewer = PoolVectors(pool.sample_ids[:-1], pool.vectors[:-1], {})
    assert cluster_pool(store, fewer, base, "emb", "round:1")[0] != key


def test_every_score_setting_changes_the_score_id(tmp_path):
    from prismatic_assets.pipeline.embeddings import PoolVectors
    from prismatic_assets.pipeline.round_stages import _score_row
    from prismatic_assets.pipeline.scores import score_pool
    from prismatic_assets.store.store import MetadataStore

    _complete(ScoreConfig.model_fields, {"q": 2.0}, {}, "ScoreConfig")
    store = MetadataStore(tmp_path / "m.duckdb")
    pool = PoolVectors(["a", "b", "c"], np.eye(3, dtype=np.float32), {})

    def ids() -> set[str]:
        return set(store.query("SELECT score_id FROM scores")["score_id"].to_list())

    result = score_pool(store, pool, 1.0, "emb", "seed")
    (first,) = ids()
    # A round writes the same id for the same pool (round_stages mirrors score_pool's payload).
    assert _score_row("seed", result, ["a", "b", "c"], 1.0, "emb", 0, {}).score_id == first
    variants = [(2.0, "emb", "seed", pool), (1.0, "emb-other", "seed", pool), (1.0, "emb", "round:1:before", pool),
                (1.0, "emb", "seed", PoolVectors(["a", "b"], np.eye(3, dtype=np.float32)[:2], {}))]
    for q, key, scope, vectors in variants:
        score_pool(store, vectors, q, key, scope)
    assert len(ids()) == 1 + len(variants)


# ----------------------------------------------------------------------------- edges the mutation run found


def test_stored_ids_are_the_sha256_of_sorted_json_with_str_for_other_objects():
    import hashlib

    from prismatic_assets.core.ids import digest

    def expected(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    assert digest({"b": 1, "a": [1, 2]}) == expected('{"a": [1, 2], "b": 1}') == digest({"a": [1, 2], "b": 1})
    assert digest({"path": Path("x/y")}) == expected('{"path": "x/y"}')


def test_a_pool_score_is_shannon_by_default_at_float32_and_stored_with_its_settings(tmp_path):
    """Rows e1, e1, e2, e3: eigenvalues 1/2, 1/4, 1/4, so G-Vendi is 2^1.5 at q = 1 and 8/3 at q = 2."""
    from prismatic_assets.core.gvendi import g_vendi
    from prismatic_assets.pipeline.embeddings import PoolVectors
    from prismatic_assets.pipeline.scores import score_pool, score_vectors
    from prismatic_assets.store.store import MetadataStore

    rows = np.eye(3, dtype=np.float32)[[0, 0, 1, 2]]
    assert score_vectors(rows).score == pytest.approx(2**1.5, rel=1e-6)
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    assert score_vectors(x, 2.0).score == g_vendi(x, q=2.0, compute_dtype="float32").score  # one precision
    store = MetadataStore(tmp_path / "m.duckdb")
    pool = PoolVectors(["a", "b", "c", "d"], rows, {"e": "no vector"})
    result = score_pool(store, pool, q=2.0, embedding_key="ek", scope="pool/1", run_id="run-1")
    assert result.score == pytest.approx(8 / 3, rel=1e-6)
    with store.connect() as con:
        row = con.execute("SELECT scope, metric, q, value, n, dim, n_excluded, embedding_key, config, run_id "
                          "FROM scores").fetchall()
    assert row == [("pool/1", "g_vendi", 2.0, pytest.approx(8 / 3, rel=1e-6), 4, 3, 1, "ek", '{"q": 2.0}', "run-1")]
