"""Shared fixtures: the real packaged model (converted once per machine) and tiny random-init models.

Nothing here touches a network or a model hub.
"""

from __future__ import annotations

import os

import pytest

# `make test` runs the suite in two pytest-xdist workers, whole files to a worker (`--dist
# loadfile`), so a module's fixtures (a vLLM engine, a server) start once. Two workers already
# fill two cores: each gets one torch/OpenMP thread (its subprocesses inherit it), because
# two-thread ops of two processes on two cores spend their time in OpenMP barriers
# (`pytest_configure` below).

#: The slowest files (seconds each on 2 cores, from a full run), started first so that no worker
#: is left with one of them at the end while the other has nothing to do. Only the order
#: depends on this list.
SLOWEST_FIRST = (
    "test_demo.py",  # 471
    "core/test_generation.py",  # 279: four vLLM engine starts and a server
    "pipeline/test_study.py",  # 231
    "test_paper_profile.py",  # 207
    "test_ui_browser.py",  # 194
    "test_kill_and_rerun.py",  # 193
    "orchestration/assets/test_backbone.py",  # 117
    "pipeline/test_round.py",  # 112
    "orchestration/assets/test_synthesis_assets.py",  # 98
    "test_ui.py",  # 75
    "pipeline/test_arms.py",  # 63
)


def pytest_collection_modifyitems(config, items):
    """The files of SLOWEST_FIRST first, in that order; every other file after them as collected."""
    here = os.path.dirname(__file__)

    def rank(item) -> int:
        path = os.path.relpath(str(item.path), here)
        return SLOWEST_FIRST.index(path) if path in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items[:] = sorted(items, key=rank)  # stable: a file's tests keep their order


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def packaged_model_dir() -> str:
    """The converted SmolLM2-135M-Instruct folder (first call on a machine converts, ~45 s)."""
    from prismatic_assets.core.models import PACKAGED_MODEL, resolve_model

    return resolve_model(PACKAGED_MODEL)


@pytest.fixture(scope="session")
def packaged_tokenizer(packaged_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(packaged_model_dir)


def make_tiny_llama(tokenizer, seed: int = 0, layers: int = 2):
    """A random-init Llama with the packaged tokenizer's vocabulary: real shapes, milliseconds per step."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def make_tiny_qwen2(tokenizer, seed: int = 0):
    """A random-init Qwen2 with its own output matrix (untied) and biased q/k/v projections."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id)
    return Qwen2ForCausalLM(config).eval()


def sha_seed(*parts) -> int:
    """The seed contract, written out: sha256 of the parts as a JSON list, first 4 bytes little-endian, 31 bits."""
    import hashlib
    import json

    return int.from_bytes(hashlib.sha256(json.dumps(list(parts)).encode()).digest()[:4], "little") & 0x7FFFFFFF


@pytest.fixture
def tiny_llama(packaged_tokenizer):
    return make_tiny_llama(packaged_tokenizer)


@pytest.fixture(scope="module")
def tiny_embedder(packaged_tokenizer):
    """The local `Embedder` over a tiny random-init Llama (CountSketch to d = 32, 256 tokens).

    One torch thread while it lives: a tiny model's ops are too small to split, and on a busy
    2-core machine the OpenMP barriers of 2 threads made each backward pass ~40x slower."""
    import torch

    from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
    from prismatic_assets.core.models import model_fingerprint
    from prismatic_assets.core.projection import ProjectionSpec
    from prismatic_assets.pipeline.embedder import LocalEmbedder

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = make_tiny_llama(packaged_tokenizer)
    yield LocalEmbedder(GradientEmbedder(model, packaged_tokenizer, ProjectionSpec(dim=32),
                                         GradientSpec(max_length=256), model_fingerprint(model, packaged_tokenizer)))
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, packaged_tokenizer) -> str:
    """A saved tiny random-init model folder (model + tokenizer with chat template)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = make_tiny_llama(packaged_tokenizer)
    model.save_pretrained(path)
    packaged_tokenizer.save_pretrained(path)
    return str(path)


def write_profile(folder, values: dict, name: str = "test") -> str:
    """A profile YAML file with these overrides; returns its path (for build_definitions)."""
    from pathlib import Path

    import yaml

    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"profile": name, **values}))
    return str(path)


@pytest.fixture(autouse=True)
def _no_dagster_instance_left_current():
    """A DagsterInstance entered (`with instance:`) makes its defs-state storage the current one
    (a context variable); a test that never exits it would leave a dead reference that breaks the
    next `Definitions` built in this worker. Each test starts without one."""
    yield
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)


@pytest.fixture
def six_sparse_clusters():
    """A clustering of a 30-member pool: cluster 0 dense (12 members), clusters 1-6 sparse (3 each)."""
    from types import SimpleNamespace

    import numpy as np

    assignments = np.array([0] * 12 + [c for c in range(1, 7) for _ in range(3)])
    return SimpleNamespace(assignments=assignments, sizes=np.bincount(assignments),
                           sparse=np.array([False] + [True] * 6))
