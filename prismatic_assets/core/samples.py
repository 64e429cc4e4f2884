"""The sample record shared by every stage, and the two hashes that identify it.

`content_hash` identifies the exact text (the gradient depends on every character), so it
keys the embedding cache. `dedup_key` identifies normalized text (case, Unicode form and
whitespace folded), so it finds duplicates that differ only in formatting.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Fold Unicode form, case and whitespace: the text two duplicates share."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip().lower()


def _sha256(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))  # length prefix: ("ab","c") != ("a","bc")
        h.update(data)
    return h.hexdigest()


def content_hash(prompt: str, response: str) -> str:
    """Hash of the exact prompt and response text."""
    return _sha256(prompt, response)


def dedup_key(prompt: str, response: str) -> str:
    """Hash of the normalized prompt and response text."""
    return _sha256(normalize_text(prompt), normalize_text(response))


def problem_key(prompt: str) -> str:
    """Hash of the normalized problem alone (a new problem may not repeat a pool problem)."""
    return _sha256(normalize_text(prompt))


@dataclass(frozen=True)
class Sample:
    """One prompt/response pair with where it came from.

    `source_ref` points at the input ("data/x.jsonl:17", "champ:P_Inequality_12") so any
    stored row can be traced back to its file and line.
    """

    sample_id: str
    prompt: str
    response: str
    answer: str | None = None
    category: str | None = None
    source: str = ""
    source_ref: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def content_hash(self) -> str:
        return content_hash(self.prompt, self.response)

    @property
    def dedup_key(self) -> str:
        return dedup_key(self.prompt, self.response)


@dataclass(frozen=True)
class Rejection:
    """An input row that was not loaded, kept with the reason and the raw text."""

    source: str
    source_ref: str
    line: int | None
    reason: str
    raw: str
    duplicate_of: str | None = None
