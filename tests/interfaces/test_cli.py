"""`prismatic score` and the Python API on a JSONL file with good and bad rows."""

from __future__ import annotations

import json

import pytest

from prismatic_assets.interfaces.api import score_dataset
from prismatic_assets.interfaces.cli import main

ROWS = [
    {"question": "What is 2 + 3?", "solution": "2 + 3 = 5, so the answer is \\boxed{5}."},
    {"question": "Compute 7 * 6.", "solution": "7 * 6 = 42. \\boxed{42}"},
    {"question": "Solve x + 4 = 10.", "solution": "Subtract 4: x = 6. \\boxed{6}"},
    {"question": "Is 17 prime?", "solution": "17 has no divisor between 2 and 4, so yes. \\boxed{yes}"},
]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(r) for r in ROWS] + ['{"question": "broken', json.dumps({"question": "no solution"})]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_prints_score_n_d_model_projection_and_rejections(data_file, tiny_model_dir, tmp_path, capsys,
                                                              monkeypatch):
    monkeypatch.setenv("PRISMATIC_CACHE_DIR", str(tmp_path / "cache"))
    code = main(["score", str(data_file), "--model", tiny_model_dir, "--fields", "prompt=question,response=solution",
                 "--dim", "64"])
    out = capsys.readouterr().out
    assert code == 0
    assert "G-Vendi" in out and "N " in out and "4 scored" in out and "2 rejected rows" in out
    assert "countsketch-v1-dim64-seed0" in out and tiny_model_dir in out
    assert f"{data_file}:5" in out and "malformed" in out.lower()
    # The second run is served from the cache.
    main(["score", str(data_file), "--model", tiny_model_dir, "--fields", "prompt=question,response=solution",
          "--dim", "64", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["n_cached"] == 4 and report["n_computed"] == 0 and report["n"] == 4
    assert 1.0 <= report["g_vendi"] <= 4.0


def test_cli_reports_a_wrong_field_mapping_as_an_error(data_file, tiny_model_dir, capsys):
    code = main(["score", str(data_file), "--model", tiny_model_dir, "--no-cache"])
    assert code == 2
    err = capsys.readouterr().err
    assert "question" in err and "--fields" in err  # names the keys present and the fix


def test_api_q_and_projection_change_the_score(data_file, tiny_model_dir):
    common = dict(fields="prompt=question,response=solution", model=tiny_model_dir, dim=64, cache=False)
    shannon = score_dataset(data_file, **common)
    renyi = score_dataset(data_file, q=2.0, **common)
    other_seed = score_dataset(data_file, projection_seed=1, **common)
    assert shannon.g_vendi != pytest.approx(renyi.g_vendi)
    assert shannon.g_vendi != pytest.approx(other_seed.g_vendi)
    assert shannon.projection != other_seed.projection


def test_cli_errors_keep_their_cause():
    from prismatic_assets.interfaces.cli import _describe_error

    try:
        try:
            raise KeyError("problem")
        except KeyError as inner:
            raise ValueError("seed file x.jsonl line 3: bad row") from inner
    except ValueError as exc:
        text = _describe_error(exc)
    assert text == "ValueError: seed file x.jsonl line 3: bad row; caused by KeyError: 'problem'"
