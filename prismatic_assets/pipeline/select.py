"""Select a diverse subset of a data set and judge it against random subsets of the same size.

Loads nothing itself: `select_from_set` takes a loaded set, gets its gradient vectors
through the shared cache, runs `core.selection`, scores the subset's G-Vendi and that of
random subsets (5 seeds), and `write_subset` writes the chosen samples as JSON Lines with
the reason for each pick. Samples without a valid gradient vector are not candidates.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from prismatic_assets.core.samples import Sample
from prismatic_assets.core.selection import DEFAULT_METHOD, DEFAULT_SEED, METHODS, random_subset, select
from prismatic_assets.infra.config import ScoreConfig
from prismatic_assets.pipeline.datasets import LoadedSet, set_vectors
from prismatic_assets.pipeline.embedder import Embedder
from prismatic_assets.pipeline.embeddings import Progress
from prismatic_assets.pipeline.scores import score_vectors
from prismatic_assets.store.store import MetadataStore

RANDOM_BASELINE_SEEDS = 5


def baseline_seeds(seed: int, count: int = RANDOM_BASELINE_SEEDS) -> list[int]:
    """Seeds of the random subsets a selection is compared with: derived from its seed, never equal to it."""
    return [int(np.random.SeedSequence([seed, 7, i]).generate_state(1)[0] % 2**31) for i in range(count)]


@dataclass
class SubsetReport:
    source: str
    method: str
    k: int
    seed: int
    q: float
    picks: list[tuple[Sample, dict]]  # (sample, why it was picked), in pick order
    g_vendi: float
    random_g_vendi: list[float]  # one per baseline seed
    random_seeds: list[int]
    n_loaded: int
    n_rejected: int
    n_candidates: int  # samples with a valid gradient vector
    excluded: dict[str, str]  # sample_id -> reason (not a candidate)
    rejections: list[dict]
    params: dict
    model: str
    model_fingerprint: str
    projection: str
    embedding_key: str
    n_computed: int = 0
    n_cached: int = 0
    seconds: float = 0.0
    select_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def random_mean(self) -> float:
        return float(np.mean(self.random_g_vendi))

    @property
    def random_std(self) -> float:
        return float(np.std(self.random_g_vendi))

    def as_dict(self, with_picks: bool = False) -> dict:
        out = {"source": self.source, "method": self.method, "k": self.k, "seed": self.seed,
               "q": "inf" if math.isinf(self.q) else self.q, "g_vendi": self.g_vendi,
               "random_g_vendi": {"mean": self.random_mean, "std": self.random_std,
                                  "min": min(self.random_g_vendi), "max": max(self.random_g_vendi),
                                  "values": self.random_g_vendi, "seeds": self.random_seeds},
               "n_loaded": self.n_loaded, "n_rejected": self.n_rejected, "n_candidates": self.n_candidates,
               "n_excluded": len(self.excluded), "excluded": self.excluded, "rejections": self.rejections,
               "params": self.params, "model": self.model, "model_fingerprint": self.model_fingerprint,
               "projection": self.projection, "embedding_key": self.embedding_key,
               "vectors": {"computed": self.n_computed, "cached": self.n_cached},
               "seconds": round(self.seconds, 2), "select_seconds": round(self.select_seconds, 3),
               "notes": self.notes}
        if with_picks:
            out["picks"] = [{"sample_id": s.sample_id, **why} for s, why in self.picks]
        return out


def check_request(loaded: LoadedSet, k: int, method: str, q: float) -> None:
    """Raise on a bad k, method or q before any model is loaded: a typo should not cost minutes."""
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"--k must be a positive integer (how many samples to keep), got {k!r}")
    if isinstance(q, bool) or not isinstance(q, (int, float)) or math.isnan(q) or q < 0:
        raise ValueError(f"q must be a number >= 0 (1 is Shannon, the paper's; inf is -ln max), got {q!r}")
    if k > len(loaded.samples):
        raise ValueError(f"--k {k} but {loaded.source} has only {len(loaded.samples)} valid samples "
                         f"({len(loaded.rejections)} rows rejected): choose k <= {len(loaded.samples)}")


def select_from_set(loaded: LoadedSet, embedder: Embedder, store: MetadataStore, *, k: int,
                    method: str = DEFAULT_METHOD, seed: int = DEFAULT_SEED,
                    q: float = ScoreConfig().q, clusters: int | None = None,
                    model: str | None = None, run_id: str | None = None, gradient_progress: Progress | None = None,
                    step_progress: Callable[[int, int], None] | None = None) -> SubsetReport:
    """Pick k samples of `loaded` by `method` (cluster-balanced, greedy, random); see `core.selection`.

    q: the Renyi order of the G-Vendi the subset and the random subsets are scored with.
    clusters: K for cluster-balanced (default about sqrt(k)).
    """
    started = time.perf_counter()
    check_request(loaded, k, method, q)
    report, pool = set_vectors(loaded.samples, embedder, store, run_id=run_id, progress=gradient_progress)
    n = len(pool.sample_ids)
    if n == 0:
        raise ValueError(f"{loaded.source}: no sample has a valid gradient vector ({len(pool.excluded)} excluded, "
                         f"e.g. {list(pool.excluded.items())[:3]}): nothing to select from")
    if k > n:
        raise ValueError(f"--k {k} but {loaded.source} has only {n} samples with a valid gradient vector "
                         f"({len(loaded.samples)} loaded, {len(pool.excluded)} without a vector): choose k <= {n}")
    began = time.perf_counter()
    options = {"n_clusters": clusters} if clusters is not None else {}
    chosen = select(pool.vectors, k, method=method, seed=seed, progress=step_progress, **options)
    select_seconds = time.perf_counter() - began
    by_id = {s.sample_id: s for s in loaded.samples}
    picks = []
    for rank, row in enumerate(chosen.indices):
        sample = by_id[pool.sample_ids[int(row)]]
        picks.append((sample, chosen.reason(rank)))
    seeds = baseline_seeds(seed)
    randoms = [score_vectors(pool.vectors[np.sort(random_subset(n, k, s))], q).score for s in seeds]
    notes = []
    if k == n:
        notes.append("k equals the number of candidates: every method returns the whole set")
    return SubsetReport(
        source=loaded.source, method=method, k=k, seed=seed, q=float(q), picks=picks,
        g_vendi=score_vectors(pool.vectors[chosen.indices], q).score, random_g_vendi=randoms,  # pick order, as written
        random_seeds=seeds, n_loaded=len(loaded.samples), n_rejected=len(loaded.rejections), n_candidates=n,
        excluded=pool.excluded, rejections=[{"ref": r.source_ref, "reason": r.reason} for r in loaded.rejections],
        params=chosen.params, model=model or embedder.model_name,
        model_fingerprint=embedder.model_fingerprint, projection=embedder.projection_key,
        embedding_key=report.embedding_key, n_computed=report.n_computed, n_cached=report.n_cached,
        seconds=time.perf_counter() - started, select_seconds=select_seconds, notes=notes)


def subset_record(sample: Sample, why: dict) -> dict:
    """One output line: the sample's fields (loadable again by `prismatic score`) and why it was picked."""
    return {"id": sample.sample_id, "prompt": sample.prompt, "response": sample.response, "answer": sample.answer,
            "category": sample.category, "source_ref": sample.source_ref, "selection": why}


def write_subset(report: SubsetReport, path: str | Path) -> Path:
    """Write the picks as JSON Lines, atomically (a temp file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for sample, why in report.picks:
                f.write(json.dumps(subset_record(sample, why), ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a data file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
