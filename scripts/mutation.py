"""Mutation testing with mutmut, one module at a time, outside CI (slow: minutes to hours a module).

    python scripts/mutation.py                      # every module of [tool.prismatic-mutation.modules]
    python scripts/mutation.py prismatic_assets/core/gvendi.py ...
    python scripts/mutation.py --survivors MODULE   # run the last survivors again against today's tests
                                                    # (stopped, it resumes: what it killed is not run again)
    python scripts/mutation.py --no-recheck MODULE  # a first pass before adding tests: --survivors rechecks
    python scripts/mutation.py --summary            # scores per module and package from earlier runs

For each module: copy the package, its tests and profiles into build/mutation/<module>/,
write mutmut's settings there (the module to mutate, the tests that pin it, lines never
mutated; all from [tool.prismatic-mutation] in pyproject.toml), run `mutmut run` with one
worker, run each of its survivors once more against the whole selection (`recheck`), and
write the run's report, docs/mutation/runs/<module>.json: the count of each outcome, every
survivor with its diff, each mutant's outcome where it is not a plain kill, and the wall time
of mutmut's run (summed over the invocations of a run stopped and resumed). The reports are
part of the project, so the scores and `--survivors` work from a fresh clone; mutmut's
state stays in the module's copy under build/mutation/, so a run stopped part-way on this
machine continues where it stopped.

    python scripts/mutation.py --docs               # write docs/MUTATION.md and the README's per-package score table
    python scripts/mutation.py --save-progress MODULE  # keep a stopped whole run's verdicts in docs/mutation/progress/

A whole run of some modules takes hours, longer than one machine may be lent. Stopped (SIGTERM,
or killed and then `--save-progress`), it writes mutmut's verdicts so far, and the kills its
recheck has made (kept in the working copy as it goes), to docs/mutation/progress/<module>.json;
committed, they let the run continue on a fresh clone: a new working copy starts from them while
the module's source is the same and its test selection still holds every test file they were
made with, and the file goes when the run finishes. Survivors run through mutmut again only
when those test files (or a conftest.py above them) changed since; the recheck runs none again
that it ran and did not kill against the same tests (kept with the progress, then the report,
so a `--survivors` rerun rechecks only what new tests may kill).

A survivor that no test can kill (it changes no behaviour: a default argument spelled out,
a performance-only flag) is explained in docs/mutation/<module>.toml with a one-line reason,
and the scores count it as equivalent. Those files hold the module's source hash: after the
module changes, its reasons count for nothing until they are checked again (mutant numbers
shift) and the hash is renewed (`--docs` prints the new one).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mutation"
REASONS = ROOT / "docs" / "mutation"
#: Each module's last report (committed: --docs and --survivors read it on any machine).
RUNS = REASONS / "runs"
#: Each unfinished whole run's verdicts so far (committed by --save-progress: a run resumes on another machine).
PROGRESS = REASONS / "progress"
DOC = ROOT / "docs" / "MUTATION.md"
#: A pytest plugin that loads, in mutmut's fork server, the modules a test run loads (each mutant
#: then starts with them); copied into each working copy's PLUGINS folder, with its ENV variable.
PRELOAD_PLUGIN = ROOT / "scripts" / "mutation_preload.py"
PLUGINS = "plugins"
PRELOAD_ENV = "PRISMATIC_MUTATION_PRELOAD"
#: In a working copy: the whole selection's kills so far (name -> test), written as the recheck goes,
#: so that a recheck stopped part-way keeps them (`--save-progress` carries them to a fresh clone).
RECHECK_LOG = "rechecked.json"
#: In a working copy: the survivors the recheck ran and did not kill (name -> digest of the tests it ran
#: them against): a later recheck skips those whose tests are unchanged (it would run them for nothing).
SURVIVED_LOG = "recheck-survived.json"
#: The recheck's test server: it forks each pytest run from one process that did the imports once.
FORKRUN = ROOT / "scripts" / "mutation_forkrun.py"
README = ROOT / "README.md"
#: The README's score table sits between these two lines (written by --docs).
README_BEGIN, README_END = "<!-- mutation-score: begin -->", "<!-- mutation-score: end -->"
#: What mutmut's `results --all true` calls each outcome, and what a score counts it as.
KILLED = ("killed", "timeout", "segfault", "caught by type check", "killed by the whole selection")
#: A survivor of mutmut's run that the module's whole test selection kills (see `recheck`).
WHOLE = KILLED[-1]
#: What a score counts as not killed (any other outcome means the run did not finish).
NOT_KILLED = ("survived", "no tests")
#: mutmut's exit codes of a mutant's run that are no kill (mutmut.stats.status_by_exit_code): survived (0),
#: interrupted (2), no tests (5, 33), skipped (34), suspicious (35). A resumed run runs those again.
NOT_KILLED_CODES = (0, 2, 5, 33, 34, 35)


def settings() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["prismatic-mutation"]


def slug(module: str) -> str:
    return module.removeprefix("prismatic_assets/").removesuffix(".py").replace("/", ".")


def _test_env(folder: Path) -> dict[str, str]:
    """The environment of test runs in a working copy: no PYTHONPATH of ours (mutants/ goes first)
    but the preload plugin's folder, where the plugin keeps the modules a test run loads, one thread."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(folder / PLUGINS)
    env[PRELOAD_ENV] = str(folder / "preload-modules.txt")
    return env


