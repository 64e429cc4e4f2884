"""Load prompt/response records into validated `Sample`s from a spec string.

`load_samples("champ" | "hf:owner/name[:split]" | PATH)` dispatches to the loader of that
source: `champ.load_champ` (the CHAMP problems shipped in `champ-dataset`),
`record_files.load_hf_dataset` or `record_files.load_records_file` (JSON Lines, JSON,
Parquet). Every loader validates rows the same way (`records.RowCollector`: the rules, the
rejection kinds, `LoadError`), and `holdout.split_holdout` splits the result into a kept and
a held-out part.

What it does not: download anything at import, store samples (the store does), or judge
answer correctness (`answers.py` does).
"""

from __future__ import annotations

from typing import Any

from prismatic_assets.core.champ import CHAMP_SOURCE, load_champ
from prismatic_assets.core.record_files import load_hf_dataset, load_records_file
from prismatic_assets.core.records import FieldMap, LoadResult


def load_samples(spec: str, fields: FieldMap | None = None, limit: int | None = None,
                 **kw: Any) -> LoadResult:
    """Load samples named by `spec`.

    - ``"champ"``: `load_champ` (keywords: ``categories``, ``max_chars``; `fields` does not
      apply);
    - ``"hf:owner/name"`` or ``"hf:owner/name:split"``: `load_hf_dataset`;
    - anything else is a file path: `load_records_file`.
    """
    if spec == CHAMP_SOURCE:
        if fields is not None:
            raise ValueError("'champ' has a fixed structure: drop the fields mapping (--fields)")
        return load_champ(limit=limit, **kw)
    if spec.startswith("hf:"):
        name, sep, split = spec[3:].partition(":")
        if not name or (sep and not split):
            raise ValueError(f"dataset spec {spec!r}: write hf:owner/name or hf:owner/name:split")
        return load_hf_dataset(name, split or "train", fields or FieldMap(), limit=limit, **kw)
    return load_records_file(spec, fields or FieldMap(), limit=limit, **kw)
