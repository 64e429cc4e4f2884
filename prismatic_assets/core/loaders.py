"""Load prompt/response records into validated `Sample`s, and split off a held-out set.

What it does:
- `load_champ` reads the 270 CHAMP competition problems with worked solutions that ship in
  the PyPI package `champ-dataset` (the local profile's seed data).
- `load_records_file` reads JSON Lines (``.jsonl``; ``.json`` holding JSON Lines or one
  top-level JSON array) and Parquet files; `load_hf_dataset` reads a Hugging Face dataset
  through the optional `datasets` library; `load_samples` dispatches on a spec string
  (``champ``, ``hf:owner/name[:split]``, or a path).
- Every row goes through the same validation (`_Collector`), so the rules are identical for
  every source. A bad row becomes a `Rejection` whose reason reads ``"<kind>: <detail and
  fix>"`` (kinds in `REJECTION_KINDS`); nothing is dropped silently:
  ``n_loaded + n_rejected == rows read``. Rows whose normalized prompt and response repeat an
  earlier row (`dedup_key`) are rejections of kind ``duplicate`` with ``duplicate_of`` set.
- `split_holdout` splits samples into seed and held-out parts, deterministically and
  independently of input order, stratified by category.

Rules worth knowing:
- Texts are kept exactly (no stripping): the gradient depends on every character.
- Text fields must be strings; numbers and lists are rejected, not coerced. Two exceptions:
  an int/float/Decimal answer is a legitimately numeric answer and becomes its string
  (an integral float such as ``3.0`` becomes ``"3"``: Parquet turns int columns with nulls
  into floats); an int id becomes its string.
- A configured optional key (answer, category, id) that is absent or null in a row gives
  None; a required key (prompt, response) that is absent or null is a rejection.
- Whitespace-only lines in JSON Lines are not rows: they are skipped and counted in
  `LoadResult.blank_lines`; line numbers stay physical (1-based) lines of the file. For a
  JSON array and for Parquet, ``line`` is the 1-based row number.
- ``limit`` caps the number of *loaded* samples; reading stops there
  (`LoadResult.truncated`).

Problems with a whole input raise instead: a missing file (`FileNotFoundError`), an
unsupported extension, an unreadable Parquet or JSON array, no rows, and an input where
every row is rejected (`LoadError`, a `ValueError`; the message shows the first reasons and,
for a field-mapping mistake, the keys present and a ``--fields`` mapping to try).

What it does not: download anything at import, store samples (the store does), or judge
answer correctness (`answers.py` does).
"""

from __future__ import annotations

import dataclasses
import decimal
import hashlib
import importlib.util
import io
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from prismatic_assets.core.samples import Rejection, Sample, dedup_key

__all__ = [
    "CHAMP_CATEGORIES",
    "CHAMP_SOURCE",
    "MAX_RAW_CHARS",
    "REJECTION_KINDS",
    "SUPPORTED_EXTENSIONS",
    "FieldMap",
    "LoadError",
    "LoadResult",
    "champ_file_path",
    "load_champ",
    "load_hf_dataset",
    "load_records_file",
    "load_samples",
    "reason_kind",
    "split_holdout",
]

#: File name endings `load_records_file` reads.
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet")

#: The kind (text before the first ':') of every rejection reason this module writes.
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


class _Collector:
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
            lines.append(_mapping_hint(sorted(self._keys), self.fields))
        return "\n".join(lines)


def _mapping_hint(keys: Sequence[str], fields: FieldMap) -> str:
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


