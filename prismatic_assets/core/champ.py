"""The CHAMP seed problems: 270 competition problems with worked solutions, from `champ-dataset`.

`load_champ` reads them from the installed PyPI package (the local profile's seed data),
through the same row validation as every other source (`records.RowCollector`). Nothing is
downloaded.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from prismatic_assets.core.records import FieldMap, LoadError, LoadResult, RowCollector

CHAMP_SOURCE = "champ"
#: CHAMP problem counts per category in champ-dataset 1.0.0 (v0.json).
CHAMP_CATEGORIES = {
    "Combinatorics": 40,
    "Inequality": 50,
    "Number-Theory": 80,
    "Polynomial": 50,
    "Sequence": 50,
}
_CHAMP_FILE = ("champ_dataset", "dataset_files/v0.json")
_CHAMP_PIN = "champ-dataset==1.0.0"

def champ_file_path() -> Path:
    """Path of CHAMP's v0.json inside the installed `champ-dataset` wheel (not imported)."""
    package, relative = _CHAMP_FILE
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the CHAMP seed data is missing: install it with `pip install {_CHAMP_PIN}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: reinstall with `pip install --force-reinstall {_CHAMP_PIN}`"
        )
    return path


@lru_cache(maxsize=1)
def _champ_rows(path: str) -> tuple[tuple[str, str | None, str | None, Any, Any], ...]:
    """(identifier, prompt, response, answer, category) per problem, in file order.

    v0.json is 72 MB (mostly model transcripts), so the few fields we use are cached.
    """
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    problems = data.get("problems") if isinstance(data, dict) else None
    if not isinstance(problems, dict):
        raise LoadError(f"CHAMP file {path} has no 'problems' object: reinstall {_CHAMP_PIN}")
    rows = []
    for key, p in problems.items():
        if not isinstance(p, dict):
            raise LoadError(f"CHAMP file {path}: problem {key!r} is not an object: "
                            f"reinstall {_CHAMP_PIN}")
        steps = (p.get("solution") or {}).get("steps")
        response = None
        if isinstance(steps, list) and steps and all(
                isinstance(s, dict) and isinstance(s.get("_text"), str) for s in steps):
            response = "\n".join(s["_text"] for s in steps)
        rows.append((str(p.get("identifier", key)), p.get("_text"), response,
                     p.get("_answer"), p.get("category")))
    return tuple(rows)


def load_champ(limit: int | None = None, categories: Sequence[str] | None = None, *,
               max_chars: int = 100_000) -> LoadResult:
    """The CHAMP problems from `champ-dataset`, in the file's (natural-sort) order.

    prompt = the problem text; response = the solution steps joined by newlines; answer =
    the free-form final answer, exactly as written (wrap it in ``\\boxed{}`` to verify);
    category = one of `CHAMP_CATEGORIES`; sample_id = source_ref = ``champ:<identifier>``.
    `categories` keeps only those categories (case-insensitive); `limit` keeps the first
    `limit` problems after that filter. `max_chars` applies as for files (the longest CHAMP
    text has 1,593 characters).
    """
    path = champ_file_path()
    wanted: set[str] | None = None
    if categories is not None:
        if isinstance(categories, str):
            categories = [categories]
        by_lower = {c.lower(): c for c in CHAMP_CATEGORIES}
        unknown = [c for c in categories if c.lower() not in by_lower]
        if unknown:
            raise ValueError(f"unknown CHAMP categories {unknown}: choose from "
                             f"{', '.join(CHAMP_CATEGORIES)}")
        wanted = {by_lower[c.lower()] for c in categories}
        if not wanted:
            raise ValueError("categories is empty: pass None for all CHAMP categories")
    collector = RowCollector(source=CHAMP_SOURCE, origin=f"CHAMP file {path}",
                           ref_prefix=CHAMP_SOURCE, fields=_CHAMP_FIELDS,
                           max_chars=max_chars, limit=limit, row_word="problem")
    rows = [r for r in _champ_rows(str(path)) if wanted is None or r[4] in wanted]
    more = False
    for number, (ident, prompt, response, answer, category) in enumerate(rows, 1):
        if collector.full:
            more = True
            break
        row = {"id": ident, "prompt": prompt, "response": response, "answer": answer,
               "category": category}
        collector.add(number, row, ref=f"{CHAMP_SOURCE}:{ident}")
    return collector.finish(more_rows=more)


_CHAMP_FIELDS = FieldMap(prompt="prompt", response="response", answer="answer",
                         category="category", id="id")
