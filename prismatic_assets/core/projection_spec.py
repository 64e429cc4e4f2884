"""What a projection is, without the projection: `ProjectionSpec` and its cache key.

Separate from `projection.py` (which imports torch) so that the code location, the
configuration and the caches can name a projection without loading torch; the vectors
themselves come from `projection.make_projector`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["ALGORITHM_VERSION", "KINDS", "MAX_DIM", "ProjectionSpec", "check_input_dim", "projection_key"]

#: Bumped whenever the vectors produced for a given spec would change; part of every key.
ALGORITHM_VERSION = 1
KINDS = ("countsketch", "rademacher")
#: Bucket ids of both signs (2 * dim) must fit in int32, the index dtype kept in memory.
MAX_DIM = 1 << 24


@dataclass(frozen=True)
class ProjectionSpec:
    """Which projection: kind, output dimension and seed. Stored with every projected vector.

    The defaults are the profile defaults of `projection.*` (tests/infra/test_defaults.py
    keeps them equal: core reads no config)."""

    kind: Literal["countsketch", "rademacher"] = "countsketch"
    dim: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"projection kind {self.kind!r} is unknown: use one of {KINDS}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, (int, np.integer)) or not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"projection dim must be an integer in [1, {MAX_DIM}], got {self.dim!r} "
                             "(the paper uses 1024)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or not 0 <= self.seed < 2**63:
            raise ValueError(f"projection seed must be an integer in [0, 2**63), got {self.seed!r}")
        # numpy integers become Python ints, so keys and the 64-bit hash arithmetic are exact.
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "seed", int(self.seed))

    def key(self, input_dim: int, device_type: str = "cpu") -> str:
        """A stable string that changes whenever the projected vectors would change.

        `device_type` is accepted and ignored: the signs and buckets are integer hashes,
        identical on CPU and CUDA, so vectors from either device may share a cache.
        """
        check_input_dim(input_dim)
        return f"{self.kind}-v{ALGORITHM_VERSION}-dim{self.dim}-seed{self.seed}-in{int(input_dim)}"


def check_input_dim(input_dim: int) -> None:
    if isinstance(input_dim, bool) or not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
        raise ValueError("input_dim must be a positive integer (the number of gradient coordinates), "
                         f"got {input_dim!r}")


def _device_type(device: object) -> str:
    """'cpu', 'cuda', ... of a torch.device or a device string ("cuda:1")."""
    kind = getattr(device, "type", None)
    return kind if isinstance(kind, str) else str(device).split(":")[0]


def projection_key(spec: ProjectionSpec, input_dim: int, device: object = "cpu",
                   compute_dtype: str | None = None) -> str:
    """The key of `make_projector(spec, input_dim, device, compute_dtype=...)`, without building it
    (a dense projector on a GPU defaults to bf16, which its key records)."""
    key = spec.key(input_dim)
    if spec.kind == "rademacher":
        dtype = compute_dtype or ("float32" if _device_type(device) == "cpu" else "bfloat16")
        if dtype == "bfloat16":
            key += "-bf16"
    return key