def _mutmut(folder: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = _test_env(folder)
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)


def prepare(module: str, tests: list[str], conf: dict) -> Path:
    """The module's working copy with its [tool.mutmut] settings (mutmut's state is kept: it resumes).

    The tests and the settings are written anew every time, so survivors can be run again
    against new tests, and a changed setting reclassifies what it concerns. The package is
    copied anew too; after a change of the mutated module itself the copy starts from scratch
    (its mutants and their results were made from the old code)."""
    folder = OUT / slug(module)
    copied = folder / module
    if copied.is_file() and copied.read_bytes() != (ROOT / module).read_bytes():
        shutil.rmtree(folder)  # mutmut's mutants and results are of the old code: start again
    if (folder / "pyproject.toml").is_file():
        # mutmut maps each test to the functions it runs once, when it first sees the test: a
        # test changed since then (a new assertion, a fixture scope) would keep its old map.
        changed = [t for t in tests if (ROOT / t).is_file()
                   and (not (folder / t).is_file() or (folder / t).read_bytes() != (ROOT / t).read_bytes())]
        stats = folder / "mutants" / "mutmut-stats.json"
        if changed and stats.is_file():
            stats.unlink()
        for name in ("prismatic_assets", "tests"):  # mutmut copies the modules it does not mutate on each run
            shutil.copytree(ROOT / name, folder / name, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("prismatic_assets", "tests", "resources", "benchmarks"):  # tests import benchmarks
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        resume_progress(module, tests, folder)
    (folder / PLUGINS).mkdir(exist_ok=True)
    shutil.copy2(PRELOAD_PLUGIN, folder / PLUGINS / PRELOAD_PLUGIN.name)
    mutmut = {"source_paths": ["prismatic_assets"], "only_mutate": [module],
              "pytest_add_cli_args_test_selection": tests,
              "pytest_add_cli_args": ["-p", PRELOAD_PLUGIN.stem, *conf["pytest_args"]],
              "do_not_mutate_patterns": conf["skip_lines"], "also_copy": ["resources", "benchmarks"],
              "use_git_change_detection": False, "timeout_constant": conf["timeout_constant"],
              "timeout_multiplier": conf["timeout_multiplier"],
              # each mutant's process forks from a server that ran no test: the tests open DuckDB,
              # torch and thread pools, and a process forked from one that did can deadlock
              "process_isolation": "forkserver"}
    lines = [f"{key} = {json.dumps(value)}" for key, value in mutmut.items()]
    text = (ROOT / "pyproject.toml").read_text() + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n"
    (folder / "pyproject.toml").write_text(text)
    return folder


def _meta(module: str, folder: Path) -> Path:
    """mutmut's record of a module's mutants in a working copy: verdicts (exit codes) and function hashes."""
    return folder / "mutants" / (module + ".meta")


def save_progress(module: str, tests: list[str]) -> int:
    """Write the verdicts a stopped whole run has reached to docs/mutation/progress/; how many there are."""
    folder = OUT / slug(module)
    meta = _meta(module, folder)
    if not meta.is_file() or not (folder / module).is_file():
        raise SystemExit(f"{module}: no run to save in {folder}")
    if (folder / module).read_bytes() != (ROOT / module).read_bytes():
        raise SystemExit(f"{module} changed since its run in {folder} began: its verdicts are of other code")
    data = json.loads(meta.read_text())
    path = PROGRESS / f"{slug(module)}.json"
    if path.is_file():
        # mutmut forgets every verdict when its test settings change (a new pytest flag): a kill
        # saved before, for this source and tests the selection still holds, is kept, not lost.
        saved = json.loads(path.read_text())
        if saved["source"] == source_hash(module) and set(saved["tests"]) <= set(tests):
            earlier = saved["mutmut_meta"]["exit_code_by_key"]
            data["exit_code_by_key"] = {
                name: earlier[name] if code is None and earlier.get(name) not in (None, *NOT_KILLED_CODES) else code
                for name, code in data["exit_code_by_key"].items()}
            _log_rechecked(folder, _held(saved.get("rechecked", {}), tests))
            _log_json(folder / SURVIVED_LOG, saved.get("recheck_survived", {}))
    done = sum(code is not None for code in data["exit_code_by_key"].values())
    spent = folder / "mutmut-seconds"
    progress = {"module": module, "source": source_hash(module), "tests": tests,
                "tests_digest": tests_digest(folder, tests),  # what the verdicts were reached with
                "seconds": float(spent.read_text()) if spent.is_file() else 0.0,
                "checked": done, "mutants": len(data["exit_code_by_key"]),
                "saved": time.strftime("%Y-%m-%d %H:%M"), "mutmut_meta": data,
                "rechecked": rechecked_so_far(folder, tests), "recheck_survived": _read_json(folder / SURVIVED_LOG)}
    PROGRESS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(progress, indent=1, sort_keys=True) + "\n")
    return done


