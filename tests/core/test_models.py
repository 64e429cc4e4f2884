"""Tests of model identity and loading safety in prismatic_assets.core.models.

Tiny random-init models saved to temporary folders stand in for real ones (same code path:
save_pretrained, from_pretrained, safetensors files); a Hugging Face cache is laid out by
hand in the format huggingface_hub reads, offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prismatic_assets.core.generation import SamplingConfig
from prismatic_assets.core.generation_openai import OpenAIGenerator
from prismatic_assets.core.generation_transformers import TransformersGenerator
from prismatic_assets.core.generation_vllm import VLLMGenerator
from prismatic_assets.core.models import (
    RemoteCodeRequired,
    folder_fingerprint,
    load_causal_lm,
    model_fingerprint,
    model_source_fingerprint,
    needs_remote_code,
)
from tests.conftest import make_tiny_llama

REPO = Path(__file__).resolve().parents[2]


def _save(model, tokenizer, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _age(folder: Path, seconds: float = 60.0) -> None:
    """Back-date files, as models on disk usually are (fresh files are hashed, not memoised)."""
    for path in folder.iterdir():
        st = path.stat()
        os.utime(path, (st.st_atime - seconds, st.st_mtime - seconds))


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory, packaged_tokenizer):
    """One tiny model saved to two unrelated folders, and a copy with one weight changed."""
    import torch

    root = tmp_path_factory.mktemp("models")
    model = make_tiny_llama(packaged_tokenizer, seed=3)
    a = _save(model, packaged_tokenizer, root / "cache-a" / "tiny")
    b = _save(model, packaged_tokenizer, root / "elsewhere" / "deeper" / "tiny-copy")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3  # one weight of ~1.6M
    changed = _save(model, packaged_tokenizer, root / "changed")
    for folder in (a, b, changed):
        _age(folder)
    return a, b, changed


def test_fingerprint_is_the_same_from_two_paths_and_changes_with_one_weight(tiny_folders):
    a, b, changed = tiny_folders
    model_a, tok_a = load_causal_lm(str(a))
    model_b, tok_b = load_causal_lm(str(b))
    # The loaded configs do carry their paths: the fingerprint must look past them.
    assert model_a.config._name_or_path != model_b.config._name_or_path
    assert model_fingerprint(model_a, tok_a) == model_fingerprint(model_b, tok_b)
    model_c, tok_c = load_causal_lm(str(changed))
    assert model_fingerprint(model_c, tok_c) != model_fingerprint(model_a, tok_a)
    # Architecture and tokenizer count too.
    model_a.config.rms_norm_eps = 1e-3
    assert model_fingerprint(model_a, tok_a) != model_fingerprint(model_b, tok_b)
    tok_b.chat_template = "{{ messages[0]['content'] }}"
    assert model_fingerprint(model_b, tok_b) != model_fingerprint(model_c, tok_a)
    assert model_fingerprint(model_b) != model_fingerprint(model_b, tok_b)


def test_folder_fingerprint_follows_content_not_path(tiny_folders, tmp_path):
    a, b, changed = tiny_folders
    assert folder_fingerprint(a, tmp_path) == folder_fingerprint(b, tmp_path)
    assert folder_fingerprint(changed, tmp_path) != folder_fingerprint(a, tmp_path)
    # Each weight file's digest is remembered by (path, size, mtime, inode) ...
    memos = list((tmp_path / "digests").iterdir())
    assert len(memos) == 3
    weights = hashlib.sha256((a / "model.safetensors").read_bytes()).hexdigest()
    assert weights in {m.read_text() for m in memos}
    # ... and a rewrite of the same file at the same path is seen.
    moved = tmp_path / "same-name"
    shutil.copytree(a, moved)
    _age(moved)
    before = folder_fingerprint(moved, tmp_path)
    shutil.copyfile(changed / "model.safetensors", moved / "model.safetensors")
    assert folder_fingerprint(moved, tmp_path) != before
    _age(moved, 120)
    assert folder_fingerprint(moved, tmp_path) == folder_fingerprint(changed, tmp_path)
    # A path-only difference inside config.json (`_name_or_path`) does not count; a real one does.
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "_name_or_path": "/somewhere/else"}))
    assert folder_fingerprint(moved, tmp_path) == folder_fingerprint(changed, tmp_path)
    (moved / "config.json").write_text(json.dumps({**config, "num_attention_heads": 2}))
    assert folder_fingerprint(moved, tmp_path) != folder_fingerprint(changed, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no weight files"):
        folder_fingerprint(empty, tmp_path)


def _hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> Path:
    """Lay `folder` out as huggingface_hub's cache does: blobs named by sha256, snapshot links."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, repo / "blobs" / digest)
        (snapshot / path.name).symlink_to(Path("..") / ".." / "blobs" / digest)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_id_is_identified_by_its_cached_snapshot(tiny_folders, tmp_path, monkeypatch):
    a, _, changed = tiny_folders
    cache = tmp_path / "hub"
    _hub_cache(cache, "org/tiny", a, "1" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    digests = tmp_path / "digests-cache"
    # Same files on the hub as in a local folder: the same identity; no weight is read for the hub one.
    assert model_source_fingerprint("org/tiny", cache_dir=digests) == model_source_fingerprint(str(a),
                                                                                               cache_dir=digests)
    assert model_source_fingerprint("org/tiny", cache_dir=digests) != model_source_fingerprint(str(changed))
    # Not cached and not downloadable here: named only; a revision label always counts.
    assert model_source_fingerprint("org/absent") != model_source_fingerprint("org/absent", revision="abc")
    assert model_source_fingerprint("org/absent") == model_source_fingerprint("org/absent")


def test_generators_are_keyed_by_weights_not_names(tiny_folders, tmp_path, monkeypatch):
    a, b, changed = tiny_folders
    expected = model_source_fingerprint(str(a))
    assert TransformersGenerator(str(a)).fingerprint == expected == TransformersGenerator(str(b)).fingerprint
    assert VLLMGenerator(str(b)).fingerprint == expected
    assert VLLMGenerator(str(a), engine_kwargs={"revision": "v2"}).fingerprint != expected
    # The same name, new weights behind it.
    same_name = tmp_path / "model"
    shutil.copytree(a, same_name)
    _age(same_name)
    before = TransformersGenerator(str(same_name)).fingerprint
    shutil.copyfile(changed / "model.safetensors", same_name / "model.safetensors")
    assert TransformersGenerator(str(same_name)).fingerprint != before
    # A served model is known by its id and the revision label the user sets; URL and key do not enter.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    served = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", api_key="k1")
    assert served.fingerprint == OpenAIGenerator("m", base_url="http://127.0.0.1:8/v1", api_key="k2").fingerprint
    assert served.fingerprint != OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1", revision="2026-12").fingerprint
    assert served.fingerprint != OpenAIGenerator("m2", base_url="http://127.0.0.1:9/v1").fingerprint


_REMOTE_CONFIG = '''
from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "prismatic_custom"
'''
_REMOTE_MODEL = '''
from pathlib import Path

from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig

Path({marker!r}).write_text("the model's own code ran")


class CustomModel(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.fixture
def remote_code_model(tiny_folders, tmp_path) -> tuple[Path, Path]:
    """A model folder whose config maps its classes to Python files shipped beside the weights."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_folders[0], folder)
    marker = tmp_path / "executed"
    (folder / "configuration_custom.py").write_text(_REMOTE_CONFIG)
    (folder / "modeling_custom.py").write_text(_REMOTE_MODEL.format(marker=str(marker)))
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="prismatic_custom", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_remote_code_is_off_unless_asked_for(remote_code_model, tmp_path, monkeypatch):
    folder, marker = remote_code_model
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    assert needs_remote_code(str(folder))
    with pytest.raises(RemoteCodeRequired, match="ships its own Python code.*set trust_remote_code: true"):
        load_causal_lm(str(folder))
    with pytest.raises(RemoteCodeRequired, match="trust_remote_code"):
        TransformersGenerator(str(folder)).chat([[{"role": "user", "content": "hi"}]], SamplingConfig(max_tokens=2))
    assert not marker.exists()  # nothing of the model's code ran
    # The setting reaches transformers: with it on, the model's code does run.
    model, _ = load_causal_lm(str(folder), trust_remote_code=True)
    assert type(model).__name__ == "CustomModel" and marker.exists()


def test_cli_says_when_a_model_needs_remote_code(remote_code_model, tmp_path):
    folder, marker = remote_code_model
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "1+1?", "response": "\\boxed{2}"}) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "PRISMATIC_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "prismatic_assets.interfaces.cli", "score", str(data),
                           "--model", str(folder), "--no-cache", "--dim", "8"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "ships its own Python code" in done.stderr and "--trust-remote-code" in done.stderr
    assert "Traceback" not in done.stderr and not marker.exists()


def test_engine_configs_carry_remote_code_and_revision(tiny_folders, monkeypatch):
    from prismatic_assets.infra.config import EngineConfig
    from prismatic_assets.infra.engines import open_engine

    a = str(tiny_folders[0])
    assert not open_engine(EngineConfig(backend="vllm", model=a)).trust_remote_code
    vllm = open_engine(EngineConfig(backend="vllm", model=a, trust_remote_code=True, revision="v2"))
    assert vllm.trust_remote_code and vllm.engine_args()["trust_remote_code"] and vllm.engine_args()["revision"] == "v2"
    assert open_engine(EngineConfig(backend="transformers", model=a, trust_remote_code=True)).trust_remote_code
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    served = [open_engine(EngineConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", revision=r))
              for r in (None, "2026-12-01", "2026-12-02")]
    assert len({g.fingerprint for g in served}) == 3
