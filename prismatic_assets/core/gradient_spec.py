"""What a gradient vector is, without computing one: `GradientSpec`, its cache key, `Embedding`.

Separate from `gradients.py` (which imports torch) so that the code location, the
configuration, the caches and the Ray driver can name a gradient and hold its results
without loading torch; the vectors themselves come from `gradients.GradientEmbedder`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["AUTOCAST_CHOICES", "GRADIENT_ALGORITHM_VERSION", "Embedding", "GradientSpec", "embedding_key"]

#: Bump when the loss, masking or formatting changes: it is part of every cache key.
GRADIENT_ALGORITHM_VERSION = 1
AUTOCAST_CHOICES = (None, "bf16")


@dataclass(frozen=True)
class GradientSpec:
    """What, besides the model and projection, decides a gradient vector.

    `params`: None for every parameter (the paper), or a regular expression matched
    against parameter names (e.g. ``r"model\\.layers\\.(28|29)\\."`` for the last two
    layers of SmolLM2) to trade fidelity for speed. Parameters that do not match get no
    gradient, so back-propagation also stops early.
    `autocast`: None (fp32) or "bf16" (autocast forward and backward: faster on GPUs; on
    the 2-core CPU of benchmarks/ its backward was much slower than fp32).
    `max_length`: token budget; longer samples are truncated at the end of the response
    (recorded), a prompt that alone exceeds it is an error for that sample.

    The defaults are the profile defaults of `proxy.params`, `proxy.autocast` and
    `proxy.max_length` (tests/infra/test_defaults.py keeps them equal: core reads no config).
    """

    params: str | None = None
    autocast: str | None = None
    max_length: int = 1024

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"autocast={self.autocast!r}: choose one of {AUTOCAST_CHOICES}")
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length}: must be at least 8 tokens")
        if self.params is not None:
            try:
                re.compile(self.params)
            except re.error as exc:
                raise ValueError(f"params={self.params!r} is not a valid regular expression: {exc}") from None

    def as_dict(self) -> dict:
        return {"params": self.params, "autocast": self.autocast, "max_length": self.max_length,
                "version": GRADIENT_ALGORITHM_VERSION}


def embedding_key(model_fingerprint: str, projection_key: str, gradient: GradientSpec) -> str:
    """The cache key shared by every vector computed with the same model, projection and spec."""
    payload = json.dumps({"model": model_fingerprint, "projection": projection_key,
                          "gradient": gradient.as_dict()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Embedding:
    """One sample's projected gradient (unit length) or the reason there is none."""

    vector: np.ndarray | None  # (d,) float32, L2-normalized
    grad_norm: float  # norm of the projected gradient before normalization
    loss: float
    n_response_tokens: int
    truncated: bool
    seconds: float
    error: str | None = None
