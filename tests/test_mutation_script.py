"""scripts/mutation.py's bookkeeping: scores, reasons for equivalent mutants and their staleness, the docs."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mutation(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts" / "mutation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, path in [("ROOT", tmp_path), ("OUT", tmp_path / "build"), ("REASONS", tmp_path / "reasons"),
                       ("RUNS", tmp_path / "reasons" / "runs"), ("PROGRESS", tmp_path / "reasons" / "progress"),
                       ("DOC", tmp_path / "MUTATION.md"), ("README", tmp_path / "README.md")]:
        monkeypatch.setattr(module, name, path)
    (tmp_path / "build").mkdir()
    (tmp_path / "reasons" / "runs").mkdir(parents=True)
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def f(x):\n    return x + 1\n")
    return module


def _run(mutation, counts: dict, survivors: dict[str, str]) -> None:
    outcomes = {name: ("no tests" if "no_tests" in name else "survived") for name in survivors}
    run = {"module": "pkg/mod.py", "source": mutation.source_hash("pkg/mod.py"), "tests": ["tests/t.py"],
           "seconds": 90.0, "counts": counts, "survivors": survivors, "outcomes": outcomes,
           "finished": "2026-12-05 10:00"}
    (mutation.RUNS / "pkg.mod.json").write_text(json.dumps(run))


def _reasons(mutation, mutants: list[str], source: str | None = None) -> None:
    source = source or mutation.source_hash("pkg/mod.py")
    names = ", ".join(f'"{m}"' for m in mutants)
    (mutation.REASONS / "pkg.mod.toml").write_text(
        f'source = "{source}"\n[[equivalent]]\nreason = "the same value"\nmutants = [{names}]\n')


DIFF = "--- a\n+++ b\n-    return x + 1\n+    return x + 2\n"
CONF = {"modules": {"pkg/mod.py": ["tests/t.py"], "pkg/other.py": ["tests/o.py"]}}


def test_the_score_leaves_out_equivalent_mutants_and_counts_unreached_ones(mutation):
    _run(mutation, {"killed": 7, "timeout": 1, "survived": 2, "no tests": 1},
         {"pkg.mod.x_f__mutmut_1": DIFF, "pkg.mod.x_f__mutmut_2": DIFF, "pkg.mod.x_f__no_tests_3": DIFF})
    _reasons(mutation, ["x_f__mutmut_1"])
    table = mutation.summary(CONF)
    assert "| pkg/mod.py | 11 | 8 (1 by timeout) | 2 | 1 | 80.0% | 2026-12-05 | 2 |" in table  # 8 / (11 - 1)
    assert "| pkg/other.py | not run | | | | | | |" in table
    doc = "\n".join(mutation.docs(CONF))
    gaps, equivalent = doc.split("Not killed (2)")[1].split("Equivalent (1)")
    assert "x_f__mutmut_2" in gaps and "x_f__no_tests_3` (no tests)" in gaps and "mutmut_1" not in gaps
    assert "- the same value\n  - `x_f__mutmut_1`: `return x + 2`" in equivalent


def test_kept_survivors_show_their_reason_and_still_count_as_not_killed(mutation):
    _run(mutation, {"killed": 7, "survived": 3},
         {f"pkg.mod.x_f__mutmut_{i}": DIFF for i in (1, 2, 3)})
    source = mutation.source_hash("pkg/mod.py")
    (mutation.REASONS / "pkg.mod.toml").write_text(
        f'source = "{source}"\n[[equivalent]]\nreason = "the same value"\nmutants = ["x_f__mutmut_1"]\n'
        f'[[kept]]\nreason = "CUDA only"\nmutants = ["x_f__mutmut_2"]\n')
    assert "| pkg/mod.py | 10 | 7 | 2 | 1 | 77.8% |" in "\n".join(mutation.summary(CONF))  # 7 / (10 - 1)
    doc = "\n".join(mutation.docs(CONF))
    gaps, rest = doc.split("Not killed (1)")[1].split("Not killed, kept (1)")
    kept, equivalent = rest.split("Equivalent (1)")
    assert "x_f__mutmut_3" in gaps and "mutmut_2" not in gaps and "mutmut_1" not in gaps
    assert "- CUDA only\n  - `x_f__mutmut_2`: `return x + 2`" in kept and "mutmut_1" not in kept
    assert "- the same value\n  - `x_f__mutmut_1`" in equivalent
    (mutation.REASONS / "pkg.mod.toml").write_text(
        f'source = "{source}"\n[[equivalent]]\nreason = "a"\nmutants = ["x_f__mutmut_1"]\n'
        f'[[kept]]\nreason = "b"\nmutants = ["x_f__mutmut_1"]\n')
    with pytest.raises(SystemExit, match="explained twice"):
        mutation.module_rows(CONF)


def test_reasons_written_for_another_source_count_for_nothing(mutation):
    _run(mutation, {"killed": 8, "survived": 2}, {"pkg.mod.x_f__mutmut_1": DIFF, "pkg.mod.x_f__mutmut_2": DIFF})
    _reasons(mutation, ["x_f__mutmut_1"], source="0123456789abcdef")
    (row,) = [r for r in mutation.module_rows(CONF) if r["run"]]
    assert row["equivalent"] == {} and row["share"] == pytest.approx(0.8)
    assert "written for source 0123456789abcdef" in row["problem"]
    _reasons(mutation, ["x_f__mutmut_9"])  # not a survivor of this run: named, not counted
    (row,) = [r for r in mutation.module_rows(CONF) if r["run"]]
    assert row["equivalent"] == {} and "x_f__mutmut_9" in row["problem"]


def test_docs_fill_the_readme_block_and_keep_the_rest(mutation):
    _run(mutation, {"killed": 9, "survived": 1}, {"pkg.mod.x_f__mutmut_1": DIFF})
    mutation.README.write_text(f"intro\n{mutation.README_BEGIN}\nold table\n{mutation.README_END}\noutro\n")
    mutation.write_docs(CONF)
    text = mutation.README.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text
    assert "| pkg/ | 1 of 2 | 10 | 9 | 1 | 0 | 90.0% | mod.py 90.0% | 2026-12-05 |" in text and "pkg/mod.py" not in text
    assert "## pkg/mod.py" in mutation.DOC.read_text()
    assert "| pkg/mod.py | 10 | 9 | 1 | 0 | 90.0% |" in mutation.DOC.read_text()


def test_the_readme_table_adds_up_the_modules_of_a_package_and_names_the_weakest(mutation):
    (mutation.ROOT / "pkg" / "two.py").write_text("def g(x):\n    return x * 2\n")
    _run(mutation, {"killed": 9, "survived": 1}, {"pkg.mod.x_f__mutmut_1": DIFF})
    run = json.loads((mutation.RUNS / "pkg.mod.json").read_text())
    run.update(module="pkg/two.py", source=mutation.source_hash("pkg/two.py"), finished="2026-12-07 09:00",
               counts={"killed": 3, "survived": 2}, survivors={"pkg.two.x_g__mutmut_1": DIFF,
                                                              "pkg.two.x_g__mutmut_2": DIFF})
    (mutation.RUNS / "pkg.two.json").write_text(json.dumps(run))
    conf = {"modules": {"pkg/mod.py": ["tests/t.py"], "pkg/two.py": ["tests/t.py"], "pkg/other.py": []}}
    (header, _, row) = mutation.package_summary(conf)
    assert row == "| pkg/ | 2 of 3 | 15 | 12 | 3 | 0 | 80.0% | two.py 60.0% | 2026-12-05 to 2026-12-07 |"  # 12 / 15


def test_the_published_scores_are_those_of_the_committed_reports():
    """docs/MUTATION.md and the README's score table are what --docs writes from docs/mutation/runs/ on any
    clone (a module changed since its run shows as such): if this fails, run python scripts/mutation.py --docs."""
    spec = importlib.util.spec_from_file_location("mutation_script", ROOT / "scripts" / "mutation.py")
    project = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(project)
    conf = project.settings()
    assert sorted(p.stem for p in project.RUNS.glob("*.json")) == sorted(
        project.slug(m) for m in conf["modules"] if (project.RUNS / f"{project.slug(m)}.json").is_file())
    assert (ROOT / "docs" / "MUTATION.md").read_text() == "\n".join(project.docs(conf))
    readme = (ROOT / "README.md").read_text()
    block = readme.split(project.README_BEGIN, 1)[1].split(project.README_END, 1)[0]
    assert block == "\n" + "\n".join(project.package_summary(conf)) + "\n"


def test_the_projects_reasons_files_name_configured_modules_once_each():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["prismatic-mutation"]
    slugs = {m.removeprefix("prismatic_assets/").removesuffix(".py").replace("/", "."): m for m in conf["modules"]}
    for path in (ROOT / "docs" / "mutation").glob("*.toml"):
        assert path.stem in slugs, f"{path}: no such module in [tool.prismatic-mutation.modules]"
        data = tomllib.loads(path.read_text())
        groups = data.get("equivalent", []) + data.get("kept", [])
        assert set(data) <= {"source", "equivalent", "kept"}, f"{path}: unknown sections {sorted(data)}"
        names = [name for group in groups for name in group["mutants"]]
        assert len(names) == len(set(names)), f"{path}: a mutant is explained twice"
        assert groups and all(group["reason"].strip() for group in groups)
        assert len(data["source"]) == 16


def test_a_run_that_did_not_finish_scores_nothing(mutation):
    _run(mutation, {"killed": 3, "not checked": 7}, {})
    (row,) = [line for line in mutation.summary(CONF) if line.startswith("| pkg/mod.py")]
    assert row.startswith("| pkg/mod.py | not run: 7 of 10 mutants not checked")
    assert not any(line.startswith("| **pkg/**") for line in mutation.summary(CONF))


def _project(mutation) -> dict:
    """A project under mutation.ROOT with one module and one test file; the settings prepare needs."""
    root = mutation.ROOT
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    for name in ("prismatic_assets", "tests", "resources", "benchmarks"):
        (root / name).mkdir(exist_ok=True)
    (root / "prismatic_assets" / "mod.py").write_text("def f(x):\n    return x + 1\n")
    (root / "tests" / "test_mod.py").write_text("def test_f():\n    pass\n")
    return {"pytest_args": [], "skip_lines": [], "timeout_constant": 30, "timeout_multiplier": 5}


def test_a_working_copy_keeps_its_state_for_new_tests_and_starts_again_after_a_code_change(mutation):
    root = mutation.ROOT
    conf = _project(mutation)
    folder = mutation.prepare("prismatic_assets/mod.py", ["tests/test_mod.py"], conf)
    (folder / "mutants").mkdir()
    (folder / "mutants" / "state").write_text("results of the first run")
    (root / "tests" / "test_new.py").write_text("def test_g():\n    pass\n")
    (root / "prismatic_assets" / "other.py").write_text("Y = 2\n")  # a module it does not mutate
    mutation.prepare("prismatic_assets/mod.py", ["tests/test_mod.py"], conf)
    assert (folder / "mutants" / "state").is_file() and (folder / "tests" / "test_new.py").is_file()
    assert (folder / "prismatic_assets" / "other.py").read_text() == "Y = 2\n"
    # mutmut's map of tests to functions is redone when a selected test changed, and only then.
    (folder / "mutants" / "mutmut-stats.json").write_text("{}")
    mutation.prepare("prismatic_assets/mod.py", ["tests/test_mod.py"], conf)
    assert (folder / "mutants" / "mutmut-stats.json").is_file()
    (root / "tests" / "test_mod.py").write_text("def test_f():\n    assert True\n")
    mutation.prepare("prismatic_assets/mod.py", ["tests/test_mod.py"], conf)
    assert not (folder / "mutants" / "mutmut-stats.json").exists() and (folder / "mutants" / "state").is_file()
    (root / "prismatic_assets" / "mod.py").write_text("def f(x):\n    return x + 2\n")
    mutation.prepare("prismatic_assets/mod.py", ["tests/test_mod.py"], conf)
    assert not (folder / "mutants").exists()
    assert (folder / "prismatic_assets" / "mod.py").read_text().endswith("x + 2\n")


def test_a_survivors_rerun_keeps_earlier_kills_only_while_every_earlier_test_is_still_selected(mutation, monkeypatch):
    module = "pkg/mod.py"
    name = "pkg.mod.x_f__mutmut_{}".format
    # A report lists the outcome of each mutant that was not a plain kill: mutant 3 was killed.
    earlier = {name(0): "timeout", name(1): "survived", name(2): "survived"}
    (mutation.RUNS / "pkg.mod.json").write_text(json.dumps({
        "module": module, "tests": ["tests/t.py"], "seconds": 60.0, "survivors": {name(1): DIFF, name(2): DIFF},
        "all_outcomes": earlier}))
    asked = []

    class Done:
        stdout, stderr, returncode = DIFF, "", 0

    def fake_mutmut(folder, *args):
        asked.append(args)
        return Done()

    monkeypatch.setattr(mutation, "prepare", lambda *a: mutation.OUT)
    monkeypatch.setattr(mutation, "_mutmut", fake_mutmut)
    # mutmut after a change of the test selection: nothing checked before the run, then only the
    # rerun mutants have a result
    told = iter([{name(0): "not checked", name(1): "not checked", name(2): "not checked", name(3): "not checked"},
                 {name(0): "not checked", name(1): "killed", name(2): "survived", name(3): "not checked"}])
    monkeypatch.setattr(mutation, "outcomes", lambda folder: next(told))
    rechecked = []
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: rechecked.append(names) or {})
    result = mutation.run_module(module, ["tests/t.py", "tests/u.py"], {}, survivors_only=True)
    assert asked[0] == ("run", "--max-children", "1", name(1), name(2))
    assert rechecked == [[name(2)]]  # only mutmut's survivors run against the whole selection
    assert result["counts"] == {"timeout": 1, "killed": 2, "survived": 1}
    assert list(result["survivors"]) == [name(2)] and result["seconds"] == 60.0
    written = json.loads((mutation.RUNS / "pkg.mod.json").read_text())
    assert written["all_outcomes"] == {name(0): "timeout", name(2): "survived"}
    with pytest.raises(SystemExit, match=r"tests were taken out .*tests/t.py.* run it whole"):
        mutation.run_module(module, ["tests/u.py"], {}, survivors_only=True)


def test_a_stopped_survivors_rerun_resumes_without_running_its_kills_again(mutation, monkeypatch):
    module = "pkg/mod.py"
    name = "pkg.mod.x_f__mutmut_{}".format
    (mutation.RUNS / "pkg.mod.json").write_text(json.dumps({
        "module": module, "tests": ["tests/t.py"], "seconds": 60.0,
        "survivors": {name(1): DIFF, name(2): DIFF, name(3): DIFF},
        "all_outcomes": {name(0): "killed", name(1): "survived", name(2): "survived", name(3): "survived"}}))
    # the stopped rerun got to mutants 1 (killed it, by timeout) and 2 (still survives)
    state = {name(0): "killed", name(1): "timeout", name(2): "survived", name(3): "survived"}
    _fake_mutmut(mutation, monkeypatch, state)
    asked = []
    monkeypatch.setattr(mutation, "_mutmut", lambda folder, *args: asked.append(args) or _Done())
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: {})
    result = mutation.run_module(module, ["tests/t.py"], {}, survivors_only=True)
    runs = [a for a in asked if a[0] == "run"]
    assert runs == [("run", "--max-children", "1", name(2), name(3))]
    assert result["counts"] == {"killed": 1, "timeout": 1, "survived": 2}

    # every survivor killed by stopped reruns: mutmut is not run at all (given no names it runs every mutant)
    state.update({name(2): "killed", name(3): "killed"})
    asked.clear()
    result = mutation.run_module(module, ["tests/t.py"], {}, survivors_only=True)
    assert [a for a in asked if a[0] == "run"] == []
    assert result["counts"] == {"killed": 3, "timeout": 1} and result["survivors"] == {}


def test_a_run_that_stops_before_its_mutants_keeps_the_last_report(mutation, monkeypatch):
    module = "pkg/mod.py"
    report = mutation.RUNS / "pkg.mod.json"
    report.write_text(json.dumps({"module": module, "tests": ["tests/t.py"], "counts": {"killed": 2}}))

    class Failed:
        stdout, stderr, returncode = "Running stats\n", "failed to collect stats. runner returned 1\n", 1

    monkeypatch.setattr(mutation, "prepare", lambda *a: mutation.OUT)
    monkeypatch.setattr(mutation, "_mutmut", lambda folder, *args: Failed())
    monkeypatch.setattr(mutation, "outcomes", lambda folder: {"pkg.mod.x_f__mutmut_1": "not checked",
                                                              "pkg.mod.x_f__mutmut_2": "not checked"})
    with pytest.raises(SystemExit, match=r"(?s)2 of 2 mutants not checked, the last report is kept.*"
                                         r"failed to collect stats"):
        mutation.run_module(module, ["tests/t.py"], {})
    assert json.loads(report.read_text())["counts"] == {"killed": 2}


def test_a_survivors_rerun_whose_clean_tests_fail_keeps_the_last_report(mutation, monkeypatch):
    module = "pkg/mod.py"
    report = mutation.RUNS / "pkg.mod.json"
    name = "pkg.mod.x_f__mutmut_1"
    report.write_text(json.dumps({"module": module, "tests": ["tests/t.py"], "seconds": 5.0, "counts": {"survived": 1},
                                  "survivors": {name: DIFF}, "all_outcomes": {name: "survived"}}))

    class Failed:
        stdout, stderr, returncode = "Running clean tests\n", "Failed to run clean test\n", 1

    monkeypatch.setattr(mutation, "prepare", lambda *a: mutation.OUT)
    monkeypatch.setattr(mutation, "_mutmut", lambda folder, *args: Failed())
    monkeypatch.setattr(mutation, "outcomes", lambda folder: {name: "survived"})  # mutmut's old result
    with pytest.raises(SystemExit, match=r"1 of 1 mutants not checked, the last report is kept"):
        mutation.run_module(module, ["tests/t.py"], {}, survivors_only=True)
    assert json.loads(report.read_text())["seconds"] == 5.0


def test_a_module_without_mutants_is_run_and_scores_nothing(mutation):
    _run(mutation, {"killed": 9, "survived": 1}, {"pkg.mod.x_f__mutmut_1": DIFF})
    (mutation.ROOT / "pkg" / "consts.py").write_text("SQL = 'SELECT 1'\n")
    run = json.loads((mutation.RUNS / "pkg.mod.json").read_text())
    run.update(module="pkg/consts.py", source=mutation.source_hash("pkg/consts.py"), counts={}, survivors={},
               outcomes={})
    (mutation.RUNS / "pkg.consts.json").write_text(json.dumps(run))
    conf = {"modules": {"pkg/mod.py": ["tests/t.py"], "pkg/consts.py": ["tests/t.py"]}}
    assert "| pkg/consts.py | 0 | | | | no mutants | 2026-12-05 | 2 |" in mutation.summary(conf)
    assert mutation.package_summary(conf)[2] == "| pkg/ | 2 of 2 | 10 | 9 | 1 | 0 | 90.0% | mod.py 90.0% | 2026-12-05 |"
    assert "No mutants: mutmut changes code inside functions" in "\n".join(mutation.docs(conf))


def test_prune_drops_reasons_of_mutants_a_later_run_killed(mutation):
    _run(mutation, {"killed": 9, "survived": 1}, {"pkg.mod.x_f__mutmut_2": DIFF})
    source = mutation.source_hash("pkg/mod.py")
    (mutation.REASONS / "pkg.mod.toml").write_text(
        f'# What these are.\n# Renew the source after a change.\nsource = "{source}"\n[[equivalent]]\n'
        f'reason = "the \\"same\\" value"\nmutants = ["x_f__mutmut_1"]\n'
        f'[[kept]]\nreason = "CUDA only"\nmutants = ["x_f__mutmut_2", "x_f__mutmut_3"]\n')
    said = mutation.prune_reasons(CONF)
    assert (mutation.REASONS / "pkg.mod.toml").read_text().startswith(
        "# What these are.\n# Renew the source after a change.\nsource = ")  # the opening comment stays
    assert said == ["reasons/pkg.mod.toml: 2 killed since: x_f__mutmut_1, x_f__mutmut_3"]
    data = tomllib.loads((mutation.REASONS / "pkg.mod.toml").read_text())
    assert data == {"source": source, "kept": [{"reason": "CUDA only", "mutants": ["x_f__mutmut_2"]}]}
    assert mutation.prune_reasons(CONF) == []  # nothing left to drop
    row = [r for r in mutation.module_rows(CONF) if r["run"]][0]
    assert row["problem"] is None and row["kept"] == {"pkg.mod.x_f__mutmut_2": "CUDA only"}


def _mutants_folder(tmp_path: Path) -> Path:
    """A working copy as mutmut leaves it: a module whose function reads MUTANT_UNDER_TEST (as
    mutmut's trampolines do) and two tests; the second one alone tells mutant 2 apart, the way a
    test after the first user of a module-scoped fixture would."""
    folder = tmp_path / "work"
    (folder / "mutants" / "tests").mkdir(parents=True)
    (folder / "mutants" / "mod.py").write_text(
        "import os\n\n\ndef f(x):\n"
        "    name = os.environ.get('MUTANT_UNDER_TEST', '')\n"
        "    if name.endswith('_1'):\n        return x + 1\n"  # equivalent on every input below
        "    if name.endswith('_2'):\n        return x + 1 if x < 10 else x\n"  # only big inputs tell
        "    return x + 1\n")
    (folder / "mutants" / "tests" / "test_mod.py").write_text(
        "import pytest\n\nfrom mod import f\n\n\n@pytest.fixture(scope='module')\ndef small():\n    return f(1)\n\n\n"
        "def test_small(small):\n    assert small == 2\n\n\ndef test_big():\n    assert f(20) == 21\n")
    return folder


def test_recheck_counts_a_survivor_killed_by_a_later_test_of_the_selection(mutation, tmp_path):
    folder = _mutants_folder(tmp_path)
    names = ["mod.x_f__mutmut_1", "mod.x_f__mutmut_2"]
    killed = mutation.recheck(folder, ["tests/test_mod.py"], {"pytest_args": ["-p", "no:cacheprovider"]}, names)
    assert killed == {"mod.x_f__mutmut_2": "tests/test_mod.py::test_big"}
    assert mutation.recheck(folder, ["tests/test_mod.py"], {}, []) == {}


def test_recheck_records_each_kill_in_the_working_copy_as_it_goes(mutation, tmp_path):
    folder = _mutants_folder(tmp_path)
    names = ["mod.x_f__mutmut_1", "mod.x_f__mutmut_2"]
    mutation.recheck(folder, ["tests/test_mod.py"], {"pytest_args": ["-p", "no:cacheprovider"]}, names)
    assert mutation.rechecked_so_far(folder, ["tests/test_mod.py", "tests/t.py"]) == {
        "mod.x_f__mutmut_2": "tests/test_mod.py::test_big"}
    assert mutation.rechecked_so_far(folder, ["tests/t.py"]) == {}  # its killer is no longer selected


def test_recheck_does_not_run_again_a_survivor_of_the_same_tests(mutation, tmp_path, monkeypatch):
    folder = _mutants_folder(tmp_path)
    conf = {"pytest_args": ["-p", "no:cacheprovider"]}
    names = ["mod.x_f__mutmut_1", "mod.x_f__mutmut_2"]
    assert mutation.recheck(folder, ["tests/test_mod.py"], conf, names) == {
        "mod.x_f__mutmut_2": "tests/test_mod.py::test_big"}
    logged = json.loads((folder / mutation.SURVIVED_LOG).read_text())
    assert list(logged) == ["mod.x_f__mutmut_1"]

    class NoRun:  # the survivor is known: no test server starts
        def __init__(self, *args):
            raise AssertionError("a known survivor ran again")

    real = mutation._ForkRunner
    monkeypatch.setattr(mutation, "_ForkRunner", NoRun)
    assert mutation.recheck(folder, ["tests/test_mod.py"], conf, ["mod.x_f__mutmut_1"]) == {}

    # A new test (or a changed conftest.py) changes what it runs against: it runs again, and is killed.
    monkeypatch.setattr(mutation, "_ForkRunner", real)
    (folder / "mutants" / "tests" / "conftest.py").write_text(
        "import os\n\n\ndef pytest_runtest_setup(item):\n"
        "    assert not os.environ.get('MUTANT_UNDER_TEST', '').endswith('_1')\n")
    assert mutation.recheck(folder, ["tests/test_mod.py"], conf, ["mod.x_f__mutmut_1"]) == {
        "mod.x_f__mutmut_1": "tests/test_mod.py::test_small"}


def test_a_recheck_stopped_part_way_keeps_its_kills_on_a_fresh_clone(mutation, monkeypatch):
    import os
    import shutil
    import signal
    import time

    conf = _project(mutation)
    module, tests = "prismatic_assets/mod.py", ["tests/test_mod.py"]
    name = "prismatic_assets.mod.x_f__mutmut_{}".format
    verdicts = {name(1): 1, name(2): 0, name(3): 0}  # killed, then two survivors of mutmut's pass

    def mutmut_finished(folder, *args):
        if args[0] == "run":
            meta = folder / "mutants" / "prismatic_assets" / "mod.py.meta"
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps(_meta(verdicts)))
        return _Done()

    def stopped_after_one_kill(folder, tests, conf, names):
        mutation._log_rechecked(folder, {name(2): "tests/test_mod.py::test_f"})
        mutation._log_json(folder / mutation.SURVIVED_LOG, {name(3): "digest"})
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(mutation, "_mutmut", mutmut_finished)
    monkeypatch.setattr(mutation, "outcomes", lambda folder: {name(1): "killed", name(2): "survived",
                                                             name(3): "survived"})
    monkeypatch.setattr(mutation, "recheck", stopped_after_one_kill)
    with pytest.raises(SystemExit, match="the recheck's kills are kept"):
        mutation.run_module(module, tests, conf)
    assert signal.getsignal(signal.SIGTERM) == handler
    saved = json.loads((mutation.PROGRESS / "mod.json").read_text())
    assert saved["rechecked"] == {name(2): "tests/test_mod.py::test_f"} and saved["checked"] == 3
    assert saved["recheck_survived"] == {name(3): "digest"}
    assert saved["seconds"] < 0.3  # mutmut's time, without the recheck's

    # Another machine, a test changed since: mutant 2 keeps mutmut's verdict and its kill; mutant 3 runs
    # through mutmut again.
    shutil.rmtree(mutation.OUT)
    (mutation.ROOT / "tests" / "test_mod.py").write_text("def test_f():\n    assert True\n")
    folder = mutation.prepare(module, tests, conf)
    assert json.loads((folder / "mutants" / "prismatic_assets" / "mod.py.meta").read_text())["exit_code_by_key"] \
        == {name(1): 1, name(2): 0, name(3): None}
    assert json.loads((folder / mutation.SURVIVED_LOG).read_text()) == {name(3): "digest"}  # skipped if unchanged
    asked = []
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: asked.append(names) or {})
    result = mutation.run_module(module, tests, conf)
    assert asked == [[name(3)]]
    assert result["counts"] == {"killed": 1, "killed by the whole selection": 1, "survived": 1}
    assert result["rechecked"] == {name(2): "tests/test_mod.py::test_f"}
    assert not (mutation.PROGRESS / "mod.json").exists()


def test_recheck_refuses_a_selection_that_fails_unmutated(mutation, tmp_path):
    folder = _mutants_folder(tmp_path)
    (folder / "mutants" / "tests" / "test_mod.py").write_text(
        "import pytest\n\n\n@pytest.fixture(scope='session')\ndef one():\n    return 1\n\n\n"
        "def test_broken(one):\n    assert one == 2\n")
    with pytest.raises(SystemExit, match="fail on the unmutated code"):
        mutation.recheck(folder, ["tests/test_mod.py"], {}, ["mod.x_f__mutmut_1"])


class _Done:
    stdout, stderr, returncode = DIFF, "", 0


def _fake_mutmut(mutation, monkeypatch, outcomes: dict[str, str]) -> None:
    """run_module without mutmut: a working copy, a run that says DIFF, and these outcomes."""
    monkeypatch.setattr(mutation, "prepare", lambda *a: mutation.OUT)
    monkeypatch.setattr(mutation, "_mutmut", lambda folder, *args: _Done())
    monkeypatch.setattr(mutation, "outcomes", lambda folder: dict(outcomes))  # run_module writes into it


def test_a_recheck_kill_counts_as_killed_and_carries_to_a_survivors_rerun(mutation, monkeypatch):
    import shutil

    module = "pkg/mod.py"
    name = "pkg.mod.x_f__mutmut_{}".format
    _fake_mutmut(mutation, monkeypatch, {name(1): "killed", name(2): "survived", name(3): "no tests"})

    def recheck(folder, tests, conf, names):  # kills 3; 2 survives it, and so did 4 (killed by mutmut since)
        mutation._log_json(folder / mutation.SURVIVED_LOG, {name(2): "digest", name(4): "digest"})
        return {name(3): "tests/t.py::test_a"}

    monkeypatch.setattr(mutation, "recheck", recheck)
    result = mutation.run_module(module, ["tests/t.py"], {})
    assert result["counts"] == {"killed": 1, "survived": 1, "killed by the whole selection": 1}
    assert list(result["survivors"]) == [name(2)] and result["rechecked"] == {name(3): "tests/t.py::test_a"}
    assert result["recheck_survived"] == {name(2): "digest"}  # a survivors rerun's recheck skips it, tests unchanged
    assert mutation.score(result["counts"])[:2] == (2, 3)
    # A survivors rerun (on another machine): mutmut still calls mutant 3 "no tests"; the earlier recheck stands
    # and is not run again; the recheck gets back what survived it.
    shutil.rmtree(mutation.OUT)
    mutation.OUT.mkdir()
    asked = []

    def recheck_again(folder, tests, conf, names):
        asked.append((names, mutation._read_json(folder / mutation.SURVIVED_LOG)))
        return {}

    monkeypatch.setattr(mutation, "recheck", recheck_again)
    again = mutation.run_module(module, ["tests/t.py"], {}, survivors_only=True)
    assert asked == [([name(2)], {name(2): "digest"})]
    assert again["all_outcomes"][name(3)] == "killed by the whole selection"
    # After the module changes, an earlier recheck counts for nothing.
    (mutation.ROOT / "pkg" / "mod.py").write_text("def f(x):\n    return x + 3\n")
    asked.clear()
    mutation.run_module(module, ["tests/t.py"], {}, survivors_only=True)
    assert [names for names, _ in asked] == [[name(2), name(3)]]


def test_a_survivors_rerun_after_tests_joined_the_selection_names_the_test_of_each_earlier_recheck_kill(
        mutation, monkeypatch):
    module = "pkg/mod.py"
    name = "pkg.mod.x_f__mutmut_{}".format
    _fake_mutmut(mutation, monkeypatch, {name(1): "killed", name(2): "survived", name(3): "survived"})
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: {name(3): "tests/t.py::test_a"})
    first = mutation.run_module(module, ["tests/t.py"], {})
    assert first["rechecked"] == {name(3): "tests/t.py::test_a"}
    # tests/u.py joins the selection: mutmut forgets the verdicts of the mutants it is not asked to run again.
    monkeypatch.setattr(mutation, "outcomes",
                        lambda folder: {name(1): "not checked", name(2): "survived", name(3): "not checked"})
    asked = []
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: asked.append(names) or {})
    again = mutation.run_module(module, ["tests/t.py", "tests/u.py"], {}, survivors_only=True)
    assert asked == [[name(2)]]
    assert again["counts"] == {"killed": 1, "survived": 1, "killed by the whole selection": 1}
    assert again["rechecked"] == {name(3): "tests/t.py::test_a"}


def test_a_pass_without_recheck_leaves_the_recheck_to_its_survivors_rerun(mutation, monkeypatch):
    module = "pkg/mod.py"
    name = "pkg.mod.x_f__mutmut_{}".format
    _fake_mutmut(mutation, monkeypatch, {name(1): "killed", name(2): "survived", name(3): "survived"})
    asked = []
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: asked.append(names) or {})
    first = mutation.run_module(module, ["tests/t.py"], {}, rechecking=False)
    assert asked == [] and list(first["survivors"]) == [name(2), name(3)] and first["rechecked"] == {}
    conf = {"modules": {module: ["tests/t.py"]}}
    assert "Not killed (2) in a first pass that ran no survivor against the whole selection" in \
        "\n".join(mutation.docs(conf))
    # New tests kill mutant 2 in the survivors rerun; only mutant 3 runs against the whole selection.
    monkeypatch.setattr(mutation, "outcomes", lambda folder: {name(1): "not checked", name(2): "killed",
                                                              name(3): "survived"})
    again = mutation.run_module(module, ["tests/t.py"], {}, survivors_only=True)
    assert asked == [[name(3)]] and again["counts"] == {"killed": 2, "survived": 1}
    assert "Not killed (1): a test could tell these from the code and none does." in "\n".join(mutation.docs(conf))


def test_a_run_stopped_and_resumed_reports_the_time_of_both_invocations(mutation, monkeypatch):
    import os
    import signal
    import time

    module = "pkg/mod.py"
    name = "pkg.mod.x_f__mutmut_{}".format

    class Done:
        stdout, stderr, returncode = DIFF, "", 0

    def stopped_after_a_while(folder, *args):
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` sends

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(mutation, "prepare", lambda *a: mutation.OUT)
    monkeypatch.setattr(mutation, "_mutmut", stopped_after_a_while)
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: {})
    with pytest.raises(SystemExit, match="stopped; mutmut's state and the recheck's kills are kept"):
        mutation.run_module(module, ["tests/t.py"], {})
    assert signal.getsignal(signal.SIGTERM) == handler  # the run's handler is gone with it
    first = float((mutation.OUT / "mutmut-seconds").read_text())
    assert 0.3 <= first < 30

    def finishes_after_a_while(folder, *args):
        if args[0] == "run":
            time.sleep(0.2)
        return Done()

    monkeypatch.setattr(mutation, "_mutmut", finishes_after_a_while)
    monkeypatch.setattr(mutation, "outcomes", lambda folder: {name(1): "killed", name(2): "survived"})
    result = mutation.run_module(module, ["tests/t.py"], {})
    assert first + 0.2 <= result["seconds"] < first + 30
    # A survivors rerun reports the whole run's time and adds nothing to it.
    again = mutation.run_module(module, ["tests/t.py"], {}, survivors_only=True)
    assert again["seconds"] == result["seconds"]
    assert float((mutation.OUT / "mutmut-seconds").read_text()) == pytest.approx(result["seconds"], abs=0.1)


def test_only_test_files_with_a_shared_fixture_are_rechecked(mutation, tmp_path):
    folder = _mutants_folder(tmp_path)
    tests = folder / "mutants" / "tests"
    (tests / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture(scope=\"session\")\n@other_decorator\ndef packaged(): ...\n\n\n"
        "@pytest.fixture\ndef fresh(): ...\n")
    (tests / "sub").mkdir()
    (tests / "sub" / "test_uses_conftest.py").write_text("def test_a(packaged):\n    pass\n")
    (tests / "sub" / "test_fresh.py").write_text(
        "def test_b(fresh):\n    pass\n\n\ndef test_c(packaged_not):\n    pass\n")
    (tests / "test_class.py").write_text("@pytest.fixture(\n    scope='class', autouse=True)\ndef c(): ...\n")
    selection = ["tests/test_mod.py", "tests/sub/test_uses_conftest.py", "tests/sub/test_fresh.py",
                 "tests/test_class.py", "tests/test_missing.py"]
    assert mutation.shared_fixture_tests(folder / "mutants", selection) == [
        "tests/test_mod.py", "tests/sub/test_uses_conftest.py", "tests/test_class.py"]
    (tests / "test_mod.py").write_text("from mod import f\n\n\ndef test_big():\n    assert f(20) == 21\n")
    # no shared fixture in the selection: mutmut's map is complete, nothing runs (this test would kill it)
    assert mutation.recheck(folder, ["tests/test_mod.py"], {}, ["mod.x_f__mutmut_2"]) == {}


def test_recheck_runs_only_files_holding_a_test_mapped_to_the_mutated_function(mutation, tmp_path):
    folder = _mutants_folder(tmp_path)
    stats = folder / "mutants" / "mutmut-stats.json"
    conf = {"pytest_args": ["-p", "no:cacheprovider"]}
    # mutmut saw only the first user of the module fixture call f: the file is run, its later test kills
    stats.write_text(json.dumps({"tests_by_mangled_function_name": {"mod.x_f": ["tests/test_mod.py::test_small"]}}))
    assert mutation.recheck(folder, ["tests/test_mod.py"], conf, ["mod.x_f__mutmut_2"]) == {
        "mod.x_f__mutmut_2": "tests/test_mod.py::test_big"}
    # no test of the file reaches f: nothing to gain from running it
    stats.write_text(json.dumps({"tests_by_mangled_function_name": {"mod.x_g": ["tests/test_mod.py::test_small"]}}))
    assert mutation.recheck(folder, ["tests/test_mod.py"], conf, ["mod.x_f__mutmut_2"]) == {}


def _meta(verdicts: dict[str, int | None]) -> dict:
    return {"exit_code_by_key": verdicts, "hash_by_function_name": {"x_f": "abc"}, "type_check_error_by_key": {},
            "durations_by_key": {}, "estimated_durations_by_key": {}}


def test_a_stopped_run_saves_its_verdicts_and_a_fresh_clone_resumes_from_them(mutation, monkeypatch):
    import os
    import shutil
    import signal
    import time

    conf = _project(mutation)
    module, tests = "prismatic_assets/mod.py", ["tests/test_mod.py"]
    name = "prismatic_assets.mod.x_f__mutmut_{}".format
    # killed, survived, not reached before the stop, no test reached it, killed by timeout
    verdicts = {name(1): 1, name(2): 0, name(3): None, name(4): 33, name(5): 36}

    def stopped_midway(folder, *args):  # mutmut wrote its record, then the run was stopped
        meta = folder / "mutants" / "prismatic_assets" / "mod.py.meta"
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(json.dumps(_meta(verdicts)))
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(mutation, "_mutmut", stopped_midway)
    with pytest.raises(SystemExit, match="stopped"):
        mutation.run_module(module, tests, conf)
    saved = json.loads((mutation.PROGRESS / "mod.json").read_text())
    assert (saved["checked"], saved["mutants"], saved["tests"]) == (4, 5, tests)
    assert saved["source"] == mutation.source_hash(module) and saved["mutmut_meta"] == _meta(verdicts)
    spent = saved["seconds"]
    assert 0.2 <= spent < 30

    # Another machine: no working copy, the committed progress file. mutmut gets its record back.
    shutil.rmtree(mutation.OUT)
    folder = mutation.prepare(module, tests + ["tests/test_new.py"], conf)  # a test added since: still holds
    # Kills stand; what was not killed runs again (against the tests of today).
    assert json.loads((folder / "mutants" / "prismatic_assets" / "mod.py.meta").read_text()) == \
        _meta({name(1): 1, name(2): None, name(3): None, name(4): None, name(5): 36})
    assert float((folder / "mutmut-seconds").read_text()) == pytest.approx(spent, abs=0.1)

    class Finished:
        stdout, stderr, returncode = DIFF, "", 0

    monkeypatch.setattr(mutation, "_mutmut", lambda folder, *args: Finished())
    monkeypatch.setattr(mutation, "outcomes", lambda folder: {name(1): "killed", name(2): "survived",
                                                             name(3): "killed", name(4): "killed",
                                                             name(5): "timeout"})
    monkeypatch.setattr(mutation, "recheck", lambda folder, tests, conf, names: {})
    result = mutation.run_module(module, tests, conf)
    assert result["counts"] == {"killed": 3, "survived": 1, "timeout": 1} and result["seconds"] >= spent
    assert not (mutation.PROGRESS / "mod.json").exists()  # the report holds it now


@pytest.mark.parametrize("edit", [None, "tests/test_mod.py", "tests/conftest.py"])
def test_a_resumed_run_runs_its_survivors_again_only_after_a_change_of_its_tests(mutation, edit):
    import shutil

    conf = _project(mutation)
    module, tests = "prismatic_assets/mod.py", ["tests/test_mod.py"]
    name = "prismatic_assets.mod.x_f__mutmut_{}".format
    folder = mutation.prepare(module, tests, conf)
    meta = folder / "mutants" / "prismatic_assets" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps(_meta({name(1): 1, name(2): 0, name(3): 33, name(4): None})))
    mutation.save_progress(module, tests)
    shutil.rmtree(mutation.OUT)
    if edit:
        (mutation.ROOT / edit).write_text("def test_g():\n    pass\n")
    folder = mutation.prepare(module, tests, conf)
    kept = {name(1): 1, name(2): 0, name(3): 33, name(4): None}  # survived, no tests: nothing new could kill them
    rerun = {name(1): 1, name(2): None, name(3): None, name(4): None}
    assert json.loads(meta.read_text())["exit_code_by_key"] == (rerun if edit else kept)


@pytest.mark.parametrize("change", ["source", "tests"])
def test_saved_progress_of_other_code_or_fewer_tests_is_not_used(mutation, change, capsys):
    conf = _project(mutation)
    module, tests = "prismatic_assets/mod.py", ["tests/test_mod.py", "tests/test_two.py"]
    folder = mutation.OUT / "mod"
    (folder / "mutants" / "prismatic_assets").mkdir(parents=True)
    copy = folder / "prismatic_assets"
    copy.mkdir()
    (copy / "mod.py").write_text((mutation.ROOT / module).read_text())
    (folder / "mutants" / "prismatic_assets" / "mod.py.meta").write_text(
        json.dumps(_meta({"prismatic_assets.mod.x_f__mutmut_1": 1})))
    assert mutation.save_progress(module, tests) == 1
    import shutil
    shutil.rmtree(mutation.OUT)
    if change == "source":
        (mutation.ROOT / module).write_text("def f(x):\n    return x + 2\n")
        selection = tests
    else:
        selection = tests[:1]  # test_two.py's kills may not hold without it
    folder = mutation.prepare(module, selection, conf)
    assert not (folder / "mutants" / "prismatic_assets" / "mod.py.meta").exists()
    assert not (folder / "mutmut-seconds").exists()
    assert "starting over" in capsys.readouterr().out


def test_saving_after_mutmut_forgot_its_verdicts_keeps_the_kills_saved_before(mutation):
    """mutmut resets every verdict when its test settings change; the kills saved earlier for the
    same source, by tests the selection still holds, stay in the saved progress."""
    _project(mutation)
    module, tests = "prismatic_assets/mod.py", ["tests/test_mod.py"]
    name = "prismatic_assets.mod.x_f__mutmut_{}".format
    folder = mutation.OUT / "mod"
    meta = folder / "mutants" / "prismatic_assets" / "mod.py.meta"
    meta.parent.mkdir(parents=True)
    (folder / "prismatic_assets").mkdir()
    (folder / "prismatic_assets" / "mod.py").write_text((mutation.ROOT / module).read_text())
    meta.write_text(json.dumps(_meta({name(1): 1, name(2): 0, name(3): 36, name(4): None})))
    assert mutation.save_progress(module, tests) == 3
    meta.write_text(json.dumps(_meta({name(1): None, name(2): None, name(3): None, name(4): 1})))  # reset, one run
    assert mutation.save_progress(module, tests + ["tests/test_new.py"]) == 3
    saved = json.loads((mutation.PROGRESS / "mod.json").read_text())
    # the kills stand, the survivor runs again, the new verdict is kept
    assert saved["mutmut_meta"]["exit_code_by_key"] == {name(1): 1, name(2): None, name(3): 36, name(4): 1}
    meta.write_text(json.dumps(_meta({name(1): None, name(2): None, name(3): None, name(4): None})))
    assert mutation.save_progress(module, ["tests/test_new.py"]) == 0  # test_mod.py left out: its kills may not hold


def test_save_progress_refuses_a_working_copy_of_other_code(mutation):
    _project(mutation)
    module = "prismatic_assets/mod.py"
    with pytest.raises(SystemExit, match="no run to save"):
        mutation.save_progress(module, ["tests/test_mod.py"])
    folder = mutation.OUT / "mod"
    (folder / "mutants" / "prismatic_assets").mkdir(parents=True)
    (folder / "prismatic_assets").mkdir()
    (folder / "prismatic_assets" / "mod.py").write_text("def f(x):\n    return x - 1\n")
    (folder / "mutants" / "prismatic_assets" / "mod.py.meta").write_text(json.dumps(_meta({})))
    with pytest.raises(SystemExit, match="changed since its run"):
        mutation.save_progress(module, ["tests/test_mod.py"])
    assert not (mutation.PROGRESS / "mod.json").exists()


def test_a_module_with_saved_progress_and_no_report_shows_how_far_it_got(mutation):
    progress = {"module": "pkg/other.py", "source": "x", "tests": ["tests/o.py"], "seconds": 60.0, "checked": 30,
                "mutants": 80, "saved": "2026-12-06 14:30", "mutmut_meta": {}}
    mutation.PROGRESS.mkdir(parents=True)
    (mutation.PROGRESS / "pkg.other.json").write_text(json.dumps(progress))
    (row,) = [line for line in mutation.summary(CONF) if line.startswith("| pkg/other.py")]
    assert row.startswith("| pkg/other.py | not run: in progress, 30 of 80 mutants checked (saved 2026-12-06;")


def test_the_preload_plugin_loads_in_a_collect_only_run_what_a_test_run_loaded(tmp_path):
    """mutmut forks each mutant's tests from a collect-only process: the plugin makes that process
    import what the first real run ended with (a module imported inside a test here), leaving the
    test modules and conftests to pytest."""
    import os
    import subprocess
    import sys

    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("def test_a():\n    import wave\n\n    assert wave\n")
    (tmp_path / "tests" / "conftest.py").write_text(
        "import sys\n\n\ndef pytest_collection_finish(session):\n"
        "    print('WAVE', 'wave' in sys.modules)\n")
    listed = tmp_path / "preload.txt"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts"), "PRISMATIC_MUTATION_PRELOAD": str(listed)}

    def pytest_run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "pytest", "-p", "mutation_preload", "-p", "no:cacheprovider",
                               "-s", *args, "tests"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout

    assert "WAVE False" in pytest_run("--collect-only", "-q")  # nothing listed yet: nothing preloaded
    assert not listed.exists()
    assert "WAVE False" in pytest_run("-q")
    names = listed.read_text().split()
    assert "wave" in names and "pytest" in names
    assert not {"test_a", "conftest", "tests.test_a", "tests.conftest"} & set(names)
    assert "WAVE True" in pytest_run("--collect-only", "-q")
    written = listed.read_text()
    pytest_run("-q")  # a later run keeps the first run's list
    assert listed.read_text() == written


def test_the_recheck_server_forks_each_run_apart_and_stops_one_that_loops(mutation, tmp_path):
    """Each run is a process of its own (what one run changes, the next does not see); a run past
    its limit is killed and reported as a timeout, and the server goes on serving."""
    import subprocess
    import time

    folder = _mutants_folder(tmp_path)
    (folder / "mutants" / "tests" / "test_loop.py").write_text(
        "import os\n\nimport mod\n\n\n"
        "def test_state():\n    assert not hasattr(mod, 'touched')\n    mod.touched = 1\n\n\n"
        "def test_loop():\n    while os.environ['MUTANT_UNDER_TEST'] == 'loop':\n        pass\n")
    with mutation._ForkRunner(folder, ["-p", "no:cacheprovider"], ["tests/test_loop.py"]) as runner:
        assert runner.run("", ["tests/test_loop.py"], None).returncode == 0
        assert runner.run("", ["tests/test_loop.py"], None).returncode == 0  # mod.touched did not carry over
        began = time.perf_counter()
        with pytest.raises(subprocess.TimeoutExpired):
            runner.run("loop", ["tests/test_loop.py::test_loop"], 2.0)
        assert time.perf_counter() - began < 20
        done = runner.run("mod.x_f__mutmut_2", ["tests/test_mod.py"], None)
        assert done.returncode == 1 and "FAILED tests/test_mod.py::test_big" in done.stdout
