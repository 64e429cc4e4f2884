"""Content-derived identifiers: one hash function for every stored id (clusterings, scores, runs)."""

from __future__ import annotations

import hashlib
import json


def digest(payload: object) -> str:
    """A short stable hash of a JSON-able payload (ids of stored clusterings and scores)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]