def resume_progress(module: str, tests: list[str], folder: Path) -> int:
    """Seed a new working copy with a saved unfinished run's verdicts; how many (0: none that apply).

    mutmut keeps a verdict from its record while the mutated function's hash is unchanged, and
    runs the mutants that have none: those not reached yet and those not killed (tests may have
    been added since; while the selection's test files are those the verdicts were reached with,
    survivors keep theirs). A saved run counts only for the same source and a test selection
    that still holds its test files (more tests kill no fewer mutants)."""
    path = PROGRESS / f"{slug(module)}.json"
    if not path.is_file():
        return 0
    saved = json.loads(path.read_text())
    if saved["source"] != source_hash(module) or not set(saved["tests"]) <= set(tests):
        print(f"{module}: the saved progress {path.relative_to(ROOT)} is of other code or tests; starting over",
              flush=True)
        return 0
    data = saved["mutmut_meta"]
    # Tests may have been added since: the mutants that were not killed run again (mutmut runs
    # every mutant without a verdict); kills (timeouts and segfaults included) stand, and so do
    # the whole selection's kills of mutmut's survivors (they keep mutmut's verdict and their kill).
    rechecked = _held(saved.get("rechecked", {}), tests)
    same_tests = saved.get("tests_digest") == tests_digest(ROOT, tests)
    data = {**data, "exit_code_by_key": {
        name: None if code in NOT_KILLED_CODES and name not in rechecked and not same_tests else code
        for name, code in data["exit_code_by_key"].items()}}
    meta = _meta(module, folder)
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(data))
    _log_rechecked(folder, rechecked)
    _log_json(folder / SURVIVED_LOG, saved.get("recheck_survived", {}))
    (folder / "mutmut-seconds").write_text(f"{saved['seconds']:.1f}")
    print(f"{module}: resuming from {path.relative_to(ROOT)}: {saved['checked']} of {saved['mutants']} "
          f"mutants checked{' (same tests: survivors keep their verdicts)' if same_tests else ''}", flush=True)
    return saved["checked"]


def _held(kills: dict[str, str], tests: list[str]) -> dict[str, str]:
    """The kills (name -> test id) made by a test file the selection still holds."""
    return {name: test for name, test in kills.items() if test.split("::")[0] in tests}


def rechecked_so_far(folder: Path, tests: list[str]) -> dict[str, str]:
    """The whole selection's kills recorded in a working copy (by tests the selection still holds)."""
    log = folder / RECHECK_LOG
    return _held(json.loads(log.read_text()), tests) if log.is_file() else {}


def _log_rechecked(folder: Path, kills: dict[str, str]) -> None:
    """Add kills to the working copy's recheck log."""
    _log_json(folder / RECHECK_LOG, kills)


