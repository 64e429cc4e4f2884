"""Training sets by design: M sets of equal size from one pool, their diversity varied on purpose.

A design is a short text (`study.designs`):

    span:F:L          F task families x L difficulty levels, an equal share from each
                      (family, level) pair: span:1:1 is one narrow slice, span:all:all the
                      widest stratified draw. `all` takes every family or level of the pool.
    random:S          a uniform draw with seed S (`random` is random:0)
    cluster-balanced  an even draw across the gradient clusters of the candidates
                      (`prismatic select --method cluster-balanced`)
    greedy            the log-det greedy pick on the gradients (`prismatic select`'s default)
    single-cluster    the candidates nearest (cosine) to the centroid of the largest gradient
                      cluster: one neighbourhood of gradient space, the least diverse draw

With `disjoint`, no sample is in two sets: sets are drawn one after another from what the
earlier ones left, the most constrained first (span designs by F x L ascending, then
random, then the gradient designs), so a narrow slice is not starved by a wide draw. The
order of the sets in the result is the order of the designs. Every draw is deterministic
in (pool, designs, set size, disjoint, seed).

Span and random draws need only each candidate's (family, level); the gradient designs
need the candidates' vectors. `draw_label_sets` draws the first kind and checks that
enough candidates are left for the second before any gradient is computed;
`draw_vector_sets` draws the second. A pool that cannot give every set its size is a
`PoolTooSmall` naming the design, the slice that ran short and the fix.

What it does not: load or embed samples, or store sets (`pipeline/study.py`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np

__all__ = ["Design", "DrawnSet", "PoolTooSmall", "VECTOR_KINDS", "draw_label_sets", "draw_vector_sets",
           "parse_designs"]

VECTOR_KINDS = ("cluster-balanced", "greedy", "single-cluster")
_FORMS = "span:F:L (F, L: a count or 'all'), random:S, cluster-balanced, greedy, single-cluster"


class PoolTooSmall(ValueError):
    """The pool cannot give every design a set of the asked size."""


@dataclass(frozen=True)
class Design:
    spec: str  # as written, the set's name
    kind: str  # 'span' | 'random' | one of VECTOR_KINDS
    families: int | None = None  # span: how many (None: all)
    levels: int | None = None  # span: how many (None: all)
    seed: int = 0  # random: the draw's seed

    @property
    def needs_vectors(self) -> bool:
        return self.kind in VECTOR_KINDS


@dataclass(frozen=True)
class DrawnSet:
    name: str
    design: Design
    members: np.ndarray  # (set_size,) int64 pool rows, ascending
    details: dict = field(default_factory=dict)  # which families/levels, clusters, ...


def _count(text: str, what: str, spec: str, key: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{key}: {spec!r}: the number of {what} must be a positive integer or 'all'; forms: {_FORMS}")
    return int(text)


def parse_designs(specs: Sequence[str], key: str = "study.designs") -> list[Design]:
    """Designs from their texts; errors name `key`, the text and the valid forms."""
    designs = []
    for spec in specs:
        text = spec.strip().lower()
        if text.startswith("span:"):
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError(f"{key}: {spec!r}: write span:F:L, e.g. span:2:1 (2 families, 1 level each)")
            designs.append(Design(text, "span", _count(parts[1], "families", spec, key),
                                  _count(parts[2], "levels", spec, key)))
        elif re.fullmatch(r"random(:\d+)?", text):
            designs.append(Design(text, "random", seed=int(text.split(":")[1]) if ":" in text else 0))
        elif text in VECTOR_KINDS:
            designs.append(Design(text, text))
        else:
            raise ValueError(f"{key}: unknown design {spec!r}; forms: {_FORMS}")
    names = [d.spec for d in designs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{key}: {twice} appear more than once; each design names one set (use random:1, random:2 "
                         "for several random draws)")
    return designs


def _rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng([seed, *parts])


def _label_order(labels: Sequence[Hashable], seed: int, salt: int) -> dict[Hashable, int]:
    """A seeded tie-break rank for each distinct label."""
    distinct = sorted(set(labels), key=str)
    perm = _rng(seed, salt).permutation(len(distinct))
    return {label: int(perm[i]) for i, label in enumerate(distinct)}


def _span(design: Design, index: int, free: np.ndarray, families: np.ndarray, levels: np.ndarray,
          set_size: int, seed: int) -> tuple[np.ndarray, dict]:
    """One span draw from the free rows (boolean mask over the pool)."""
    all_families = sorted(set(families.tolist()), key=str)
    all_levels = sorted(set(levels.tolist()))
    n_fam = len(all_families) if design.families is None else design.families
    n_lvl = len(all_levels) if design.levels is None else design.levels
    if n_fam > len(all_families) or n_lvl > len(all_levels):
        raise ValueError(f"study.designs: {design.spec!r} asks for {n_fam} families x {n_lvl} levels, but the pool "
                         f"has {len(all_families)} families {all_families} and {len(all_levels)} levels "
                         f"{all_levels}: lower the counts or add families/levels to the pool")
    pairs = n_fam * n_lvl
    if pairs > set_size:
        raise ValueError(f"study.designs: {design.spec!r} spreads study.set_size={set_size} over {pairs} "
                         f"(family, level) pairs, fewer than one sample each: raise set_size or span fewer pairs")
    left = {(f, lv): int((free & (families == f) & (levels == lv)).sum()) for f in all_families for lv in all_levels}
    tie_f = _label_order(all_families, seed, 11)
    fam_left = {f: sum(left[(f, lv)] for lv in all_levels) for f in all_families}
    chosen_f = sorted(all_families, key=lambda f: (-fam_left[f], tie_f[f]))[:n_fam]
    lvl_left = {lv: min(left[(f, lv)] for f in chosen_f) for lv in all_levels}
    chosen_l = sorted(all_levels, key=lambda lv: (-lvl_left[lv], lv))[:n_lvl]
    slices = sorted(((f, lv) for f in chosen_f for lv in chosen_l), key=lambda p: (-left[p], tie_f[p[0]], p[1]))
    quotas = [set_size // pairs + (1 if i < set_size % pairs else 0) for i in range(pairs)]
    rng = _rng(seed, 21, index)
    picked = []
    for (f, lv), quota in zip(slices, quotas):
        rows = np.flatnonzero(free & (families == f) & (levels == lv))
        if rows.size < quota:
            raise PoolTooSmall(f"design {design.spec!r} needs {quota} samples of ({f}, level {lv}) but only "
                               f"{rows.size} are left")
        picked.append(rng.choice(rows, size=quota, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64), {"families": list(chosen_f), "levels": list(chosen_l)}


def _order(designs: Sequence[Design], n_families: int, n_levels: int) -> list[int]:
    """Drawing order: span designs narrowest first, then random, then the gradient designs."""
    def key(i: int):
        d = designs[i]
        if d.kind == "span":
            return (0, (d.families or n_families) * (d.levels or n_levels), i)
        return (1 if d.kind == "random" else 2, 0, i)
    return sorted(range(len(designs)), key=key)


def _too_small(message: str, pool_size: int, drawn: Sequence[DrawnSet], fix: str) -> PoolTooSmall:
    before = f" after the sets drawn before it ({', '.join(d.name for d in drawn)})" if drawn else ""
    return PoolTooSmall(f"{message}{before}; the pool holds {pool_size} samples: {fix}")


def draw_label_sets(designs: Sequence[Design], families: Sequence[Hashable | None], levels: Sequence[int | None],
                    set_size: int, *, disjoint: bool, seed: int,
                    fix: str = "raise study.pool_size or lower study.set_size") -> list[DrawnSet]:
    """Draw the span and random sets; check that the gradient designs will find enough candidates.

    families/levels: one per pool row (None: the pool has no such label; span designs then
    fail with a clear error). `fix` ends a `PoolTooSmall` message.
    """
    if set_size < 2:
        raise ValueError(f"study.set_size={set_size}: a set needs at least 2 samples for its diversity to be measured")
    n = len(families)
    if len(levels) != n:
        raise ValueError(f"{n} family labels but {len(levels)} level labels: one of each per pool row")
    spans = [d for d in designs if d.kind == "span"]
    if spans and any(f is None for f in families):
        missing = sum(f is None for f in families)
        raise ValueError(f"study.designs {[d.spec for d in spans]} draw by family, but {missing} of {n} pool samples "
                         "have no family (category): map one with study.fields (e.g. category=topic), or use random, "
                         "cluster-balanced, greedy and single-cluster designs only")
    fam = np.array(["" if f is None else str(f) for f in families], dtype=object)
    lvl = np.array([0 if v is None else int(v) for v in levels], dtype=np.int64)
    free = np.ones(n, dtype=bool)
    drawn: list[DrawnSet] = []
    n_fam, n_lvl = len(set(fam.tolist())), len(set(lvl.tolist()))
    for i in _order(designs, n_fam, n_lvl):
        d = designs[i]
        if d.needs_vectors:
            continue
        mask = free if disjoint else np.ones(n, dtype=bool)
        if d.kind == "span":
            try:
                members, details = _span(d, i, mask, fam, lvl, set_size, seed)
            except PoolTooSmall as exc:
                raise _too_small(str(exc), n, drawn if disjoint else [], fix) from None
        else:
            rows = np.flatnonzero(mask)
            if rows.size < set_size:
                raise _too_small(f"design {d.spec!r} needs {set_size} samples but only {rows.size} are left", n,
                                 drawn if disjoint else [], fix)
            members = np.sort(_rng(seed, 31, d.seed).choice(rows, size=set_size, replace=False)).astype(np.int64)
            details = {"seed": d.seed}
        drawn.append(DrawnSet(d.spec, d, members, details))
        if disjoint:
            free[members] = False
    vector_designs = [d for d in designs if d.needs_vectors]
    needed = set_size * (len(vector_designs) if disjoint else min(1, len(vector_designs)))
    if int(free.sum()) < needed:
        raise _too_small(f"designs {[d.spec for d in vector_designs]} need {needed} samples but only "
                         f"{int(free.sum())} are left", n, drawn, fix)
    return drawn


def _single_cluster(vectors: np.ndarray, set_size: int, seed: int, n_clusters: int) -> tuple[np.ndarray, dict]:
    from prismatic_assets.core.selection import cluster_in_batches

    clustering = cluster_in_batches(vectors, n_clusters, seed=seed)
    largest = int(np.argmax(clustering.sizes))
    similarity = np.asarray(vectors, dtype=np.float32) @ clustering.centroids[largest]  # (n,)
    nearest = np.argsort(-similarity, kind="stable")[:set_size]
    return nearest.astype(np.int64), {"n_clusters": n_clusters, "cluster": largest,
                                      "cluster_size": int(clustering.sizes[largest]),
                                      "min_similarity": float(similarity[nearest].min())}


def draw_vector_sets(designs: Sequence[Design], drawn: Sequence[DrawnSet], pool_size: int,
                     vectors_of: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], set_size: int, *,
                     disjoint: bool, seed: int,
                     n_clusters: int | None = None) -> list[DrawnSet]:
    """Draw the gradient designs after `draw_label_sets`; return every set in design order.

    vectors_of(rows) -> (kept, vectors): the rows that have a valid gradient vector and their
    (len(kept), d) unit vectors; a row without one cannot be picked by a gradient design.
    n_clusters: K of the clusterings (None: about sqrt of the candidates, at least 2).
    """
    from prismatic_assets.core.selection import select_cluster_balanced, select_greedy

    by_name = {s.name: s for s in drawn}
    free = np.ones(pool_size, dtype=bool)
    if disjoint:
        for s in drawn:
            free[s.members] = False
    for d in designs:
        if not d.needs_vectors:
            continue
        rows, vectors = vectors_of(np.flatnonzero(free))  # (m,), (m, d)
        if rows.size < set_size:
            raise PoolTooSmall(f"design {d.spec!r} needs {set_size} samples with a gradient vector but only "
                               f"{rows.size} are left")
        k = n_clusters or max(2, round(math.sqrt(rows.size)))
        k = min(k, rows.size)
        if d.kind == "cluster-balanced":
            chosen = select_cluster_balanced(vectors, set_size, seed=seed, n_clusters=k)
            assert chosen.quotas is not None  # set by every cluster-balanced selection
            local, details = chosen.indices, {"n_clusters": k, "quotas": chosen.quotas.tolist()}
        elif d.kind == "greedy":
            chosen = select_greedy(vectors, set_size, seed=seed)
            local, details = chosen.indices, {"alpha": chosen.params.get("alpha")}
        else:
            local, details = _single_cluster(vectors, set_size, seed, k)
        members = np.sort(rows[local]).astype(np.int64)
        by_name[d.spec] = DrawnSet(d.spec, d, members, details)
        if disjoint:
            free[members] = False
    return [by_name[d.spec] for d in designs]
