"""Records from files (JSON Lines, a JSON array, Parquet) and from Hugging Face datasets.

`load_records_file` reads ``.jsonl``, ``.json`` (JSON Lines or one top-level array) and
``.parquet``; `load_hf_dataset` reads a dataset split through the optional `datasets`
library. Every row goes through `records.RowCollector`. Whitespace-only lines in JSON Lines
are not rows: they are skipped and counted in `LoadResult.blank_lines`; line numbers stay
physical (1-based) lines of the file. For a JSON array and for Parquet, ``line`` is the
1-based row number. Problems with a whole input raise: a missing file
(`FileNotFoundError`), an unsupported extension, an unreadable Parquet or JSON array, no
rows (`LoadError`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prismatic_assets.core.records import FieldMap, LoadError, LoadResult, RowCollector, mapping_hint

#: File name endings `load_records_file` reads.
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet")

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
    collector = RowCollector(source=source if source is not None else path.stem, origin=origin,
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


def _read_jsonl_lines(lines: Iterable[bytes], collector: RowCollector) -> bool:
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


def _read_json(path: Path, collector: RowCollector) -> bool:
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


def _read_parquet(path: Path, collector: RowCollector) -> bool:
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
            f"would be rejected (missing_field).\n" + mapping_hint(columns, fields)
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
    collector = RowCollector(source=source, origin=origin, ref_prefix=source, fields=fields,
                           max_chars=max_chars, limit=limit, row_word="row")
    dataset = datasets.load_dataset(name, config, split=split, **kw)
    columns = getattr(dataset, "column_names", None)
    if columns:
        missing = [f"{n}={k}" for n, k in fields.items()
                   if n in ("prompt", "response") and k not in columns]
        if missing:
            raise LoadError(f"{origin}: no column for {', '.join(missing)}, so every row would "
                            f"be rejected (missing_field).\n" + mapping_hint(list(columns), fields))
    more = False
    for number, row in enumerate(dataset, 1):
        if collector.full:
            more = True
            break
        collector.add(number, row)
    return collector.finish(more_rows=more)