def _read_json(path: Path) -> dict[str, str]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _log_json(log: Path, entries: dict[str, str]) -> None:
    """Add entries to a working copy's log (written whole, then renamed: a stop never leaves half)."""
    if not entries:
        return
    known = _read_json(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    partial = log.with_suffix(".partial")
    partial.write_text(json.dumps({**known, **entries}, indent=1, sort_keys=True) + "\n")
    partial.replace(log)


def tests_digest(root: Path, files: list[str]) -> str:
    """Test files under `root` and every conftest.py above them, by content: what a recheck ran a
    survivor against, or what a run's verdicts were reached with."""
    found = {root / test for test in files}
    found |= {p / "conftest.py" for test in files for p in (root / test).parents
              if (p == root or root in p.parents) and (p / "conftest.py").is_file()}
    h = hashlib.sha256()
    for path in sorted(found):
        h.update(str(path.relative_to(root)).encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return h.hexdigest()[:16]


def outcomes(folder: Path) -> dict[str, str]:
    """mutant name -> outcome, from `mutmut results --all true`."""
    done = _mutmut(folder, "results", "--all", "true")
    found = {}
    for line in done.stdout.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def source_hash(module: str) -> str:
    """The first 16 hex digits of the sha256 of a module's source: which version a run or a reason is for."""
    return hashlib.sha256((ROOT / module).read_bytes()).hexdigest()[:16]


_SHARED = re.compile(r"""@pytest\.fixture\(\s*scope\s*=\s*["'](?:module|class|package|session)["'][^)]*\)\s*\n"""
                     r"""(?:\s*@.*\n)*\s*def (\w+)""")


def shared_fixture_tests(root: Path, tests: list[str]) -> list[str]:
    """The selected test files that use a fixture set up once for several tests (scope module,
    class, package or session, defined in the file or in a conftest.py above it): the only
    ones whose kills mutmut's map can miss."""
    chosen = []
    for test in tests:
        path = root / test
        if not path.is_file():
            continue
        text = path.read_text()
        if _SHARED.search(text):
            chosen.append(test)
            continue
        shared = [name for conftest in (p / "conftest.py" for p in path.parents if root in p.parents or p == root)
                  if conftest.is_file() for name in _SHARED.findall(conftest.read_text())]
        if any(re.search(rf"\b{name}\b", text) for name in shared):
            chosen.append(test)
    return chosen


class _ForkRunner:
    """pytest runs in a working copy's mutants/, each forked from one server that collected the
    tests and loaded what they load (scripts/mutation_forkrun.py): a run skips ~10 s of imports."""

    def __init__(self, folder: Path, options: list[str], files: list[str]) -> None:
        self.folder = folder
        env = {**_test_env(folder), "PY_IGNORE_IMPORTMISMATCH": "1"}
        if (folder / PLUGINS).is_dir():  # a working copy that mutmut ran in has the plugin
            options = ["-p", PRELOAD_PLUGIN.stem, *options]
        self.log = folder / "recheck-run.log"
        self.server = subprocess.Popen([sys.executable, str(FORKRUN), *options, *files], cwd=folder / "mutants",
                                       env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def run(self, mutant: str, tests: list[str], limit: float | None) -> subprocess.CompletedProcess:
        """pytest -x on `tests` with `mutant` active (""; none); TimeoutExpired past `limit` seconds."""
        assert self.server.stdin is not None and self.server.stdout is not None
        request = {"mutant": mutant, "tests": tests, "limit": 1e9 if limit is None else limit, "log": str(self.log)}
        self.server.stdin.write(json.dumps(request) + "\n")
        self.server.stdin.flush()
        for line in self.server.stdout:
            if line.startswith("RESULT "):
                code = json.loads(line[len("RESULT "):])["code"]
                break
        else:
            raise SystemExit(f"the test server of {self.folder} stopped (exit code {self.server.wait()})")
        if code is None:
            raise subprocess.TimeoutExpired(tests, limit or 0.0)
        return subprocess.CompletedProcess(tests, code, self.log.read_text(errors="replace"), "")

    def __enter__(self) -> _ForkRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server.stdin is not None:
            self.server.stdin.close()
        try:
            self.server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.server.kill()
            self.server.wait()


def recheck(folder: Path, tests: list[str], conf: dict, names: list[str]) -> dict[str, str]:
    """Run each survivor against more of the module's tests; name -> the test that killed it.

    mutmut runs a mutant against the tests it saw call the mutated function, and it sees a
    call made while a module-scoped fixture is set up only in the first test that uses the
    fixture: a mutant that only the later tests of that file catch survives mutmut. Here each
    survivor runs once against every test of the files that use such a fixture
    (`shared_fixture_tests`) and hold a test mapped to its function, stopping at the first
    failure; it counts as killed when the failing test passes on the unmutated code, run
    alone (once per test: a test that fails by itself, e.g. on time under load, kills nothing).
    A survivor it ran before against the same test files (`SURVIVED_LOG`) is not run again.
    """
    shared = shared_fixture_tests(folder / "mutants", tests)
    stats_file = folder / "mutants" / "mutmut-stats.json"
    mapped = json.loads(stats_file.read_text()).get("tests_by_mangled_function_name", {}) if stats_file.is_file() \
        else None
    files = {}
    for name in names:
        if mapped is None:
            files[name] = shared
        else:
            reached = {test.split("::")[0] for test in mapped.get(name.rsplit("__mutmut_", 1)[0], [])}
            files[name] = [test for test in shared if test in reached]
    files = {name: chosen for name, chosen in files.items() if chosen}
    digests = {name: tests_digest(folder / "mutants", chosen) for name, chosen in files.items()}
    survived_before = _read_json(folder / SURVIVED_LOG)
    known = sorted(name for name in files if survived_before.get(name) == digests[name])
    if known:
        print(f"  recheck: {len(known)} survivors ran before against the same tests and survived: not run again",
              flush=True)
    files = {name: chosen for name, chosen in files.items() if name not in known}
    if not files:
        return {}
    used = sorted({test for chosen in files.values() for test in chosen})
    with _ForkRunner(folder, conf.get("pytest_args", []), used) as runner:
        began = time.perf_counter()
        clean = runner.run("", used, None)
        if clean.returncode != 0:
            raise SystemExit(f"the selected tests fail on the unmutated code in {folder / 'mutants'}:\n"
                             + "\n".join(clean.stdout.strip().splitlines()[-5:]))
        limit = 3 * (time.perf_counter() - began) + 60  # a mutant that makes them loop is stopped, not counted
        passes_alone: dict[str, bool] = {}  # test -> passes by itself on the unmutated code
        killed = {}
        for i, (name, chosen) in enumerate(files.items(), 1):
            try:
                done = runner.run(name, chosen, limit)
            except subprocess.TimeoutExpired:
                print(f"  recheck {i}/{len(files)} {name}: ran past {limit:.0f} s, not counted", flush=True)
                continue
            failed = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
            if done.returncode != 0 and failed:
                test = failed.group(1)
                if test not in passes_alone:
                    passes_alone[test] = runner.run("", [test], limit).returncode == 0
                if passes_alone[test]:
                    killed[name] = test
                    _log_rechecked(folder, {name: test})
            if name not in killed:
                _log_json(folder / SURVIVED_LOG, {name: digests[name]})
            print(f"  recheck {i}/{len(files)} {name}: "
                  f"{'killed by ' + killed[name] if name in killed else 'survived'}", flush=True)
    return killed


def run_module(module: str, tests: list[str], conf: dict, survivors_only: bool = False,
               rechecking: bool = True) -> dict:
    """mutmut over `module`, then its survivors against the whole selection (`recheck`) unless
    `rechecking` is off: a first pass when tests are about to be added, whose `--survivors`
    rerun rechecks only what the new tests leave."""
    folder = prepare(module, tests, conf)
    report = RUNS / f"{slug(module)}.json"
    names: list[str] = []
    previous: dict = {}
    if survivors_only:
        if not report.is_file():
            raise SystemExit(f"{module} has not run yet: run it whole first")
        previous = json.loads(report.read_text())
        if not set(previous["tests"]) <= set(tests):
            raise SystemExit(f"{module}: tests were taken out of its selection since its last run "
                             f"({sorted(set(previous['tests']) - set(tests))}), so its kills may not hold: "
                             "run it whole")
        # A survivors rerun that was stopped keeps mutmut's verdicts of the mutants it got to:
        # those it killed are not run again (mutmut reruns every name it is given).
        known = outcomes(folder)
        names = sorted(name for name in previous["survivors"] if known.get(name) not in KILLED)
        if previous.get("source") == source_hash(module):  # its recheck's survivors skip a recheck of the same tests
            _log_json(folder / SURVIVED_LOG, previous.get("recheck_survived", {}))
    # A whole run may take several invocations (each stopped, then resumed from mutmut's state):
    # its time is their sum, kept in the working copy and written even when one is stopped.
    spent_file = folder / "mutmut-seconds"
    spent = float(spent_file.read_text()) if spent_file.is_file() and not survivors_only else 0.0
    began = time.perf_counter()

    mutmut_over = False  # once it is, its time is written: a stop in the recheck adds nothing to it

    def stopped(signum, frame):
        if not survivors_only:
            if not mutmut_over:
                spent_file.write_text(f"{spent + time.perf_counter() - began:.1f}")
            if _meta(module, folder).is_file():
                save_progress(module, tests)
        raise SystemExit(f"{module}: stopped; mutmut's state and the recheck's kills are kept and a rerun "
                         f"continues from them (on another clone too, once docs/mutation/progress/ is committed)")

    before = signal.signal(signal.SIGTERM, stopped)
    try:
        if survivors_only and not names:  # all killed by a rerun that was stopped: `mutmut run` would run all
            done = subprocess.CompletedProcess([], 0, "", "")
        else:
            done = _mutmut(folder, "run", "--max-children", "1", *names)
        seconds = spent + time.perf_counter() - began
        if survivors_only:  # the module's time is that of its whole run
            seconds = previous["seconds"]
        else:
            spent_file.write_text(f"{seconds:.1f}")
        mutmut_over = True
        (folder / "run.log").write_text(done.stdout[-20000:] + "\n" + done.stderr[-20000:])
        found = outcomes(folder)
        if survivors_only:
            # mutmut forgets its results when the test selection changes; a mutant an earlier run
            # killed is still killed by a selection that holds every earlier test (a report lists
            # the outcome of each mutant that was not a plain kill).
            earlier = previous.get("all_outcomes", {})
            for name, outcome in found.items():
                if name not in names and outcome not in KILLED + NOT_KILLED:
                    found[name] = earlier.get(name, "killed")
        unfinished = sorted(name for name, outcome in found.items() if outcome not in KILLED + NOT_KILLED)
        said = done.stdout + done.stderr
        if any(line in said for line in ("Failed to run clean test", "failed to collect stats")):
            unfinished = unfinished or sorted(names or found)  # mutmut stopped first: nothing it shows is new
        if unfinished and report.is_file():
            # mutmut stops before any mutant when the tests fail on the unmutated code ("failed to
            # collect stats"): keep the last finished report instead of one that scores nothing.
            tail = "\n".join(said.strip().splitlines()[-3:])
            raise SystemExit(f"{module}: {len(unfinished)} of {len(found)} mutants not checked, the last report is "
                             f"kept. mutmut said:\n{tail}\nRun the module's tests in {folder} to see which one fails.")
        # Kills of the whole selection made before, for this source and a selection that still holds their
        # tests: by an earlier finished run, or by this run's recheck before it was stopped.
        rechecked = previous.get("rechecked", {}) if previous.get("source") == source_hash(module) else {}
        rechecked = _held(rechecked, tests) | rechecked_so_far(folder, tests)
        # Kept for the mutants mutmut still leaves alive, and for those it did not run this time (a survivors
        # rerun): the report names the test of every kill of the whole selection, however old.
        rechecked = {name: test for name, test in rechecked.items() if found.get(name) in NOT_KILLED + (WHOLE,)}
        unkilled = sorted(name for name, outcome in found.items() if outcome in NOT_KILLED and name not in rechecked)
        if rechecking:
            rechecked |= recheck(folder, tests, conf, unkilled)
    finally:
        signal.signal(signal.SIGTERM, before)
    for name in rechecked:
        found[name] = WHOLE
    counts: dict[str, int] = {}
    for outcome in found.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    survivors = {name: _mutmut(folder, "show", name).stdout for name, outcome in found.items()
                 if outcome in NOT_KILLED}
    result = {"module": module, "source": source_hash(module), "tests": tests, "seconds": round(seconds, 1),
              "exit_code": done.returncode, "counts": counts, "survivors": survivors,
              "outcomes": {name: found[name] for name in survivors},
              "all_outcomes": {name: outcome for name, outcome in found.items() if outcome != "killed"},
              "rechecked": rechecked,
              "recheck_survived": {name: digest for name, digest in _read_json(folder / SURVIVED_LOG).items()
                                   if name in survivors},
              "rechecking": rechecking,
              "finished": time.strftime("%Y-%m-%d %H:%M")}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if not survivors_only:
        (PROGRESS / f"{slug(module)}.json").unlink(missing_ok=True)  # finished: its report holds it all
    return result


def score(counts: dict[str, int], equivalent: int = 0) -> tuple[int, int, float]:
    """(killed, non-equivalent mutants, killed share) of one or more modules.

    Every mutant counts except the equivalent ones: a mutant that no selected test reaches
    ("no tests") is a gap like a survivor."""
    killed = sum(n for outcome, n in counts.items() if outcome in KILLED)
    total = sum(counts.values()) - equivalent
    return killed, total, (killed / total if total else float("nan"))


def mutant_prefix(module: str) -> str:
    """How mutmut names a module's mutants: prismatic_assets/core/ids.py -> prismatic_assets.core.ids.<name>."""
    return module.removesuffix(".py").replace("/", ".") + "."


def reasons(module: str) -> tuple[dict[str, str], dict[str, str], str | None]:
    """(equivalent: mutant name -> why, kept: mutant name -> why, problem) from docs/mutation/<module>.toml.

    `[[equivalent]]` groups change no behaviour and leave the score; `[[kept]]` groups are real
    survivors that no test on this machine can kill (a CUDA-only path): they stay "not killed"
    and only get their reason shown. Reasons count only for the module's source they were
    written for: otherwise (mutant numbers shift when the code changes) they are returned empty
    with the problem named."""
    path = REASONS / f"{slug(module)}.toml"
    if not path.is_file():
        return {}, {}, None
    data = tomllib.loads(path.read_text())
    if data.get("source") != source_hash(module):
        return {}, {}, (f"{path.relative_to(ROOT)} was written for source {data.get('source')}, the module is now "
                        f"{source_hash(module)}: check each reason against a new run, then renew `source`")
    prefix = mutant_prefix(module)
    found: dict[str, dict[str, str]] = {"equivalent": {}, "kept": {}}
    for kind, named in found.items():
        for group in data.get(kind, []):
            for name in group["mutants"]:
                if prefix + name in found["equivalent"] or prefix + name in found["kept"]:
                    raise SystemExit(f"{path}: {name} is explained twice")
                named[prefix + name] = group["reason"]
    return found["equivalent"], found["kept"], None


def changed_lines(diff: str) -> str:
    """The mutated line of a `mutmut show` diff, shortened: what the mutant turned the code into."""
    added = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    text = " / ".join(added) or "(line removed)"
    return text if len(text) <= 140 else text[:137] + "..."


def module_rows(conf: dict) -> list[dict]:
    """One row per configured module with its run's figures (or run=None)."""
    rows = []
    for module in conf["modules"]:
        path, progress = RUNS / f"{slug(module)}.json", PROGRESS / f"{slug(module)}.json"
        if not path.is_file() and progress.is_file():
            saved = json.loads(progress.read_text())
            rows.append({"module": module, "run": None, "unfinished":
                         f"in progress, {saved['checked']} of {saved['mutants']} mutants checked "
                         f"(saved {saved['saved'][:10]}; a rerun goes on from there)"})
            continue
        if not path.is_file():
            rows.append({"module": module, "run": None})
            continue
        run = json.loads(path.read_text())
        why, kept, problem = reasons(module)
        if run.get("source") != source_hash(module):
            why, kept, problem = {}, {}, problem or "the module changed after this run: run it again"
        unknown = sorted((set(why) | set(kept)) - set(run["survivors"]))
        if unknown:
            problem = f"explained but not survivors of this run: {unknown}"
        unfinished = sum(n for outcome, n in run["counts"].items() if outcome not in KILLED + NOT_KILLED)
        if unfinished:
            log = f"build/mutation/{slug(module)}/run.log"
            rows.append({"module": module, "run": None, "unfinished":
                         f"{unfinished} of {sum(run['counts'].values())} mutants not checked (see {log})"})
            continue
        equivalent = {name: reason for name, reason in why.items() if name in run["survivors"]}
        killed, total, share = score(run["counts"], len(equivalent))
        kept = {name: reason for name, reason in kept.items() if name in run["survivors"]}
        rows.append({"module": module, "run": run, "equivalent": equivalent, "kept": kept, "problem": problem,
                     "killed": killed, "total": total, "share": share})
    return rows


def summary(conf: dict) -> list[str]:
    """The score table: per module, then per package over the modules that ran."""
    lines = ["| module | mutants | killed | not killed | equivalent | score | run | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    packages: dict[str, list[int]] = {}
    for row in module_rows(conf):
        if row["run"] is None:
            lines.append(f"| {row['module']} | not run{': ' + row['unfinished'] if 'unfinished' in row else ''} "
                         "| | | | | | |")
            continue
        run, killed, total = row["run"], row["killed"], row["total"]
        if not run["counts"]:
            lines.append(f"| {row['module']} | 0 | | | | no mutants | {run['finished'][:10]} | "
                         f"{run['seconds'] / 60:.0f} |")
            continue
        timeouts = run["counts"].get("timeout", 0)
        shown = f"{killed} ({timeouts} by timeout)" if timeouts else f"{killed}"
        lines.append(f"| {row['module']} | {sum(run['counts'].values())} | {shown} | {total - killed} | "
                     f"{len(row['equivalent'])} | {row['share']:.1%} | {run['finished'][:10]} | "
                     f"{run['seconds'] / 60:.0f} |")
        package = packages.setdefault(_package(row["module"]), [0, 0])
        package[0] += killed
        package[1] += total
    for name, (killed, total) in packages.items():
        lines.append(f"| **{name}/** (the modules run) | | {killed} | {total - killed} | | {killed / total:.1%} | | |")
    return lines


def package_summary(conf: dict) -> list[str]:
    """The README's short table: per package, the modules run, their total and the weakest module."""
    lines = ["| package | modules run | mutants | killed | not killed | equivalent | score | lowest | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    packages: dict[str, list[dict]] = {}
    configured: dict[str, int] = {}
    for row in module_rows(conf):
        name = _package(row["module"])
        configured[name] = configured.get(name, 0) + 1
        if row["run"] is not None:
            packages.setdefault(name, []).append(row)
    for name, rows in packages.items():
        killed = sum(r["killed"] for r in rows)
        total = sum(r["total"] for r in rows)
        mutants = sum(sum(r["run"]["counts"].values()) for r in rows)
        equivalent = sum(len(r["equivalent"]) for r in rows)
        low = min((r for r in rows if r["total"]), key=lambda r: r["share"], default=None)
        lowest = f"{low['module'].rsplit('/', 1)[-1]} {low['share']:.1%}" if low else ""
        lines.append(f"| {name}/ | {len(rows)} of {configured[name]} | {mutants} | {killed} | {total - killed} | "
                     f"{equivalent} | {killed / total if total else float('nan'):.1%} | {lowest} | "
                     f"{_dates(rows)} |")
    return lines


def _dates(rows: list[dict]) -> str:
    """The day of the runs, or the first and last day."""
    days = sorted(r["run"]["finished"][:10] for r in rows)
    return days[0] if days[0] == days[-1] else f"{days[0]} to {days[-1]}"


def docs(conf: dict) -> list[str]:
    """docs/MUTATION.md: the scores, then every survivor: unexplained ones first, then the equivalent."""
    rows = module_rows(conf)
    out = ["# Mutation testing", "",
           "Written by `python scripts/mutation.py --docs` from the last run of each module",
           "(`make mutation`; not in CI). A mutant is one small change of the code (an operator, a",
           "constant, an argument dropped); it is killed when one of the module's tests (the",
           "`[tool.prismatic-mutation.modules]` table of pyproject.toml) fails on it. *Not killed*",
           "counts survivors and mutants that no selected test reaches. *Equivalent* survivors",
           "change no behaviour that a test may pin (a default argument spelled out, a",
           "performance-only flag); each has its reason in `docs/mutation/<module>.toml`, and the",
           "score leaves them out: score = killed / (mutants - equivalent). *Kept* survivors are",
           "real ones that no test on this machine can kill (a path taken on CUDA only); they",
           "have their reason in the same file and still count as not killed. A mutant *killed by",
           "timeout* made its tests run past mutmut's limit (5x their measured time + 30 s: a loop",
           "that no longer ends). Modules marked *not run* have no finished run. mutmut runs, for",
           "each mutant, the tests that called its function when it mapped them; a call made by a",
           "module-scoped fixture counts for the first test that set it up only. So each of",
           "mutmut's survivors then runs once against the module's whole selection: *killed by the",
           "whole selection* when a test fails on it and passes on the unmutated code (the test",
           "that killed it is in the run's report, `docs/mutation/runs/<module>.json`). Runs made",
           "before this second pass (their reports have no `rechecked` entry) may understate their",
           "module's score.",
           "", *summary(conf), ""]
    for row in rows:
        if row["run"] is None:
            continue
        run, equivalent, kept = row["run"], row["equivalent"], row["kept"]
        gaps = sorted((name for name in run["survivors"] if name not in equivalent and name not in kept),
                      key=_mutant_order)
        out += [f"## {row['module']}", "",
                f"Run {run['finished']} on source `{run['source']}`, {run['seconds'] / 60:.1f} min; tests: "
                + ", ".join(f"`{t}`" for t in run["tests"]) + ".", ""]
        if row["problem"]:
            out += [f"**The reasons do not count:** {row['problem']}.", ""]
        if not run["counts"]:
            out += ["No mutants: mutmut changes code inside functions, and this module has none that it "
                    "could change.", ""]
        unexplained = row["total"] - row["killed"] - len(kept) if run["counts"] else 0  # = len(gaps)
        if unexplained and run.get("rechecking") is False:
            out += [f"Not killed ({unexplained}) in a first pass that ran no survivor against the whole selection "
                    "(`--no-recheck`): some may be killed by it or by tests added since; the `--survivors` rerun "
                    "tells.", ""]
        elif gaps:
            out += [f"Not killed ({len(gaps)}): a test could tell these from the code and none does.", ""]
            out += [f"- `{_short(name)}` ({run.get('outcomes', {}).get(name, 'survived')}): "
                    f"`{changed_lines(run['survivors'][name])}`" for name in gaps]
            out.append("")
        out += _grouped(f"Not killed, kept ({len(kept)}): no test on this machine can kill these; they count "
                        "against the score.", kept, run)
        out += _grouped(f"Equivalent ({len(equivalent)}):", equivalent, run)
    return out


def _grouped(title: str, why: dict[str, str], run: dict) -> list[str]:
    """Survivors listed under their reasons."""
    by_reason: dict[str, list[str]] = {}
    for name, reason in why.items():
        by_reason.setdefault(reason, []).append(name)
    if not by_reason:
        return []
    out = [title, ""]
    for reason, names in by_reason.items():
        out.append(f"- {reason}")
        out += [f"  - `{_short(name)}`: `{changed_lines(run['survivors'][name])}`"
                for name in sorted(names, key=_mutant_order)]
    return out + [""]


def _package(module: str) -> str:
    """The folder a module sits in: prismatic_assets/core/ids.py -> core."""
    return module.rsplit("/", 2)[-2]


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _mutant_order(name: str) -> tuple[str, int]:
    function, _, number = name.rpartition("_")
    return function, int(number) if number.isdigit() else 0


def write_docs(conf: dict) -> None:
    DOC.write_text("\n".join(docs(conf)))
    text = README.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"README.md has no {README_BEGIN} ... {README_END} block for the score table")
    head, rest = text.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    table = package_summary(conf)
    README.write_text(head + README_BEGIN + "\n" + "\n".join(table) + "\n" + README_END + tail)
    for row in module_rows(conf):
        if row["run"] is not None:
            print(f"{row['module']}: source {source_hash(row['module'])}"
                  + (f" ({row['problem']})" if row["problem"] else ""))


def prune_reasons(conf: dict) -> list[str]:
    """Drop from docs/mutation/*.toml the mutants a later run killed; say what went."""
    said = []
    for module in conf["modules"]:
        path, report = REASONS / f"{slug(module)}.toml", RUNS / f"{slug(module)}.json"
        if not path.is_file() or not report.is_file():
            continue
        data = tomllib.loads(path.read_text())
        run = json.loads(report.read_text())
        if data.get("source") != source_hash(module) or run.get("source") != source_hash(module):
            continue  # reasons or run of other code: nothing to compare
        prefix = mutant_prefix(module)
        header = itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines())  # kept
        out = [*header, f"source = {json.dumps(data['source'])}"]
        gone = []
        for kind in ("equivalent", "kept"):
            for group in data.get(kind, []):
                names = [n for n in group["mutants"] if prefix + n in run["survivors"]]
                gone += [n for n in group["mutants"] if prefix + n not in run["survivors"]]
                if names:
                    out += ["", f"[[{kind}]]", f"reason = {json.dumps(group['reason'], ensure_ascii=False)}",
                            "mutants = [" + ", ".join(json.dumps(n, ensure_ascii=False) for n in names) + "]"]
        if gone:
            path.write_text("\n".join(out) + "\n")
            said.append(f"{path.relative_to(ROOT)}: {len(gone)} killed since: {', '.join(gone)}")
    return said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: every configured one, in order)")
    parser.add_argument("--summary", action="store_true", help="print the scores of earlier runs")
    parser.add_argument("--docs", action="store_true",
                        help="write docs/MUTATION.md and the README's per-package score table from the last runs")
    parser.add_argument("--prune", action="store_true",
                        help="drop the reasons of mutants that a later run killed from docs/mutation/*.toml")
    parser.add_argument("--survivors", action="store_true",
                        help="run only the survivors of each module's last run again (after adding tests)")
    parser.add_argument("--save-progress", action="store_true",
                        help="write the verdicts of a stopped whole run to docs/mutation/progress/ (commit it: "
                             "the run then continues from them on a fresh clone)")
    parser.add_argument("--no-recheck", action="store_true",
                        help="skip running survivors against the whole selection (a pass before adding tests; "
                             "the --survivors rerun after them rechecks what is left)")
    args = parser.parse_args()
    conf = settings()
    if args.summary:
        print("\n".join(summary(conf)))
        return
    if args.prune:
        print("\n".join(prune_reasons(conf)) or "every reason names a survivor")
        return
    if args.docs:
        write_docs(conf)
        return
    unknown = [m for m in args.modules if m not in conf["modules"]]
    if unknown:
        raise SystemExit(f"{unknown} have no entry in [tool.prismatic-mutation.modules] of pyproject.toml: "
                         "add the module with the tests that pin it")
    if args.save_progress:
        if not args.modules:
            parser.error("--save-progress needs the modules whose runs to save")
        for module in args.modules:
            done = save_progress(module, conf["modules"][module])
            print(f"{module}: {done} verdicts kept in {(PROGRESS / (slug(module) + '.json')).relative_to(ROOT)}")
        return
    for module in args.modules or list(conf["modules"]):
        result = run_module(module, conf["modules"][module], conf, survivors_only=args.survivors,
                            rechecking=not args.no_recheck)
        killed, total, share = score(result["counts"])
        print(f"{module}: {killed}/{total} killed ({share:.1%}), {result['counts']}, {result['seconds'] / 60:.1f} min",
              flush=True)


if __name__ == "__main__":
    main()
