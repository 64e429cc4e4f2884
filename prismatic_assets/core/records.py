"""Validated records: the field map, the row rules, and the collector every loader feeds.

A loader (`champ.py`, `record_files.py`) reads rows from its source and hands each to a
`RowCollector`, so the rules are identical for every source:
- Texts are kept exactly (no stripping): the gradient depends on every character.
- Text fields must be strings; numbers and lists are rejected, not coerced. Two exceptions:
  an int/float/Decimal answer is a legitimately numeric answer and becomes its string
  (an integral float such as ``3.0`` becomes ``"3"``: Parquet turns int columns with nulls
  into floats); an int id becomes its string.
- A configured optional key (answer, category, id) that is absent or null in a row gives
  None; a required key (prompt, response) that is absent or null is a rejection.
- A bad row becomes a `Rejection` whose reason reads ``"<kind>: <detail and fix>"`` (kinds
  in `REJECTION_KINDS`); nothing is dropped silently: ``n_loaded + n_rejected == rows
  read``. Rows whose normalized prompt and response repeat an earlier row (`dedup_key`) are
  rejections of kind ``duplicate`` with ``duplicate_of`` set.
- ``limit`` caps the number of *loaded* samples (`LoadResult.truncated`).
- An input where every row is rejected raises `LoadError` (a `ValueError`): the message
  shows the first reasons and, for a field-mapping mistake, the keys present and a
  ``--fields`` mapping to try (`mapping_hint`).

This module reads no source and stores nothing.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prismatic_assets.core.samples import Rejection, Sample, dedup_key

#: The kind (text before the first ':') of every rejection reason the loaders write.
REJECTION_KINDS = (
    "invalid_utf8",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "empty_text",
    "too_long",
    "duplicate",
    "duplicate_id",
)

#: Rejection.raw keeps at most this many characters of the offending row.
MAX_RAW_CHARS = 2000

_REASONS_SHOWN = 5  # first reasons quoted when a whole input is rejected
_KEYS_SCANNED = 1000  # object rows scanned for the "keys present" hint

# Common key names, best guess first, for the --fields suggestion.
_KEY_GUESSES = {
    "prompt": ("prompt", "question", "problem", "query", "instruction", "input", "premise"),
    "response": ("response", "solution", "completion", "output", "generated_solution",
                 "reasoning", "rationale", "answer"),
    "answer": ("answer", "final_answer", "final", "expected_answer", "target", "label"),
}


class LoadError(ValueError):
    """A whole input cannot be loaded; the message names the input and the fix."""


def reason_kind(reason: str) -> str:
    """The kind of a rejection reason: the text before the first ':'."""
    return reason.partition(":")[0].strip()


# --------------------------------------------------------------------------- field map


@dataclass(frozen=True)
class FieldMap:
    """Which record keys hold the prompt, response, answer, category and id.

    Optional keys (answer, category, id) may be None (not mapped); a mapped optional key
    that is absent in a row gives None for that row.
    """

    prompt: str = "prompt"
    response: str = "response"
    answer: str | None = "answer"
    category: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "response"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"FieldMap.{name} must name a record key, got {value!r}")
        used: dict[str, str] = {}
        for name, key in self.items():
            if key is None:
                continue
            if not isinstance(key, str) or not key:
                raise ValueError(f"FieldMap.{name} must be a non-empty key or None, got {key!r}")
            if key in used:
                raise ValueError(
                    f"FieldMap maps both {used[key]} and {name} to key {key!r}: "
                    f"give each its own key, or unset {name} (--fields {name}=)"
                )
            used[key] = name

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order: prompt, response, answer, category, id."""
        return tuple(f.name for f in dataclasses.fields(cls))

    def items(self) -> list[tuple[str, str | None]]:
        """(field name, record key) pairs in field order."""
        return [(name, getattr(self, name)) for name in self.names()]

    @classmethod
    def parse(cls, text: str) -> FieldMap:
        """Parse a CLI mapping such as ``"prompt=question,response=solution,answer=final"``.

        Unnamed fields keep their defaults; an empty value unsets an optional field
        (``answer=`` means the records carry no answer).
        """
        names = cls.names()
        values: dict[str, str | None] = {}
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, key = part.partition("=")
            name, key = name.strip(), key.strip()
            if not sep:
                raise ValueError(
                    f"--fields {text!r}: {part!r} is not NAME=KEY; "
                    f"write e.g. 'prompt=question,response=solution'"
                )
            if name not in names:
                raise ValueError(
                    f"--fields {text!r}: unknown field {name!r}; the fields are {', '.join(names)}"
                )
            if name in values:
                raise ValueError(f"--fields {text!r}: field {name!r} is given twice")
            if not key:
                if name in ("prompt", "response"):
                    raise ValueError(f"--fields {text!r}: {name} is required and needs a key")
                values[name] = None
            else:
                values[name] = key
        return cls(**values)  # type: ignore[arg-type]

    def to_spec(self) -> str:
        """The inverse of `parse`: ``"prompt=prompt,response=response,answer=answer"``."""
        return ",".join(f"{name}={key or ''}" for name, key in self.items()
                        if key is not None or name == "answer")


