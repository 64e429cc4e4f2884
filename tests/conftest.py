"""Shared fixtures: the real packaged model (converted once per machine) and tiny random-init models.

Nothing here touches a network or a model hub.
"""

from __future__ import annotations

import pytest


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