# --------------------------------------------------------------------------- CHAMP


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
    collector = _Collector(source=CHAMP_SOURCE, origin=f"CHAMP file {path}",
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


# --------------------------------------------------------------------------- files


def load_records_file(
    path: str | Path,
    fields: FieldMap = FieldMap(),
    max_chars: int = 100_000,
    source: str | None = None,
    *,
    limit: int | None = None,
) -> LoadResult:
    """Load and validate a ``.jsonl``, ``.json`` or ``.parquet`` file of records.

    `source` (default: the file stem) names the input: sample ids are ``<source>:<id>``
    when `fields.id` is mapped and present, else ``<source>:<line>``; source refs are
    ``<path>:<line>``. See the module docstring for the row rules.
    """
    path = Path(path)
    origin = f"seed file {path}"
    if not path.exists():
        hint = ""
        if not path.is_absolute() and str(path).count("/") == 1 and not path.suffix:
            hint = f"; to load a Hugging Face dataset write hf:{path}"
        raise FileNotFoundError(f"{origin} not found (working directory {Path.cwd()}): "
                                f"check the path{hint}")
    if path.is_dir():
        raise LoadError(f"{origin} is a directory: pass one file ending in "
                        f"{', '.join(SUPPORTED_EXTENSIONS)}")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise LoadError(f"{origin}: unsupported extension {path.suffix or '(none)'!r}; "
                        f"use one of {', '.join(SUPPORTED_EXTENSIONS)} (JSON Lines, a JSON array "
                        f"or Parquet), or rename the file if it holds one of those")
    collector = _Collector(source=source if source is not None else path.stem, origin=origin,
                           ref_prefix=str(path), fields=fields, max_chars=max_chars, limit=limit,
                           row_word="row" if suffix == ".parquet" else "line")
    if suffix == ".parquet":
        more = _read_parquet(path, collector)
    elif suffix == ".json":
        more = _read_json(path, collector)
    else:
        more = _read_jsonl_lines(_iter_file_lines(path), collector)
    return collector.finish(more_rows=more)


def _iter_file_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from f  # binary iteration splits on b"\n" only, as JSON Lines does


def _read_jsonl_lines(lines: Iterable[bytes], collector: _Collector) -> bool:
    """Feed JSON Lines to `collector`; True when rows were left unread at the limit."""
    for number, data in enumerate(lines, 1):
        if number == 1 and data.startswith(b"\xef\xbb\xbf"):
            data = data[3:]  # a UTF-8 byte order mark (Windows editors write one)
        data = data.rstrip(b"\r\n")
        if not data.strip():
            collector.blank_lines += 1
            continue
        if collector.full:
            return True
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            collector.reject(number, (
                f"invalid_utf8: byte 0x{data[err.start]:02x} at byte {err.start + 1} of the line "
                f"is not UTF-8; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ), data.decode("utf-8", errors="replace"))
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            collector.reject(number, (
                f"malformed_json: {err.msg} at column {err.colno}; each line must hold one "
                f"complete JSON object"
            ), text)
            continue
        collector.add(number, row, text)
    return False


def _read_json(path: Path, collector: _Collector) -> bool:
    """A ``.json`` file: one top-level array or object, else JSON Lines."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    head = data.lstrip()[:1]
    if head in (b"[", b"{"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            if head == b"{":
                return _read_jsonl_lines(io.BytesIO(data), collector)
            line = data[: err.start].count(b"\n") + 1
            raise LoadError(f"{collector.origin} line {line}: byte 0x{data[err.start]:02x} is "
                            f"not UTF-8; re-encode the file as UTF-8") from None
        try:
            top = json.loads(text)
        except json.JSONDecodeError as err:
            if head == b"[":
                raise LoadError(
                    f"{collector.origin} line {err.lineno} column {err.colno}: {err.msg}; the "
                    f"file starts a JSON array but is not valid JSON: fix it, or write one "
                    f"object per line (JSON Lines)"
                ) from None
            top = None  # several objects: JSON Lines in a .json file
        if isinstance(top, list):
            collector.row_word = "row"
            for number, row in enumerate(top, 1):
                if collector.full:
                    return True
                collector.add(number, row)
            return False
        if isinstance(top, dict):
            collector.add(1, top, text)
            return False
    return _read_jsonl_lines(io.BytesIO(data), collector)


def _read_parquet(path: Path, collector: _Collector) -> bool:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table_file = pq.ParquetFile(path)
        columns = list(table_file.schema_arrow.names)
        n_rows = table_file.metadata.num_rows
    except (pa.ArrowException, OSError) as err:
        raise LoadError(f"{collector.origin} is not a readable Parquet file ({err}): check that "
                        f"it is Parquet (not renamed CSV/JSON) and not truncated") from None
    if n_rows == 0:
        raise LoadError(f"{collector.origin} has no rows: write at least one record to it")
    fields = collector.fields
    missing = [f"{name}={key}" for name, key in fields.items()
               if name in ("prompt", "response") and key not in columns]
    if missing:
        # Every row would be rejected: say so now instead of reading the whole table.
        raise LoadError(
            f"{collector.origin}: no column for {', '.join(missing)}, so all {n_rows} rows "
            f"would be rejected (missing_field).\n" + _mapping_hint(columns, fields)
        )
    wanted = [key for _, key in fields.items() if key is not None and key in columns]
    row_number = 0
    try:
        for batch in table_file.iter_batches(batch_size=1024, columns=wanted):
            for row in batch.to_pylist():
                row_number += 1
                if collector.full:
                    return True
                collector.add(row_number, row)
    except (pa.ArrowException, OSError) as err:
        raise LoadError(f"{collector.origin}: reading failed after row {row_number} ({err}): "
                        f"the file is damaged; rewrite it") from None
    return False


# --------------------------------------------------------------------------- Hugging Face


def load_hf_dataset(
    name: str,
    split: str = "train",
    fields: FieldMap = FieldMap(),
    *,
    config: str | None = None,
    max_chars: int = 100_000,
    source: str | None = None,
    limit: int | None = None,
    **kw: Any,
) -> LoadResult:
    """Load and validate a Hugging Face dataset split through the optional `datasets` library.

    Rows are validated exactly like file rows; ``line`` is the 1-based row number and the
    default source is ``hf:<name>:<split>``. `config` is the dataset configuration
    (``load_dataset``'s second argument); other keywords go to ``datasets.load_dataset``
    (e.g. ``streaming=True``, ``revision=...``).
    """
    try:
        import datasets  # optional: only this path needs it
    except ImportError:
        raise ImportError(
            f"loading the Hugging Face dataset {name!r} needs the `datasets` library: "
            f"`pip install datasets` (or export the data to .jsonl/.parquet and load the file)"
        ) from None
    if not name:
        raise ValueError("load_hf_dataset: name must be 'owner/name' of a Hugging Face dataset")
    source = source if source is not None else f"hf:{name}:{split}"
    origin = f"Hugging Face dataset {name} (split {split})"
    collector = _Collector(source=source, origin=origin, ref_prefix=source, fields=fields,
                           max_chars=max_chars, limit=limit, row_word="row")
    dataset = datasets.load_dataset(name, config, split=split, **kw)
    columns = getattr(dataset, "column_names", None)
    if columns:
        missing = [f"{n}={k}" for n, k in fields.items()
                   if n in ("prompt", "response") and k not in columns]
        if missing:
            raise LoadError(f"{origin}: no column for {', '.join(missing)}, so every row would "
                            f"be rejected (missing_field).\n" + _mapping_hint(list(columns), fields))
    more = False
    for number, row in enumerate(dataset, 1):
        if collector.full:
            more = True
            break
        collector.add(number, row)
    return collector.finish(more_rows=more)


# --------------------------------------------------------------------------- dispatch


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


# --------------------------------------------------------------------------- hold-out split

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
