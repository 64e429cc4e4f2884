"""Split samples into a kept part and a held-out part, deterministically and stratified.

Membership depends only on the sample ids, the seed and the strata, never on input order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import Counter
from collections.abc import Sequence

from prismatic_assets.core.samples import Sample

_SAMPLE_FIELDS = tuple(f.name for f in dataclasses.fields(Sample) if f.name != "meta")


def split_holdout(
    samples: Sequence[Sample],
    fraction: float,
    seed: int = 0,
    stratify_by: str | None = "category",
) -> tuple[list[Sample], list[Sample]]:
    """Split into (kept, held_out), held_out holding about `fraction` of each stratum.

    Membership depends only on the sample ids, `seed` and the strata, never on input order:
    within a stratum, samples are ranked by a seeded SHA-256 of their id and the lowest
    ranks are held out. The held-out total is ``round(fraction * n)`` (halves up), shared out
    across strata by largest remainder, so every stratum gets its proportional share within
    one. `stratify_by` names a `Sample` attribute (None values form their own stratum) or
    None for no stratification. Both lists keep the input order.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1) (the share held out), got {fraction!r}")
    if stratify_by is not None and stratify_by not in _SAMPLE_FIELDS:
        raise ValueError(f"stratify_by={stratify_by!r} is not a Sample attribute: use one of "
                         f"{', '.join(_SAMPLE_FIELDS)}, or None")
    ids = Counter(s.sample_id for s in samples)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise ValueError(f"split_holdout: sample ids must be unique, repeated: {repeated[:5]}")

    strata: dict[str, list[Sample]] = {}
    for s in samples:
        value = getattr(s, stratify_by) if stratify_by is not None else None
        strata.setdefault(repr(value), []).append(s)

    total = math.floor(fraction * len(samples) + 0.5)
    quotas = {key: fraction * len(members) for key, members in strata.items()}
    counts = {key: math.floor(q) for key, q in quotas.items()}
    # Largest remainders get the leftover places; ties go to the smaller stratum key.
    leftover = sorted(strata, key=lambda k: (-(quotas[k] - counts[k]), k))
    for key in leftover[: max(0, total - sum(counts.values()))]:
        counts[key] += 1

    held: set[str] = set()
    for key, members in strata.items():
        ranked = sorted(members, key=lambda s: _rank(seed, s.sample_id))
        held.update(s.sample_id for s in ranked[: counts[key]])
    kept = [s for s in samples if s.sample_id not in held]
    held_out = [s for s in samples if s.sample_id in held]
    return kept, held_out


def _rank(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{sample_id}".encode("utf-8")).hexdigest()
