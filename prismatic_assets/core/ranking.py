"""Rank correlation between a diversity measure and accuracy, with a bootstrap interval over sets.

What it does:
- `spearman(x, y)`: Spearman's rho, the Pearson correlation of the two rank vectors, with
  tied values given their average rank (the usual definition; equal to
  `scipy.stats.spearmanr`). Undefined (None) when either vector is constant or has fewer
  than 3 finite pairs: a constant vector has no ranking to correlate.
- `bootstrap_spearman(x, y, resamples, seed)`: the percentile 95% interval of rho over
  resamples of the sets drawn with replacement (each resample keeps M pairs). Duplicated
  sets in a resample are ties and get average ranks. A *degenerate* resample, one in which
  either side is constant (e.g. the same set drawn M times, or only sets with equal
  accuracy), has no rho: it is left out, the interval is taken over the others, and the
  count left out is reported. With no valid resample the interval is undefined. Leaving
  them out conditions the interval on resamples that can be ranked: with few sets and many
  ties it is then narrower than the uncertainty it stands for; the count says how much.
- `entropy(labels)`: the Shannon entropy (nats) of a list of labels, the proxy-free
  diversity of a set's (family, level) mix.

What it does not: read data, decide which sets or measures to compare (`pipeline/study.py`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np

__all__ = ["RankCorrelation", "bootstrap_spearman", "entropy", "spearman"]

#: Fewer finite pairs than this give no rho (two points are always perfectly ranked).
MIN_PAIRS = 3


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties sharing the mean of the ranks they span."""
    from scipy.stats import rankdata

    return rankdata(values, method="average")


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Spearman's rho of paired values (pairs with a NaN on either side dropped); None if undefined."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"spearman needs two 1-D sequences of equal length, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < MIN_PAIRS:
        return None
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    if denominator == 0.0:
        return None
    return float(np.clip((ra @ rb) / denominator, -1.0, 1.0))


@dataclass(frozen=True)
class RankCorrelation:
    """rho over the M sets, its bootstrap percentile interval, and what the bootstrap saw."""

    rho: float | None
    low: float | None
    high: float | None
    n: int  # sets with both values
    resamples: int
    degenerate: int  # resamples left out: one side constant
    seed: int

    @property
    def valid_resamples(self) -> int:
        return self.resamples - self.degenerate

    def as_dict(self) -> dict:
        return {"rho": self.rho, "low": self.low, "high": self.high, "n": self.n, "resamples": self.resamples,
                "degenerate": self.degenerate, "seed": self.seed}


def bootstrap_spearman(x: Sequence[float], y: Sequence[float], resamples: int = 2000, seed: int = 0,
                       confidence: float = 0.95) -> RankCorrelation:
    """rho and its percentile bootstrap interval over the sets (see the module docstring)."""
    if not isinstance(resamples, int) or isinstance(resamples, bool) or resamples < 1:
        raise ValueError(f"resamples={resamples!r}: must be an integer >= 1 (e.g. 2000)")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: must be in (0, 1), e.g. 0.95")
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rho = spearman(a, b)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.size)
    if rho is None:
        return RankCorrelation(None, None, None, n, 0, 0, seed)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))  # (resamples, n) set indices
    values = [spearman(a[row], b[row]) for row in draws]
    valid = np.array([v for v in values if v is not None], dtype=np.float64)
    degenerate = resamples - int(valid.size)
    if valid.size == 0:
        return RankCorrelation(rho, None, None, n, resamples, degenerate, seed)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(valid, [tail, 1.0 - tail], method="inverted_cdf")
    return RankCorrelation(rho, float(low), float(high), n, resamples, degenerate, seed)


def entropy(labels: Sequence[Hashable]) -> float:
    """Shannon entropy in nats of the labels' empirical distribution (0 for one distinct label)."""
    if not labels:
        raise ValueError("entropy of an empty list: pass at least one label")
    counts = np.array(list(Counter(labels).values()), dtype=np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: one label gives 0.0, not -0.0
