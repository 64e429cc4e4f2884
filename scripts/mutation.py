"""Mutation testing with mutmut, one module at a time, outside CI (slow: minutes to hours a module).

    python scripts/mutation.py                      # every module of [tool.prismatic-mutation.modules]
    python scripts/mutation.py prismatic_assets/core/gvendi.py ...
    python scripts/mutation.py --survivors MODULE   # run the last survivors again against today's tests
    python scripts/mutation.py --summary            # scores per module and package from earlier runs

For each module: copy the package, its tests and profiles into build/mutation/<module>/,
write mutmut's settings there (the module to mutate, the tests that pin it, lines never
mutated; all from [tool.prismatic-mutation] in pyproject.toml), run `mutmut run` with one
worker, and write build/mutation/<module>.json: the count of each outcome, every survivor
with its diff, and the wall time. A module's copy keeps mutmut's state, so a run stopped
part-way continues where it stopped. This script changes nothing outside build/mutation/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "mutation"
#: What mutmut's `results --all true` calls each outcome, and what a score counts it as.
KILLED = ("killed", "timeout", "segfault", "caught by type check")
SURVIVED = ("survived",)


def settings() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["prismatic-mutation"]


def slug(module: str) -> str:
    return module.removeprefix("prismatic_assets/").removesuffix(".py").replace("/", ".")


def _mutmut(folder: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # mutmut puts its mutants/ first itself
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=timeout)


def prepare(module: str, tests: list[str], conf: dict) -> Path:
    """The module's working copy with its [tool.mutmut] settings (kept if it exists: mutmut resumes).

    The tests are copied anew every time, so survivors can be run again against new tests."""
    folder = OUT / slug(module)
    if (folder / "pyproject.toml").is_file():
        shutil.copytree(ROOT / "tests", folder / "tests", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("prismatic_assets", "tests", "resources"):
            shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
        mutmut = {"source_paths": ["prismatic_assets"], "only_mutate": [module],
                  "pytest_add_cli_args_test_selection": tests, "pytest_add_cli_args": conf["pytest_args"],
                  "do_not_mutate_patterns": conf["skip_lines"], "also_copy": ["resources"],
                  "use_git_change_detection": False}
        lines = [f"{key} = {json.dumps(value)}" for key, value in mutmut.items()]
        text = (ROOT / "pyproject.toml").read_text() + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n"
        (folder / "pyproject.toml").write_text(text)
    return folder


def outcomes(folder: Path) -> dict[str, str]:
    """mutant name -> outcome, from `mutmut results --all true`."""
    done = _mutmut(folder, "results", "--all", "true")
    found = {}
    for line in done.stdout.splitlines():
        m = re.match(r"\s+(\S+): (.+)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def run_module(module: str, tests: list[str], conf: dict, survivors_only: bool = False) -> dict:
    folder = prepare(module, tests, conf)
    report = OUT / f"{slug(module)}.json"
    names: list[str] = []
    if survivors_only:
        if not report.is_file():
            raise SystemExit(f"{module} has not run yet: run it whole first")
        names = sorted(json.loads(report.read_text())["survivors"])
    began = time.perf_counter()
    done = _mutmut(folder, "run", "--max-children", "1", *names)
    seconds = time.perf_counter() - began
    if survivors_only:  # the module's time is that of its whole run
        seconds = json.loads(report.read_text())["seconds"]
    (folder / "run.log").write_text(done.stdout[-20000:] + "\n" + done.stderr[-20000:])
    found = outcomes(folder)
    counts: dict[str, int] = {}
    for outcome in found.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    survivors = {name: _mutmut(folder, "show", name).stdout for name, outcome in found.items()
                 if outcome in SURVIVED}
    result = {"module": module, "tests": tests, "seconds": round(seconds, 1), "exit_code": done.returncode,
              "counts": counts, "survivors": survivors, "finished": time.strftime("%Y-%m-%d %H:%M")}
    report.write_text(json.dumps(result, indent=1))
    return result


def score(counts: dict[str, int], equivalent: int = 0) -> tuple[int, int, float]:
    """(killed, non-equivalent mutants that ran, killed share) of one or more modules."""
    killed = sum(n for outcome, n in counts.items() if outcome in KILLED)
    survived = sum(n for outcome, n in counts.items() if outcome in SURVIVED) - equivalent
    total = killed + survived
    return killed, total, (killed / total if total else float("nan"))


def summary(conf: dict) -> list[str]:
    equivalent = conf.get("equivalent", {})
    lines = ["| module | mutants | killed | survived | equivalent | no tests | score | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    packages: dict[str, dict[str, int]] = {}
    for module in conf["modules"]:
        path = OUT / f"{slug(module)}.json"
        if not path.is_file():
            lines.append(f"| {module} | not run | | | | | | |")
            continue
        data = json.loads(path.read_text())
        counts = data["counts"]
        eq = len([name for name in equivalent if name in data["survivors"]])
        killed, total, share = score(counts, eq)
        lines.append(f"| {module} | {sum(counts.values())} | {killed} | {total - killed} | {eq} | "
                     f"{counts.get('no tests', 0)} | {share:.1%} | {data['seconds'] / 60:.0f} |")
        package = packages.setdefault(module.split("/")[1], {"killed": 0, "total": 0})
        package["killed"] += killed
        package["total"] += total
    for name, p in packages.items():
        lines.append(f"| **{name}/** (modules run) | | {p['killed']} | {p['total'] - p['killed']} | | | "
                     f"{p['killed'] / p['total']:.1%} | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules to mutate (default: every configured one, in order)")
    parser.add_argument("--summary", action="store_true", help="print the scores of earlier runs")
    parser.add_argument("--survivors", action="store_true",
                        help="run only the survivors of each module's last run again (after adding tests)")
    args = parser.parse_args()
    conf = settings()
    if args.summary:
        print("\n".join(summary(conf)))
        return
    unknown = [m for m in args.modules if m not in conf["modules"]]
    if unknown:
        raise SystemExit(f"{unknown} have no entry in [tool.prismatic-mutation.modules] of pyproject.toml: "
                         "add the module with the tests that pin it")
    for module in args.modules or list(conf["modules"]):
        result = run_module(module, conf["modules"][module], conf, survivors_only=args.survivors)
        killed, total, share = score(result["counts"])
        print(f"{module}: {killed}/{total} killed ({share:.1%}), {result['counts']}, {result['seconds'] / 60:.1f} min",
              flush=True)


if __name__ == "__main__":
    main()