# --------------------------------------------------------------------------- result


@dataclass
class LoadResult:
    """The samples loaded from one input, and every row that was not loaded, with why."""

    samples: list[Sample]
    rejections: list[Rejection]
    source: str
    blank_lines: int = 0  # whitespace-only JSON Lines lines: skipped, not rows
    truncated: bool = False  # reading stopped at `limit` samples; later rows were not read

    @property
    def n_loaded(self) -> int:
        return len(self.samples)

    @property
    def n_rejected(self) -> int:
        return len(self.rejections)

    @property
    def n_duplicates(self) -> int:
        return sum(1 for r in self.rejections if reason_kind(r.reason) == "duplicate")

    def reasons(self) -> Counter[str]:
        """How many rejections of each kind."""
        return Counter(reason_kind(r.reason) for r in self.rejections)

    def summary(self) -> str:
        """One line: ``"seeds: 98 loaded, 3 rejected (duplicate 2, missing_field 1)"``."""
        text = f"{self.source}: {self.n_loaded} loaded, {self.n_rejected} rejected"
        if self.rejections:
            text += " (" + ", ".join(f"{k} {n}" for k, n in self.reasons().most_common()) + ")"
        if self.blank_lines:
            text += f", {self.blank_lines} blank lines skipped"
        if self.truncated:
            text += ", stopped at the limit"
        return text


# --------------------------------------------------------------------------- validation


def _truncate_raw(raw: str) -> str:
    if len(raw) <= MAX_RAW_CHARS:
        return raw
    return raw[:MAX_RAW_CHARS] + f"...[{len(raw) - MAX_RAW_CHARS} more characters]"


def _raw_of(row: Any) -> str:
    try:
        return json.dumps(row, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(row)


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "a boolean", int: "a number",
            float: "a number", bytes: "bytes"}.get(type(value), type(value).__name__)


