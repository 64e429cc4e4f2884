"""`make_generator`: one chat generator by backend name (vllm, openai, transformers).

The backends live in `generation_vllm.py`, `generation_openai.py` and
`generation_transformers.py`; each imports its heavy library only when used, so importing
this module is cheap.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from prismatic_assets.core.generation import BaseGenerator, Generator
from prismatic_assets.core.generation_openai import OpenAIGenerator
from prismatic_assets.core.generation_transformers import TransformersGenerator
from prismatic_assets.core.generation_vllm import VLLMGenerator

BACKENDS: dict[str, type[BaseGenerator]] = {
    "vllm": VLLMGenerator,
    "openai": OpenAIGenerator,
    "transformers": TransformersGenerator,
}


def make_generator(backend: Literal["vllm", "openai", "transformers"], **config: Any) -> Generator:
    """Build a generator by backend name, e.g. `make_generator("vllm", model=PACKAGED_MODEL)`."""
    try:
        cls = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown generation backend {backend!r}: choose one of {sorted(BACKENDS)}") from None
    parameters = inspect.signature(cls.__init__).parameters
    allowed = [p for p in parameters if p != "self"]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise TypeError(f"the {backend} backend has no option {unknown}: its options are {allowed}")
    missing = [p for p, v in parameters.items()
               if p != "self" and v.default is inspect.Parameter.empty and p not in config]
    if missing:
        raise TypeError(f"the {backend} backend needs {missing}, e.g. make_generator({backend!r}, model=...)")
    return cls(**config)  # type: ignore[return-value]
