"""The row rules of `core/records.py` word for word: a rejection's reason is what a user reads to
fix the data (it names the key, the field, the value and the fix), so each kind is pinned whole
here, with the raw text kept, the refs, the keys-present hint and the field map's parser.

The loaders' tests (test_loaders.py) check the same rules end to end through real files by kind."""

from __future__ import annotations

import decimal
import json
from typing import Any

import pytest

from prismatic_assets.core.records import MAX_RAW_CHARS, FieldMap, LoadError, LoadResult, RowCollector, mapping_hint
from prismatic_assets.core.samples import Rejection, Sample


def collector(fields: FieldMap | None = None, max_chars: int = 50, limit: int | None = None,
              **kwargs: Any) -> RowCollector:
    return RowCollector(source="src", origin="seed file x.jsonl", ref_prefix="x.jsonl", fields=fields or FieldMap(),
                        max_chars=max_chars, limit=limit, **kwargs)


def reason_of(row: Any, fields: FieldMap | None = None, max_chars: int = 50) -> str:
    c = collector(fields, max_chars)
    c.add(3, row)
    assert not c.samples
    (rejection,) = c.rejections
    assert (rejection.source, rejection.source_ref, rejection.line) == ("src", "x.jsonl:3", 3)
    return rejection.reason


OBJECT_HINT = 'each row must be a JSON object such as {"prompt": ..., "response": ...}'
ARRAY_HINT = " (a whole JSON array belongs in a .json file, not a .jsonl file)"
FIX = "fix the value in the data (texts are not coerced)"


@pytest.mark.parametrize("row, reason", [
    (["p", "r"], f"not_an_object: the row is a list, not an object; {OBJECT_HINT}{ARRAY_HINT}"),
    (42, f"not_an_object: the row is a number, not an object; {OBJECT_HINT}"),
    (2.5, f"not_an_object: the row is a number, not an object; {OBJECT_HINT}"),
    ("text", f"not_an_object: the row is str, not an object; {OBJECT_HINT}"),
    (None, f"not_an_object: the row is NoneType, not an object; {OBJECT_HINT}"),
    (True, f"not_an_object: the row is a boolean, not an object; {OBJECT_HINT}"),
    (b"xy", f"not_an_object: the row is bytes, not an object; {OBJECT_HINT}"),
    ({"response": "r", "b": 1, "a": 2},
     "missing_field: no key 'prompt' for prompt (keys present: a, b, response); map the right key with "
     "--fields prompt=<key>"),
    ({}, "missing_field: no key 'prompt' for prompt (keys present: none); map the right key with "
         "--fields prompt=<key>"),
    ({"prompt": "p", "response": None}, "missing_field: 'response' (response) is null; response is required"),
    ({"prompt": {"t": "p"}, "response": "r"},
     f"wrong_type: 'prompt' (prompt) is an object ({{\"t\": \"p\"}}), expected text; {FIX}"),
    ({"prompt": "p", "response": ["a", "b"]},
     f"wrong_type: 'response' (response) is a list ([\"a\", \"b\"]), expected text; {FIX}"),
    ({"prompt": 12, "response": "r"}, f"wrong_type: 'prompt' (prompt) is a number (12), expected text; {FIX}"),
    ({"prompt": 1.5, "response": "r"}, f"wrong_type: 'prompt' (prompt) is a number (1.5), expected text; {FIX}"),
    ({"prompt": "p", "response": True},
     f"wrong_type: 'response' (response) is a boolean (true), expected text; {FIX}"),
    ({"prompt": b"p", "response": "r"}, f"wrong_type: 'prompt' (prompt) is bytes (\"b'p'\"), expected text; {FIX}"),
    ({"prompt": "p", "response": "r", "answer": [1]},
     f"wrong_type: 'answer' (answer) is a list ([1]), expected text or a finite number; {FIX}"),
    ({"prompt": "p", "response": "r", "answer": float("inf")},
     f"wrong_type: 'answer' (answer) is a number (Infinity), expected text or a finite number; {FIX}"),
    ({"prompt": "p", "response": "r", "answer": decimal.Decimal("NaN")},
     f"wrong_type: 'answer' (answer) is Decimal (\"NaN\"), expected text or a finite number; {FIX}"),
    ({"prompt": "p", "response": "r", "answer": False},
     f"wrong_type: 'answer' (answer) is a boolean (false), expected text or a finite number; {FIX}"),
    ({"prompt": "p", "response": "x" * 60},
     "too_long: 'response' (response) has 60 characters, more than max_chars=50; raise max_chars or drop the row"),
    ({"prompt": " \n\t", "response": "r"},
     "empty_text: 'prompt' (prompt) is empty or only whitespace; fill it or drop the row"),
    ({"prompt": "ok \ud800 x", "response": "r"},
     "invalid_utf8: 'prompt' (prompt) holds a lone surrogate U+D800 at character 3, which UTF-8 cannot encode "
     "(half of a \\u escape pair); fix the escape in the data"),
])
def test_each_rejection_reason_names_the_key_the_field_the_value_and_the_fix(row, reason):
    assert reason_of(row) == reason