def _numeric_answer(value: Any) -> str | None:
    """A number's text, or None when `value` is not a usable number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, decimal.Decimal):
        return str(value) if value.is_finite() else None
    return None


def _check_text(name: str, key: str, value: Any, max_chars: int) -> tuple[str | None, str | None]:
    """(text, None) for a valid value of field `name`, else (None, reason)."""
    if not isinstance(value, str):
        if name == "answer":
            number = _numeric_answer(value)
            if number is not None:
                return number, None
            expected = "text or a finite number"
        elif name == "id" and isinstance(value, int) and not isinstance(value, bool):
            return str(value), None
        else:
            expected = "text"
        return None, (
            f"wrong_type: {key!r} ({name}) is {_type_name(value)} ({_short(value)}), expected "
            f"{expected}; fix the value in the data (texts are not coerced)"
        )
    if not value.strip():
        return None, (
            f"empty_text: {key!r} ({name}) is empty or only whitespace; "
            f"fill it or drop the row"
        )
    if len(value) > max_chars:
        return None, (
            f"too_long: {key!r} ({name}) has {len(value)} characters, more than "
            f"max_chars={max_chars}; raise max_chars or drop the row"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = value[err.start]
        return None, (
            f"invalid_utf8: {key!r} ({name}) holds a lone surrogate U+{ord(bad):04X} at "
            f"character {err.start}, which UTF-8 cannot encode (half of a \\u escape pair); "
            f"fix the escape in the data"
        )
    return value, None


def _short(value: Any, limit: int = 40) -> str:
    text = _raw_of(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _validate_row(row: Any, fields: FieldMap,
                  max_chars: int) -> tuple[dict[str, str | None] | None, str | None]:
    """Map one record through `fields`: (values by field name, None) or (None, reason)."""
    if not isinstance(row, dict):
        hint = "each row must be a JSON object such as {\"prompt\": ..., \"response\": ...}"
        if isinstance(row, list):
            hint += " (a whole JSON array belongs in a .json file, not a .jsonl file)"
        return None, f"not_an_object: the row is {_type_name(row)}, not an object; {hint}"
    values: dict[str, str | None] = {}
    for name, key in fields.items():
        if key is None:
            values[name] = None
            continue
        required = name in ("prompt", "response")
        if key not in row or row[key] is None:
            if not required:
                values[name] = None
                continue
            if key in row:
                return None, f"missing_field: {key!r} ({name}) is null; {name} is required"
            present = ", ".join(sorted(map(str, row))) or "none"
            return None, (
                f"missing_field: no key {key!r} for {name} (keys present: {present}); "
                f"map the right key with --fields {name}=<key>"
            )
        text, reason = _check_text(name, key, row[key], max_chars)
        if reason is not None:
            return None, reason
        values[name] = text
    return values, None


class RowCollector:
    """Validates rows one by one, dedups them and turns them into samples or rejections.

    One instance per input. `origin` names the input in error messages ("seed file
    data/x.jsonl"); `ref_prefix` starts every `source_ref` ("data/x.jsonl" -> "data/x.jsonl:17").
    """

    def __init__(self, *, source: str, origin: str, ref_prefix: str, fields: FieldMap,
                 max_chars: int, limit: int | None, row_word: str = "line") -> None:
        if not source:
            raise ValueError(f"{origin}: source must be a non-empty name")
        self.source = source
        self.origin = origin
        self.ref_prefix = ref_prefix
        self.fields = fields
        self.max_chars = _check_positive("max_chars", max_chars)
        self.limit = None if limit is None else _check_positive("limit", limit)
        self.row_word = row_word
        self.samples: list[Sample] = []
        self.rejections: list[Rejection] = []
        self.blank_lines = 0
        self._by_dedup: dict[str, Sample] = {}
        self._by_id: dict[str, str] = {}  # sample_id -> source_ref of its sample
        self._keys: Counter[str] = Counter()
        self._object_rows = 0

    @property
    def full(self) -> bool:
        return self.limit is not None and len(self.samples) >= self.limit

    def _ref(self, line: int | None, ref: str | None) -> str:
        return ref if ref is not None else f"{self.ref_prefix}:{line}"

    def reject(self, line: int | None, reason: str, raw: str, *, ref: str | None = None,
               duplicate_of: str | None = None) -> None:
        self.rejections.append(Rejection(
            source=self.source, source_ref=self._ref(line, ref), line=line, reason=reason,
            raw=_truncate_raw(raw), duplicate_of=duplicate_of,
        ))

    def add(self, line: int, row: Any, raw: str | None = None, *, ref: str | None = None) -> None:
        """Validate one row; `raw` is its original text (a JSON dump of `row` when None)."""
        if raw is None:
            raw = _raw_of(row)
        if isinstance(row, dict) and self._object_rows < _KEYS_SCANNED:
            self._object_rows += 1
            self._keys.update(str(k) for k in row)
        values, reason = _validate_row(row, self.fields, self.max_chars)
        if reason is not None:
            self.reject(line, reason, raw, ref=ref)
            return
        assert values is not None
        ref = self._ref(line, ref)
        sample_id = f"{self.source}:{values['id'] if values['id'] is not None else line}"
        prompt, response = values["prompt"], values["response"]
        assert prompt is not None and response is not None
        key = dedup_key(prompt, response)
        first = self._by_dedup.get(key)
        if first is not None:
            self.reject(line, (
                f"duplicate: same prompt and response as {first.source_ref} ({first.sample_id}) "
                f"up to case, Unicode form and whitespace; only the first is kept"
            ), raw, ref=ref, duplicate_of=first.sample_id)
            return
        if sample_id in self._by_id:
            self.reject(line, (
                f"duplicate_id: sample id {sample_id!r} is already used by "
                f"{self._by_id[sample_id]}; ids must be unique (or unset the id mapping with "
                f"--fields id= to number rows by {self.row_word})"
            ), raw, ref=ref)
            return
        sample = Sample(
            sample_id=sample_id, prompt=prompt, response=response, answer=values["answer"],
            category=values["category"], source=self.source, source_ref=ref,
        )
        self._by_dedup[key] = sample
        self._by_id[sample_id] = ref
        self.samples.append(sample)

    def finish(self, *, more_rows: bool = False) -> LoadResult:
        """The result; raises `LoadError` when there were no rows or every row was rejected.

        `more_rows`: the input had rows after the limit was reached.
        """
        if not self.samples and not self.rejections:
            raise LoadError(
                f"{self.origin} has no rows (it is empty or holds only blank lines): "
                f"point it at a file with one record per line, a JSON array or a Parquet table"
            )
        if not self.samples:
            raise LoadError(self._all_rejected_message())
        return LoadResult(samples=self.samples, rejections=self.rejections, source=self.source,
                          blank_lines=self.blank_lines, truncated=more_rows)

    def _all_rejected_message(self) -> str:
        n = len(self.rejections)
        kinds = Counter(reason_kind(r.reason) for r in self.rejections)
        lines = [f"{self.origin}: all {n} rows were rejected, nothing was loaded "
                 f"({', '.join(f'{k} {c}' for k, c in kinds.most_common())}). First reasons:"]
        for r in self.rejections[:_REASONS_SHOWN]:
            lines.append(f"  {r.source_ref}: {r.reason}")
        if kinds.keys() & {"missing_field", "wrong_type", "empty_text"}:  # a mapping mistake?
            lines.append(mapping_hint(sorted(self._keys), self.fields))
        return "\n".join(lines)


def mapping_hint(keys: Sequence[str], fields: FieldMap) -> str:
    """A hint for a likely field-mapping mistake: the keys present and a --fields to try."""
    present = ", ".join(keys) if keys else "(no object rows)"
    text = (f"Keys present in the rows: {present}. The mapping in use is "
            f"--fields {fields.to_spec()}.")
    if not keys:
        return text
    suggestion: dict[str, str | None] = {}
    taken: set[str] = set()
    for name in ("prompt", "response", "answer"):
        guess = next((k for k in _KEY_GUESSES[name] if k in keys and k not in taken), None)
        if guess is not None:
            suggestion[name] = guess
            taken.add(guess)
    if "answer" not in suggestion and FieldMap().answer in taken:
        suggestion["answer"] = None  # the default answer key now holds the response
    if suggestion == {name: key for name, key in fields.items() if name in suggestion}:
        return text  # the mapping already uses the likely keys
    if "prompt" in suggestion and "response" in suggestion:
        spec = ",".join(f"{n}={k or ''}" for n, k in suggestion.items())
        return text + f" If this is a mapping mistake, try --fields {spec}"
    return text + (" If this is a mapping mistake, name the keys that hold each field: "
                   "--fields prompt=<key>,response=<key>,answer=<key or empty>")


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
