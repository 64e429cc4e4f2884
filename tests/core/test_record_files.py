"""The file readers of `core/record_files.py` at their edges: a .json file's three shapes (array,
one object, JSON Lines) with a byte order mark, leading space or broken bytes; exact line and
byte positions in reasons and errors; Parquet reading only the mapped columns; the default
length limit; and a Hugging Face split read through the real `datasets` library (its packaged
"json" builder on a local file: no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prismatic_assets.core.record_files import load_hf_dataset, load_records_file
from prismatic_assets.core.records import FieldMap, LoadError

BOM = b"\xef\xbb\xbf"


def rows(n: int, **extra) -> list[dict]:
    return [{"prompt": f"p{i}", "response": f"r{i}", **extra} for i in range(n)]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_json_array_after_a_byte_order_mark_and_blank_space_is_read_row_by_row(tmp_path):
    path = write(tmp_path / "a.json", BOM + b"\n  \n" + json.dumps(rows(2) + [7]).encode())
    result = load_records_file(path)
    assert [(s.sample_id, s.source_ref) for s in result.samples] == [("a:1", f"{path}:1"), ("a:2", f"{path}:2")]
    assert [(r.line, r.reason.split(":")[0]) for r in result.rejections] == [(3, "not_an_object")]
    assert result.truncated is False


def test_a_json_array_names_rows_not_lines_in_its_duplicate_id_fix(tmp_path):
    path = write(tmp_path / "a.json", json.dumps([{"prompt": "p", "response": "r", "id": 1},
                                                  {"prompt": "q", "response": "r", "id": 1}]).encode())
    result = load_records_file(path, FieldMap(id="id"))
    assert result.rejections[0].reason.endswith("--fields id= to number rows by row)")


def test_one_object_in_a_json_file_is_row_1_and_the_whole_input(tmp_path):
    path = write(tmp_path / "one.json", BOM + b'{\n  "prompt": "p",\n  "response": "r"\n}\n')
    result = load_records_file(path)
    assert [(s.sample_id, s.source_ref, s.prompt) for s in result.samples] == [("one:1", f"{path}:1", "p")]
    assert (result.truncated, result.rejections) == (False, [])


def test_json_lines_in_a_json_file_keep_their_line_numbers_even_with_a_broken_byte(tmp_path):
    lines = [json.dumps(r).encode() for r in rows(3)]
    lines[1] = b'{"prompt": "caf\xe9", "response": "r"}'
    path = write(tmp_path / "lines.json", b"\n".join(lines) + b"\n")
    result = load_records_file(path)
    assert [s.sample_id for s in result.samples] == ["lines:1", "lines:3"]
    (bad,) = result.rejections
    assert (bad.line, bad.reason) == (2, "invalid_utf8: byte 0xe9 at byte 16 of the line is not UTF-8; re-encode "
                                         "the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    assert bad.raw == '{"prompt": "caf\ufffd", "response": "r"}'


def test_a_json_array_with_a_broken_byte_names_its_line(tmp_path):
    path = write(tmp_path / "arr.json", b'[\n{"prompt": "p", "response": "r"},\n\n{"prompt": "\xff"}]')
    with pytest.raises(LoadError) as err:
        load_records_file(path)
    assert str(err.value) == f"seed file {path} line 4: byte 0xff is not UTF-8; re-encode the file as UTF-8"


def test_a_jsonl_line_with_trailing_text_is_malformed(tmp_path):
    path = write(tmp_path / "t.jsonl", b'{"prompt": "p", "response": "r"}\n{"prompt": "q", "response": "r"} X\n')
    result = load_records_file(path)
    assert [s.sample_id for s in result.samples] == ["t:1"]
    assert result.rejections[0].reason == ("malformed_json: Extra data at column 34; each line must hold one "
                                           "complete JSON object")


def test_a_jsonl_file_names_lines_in_its_duplicate_id_fix(tmp_path):
    path = write(tmp_path / "d.jsonl", b'{"prompt": "p", "response": "r", "id": 1}\n'
                                       b'{"prompt": "q", "response": "r", "id": 1}\n')
    result = load_records_file(path, FieldMap(id="id"))
    assert result.rejections[0].reason.endswith("--fields id= to number rows by line)")


def test_the_default_length_limit_is_100000_characters(tmp_path):
    path = write(tmp_path / "long.jsonl", "\n".join(json.dumps({"prompt": "p" * n, "response": "r"})
                                                    for n in (100_000, 100_001)).encode())
    result = load_records_file(path)
    assert [len(s.prompt) for s in result.samples] == [100_000]
    assert result.rejections[0].reason.startswith("too_long: 'prompt' (prompt) has 100001 characters")


def test_parquet_reads_only_the_mapped_columns_and_names_rows(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"prompt": ["p", "q", "p2"], "response": ["r", "r", "r2"], "id": [1, 1, 2],
                             "notes": ["n" * 10] * 3}), path)
    result = load_records_file(path, FieldMap(id="id", answer=None))
    assert [s.sample_id for s in result.samples] == ["t:1", "t:2"]
    (dup,) = result.rejections
    assert dup.raw == '{"prompt": "q", "response": "r", "id": 1}'  # the notes column is not read
    assert dup.reason.endswith("--fields id= to number rows by row)")


def test_parquet_without_the_default_answer_column_loads_answers_as_none(tmp_path):
    path = tmp_path / "na.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "response": ["r"]}), path)
    assert [s.answer for s in load_records_file(path).samples] == [None]


def test_an_empty_parquet_table_says_so(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "response": pa.array([], pa.string())}), path)
    with pytest.raises(LoadError) as err:
        load_records_file(path)
    assert str(err.value) == f"seed file {path} has no rows: write at least one record to it"


@pytest.mark.parametrize("name, hinted", [("owner/name", True), ("data.jsonl", False), ("folder/data.jsonl", False),
                                          ("a/b/c", False), ("plain", False)])
def test_a_missing_file_hints_a_hub_dataset_only_for_owner_slash_name(tmp_path, monkeypatch, name, hinted):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        load_records_file(name)
    message = str(err.value)
    assert message.startswith(f"seed file {name} not found (working directory {tmp_path}): check the path")
    assert message.endswith(f"; to load a Hugging Face dataset write hf:{name}" if hinted else "check the path")


def test_a_missing_absolute_path_without_a_suffix_gets_no_hub_hint(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_records_file(tmp_path / "nothing")
    assert str(err.value).endswith(": check the path")


# --------------------------------------------------------------------------- Hugging Face (real `datasets`)


@pytest.fixture
def hf_file(tmp_path) -> dict:
    path = tmp_path / "hub.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"problem": "p1", "solution": "s1", "answer": 5},
        {"problem": "p1", "solution": "s1", "answer": 6},
        {"problem": "p2", "solution": "s" * 100_001, "answer": None},
        {"problem": "p3", "solution": "s3", "answer": "x"},
    ]) + "\n")
    return {"data_files": str(path), "cache_dir": str(tmp_path / "hf-cache")}


HF_FIELDS = FieldMap(prompt="problem", response="solution")


def test_a_hub_split_is_validated_like_a_file_with_rows_numbered(hf_file):
    result = load_hf_dataset("json", fields=HF_FIELDS, **hf_file)
    assert (result.source, result.truncated) == ("hf:json:train", False)
    assert [(s.sample_id, s.source_ref, s.answer) for s in result.samples] == [
        ("hf:json:train:1", "hf:json:train:1", "5"), ("hf:json:train:4", "hf:json:train:4", "x")]
    assert [(r.line, r.reason.split(":")[0], r.duplicate_of) for r in result.rejections] == [
        (2, "duplicate", "hf:json:train:1"), (3, "too_long", None)]


def test_a_hub_split_takes_the_source_name_it_is_given(hf_file):
    result = load_hf_dataset("json", fields=HF_FIELDS, source="mine", **hf_file)
    assert [s.sample_id for s in result.samples] == ["mine:1", "mine:4"] and result.source == "mine"


def test_a_hub_split_stops_at_the_limit_and_says_so(hf_file):
    result = load_hf_dataset("json", fields=HF_FIELDS, limit=1, **hf_file)
    assert (result.n_loaded, result.truncated) == (1, True)
    assert load_hf_dataset("json", fields=HF_FIELDS, limit=2, **hf_file).truncated is False  # row 4 is the last


def test_a_hub_split_with_duplicate_ids_names_rows(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text('{"prompt": "p", "response": "r", "k": 1}\n{"prompt": "q", "response": "r", "k": 1}\n')
    result = load_hf_dataset("json", fields=FieldMap(id="k"), data_files=str(path), cache_dir=str(tmp_path / "c"))
    assert result.rejections[0].reason.endswith("--fields id= to number rows by row)")


def test_a_hub_split_without_the_mapped_columns_is_refused_before_reading(hf_file):
    with pytest.raises(LoadError) as err:
        load_hf_dataset("json", **hf_file)
    assert str(err.value).startswith("Hugging Face dataset json (split train): no column for prompt=prompt, "
                                     "response=response, so every row would be rejected (missing_field).\n"
                                     "Keys present in the rows: problem, solution, answer.")


def test_a_hub_split_whose_every_row_is_rejected_names_the_dataset_and_split(hf_file):
    with pytest.raises(LoadError, match=r"^Hugging Face dataset json \(split train\): all 4 rows were rejected"):
        load_hf_dataset("json", fields=HF_FIELDS, max_chars=1, **hf_file)