def test_the_reason_names_the_mapped_key_and_the_field_it_holds():
    fields = FieldMap(prompt="question", response="solution", id="uid")
    assert reason_of({"question": "q", "solution": 5}, fields) == \
        f"wrong_type: 'solution' (response) is a number (5), expected text; {FIX}"
    assert reason_of({"question": "q", "solution": "s", "uid": 1.5}, fields) == \
        f"wrong_type: 'uid' (id) is a number (1.5), expected text; {FIX}"


def test_a_value_is_shown_whole_up_to_40_characters_then_cut_to_37_and_an_ellipsis():
    def shown(value: str) -> str:
        reason = reason_of({"prompt": [value], "response": "r"})
        return reason.split(" is a list (", 1)[1].rsplit("), expected", 1)[0]

    forty = "x" * 36  # ["x...x"]: 36 + 4 = 40 characters of JSON
    assert shown(forty) == json.dumps([forty])
    assert shown(forty + "y") == json.dumps([forty + "y"])[:37] + "..."
    assert shown("é" * 5) == '["ééééé"]'  # not \\u escaped


def test_texts_at_the_limit_are_kept_and_numbers_become_their_text():
    c = collector(max_chars=5, fields=FieldMap(id="id"))
    c.add(1, {"prompt": "12345", "response": "r", "answer": 3.0, "id": 7})
    c.add(2, {"prompt": "p2", "response": "r", "answer": decimal.Decimal("1.50"), "id": 8})
    c.add(3, {"prompt": "p3", "response": "r", "answer": 2.5, "id": 9})
    c.add(4, {"prompt": "p4", "response": "r", "answer": 12, "id": 10})
    assert not c.rejections
    assert [(s.sample_id, s.prompt, s.answer) for s in c.samples] == [
        ("src:7", "12345", "3"), ("src:8", "p2", "1.50"), ("src:9", "p3", "2.5"), ("src:10", "p4", "12")]


def test_the_raw_text_is_kept_up_to_the_limit_then_cut_with_the_count_left():
    c = collector()
    c.add(1, 5, raw="a" * MAX_RAW_CHARS)
    c.add(2, 5, raw="b" * (MAX_RAW_CHARS + 7))
    c.add(3, {"prompt": 1, "response": "ü", "when": decimal.Decimal("2.5")})  # no raw: the row's JSON
    c.add(4, {"prompt": 1, "response": "r", ("t", 1): 2})  # no JSON for a tuple key: its repr
    raws = [r.raw for r in c.rejections]
    assert raws[0] == "a" * MAX_RAW_CHARS
    assert raws[1] == "b" * MAX_RAW_CHARS + "...[7 more characters]"
    assert raws[2] == '{"prompt": 1, "response": "ü", "when": "2.5"}'
    assert raws[3] == "{'prompt': 1, 'response': 'r', ('t', 1): 2}"


