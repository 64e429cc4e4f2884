"""Tests of the loaders (core.loaders, records, record_files, champ, holdout): validation tables, mapping,
dedup, CHAMP, splits."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prismatic_assets.core.champ import CHAMP_CATEGORIES, champ_file_path, load_champ
from prismatic_assets.core.holdout import split_holdout
from prismatic_assets.core.loaders import load_samples
from prismatic_assets.core.record_files import SUPPORTED_EXTENSIONS, load_hf_dataset, load_records_file
from prismatic_assets.core.records import MAX_RAW_CHARS, REJECTION_KINDS, FieldMap, LoadError, LoadResult, reason_kind
from prismatic_assets.core.samples import Rejection, Sample

# ----------------------------------------------------------------------------- helpers


def row(i: int, **extra: Any) -> dict[str, Any]:
    """A valid, distinct record."""
    return {"prompt": f"Problem {i}: what is {i} + {i}?", "response": f"{i} + {i} = {2 * i}.",
            "answer": str(2 * i), **extra}


def line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode("utf-8")


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> Path:
    schema = schema or pa.schema([("prompt", pa.string()), ("response", pa.string()),
                                  ("answer", pa.string())])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def kinds(result: LoadResult) -> list[str]:
    return [reason_kind(r.reason) for r in result.rejections]


# ----------------------------------------------------------------------------- FieldMap


@pytest.mark.parametrize("text, expected", [
    ("", FieldMap()),
    ("prompt=question,response=solution,answer=final",
     FieldMap(prompt="question", response="solution", answer="final")),
    (" prompt = q , answer= ", FieldMap(prompt="q", answer=None)),
    ("category=topic,id=uid", FieldMap(category="topic", id="uid")),
    ("response=answer,answer=", FieldMap(response="answer", answer=None)),
])
def test_fieldmap_parse(text: str, expected: FieldMap) -> None:
    assert FieldMap.parse(text) == expected
    assert FieldMap.parse(expected.to_spec()) == expected


@pytest.mark.parametrize("text, message", [
    ("promt=question", r"unknown field 'promt'.*prompt, response, answer, category, id"),
    ("prompt", r"'prompt' is not NAME=KEY"),
    ("prompt=", r"prompt is required"),
    ("prompt=a,prompt=b", r"'prompt' is given twice"),
    ("prompt=text,response=text", r"both prompt and response to key 'text'"),
])
def test_fieldmap_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FieldMap.parse(text)


MAPPING_ROW = {"prompt": "P0", "response": "R0", "answer": "A0",
               "q": "P1", "s": "R1", "a": "A1", "c": "C1", "i": "I1"}


@pytest.mark.parametrize("name, key, attribute, default, mapped", [
    ("prompt", "q", "prompt", "P0", "P1"),
    ("response", "s", "response", "R0", "R1"),
    ("answer", "a", "answer", "A0", "A1"),
    ("answer", None, "answer", "A0", None),
    ("category", "c", "category", None, "C1"),
    ("id", "i", "sample_id", "seeds:1", "seeds:I1"),
])
def test_each_fieldmap_field_changes_the_output(tmp_path: Path, name: str, key: str | None,
                                                attribute: str, default: Any, mapped: Any) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(MAPPING_ROW)])
    plain = load_records_file(path).samples[0]
    custom = load_records_file(path, FieldMap(**{name: key})).samples[0]
    assert getattr(plain, attribute) == default
    assert getattr(custom, attribute) == mapped


def test_mapped_optional_key_absent_in_a_row_is_none(tmp_path: Path) -> None:
    rows = [row(1, topic="algebra", uid="u1"), row(2)]
    path = write_lines(tmp_path / "seeds.jsonl", [line(r) for r in rows])
    result = load_records_file(path, FieldMap(category="topic", id="uid", answer="final"))
    assert [s.category for s in result.samples] == ["algebra", None]
    assert [s.sample_id for s in result.samples] == ["seeds:u1", "seeds:2"]  # id absent: line
    assert [s.answer for s in result.samples] == [None, None]
    assert result.n_rejected == 0


# ----------------------------------------------------------------------------- JSON Lines rows

MAX_CHARS = 200

JSONL_BAD_ROWS = [
    ("truncated object", b'{"prompt": "x", "response": ', "malformed_json"),
    ("single quotes", b"{'prompt': 'x', 'response': 'y'}", "malformed_json"),
    ("two objects on a line", line(row(7)) + line(row(8)), "malformed_json"),
    ("array", b'["x", "y"]', "not_an_object"),
    ("number", b"42", "not_an_object"),
    ("string", b'"just text"', "not_an_object"),
    ("null", b"null", "not_an_object"),
    ("no prompt", line({"response": "r"}), "missing_field"),
    ("no response", line({"prompt": "p"}), "missing_field"),
    ("null prompt", line({"prompt": None, "response": "r"}), "missing_field"),
    ("empty prompt", line({"prompt": "", "response": "r"}), "empty_text"),
    ("whitespace response", line({"prompt": "p", "response": " \n\t "}), "empty_text"),
    ("empty answer", line({"prompt": "p", "response": "r", "answer": ""}), "empty_text"),
    ("number prompt", line({"prompt": 12, "response": "r"}), "wrong_type"),
    ("list response", line({"prompt": "p", "response": ["step 1", "step 2"]}), "wrong_type"),
    ("object prompt", line({"prompt": {"text": "p"}, "response": "r"}), "wrong_type"),
    ("bool response", line({"prompt": "p", "response": True}), "wrong_type"),
    ("list answer", line({"prompt": "p", "response": "r", "answer": [1, 2]}), "wrong_type"),
    ("bool answer", line({"prompt": "p", "response": "r", "answer": False}), "wrong_type"),
    ("NaN answer", b'{"prompt": "p", "response": "r", "answer": NaN}', "wrong_type"),
    ("too long prompt", line({"prompt": "x" * (MAX_CHARS + 1), "response": "r"}), "too_long"),
    ("too long response", line({"prompt": "p", "response": "y" * (MAX_CHARS + 1)}), "too_long"),
    ("latin-1 byte", b'{"prompt": "caf\xe9", "response": "r"}', "invalid_utf8"),
    ("lone surrogate", b'{"prompt": "\\ud800 x", "response": "r"}', "invalid_utf8"),
    ("exact duplicate", line(row(1)), "duplicate"),
]


@pytest.mark.parametrize("bad, kind", [case[1:] for case in JSONL_BAD_ROWS],
                         ids=[case[0] for case in JSONL_BAD_ROWS])
def test_jsonl_bad_row_is_rejected_with_kind_line_and_raw(tmp_path: Path, bad: bytes,
                                                          kind: str) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1)), bad, line(row(2))])
    result = load_records_file(path, max_chars=MAX_CHARS)
    assert result.n_loaded + result.n_rejected == 3
    assert [s.source_ref for s in result.samples] == [f"{path}:1", f"{path}:3"]
    (rejection,) = result.rejections
    assert kind in REJECTION_KINDS
    assert reason_kind(rejection.reason) == kind
    assert rejection.line == 2
    assert rejection.source_ref == f"{path}:2"
    assert rejection.source == "seeds"
    assert rejection.raw == bad.decode("utf-8", errors="replace")
    assert len(rejection.reason) > len(kind) + 10  # a detail and a fix follow the kind
    assert rejection.duplicate_of == ("seeds:1" if kind == "duplicate" else None)


@pytest.mark.parametrize("value, expected", [
    ("42", "42"),
    (42, "42"),
    (-7, "-7"),
    (2.5, "2.5"),
    (3.0, "3"),  # Parquet turns int columns with nulls into floats
    (None, None),
    (" x = 3 ", " x = 3 "),  # answers are kept exactly
    ("\\frac{1}{2}", "\\frac{1}{2}"),
])
def test_answer_values(tmp_path: Path, value: Any, expected: str | None) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1, answer=value))])
    assert load_records_file(path).samples[0].answer == expected


def test_absent_answer_is_none(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line({"prompt": "p", "response": "r"})])
    assert load_records_file(path).samples[0].answer is None


def test_texts_are_kept_exactly(tmp_path: Path) -> None:
    record = {"prompt": "  Solve $x^2 = 4$.\n", "response": "x = ±2\n\n", "answer": "±2"}
    path = write_lines(tmp_path / "seeds.jsonl", [line(record)])
    sample = load_records_file(path).samples[0]
    assert (sample.prompt, sample.response, sample.answer) == (
        record["prompt"], record["response"], record["answer"])


def test_int_ids_become_text(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1, idx=17))])
    assert load_records_file(path, FieldMap(id="idx")).samples[0].sample_id == "seeds:17"


def test_blank_lines_are_skipped_counted_and_keep_line_numbers(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1)), b"", b"  \t", line(row(2))])
    result = load_records_file(path)
    assert result.blank_lines == 2
    assert result.n_loaded == 2 and result.n_rejected == 0
    assert [s.sample_id for s in result.samples] == ["seeds:1", "seeds:4"]
    assert "2 blank lines skipped" in result.summary()


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(row(1)) + b"\r\n" + line(row(2)) + b"\r\n")
    result = load_records_file(path)
    assert result.n_loaded == 2
    assert result.samples[1].response == row(2)["response"]


def test_raw_text_is_truncated(tmp_path: Path) -> None:
    bad = b'{"prompt": "' + b"z" * 5000  # malformed and long
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1)), bad])
    raw = load_records_file(path).rejections[0].raw
    assert raw.startswith(bad[:MAX_RAW_CHARS].decode())
    assert MAX_RAW_CHARS < len(raw) < MAX_RAW_CHARS + 50
    assert "more characters" in raw


# ----------------------------------------------------------------------------- duplicates

BASE = {"prompt": "Find all n such that n^2 = 4.", "response": "n = 2 or n = -2."}


@pytest.mark.parametrize("variant", [
    BASE,
    {"prompt": BASE["prompt"] + "  ", "response": "\n" + BASE["response"]},
    {"prompt": "Find  all n\tsuch that n^2 = 4.", "response": "n = 2 or\nn = -2."},
    {"prompt": BASE["prompt"].upper(), "response": BASE["response"].title()},
    {"prompt": "Find all n such that n^２ = ４.", "response": BASE["response"]},  # fullwidth
], ids=["exact", "outer whitespace", "inner whitespace", "case", "unicode form"])
def test_duplicates_are_rejected_with_duplicate_of(tmp_path: Path, variant: dict) -> None:
    path = write_lines(tmp_path / "seeds.jsonl",
                       [line({**BASE, "uid": "a"}), line(row(1)), line({**variant, "uid": "b"})])
    for fields, first_id in [(FieldMap(), "seeds:1"), (FieldMap(id="uid"), "seeds:a")]:
        result = load_records_file(path, fields)
        assert result.n_loaded == 2 and result.n_duplicates == 1
        (rejection,) = result.rejections
        assert rejection.duplicate_of == first_id
        assert rejection.line == 3
        assert f"{path}:1" in rejection.reason


def test_same_prompt_other_response_is_not_a_duplicate(tmp_path: Path) -> None:
    other = {"prompt": BASE["prompt"], "response": "Since n^2 = 4, n = 2 or n = -2."}
    path = write_lines(tmp_path / "seeds.jsonl", [line(BASE), line(other)])
    assert load_records_file(path).n_loaded == 2


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl",
                       [line(row(1, uid="a")), line(row(2, uid="a")), line(row(3, uid="4")),
                        line(row(4))])  # line 4 has no id: "seeds:4" is taken by uid "4"
    result = load_records_file(path, FieldMap(id="uid"))
    assert [s.sample_id for s in result.samples] == ["seeds:a", "seeds:4"]
    assert kinds(result) == ["duplicate_id", "duplicate_id"]
    assert [r.line for r in result.rejections] == [2, 4]
    assert result.n_duplicates == 0
    assert f"{path}:1" in result.rejections[0].reason


# ----------------------------------------------------------------------------- Parquet

PARQUET_BAD_ROWS = [
    ("null prompt", {"prompt": None, "response": "r", "answer": "1"}, "missing_field"),
    ("null response", {"prompt": "p", "response": None, "answer": "1"}, "missing_field"),
    ("empty prompt", {"prompt": "", "response": "r", "answer": "1"}, "empty_text"),
    ("whitespace response", {"prompt": "p", "response": "   ", "answer": "1"}, "empty_text"),
    ("empty answer", {"prompt": "p", "response": "r", "answer": " "}, "empty_text"),
    ("too long", {"prompt": "p", "response": "y" * (MAX_CHARS + 1), "answer": "1"}, "too_long"),
    ("duplicate", {**row(1), "prompt": row(1)["prompt"].upper() + " "}, "duplicate"),
]


@pytest.mark.parametrize("bad, kind", [case[1:] for case in PARQUET_BAD_ROWS],
                         ids=[case[0] for case in PARQUET_BAD_ROWS])
def test_parquet_bad_row_is_rejected_with_kind_row_and_raw(tmp_path: Path, bad: dict,
                                                           kind: str) -> None:
    path = write_parquet(tmp_path / "seeds.parquet", [row(1), bad, row(2)])
    result = load_records_file(path, max_chars=MAX_CHARS)
    assert result.n_loaded + result.n_rejected == 3
    assert [s.sample_id for s in result.samples] == ["seeds:1", "seeds:3"]
    (rejection,) = result.rejections
    assert reason_kind(rejection.reason) == kind
    assert (rejection.line, rejection.source_ref) == (2, f"{path}:2")
    assert json.loads(rejection.raw) == bad
    assert rejection.duplicate_of == ("seeds:1" if kind == "duplicate" else None)


def test_parquet_numeric_answers_and_selected_columns(tmp_path: Path) -> None:
    schema = pa.schema([("question", pa.string()), ("solution", pa.string()),
                        ("final", pa.float64()), ("big", pa.string())])
    rows = [{"question": "q1", "solution": "s1", "final": 3.0, "big": "x"},
            {"question": "q2", "solution": "s2", "final": None, "big": "x"},
            {"question": "q3", "solution": "s3", "final": 0.25, "big": "x"}]
    path = write_parquet(tmp_path / "data.parquet", rows, schema)
    result = load_records_file(path, FieldMap.parse("prompt=question,response=solution,answer=final"))
    assert [s.answer for s in result.samples] == ["3", None, "0.25"]
    assert [s.prompt for s in result.samples] == ["q1", "q2", "q3"]


def test_parquet_wrong_type_column_rejects_every_row(tmp_path: Path) -> None:
    schema = pa.schema([("prompt", pa.int64()), ("response", pa.string())])
    path = write_parquet(tmp_path / "seeds.parquet", [{"prompt": 1, "response": "r"},
                                                      {"prompt": 2, "response": "s"}], schema)
    with pytest.raises(LoadError, match=r"all 2 rows were rejected.*wrong_type 2"):
        load_records_file(path)


def test_parquet_missing_column_names_the_columns(tmp_path: Path) -> None:
    schema = pa.schema([("question", pa.string()), ("solution", pa.string())])
    path = write_parquet(tmp_path / "seeds.parquet", [{"question": "q", "solution": "s"}], schema)
    with pytest.raises(LoadError) as err:
        load_records_file(path)
    message = str(err.value)
    assert str(path) in message and "no column for prompt=prompt, response=response" in message
    assert "Keys present in the rows: question, solution" in message
    assert "--fields prompt=question,response=solution" in message


@pytest.mark.parametrize("content", [b"", b"hello", b"PAR1 not really parquet PAR1"])
def test_unreadable_parquet(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "seeds.parquet"
    path.write_bytes(content)
    with pytest.raises(LoadError, match=r"seed file .*seeds.parquet is not a readable Parquet"):
        load_records_file(path)


def test_parquet_without_rows(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "seeds.parquet", [])
    with pytest.raises(LoadError, match="has no rows"):
        load_records_file(path)


# ----------------------------------------------------------------------------- .json files


def test_json_array_rows_are_numbered(tmp_path: Path) -> None:
    path = tmp_path / "seeds.json"
    path.write_text(json.dumps([row(1), [1, 2], row(2)], indent=2))
    result = load_records_file(path)
    assert [s.sample_id for s in result.samples] == ["seeds:1", "seeds:3"]
    assert kinds(result) == ["not_an_object"] and result.rejections[0].line == 2
    assert result.rejections[0].raw == "[1, 2]"


@pytest.mark.parametrize("text, n_loaded", [
    (json.dumps(row(1), indent=2), 1),  # one pretty-printed object
    (json.dumps(row(1)) + "\n" + json.dumps(row(2)) + "\n", 2),  # JSON Lines named .json
])
def test_json_object_or_json_lines(tmp_path: Path, text: str, n_loaded: int) -> None:
    path = tmp_path / "seeds.json"
    path.write_text(text)
    result = load_records_file(path)
    assert (result.n_loaded, result.blank_lines) == (n_loaded, 0)


def test_broken_json_array_names_line(tmp_path: Path) -> None:
    path = tmp_path / "seeds.json"
    path.write_text('[\n  {"prompt": "a", "response": "b"},\n  {"prompt": \n')
    with pytest.raises(LoadError, match=r"seeds.json line 4 column 1: Expecting value"):
        load_records_file(path)


# ----------------------------------------------------------------------------- whole-file errors


@pytest.mark.parametrize("name, content, exception, message", [
    ("seeds.jsonl", b"", LoadError, r"seeds.jsonl has no rows"),
    ("seeds.jsonl", b"\n  \n\n", LoadError, r"seeds.jsonl has no rows"),
    ("seeds.json", b"[]", LoadError, r"seeds.json has no rows"),
    ("seeds.csv", b"prompt,response\na,b\n", LoadError,
     r"unsupported extension '.csv'; use one of \.jsonl, \.json, \.parquet"),
    ("seeds", b"{}", LoadError, r"unsupported extension '\(none\)'"),
])
def test_whole_file_errors(tmp_path: Path, name: str, content: bytes, exception: type,
                           message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(exception, match=message):
        load_records_file(path)


def test_supported_extensions_are_named() -> None:
    assert SUPPORTED_EXTENSIONS == (".jsonl", ".json", ".parquet")


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match=r"seed file .*data/nope.jsonl not found"):
        load_records_file(path)


def test_missing_file_that_looks_like_a_hub_id_hints_hf(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"write hf:owner/name"):
        load_samples("owner/name")


def test_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LoadError, match="is a directory"):
        load_records_file(tmp_path)


def test_all_rejected_shows_reasons_keys_and_a_mapping(tmp_path: Path) -> None:
    records = [{"question": f"q{i}", "solution": f"s{i}", "final": str(i)} for i in range(8)]
    path = write_lines(tmp_path / "x.jsonl", [line(r) for r in records])
    with pytest.raises(LoadError) as err:
        load_records_file(path)
    message = str(err.value)
    assert f"seed file {path}: all 8 rows were rejected" in message
    assert f"{path}:1: missing_field: no key 'prompt'" in message
    assert sum(f"{path}:{i}:" in message for i in range(1, 9)) == 5  # the first five only
    assert "Keys present in the rows: final, question, solution" in message
    assert "--fields prompt=question,response=solution" in message


def test_all_rejected_suggestion_loads_the_file(tmp_path: Path) -> None:
    # GSM8K style: the worked solution sits under "answer".
    records = [{"question": f"q{i}", "answer": f"step {i}\n#### {i}"} for i in range(3)]
    path = write_lines(tmp_path / "gsm.jsonl", [line(r) for r in records])
    with pytest.raises(LoadError) as err:
        load_records_file(path)
    suggestion = str(err.value).rsplit("try --fields ", 1)[1].split()[0]
    assert suggestion == "prompt=question,response=answer,answer="
    result = load_records_file(path, FieldMap.parse(suggestion))
    assert result.n_loaded == 3 and result.samples[0].answer is None


def test_all_rejected_without_objects(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [b"[1]", b"not json"])
    with pytest.raises(LoadError, match=r"all 2 rows.*not_an_object.*malformed_json"):
        load_records_file(path)


# ----------------------------------------------------------------------------- parameters


def test_max_chars_changes_the_output(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1)), line(row(2, response="r" * 50))])
    assert load_records_file(path).n_loaded == 2
    result = load_records_file(path, max_chars=40)
    assert result.n_loaded == 1 and kinds(result) == ["too_long"]
    with pytest.raises(ValueError, match="max_chars must be a positive integer"):
        load_records_file(path, max_chars=0)


def test_source_changes_ids(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1))])
    result = load_records_file(path, source="mine")
    assert result.source == "mine"
    assert (result.samples[0].sample_id, result.samples[0].source) == ("mine:1", "mine")
    assert result.samples[0].source_ref == f"{path}:1"


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
@pytest.mark.parametrize("limit, loaded, rejected, truncated", [
    (None, 4, 1, False), (2, 2, 1, True), (4, 4, 1, False), (10, 4, 1, False),
])
def test_limit_caps_loaded_samples(tmp_path: Path, suffix: str, limit: int | None, loaded: int,
                                   rejected: int, truncated: bool) -> None:
    rows = [{"prompt": "p", "response": ""}] + [row(i) for i in range(1, 5)]
    path = tmp_path / f"seeds{suffix}"
    if suffix == ".parquet":
        write_parquet(path, rows)
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        write_lines(path, [line(r) for r in rows])
    result = load_records_file(path, limit=limit)
    assert (result.n_loaded, result.n_rejected, result.truncated) == (loaded, rejected, truncated)


def test_limit_must_be_positive(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl", [line(row(1))])
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        load_records_file(path, limit=0)


def test_result_counts_and_summary(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "seeds.jsonl",
                       [line(row(1)), line(row(1)), line(row(1)), b"{", line(row(2))])
    result = load_records_file(path)
    assert (result.n_loaded, result.n_rejected, result.n_duplicates) == (2, 3, 2)
    assert result.reasons() == Counter({"duplicate": 2, "malformed_json": 1})
    assert result.summary() == "seeds: 2 loaded, 3 rejected (duplicate 2, malformed_json 1)"
    assert all(isinstance(r, Rejection) for r in result.rejections)


# ----------------------------------------------------------------------------- CHAMP


@pytest.fixture(scope="module")
def champ() -> LoadResult:
    return load_champ()


@pytest.fixture(scope="module")
def champ_raw() -> dict[str, Any]:
    with open(champ_file_path(), encoding="utf-8") as f:
        return json.load(f)["problems"]


def test_champ_has_270_problems_in_five_categories(champ: LoadResult) -> None:
    assert champ.n_loaded == 270 and champ.n_rejected == 0 and champ.source == "champ"
    expected = {"Number-Theory": 80, "Inequality": 50, "Polynomial": 50, "Sequence": 50,
                "Combinatorics": 40}
    assert Counter(s.category for s in champ.samples) == expected == CHAMP_CATEGORIES


def test_champ_fields_match_the_file(champ: LoadResult, champ_raw: dict[str, Any]) -> None:
    assert [s.sample_id for s in champ.samples] == [f"champ:{k}" for k in champ_raw]
    for sample in champ.samples:
        p = champ_raw[sample.sample_id.removeprefix("champ:")]
        assert sample.prompt == p["_text"]
        assert sample.response == "\n".join(step["_text"] for step in p["solution"]["steps"])
        assert sample.answer == p["_answer"]  # raw, not normalized
        assert sample.category == p["category"]
        assert sample.source == "champ" and sample.source_ref == sample.sample_id
        assert sample.prompt.strip() and sample.response.strip() and sample.answer.strip()


def test_champ_first_problem(champ: LoadResult) -> None:
    first = champ.samples[0]
    assert first.sample_id == "champ:P_Combinatorics_1"
    assert first.answer == "239"
    assert first.response.startswith("Let x_n, y_n, z_n be the number")
    assert first.response.endswith("x_6+y_6+z_6=70+99+70=239 such strings.")
    assert first.response.count("\n") == 5  # six steps


def test_champ_is_deterministic(champ: LoadResult) -> None:
    assert load_champ().samples == champ.samples


@pytest.mark.parametrize("limit, categories, expected", [
    (5, None, {"Combinatorics": 5}),
    (None, ["Inequality"], {"Inequality": 50}),
    (None, ["number-theory", "SEQUENCE"], {"Number-Theory": 80, "Sequence": 50}),
    (3, ["Polynomial"], {"Polynomial": 3}),
    (None, "Polynomial", {"Polynomial": 50}),
])
def test_champ_limit_and_categories(champ: LoadResult, limit: int | None,
                                    categories: Any, expected: dict[str, int]) -> None:
    result = load_champ(limit=limit, categories=categories)
    assert Counter(s.category for s in result.samples) == expected
    order = [s.sample_id for s in champ.samples]
    ids = [s.sample_id for s in result.samples]
    assert ids == sorted(ids, key=order.index)  # file order kept
    assert result.truncated == (limit is not None)


@pytest.mark.parametrize("categories, message", [
    (["Geometry"], r"unknown CHAMP categories \['Geometry'\].*Number-Theory"),
    ([], r"categories is empty"),
])
def test_champ_bad_categories(categories: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_champ(categories=categories)


# ----------------------------------------------------------------------------- split_holdout


def test_split_is_deterministic_and_a_partition(champ: LoadResult) -> None:
    kept, held = split_holdout(champ.samples, 0.2, seed=3)
    assert (kept, held) == split_holdout(champ.samples, 0.2, seed=3)
    assert len(kept) + len(held) == 270
    assert {s.sample_id for s in kept}.isdisjoint(s.sample_id for s in held)
    order = {s.sample_id: i for i, s in enumerate(champ.samples)}
    for part in (kept, held):  # input order kept
        assert [order[s.sample_id] for s in part] == sorted(order[s.sample_id] for s in part)


def test_split_is_independent_of_input_order(champ: LoadResult) -> None:
    shuffled = list(champ.samples)
    random.Random(7).shuffle(shuffled)
    _, held = split_holdout(champ.samples, 0.25)
    _, held_shuffled = split_holdout(shuffled, 0.25)
    assert {s.sample_id for s in held} == {s.sample_id for s in held_shuffled}


def test_split_is_stratified(champ: LoadResult) -> None:
    _, held = split_holdout(champ.samples, 0.2)
    assert Counter(s.category for s in held) == {
        "Number-Theory": 16, "Inequality": 10, "Polynomial": 10, "Sequence": 10,
        "Combinatorics": 8}


@pytest.mark.parametrize("fraction, n_held", [(0, 0), (0.0, 0), (0.1, 27), (0.5, 135),
                                              (0.9, 243)])
def test_split_fraction(champ: LoadResult, fraction: float, n_held: int) -> None:
    for stratify_by in ("category", None):
        kept, held = split_holdout(champ.samples, fraction, stratify_by=stratify_by)
        assert (len(kept), len(held)) == (270 - n_held, n_held)


@pytest.mark.parametrize("fraction", [1.0, 1, -0.1, 1.5, float("nan"), True, "0.2"])
def test_split_rejects_bad_fractions(fraction: Any) -> None:
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\)"):
        split_holdout([Sample("a:1", "p", "r")], fraction)


def test_split_seed_changes_the_output(champ: LoadResult) -> None:
    held = [{s.sample_id for s in split_holdout(champ.samples, 0.2, seed=seed)[1]}
            for seed in (0, 1)]
    assert held[0] != held[1]


def test_split_stratify_by_changes_the_output() -> None:
    # 10 samples, categories a (2) and b (8): stratified, each keeps its share of 0.5.
    samples = [Sample(f"s:{i}", f"p{i}", f"r{i}", category="a" if i < 2 else "b",
                      source="x" if i % 2 else "y") for i in range(10)]
    by_category = {seed: Counter(s.category for s in split_holdout(samples, 0.5, seed=seed)[1])
                   for seed in range(20)}
    assert all(c == {"a": 1, "b": 4} for c in by_category.values())
    unstratified = {seed: Counter(s.category for s in
                                  split_holdout(samples, 0.5, seed=seed, stratify_by=None)[1])
                    for seed in range(20)}
    assert any(c != {"a": 1, "b": 4} for c in unstratified.values())
    by_source = [Counter(s.source for s in split_holdout(samples, 0.4, seed=seed,
                                                         stratify_by="source")[1])
                 for seed in range(5)]
    assert all(c == {"x": 2, "y": 2} for c in by_source)


def test_split_largest_remainder_and_none_stratum() -> None:
    samples = [Sample(f"s:{i}", f"p{i}", f"r{i}", category=[None, "a", "b"][i % 3])
               for i in range(9)]
    _, held = split_holdout(samples, 0.5)
    counts = Counter(s.category for s in held)
    assert sum(counts.values()) == 5  # round(4.5) halves up
    assert sorted(counts.values()) == [1, 2, 2]


def test_the_leftover_place_goes_to_the_largest_remainder_not_the_largest_quota() -> None:
    # fraction 0.3: total round(3.9) = 4; quotas A 3.0 (remainder 0), B 0.9 (remainder 0.9); floors 3 + 0.
    samples = [Sample(f"a:{i}", "p", "r", category="A") for i in range(10)] + \
              [Sample(f"b:{i}", "p", "r", category="B") for i in range(3)]
    _, held = split_holdout(samples, 0.3)
    assert Counter(s.category for s in held) == {"A": 3, "B": 1}


def test_the_default_seed_is_zero_and_ranks_by_the_seeded_sha256_of_the_id() -> None:
    samples = [Sample(f"s:{i}", "p", "r") for i in range(20)]
    _, held = split_holdout(samples, 0.25, stratify_by=None)
    assert held == split_holdout(samples, 0.25, seed=0, stratify_by=None)[1]
    for seed in (0, 7):
        ranked = sorted(samples, key=lambda x: hashlib.sha256(f"{seed}\x00{x.sample_id}".encode()).hexdigest())
        expected = {x.sample_id for x in ranked[:5]}
        assert {x.sample_id for x in split_holdout(samples, 0.25, seed=seed, stratify_by=None)[1]} == expected


@pytest.mark.parametrize("samples, kwargs, message", [
    ([Sample("a:1", "p", "r"), Sample("a:1", "q", "s")], {}, "sample ids must be unique"),
    ([Sample("a:1", "p", "r")], {"stratify_by": "topic"}, "not a Sample attribute"),
])
def test_split_errors(samples: list[Sample], kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_holdout(samples, 0.5, **kwargs)


def test_split_empty() -> None:
    assert split_holdout([], 0.3) == ([], [])


# ----------------------------------------------------------------------------- dispatch, HF


def test_load_samples_champ() -> None:
    result = load_samples("champ", limit=4, categories=["Sequence"])
    assert result.source == "champ" and result.n_loaded == 4
    assert {s.category for s in result.samples} == {"Sequence"}
    with pytest.raises(ValueError, match="fixed structure"):
        load_samples("champ", fields=FieldMap())


def test_champ_max_chars_changes_the_output() -> None:
    # How the seed workflow calls it: max_chars passes through load_samples.
    assert load_samples("champ", max_chars=100_000).n_rejected == 0
    result = load_samples("champ", max_chars=600)
    assert 0 < result.reasons()["too_long"] == result.n_rejected < 270
    assert result.n_loaded + result.n_rejected == 270


def test_load_samples_file(tmp_path: Path) -> None:
    records = [{"q": f"q{i}", "s": f"s{i}"} for i in range(3)]
    path = write_lines(tmp_path / "mine.jsonl", [line(r) for r in records])
    result = load_samples(str(path), FieldMap(prompt="q", response="s"), limit=2, source="m")
    assert [s.sample_id for s in result.samples] == ["m:1", "m:2"]
    assert result.samples[0].prompt == "q0"


class FakeDataset(list):
    column_names = ["problem", "solution", "answer"]


@pytest.fixture
def fake_datasets(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    calls: list[tuple] = []

    def load_dataset(name: str, config: str | None = None, *, split: str, **kw: Any):
        calls.append((name, config, split, kw))
        return FakeDataset([
            {"problem": "p1", "solution": "s1", "answer": 5},
            {"problem": "p2", "solution": ["not", "text"], "answer": "x"},
            {"problem": "P1 ", "solution": "s1", "answer": "5"},
            {"problem": "p3", "solution": "s3", "answer": None},
        ])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


HF_FIELDS = FieldMap(prompt="problem", response="solution")


@pytest.mark.parametrize("spec, name, split", [
    ("hf:owner/name", "owner/name", "train"),
    ("hf:owner/name:test", "owner/name", "test"),
])
def test_load_samples_hf_dispatch_and_validation(fake_datasets: list[tuple], spec: str,
                                                 name: str, split: str) -> None:
    result = load_samples(spec, HF_FIELDS, revision="abc")
    assert fake_datasets == [(name, None, split, {"revision": "abc"})]
    assert result.source == f"hf:{name}:{split}"
    assert [s.sample_id for s in result.samples] == [f"hf:{name}:{split}:1",
                                                     f"hf:{name}:{split}:4"]
    assert [s.answer for s in result.samples] == ["5", None]
    assert kinds(result) == ["wrong_type", "duplicate"]
    assert result.rejections[1].duplicate_of == f"hf:{name}:{split}:1"
    assert result.rejections[0].source_ref == f"hf:{name}:{split}:2"


def test_hf_missing_column_names_the_columns(fake_datasets: list[tuple]) -> None:
    with pytest.raises(LoadError, match=r"(?s)owner/name.*no column for prompt=prompt.*"
                                        r"problem, solution, answer"):
        load_hf_dataset("owner/name")


def test_hf_config_and_limit(fake_datasets: list[tuple]) -> None:
    result = load_hf_dataset("owner/name", "test", HF_FIELDS, config="main", limit=1)
    assert fake_datasets[0][:3] == ("owner/name", "main", "test")
    assert result.n_loaded == 1 and result.truncated


@pytest.mark.parametrize("spec", ["hf:", "hf:owner/name:"])
def test_load_samples_bad_hf_spec(spec: str) -> None:
    with pytest.raises(ValueError, match="write hf:owner/name"):
        load_samples(spec)


def test_hf_without_datasets_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(ImportError, match=r"`pip install datasets`"):
        load_samples("hf:owner/name")


def test_all_rejected_for_length_suggests_no_mapping(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [line(row(i)) for i in range(3)])
    with pytest.raises(LoadError, match=r"all 3 rows were rejected.*too_long 3") as err:
        load_records_file(path, max_chars=5)
    assert "--fields" not in str(err.value)
    assert "raise max_chars" in str(err.value)


def test_all_rejected_with_right_keys_suggests_no_remapping(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "x.jsonl", [line({"prompt": "p", "response": 3})] * 2)
    with pytest.raises(LoadError) as err:
        load_records_file(path)
    assert "Keys present in the rows: prompt, response" in str(err.value)
    assert "If this is a mapping mistake" not in str(err.value)


def test_a_hub_spec_passes_its_name_split_fields_and_limit_on(monkeypatch):
    from prismatic_assets.core import loaders
    from prismatic_assets.core.records import FieldMap

    calls = []
    monkeypatch.setattr(loaders, "load_hf_dataset", lambda *args, **kw: calls.append((args, kw)) or "loaded")
    assert loaders.load_samples("hf:owner/name:test", limit=3, shuffle=True) == "loaded"
    assert loaders.load_samples("hf:owner/name") == "loaded"
    assert calls == [(("owner/name", "test", FieldMap()), {"limit": 3, "shuffle": True}),
                     (("owner/name", "train", FieldMap()), {"limit": None})]
