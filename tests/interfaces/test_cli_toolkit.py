"""`prismatic compare` and `prismatic select` through the real command line entry point."""

from __future__ import annotations

import base64
import json
import re

import pytest

from prismatic_assets.interfaces.cli import main
from tests.pipeline.test_compare import shared_cache, write_sets


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    return write_sets(tmp_path_factory.mktemp("sets"))


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    # The toolkit tests' shared vector cache: the first command computes, the others reuse.
    monkeypatch.setenv("PRISMATIC_CACHE_DIR", str(shared_cache(tmp_path_factory).parent))


def test_compare_prints_a_table_writes_html_and_json(sets, tiny_model_dir, tmp_path, capsys):
    html_path = tmp_path / "report.html"
    code = main(["compare", str(sets[0]), str(sets[1]), "--model", tiny_model_dir, "--dim", "64",
                 "--html", str(html_path)])
    out = capsys.readouterr().out
    assert code == 0
    header = out.splitlines()[0]
    assert "arith" in header and "salad" in header
    for label in ("G-Vendi q=1", "G-Vendi q=2", "G-Vendi q=inf", "embedding Vendi", "distinct-1", "distinct-2",
                  "distinct-3", "compression ratio", "coverage entropy", "clusters only this set fills"):
        assert label in out
    assert "(N=12)" in out and "(N=10)" in out  # every metric shows its N
    assert "rejected" in out and "salad.jsonl:11" in out
    page = html_path.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert "arith" in page and "salad" in page and "<script" not in page and "http" not in page.split("<body>")[1]

    code = main(["compare", str(sets[0]), str(sets[1]), "--model", tiny_model_dir, "--dim", "64", "--json",
                 "--names", "numbers,words", "--q", "1"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and [s["name"] for s in report["sets"]] == ["numbers", "words"]
    assert set(report["sets"][0]["g_vendi"]) == {"1"} and report["sets"][0]["vectors"]["computed"] == 0


def test_select_writes_the_subset_and_compares_with_random(sets, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "subset.jsonl"
    code = main(["select", str(sets[0]), "--k", "4", "--method", "cluster-balanced", "--selection-seed", "2",
                 "--out", str(out), "--model", tiny_model_dir, "--dim", "64"])
    text = capsys.readouterr().out
    assert code == 0
    assert "4 of 12 samples, method cluster-balanced, seed 2" in text
    assert re.search(r"G-Vendi q=1\s+\d+\.\d+\s+the subset", text)
    assert re.search(r"\d+\.\d+ ± \d+\.\d+ \(min .*max .*\)\s+random subsets of 4, 5 seeds", text)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 4 and all("cluster" in line["selection"] for line in lines)
    code = main(["select", str(sets[0]), "--k", "4", "--out", str(tmp_path / "g.jsonl"), "--model", tiny_model_dir,
                 "--dim", "64", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["method"] == "greedy" and len(report["random_g_vendi"]["values"]) == 5


@pytest.mark.parametrize("argv, message", [
    (["compare", "{a}", "{missing}"], "nope.jsonl not found"),
    (["compare", "{a}"], "at least two data sets"),
    (["select", "{missing}", "--k", "2", "--out", "{out}"], "nope.jsonl not found"),
    (["select", "{a}", "--k", "50", "--out", "{out}"], "choose k <= 12"),
    (["compare", "{a}", "{b}", "--fields", "prompt=question,response=solution"], "--fields"),
])
def test_bad_inputs_exit_2_with_the_fix(sets, tiny_model_dir, tmp_path, capsys, argv, message):
    values = {"a": str(sets[0]), "b": str(sets[1]), "missing": str(tmp_path / "nope.jsonl"),
              "out": str(tmp_path / "o.jsonl")}
    code = main([part.format(**values) for part in argv] + ["--model", tiny_model_dir, "--dim", "64"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("prismatic: error:") and message in err
    assert not (tmp_path / "o.jsonl").exists()
