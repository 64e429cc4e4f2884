"""The sample record's two hashes, against hashes computed here from their definitions."""

from __future__ import annotations

import hashlib

import pytest

from prismatic_assets.core.samples import Sample, content_hash, dedup_key, normalize_text, problem_key


def _framed(*parts: str) -> str:
    """sha256 over each part as 8 little-endian length bytes then its UTF-8 bytes."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


@pytest.mark.parametrize("text, folded", [
    ("  What IS  2+2?\n", "what is 2+2?"),
    ("ﬁnd x\u00a0now", "find x now"),  # NFKC: the ligature and the no-break space fold
    ("a\t\tb\r\nc", "a b c"),
    ("", ""),
])
def test_normalize_text_folds_unicode_case_and_whitespace(text, folded):
    assert normalize_text(text) == folded


def test_hashes_are_their_definitions():
    prompt, response = "Find  X.", "It is 4."
    assert content_hash(prompt, response) == _framed(prompt, response)
    assert dedup_key(prompt, response) == _framed("find x.", "it is 4.")
    assert problem_key(prompt) == _framed("find x.")
    sample = Sample("s", prompt, response)
    assert (sample.content_hash, sample.dedup_key) == (content_hash(prompt, response), dedup_key(prompt, response))
    # The exact text keys the vector cache; the normalized text finds duplicates.
    assert content_hash("find x.", response) != content_hash(prompt, response)
    assert dedup_key(" FIND x. ", response) == dedup_key(prompt, response)
    assert content_hash("ab", "c") != content_hash("a", "bc") and dedup_key("ab", "c") != dedup_key("a", "bc")
    assert content_hash("é", "") == _framed("é", "")  # lengths count UTF-8 bytes, not characters