def test_a_given_ref_is_kept_on_samples_rejections_and_duplicates():
    c = collector(fields=FieldMap(id="id"))
    c.add(1, {"prompt": "p", "response": "r", "id": "a"}, ref="table.parquet:row 0")
    c.add(2, {"prompt": "p", "response": 3}, ref="table.parquet:row 1")
    c.add(3, {"prompt": " P", "response": "r ", "id": "b"}, ref="table.parquet:row 2")
    c.add(4, {"prompt": "q", "response": "r", "id": "a"}, ref="table.parquet:row 3")
    assert [s.source_ref for s in c.samples] == ["table.parquet:row 0"]
    assert [(r.source_ref, r.line, r.duplicate_of) for r in c.rejections] == [
        ("table.parquet:row 1", 2, None), ("table.parquet:row 2", 3, "src:a"), ("table.parquet:row 3", 4, None)]
    assert c.rejections[1].reason == ("duplicate: same prompt and response as table.parquet:row 0 (src:a) up to case, "
                                      "Unicode form and whitespace; only the first is kept")
    assert c.rejections[2].reason == ("duplicate_id: sample id 'src:a' is already used by table.parquet:row 0; ids "
                                      "must be unique (or unset the id mapping with --fields id= to number rows by "
                                      "line)")
    rows = collector(fields=FieldMap(id="id"), row_word="row")
    rows.add(0, {"prompt": "p", "response": "r", "id": "a"})
    rows.add(1, {"prompt": "q", "response": "r", "id": "a"})
    assert rows.rejections[0].reason.endswith("to number rows by row)")


def test_finish_counts_truncation_only_when_told():
    c = collector()
    c.add(1, {"prompt": "p", "response": "r"})
    assert c.finish().truncated is False
    assert c.finish(more_rows=True).truncated is True


def test_a_whole_input_rejected_lists_the_kinds_the_first_reasons_and_a_mapping_for_empty_texts():
    c = collector()
    for line in range(1, 8):
        c.add(line, {"prompt": "   ", "response": "r"} if line % 2 else {"question": "q", "solution": "s"})
    with pytest.raises(LoadError) as err:
        c.finish()
    lines = str(err.value).split("\n")
    assert lines[0] == ("seed file x.jsonl: all 7 rows were rejected, nothing was loaded (empty_text 4, "
                        "missing_field 3). First reasons:")
    assert lines[1] == "  x.jsonl:1: empty_text: 'prompt' (prompt) is empty or only whitespace; fill it or drop the row"
    assert lines[2].startswith("  x.jsonl:2: missing_field: no key 'prompt'")
    assert len(lines) == 1 + 5 + 1 and lines[5].startswith("  x.jsonl:5: ")
    assert lines[6] == mapping_hint(["prompt", "question", "response", "solution"], FieldMap())

    only_empty = collector()
    only_empty.add(1, {"prompt": "", "response": "r"})
    with pytest.raises(LoadError, match=r"(?s)empty_text 1\).*Keys present in the rows: prompt, response\."):
        only_empty.finish()


def test_the_keys_hint_scans_the_first_1000_object_rows():
    c = collector()
    c.add(1, ["not", "an", "object"])  # not counted
    for line in range(2, 1002):
        c.add(line, {"q": "x", f"k{line}" if line in (2, 600, 1001) else "a": 1})
    c.add(1002, {"late": 1})
    with pytest.raises(LoadError) as err:
        c.finish()
    keys = str(err.value).rsplit("Keys present in the rows: ", 1)[1].split(". The mapping", 1)[0]
    assert keys == "a, k1001, k2, k600, q"


@pytest.mark.parametrize("keys, fields, tail", [
    ([], FieldMap(), None),
    (["question", "answer"], FieldMap(),
     " If this is a mapping mistake, try --fields prompt=question,response=answer,answer="),
    (["problem", "generated_solution", "expected_answer"], FieldMap(),
     " If this is a mapping mistake, try --fields prompt=problem,response=generated_solution,answer=expected_answer"),
    (["question", "body"], FieldMap(),
     " If this is a mapping mistake, name the keys that hold each field: "
     "--fields prompt=<key>,response=<key>,answer=<key or empty>"),
    (["prompt", "response", "answer"], FieldMap(), ""),
    (["prompt", "response"], FieldMap(answer=None), ""),
    (["question", "answer"], FieldMap(prompt="question", response="answer", answer=None), ""),  # already in use
])
def test_the_mapping_hint_shows_the_keys_the_mapping_in_use_and_a_mapping_to_try(keys, fields, tail):
    text = mapping_hint(keys, fields)
    present = ", ".join(keys) if keys else "(no object rows)"
    head = f"Keys present in the rows: {present}. The mapping in use is --fields {fields.to_spec()}."
    assert text == head + (tail or "")


@pytest.mark.parametrize("kwargs, match", [
    ({"prompt": ""}, "FieldMap.prompt must name a record key, got ''"),
    ({"response": 5}, "FieldMap.response must name a record key, got 5"),
    ({"category": ""}, "FieldMap.category must be a non-empty key or None, got ''"),
    ({"id": 3}, "FieldMap.id must be a non-empty key or None, got 3"),
    ({"answer": None, "category": "c", "id": "c"}, "maps both category and id to key 'c'"),
    ({"answer": "prompt"}, "maps both prompt and answer to key 'prompt'"),
])
def test_a_field_map_refuses_empty_keys_and_keys_used_twice(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FieldMap(**kwargs)


def test_parse_skips_empty_parts_keeps_equals_in_keys_and_requires_prompt_and_response():
    assert FieldMap.parse("prompt=q,, response=s ,") == FieldMap(prompt="q", response="s")
    assert FieldMap.parse("prompt=a=b").prompt == "a=b"
    assert FieldMap.parse("category=").category is None
    for text in ("response=", "prompt= "):
        with pytest.raises(ValueError, match="is required and needs a key"):
            FieldMap.parse(text)


@pytest.mark.parametrize("blank, truncated, text", [
    (0, False, "seeds: 2 loaded, 3 rejected (duplicate 2, missing_field 1)"),
    (4, False, "seeds: 2 loaded, 3 rejected (duplicate 2, missing_field 1), 4 blank lines skipped"),
    (0, True, "seeds: 2 loaded, 3 rejected (duplicate 2, missing_field 1), stopped at the limit"),
    (1, True, "seeds: 2 loaded, 3 rejected (duplicate 2, missing_field 1), 1 blank lines skipped, "
              "stopped at the limit"),
])
def test_the_summary_line_counts_kinds_blank_lines_and_the_limit(blank, truncated, text):
    samples = [Sample("s:1", "p", "r"), Sample("s:2", "q", "r")]
    rejections = [Rejection("seeds", f"f:{i}", i, reason, "{}") for i, reason in
                  enumerate(["duplicate: x", "missing_field: y", "duplicate: z"])]
    result = LoadResult(samples, rejections, "seeds", blank_lines=blank, truncated=truncated)
    assert result.summary() == text
    assert LoadResult(samples, [], "seeds").summary() == "seeds: 2 loaded, 0 rejected"


@pytest.mark.parametrize("name, value", [("max_chars", 0), ("max_chars", True), ("limit", 0), ("limit", 2.0),
                                         ("limit", False)])
def test_limits_must_be_positive_integers(name, value):
    kwargs = {"max_chars": 50, "limit": None, name: value}
    with pytest.raises(ValueError, match=f"{name} must be a positive integer, got {value!r}"):
        RowCollector(source="src", origin="o", ref_prefix="x", fields=FieldMap(), **kwargs)
