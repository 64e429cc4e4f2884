"""The documents stay walkable: the module map is complete, the README is short and its links resolve.

- docs/ARCHITECTURE.md's "Module map" names every module of `prismatic_assets/` (package
  `__init__.py` files aside: they hold no code of their own) by its path relative to the
  package, and names no module that does not exist, so adding, renaming or removing a
  module fails here until the map says so.
- README.md stays within 400 lines and opens with a table of contents whose links reach
  headings of the README.
- Every relative link in README.md and docs/*.md reaches an existing file (and, with a
  `#fragment`, a heading of that file). Image links count. Template slots of a document
  still waiting for a measurement (`{{NAME}}`, docs/STUDY.md) are not links yet.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "prismatic_assets"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
README = ROOT / "README.md"
MAX_README_LINES = 400

#: `[text](target)` and `![alt](target)`; the target ends at the first space or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MODULE_PATH = re.compile(r"`([A-Za-z_][\w/]*\.py)`")


def package_modules() -> set[str]:
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py" and "__pycache__" not in p.parts}


def section(markdown: str, heading: str) -> str:
    """The text under `## heading` up to the next level-2 heading."""
    match = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", markdown, flags=re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def mapped_modules(markdown: str) -> set[str]:
    """Module paths in the first column of the module map's tables."""
    rows = [line for line in section(markdown, "Module map").splitlines() if line.startswith("| `")]
    return {m.group(1) for line in rows for m in [MODULE_PATH.match(line.split("|")[1].strip())] if m}


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)  # '#' lines in code blocks are not headings
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def links(markdown: str) -> list[str]:
    text = re.sub(r"^```.*?^```", "", markdown, flags=re.M | re.S)
    return [m.group(1) for m in LINK.finditer(text)]


def broken_links(doc: Path) -> list[str]:
    broken = []
    for target in links(doc.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or "{{" in target:  # http:, mailto:, template slots
            continue
        path, _, fragment = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            broken.append(f"{target} (no file {file})")
        elif fragment and file.suffix == ".md" and fragment not in anchors(file.read_text()):
            broken.append(f"{target} (no heading '#{fragment}' in {file.name})")
    return broken


# -- the helpers themselves, on inputs whose answers are known ---------------------------------
def test_slug_matches_github_anchors():
    assert slug("Does G-Vendi rank generalization on your data? (`make study`)") == \
        "does-g-vendi-rank-generalization-on-your-data-make-study"
    assert slug("Synthesis rounds, distillation and evaluation") == "synthesis-rounds-distillation-and-evaluation"


def test_broken_links_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Real heading\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md) [ok](other.md#real-heading) [web](https://example.org/x)\n"
                   "[gone](missing.md) ![img](img/none.png) [bad](other.md#no-such-heading)\n"
                   "```\n[in code](not-a-link.md)\n```\n")
    assert broken_links(doc) == ["missing.md (no file " + str((tmp_path / "missing.md").resolve()) + ")",
                                 "img/none.png (no file " + str((tmp_path / "img/none.png").resolve()) + ")",
                                 "other.md#no-such-heading (no heading '#no-such-heading' in other.md)"]


def test_mapped_modules_reads_only_the_module_map():
    text = ("## Layers\n\n| `core/elsewhere.py` | not the map |\n\n## Module map\n\n"
            "| module | what |\n|---|---|\n| `core/a.py` | a |\n| `store/b.py` | mentions `core/c.py` |\n\n"
            "## Other folders\n\n| `core/d.py` | after the map |\n")
    assert mapped_modules(text) == {"core/a.py", "store/b.py"}


# -- the documents --------------------------------------------------------------------------
def test_every_module_is_in_the_architecture_map_and_every_mapped_module_exists():
    modules = package_modules()
    assert len(modules) > 50, f"found only {len(modules)} modules under {PACKAGE}: wrong folder?"
    mapped = mapped_modules(ARCHITECTURE.read_text())
    missing = sorted(modules - mapped)
    extra = sorted(mapped - modules)
    assert not missing, f"modules missing from the module map of {ARCHITECTURE.name}: add a line each: {missing}"
    assert not extra, f"the module map of {ARCHITECTURE.name} names modules that do not exist: {extra}"


def test_the_architecture_page_names_a_file_for_every_lineage_box_and_round_stage():
    text = ARCHITECTURE.read_text()
    boxes = section(text, "Lineage boxes")
    for box in ["seed_samples", "gradient_embeddings", "gradient_clusters", "g_vendi", "synthesis_round",
                "distilled_model", "student_evaluation", "dataset_comparison", "arm_round", "arm_students",
                "study"]:
        row = next((line for line in boxes.splitlines() if line.startswith(f"| `{box}` |")), None)
        assert row, f"no row for lineage box {box}"
        asset_file = PACKAGE / "orchestration" / "assets" / row.split("|")[2].strip().strip("`")
        assert asset_file.exists(), f"{box}: asset file {asset_file} does not exist"
        assert re.search(rf"^def {box}\(", asset_file.read_text(), flags=re.M), f"{box} is not defined in {asset_file}"
    # Each stage's function, `name` (in pipeline/round_stages.py) or `module.name` (in pipeline/module.py).
    stages = re.findall(r"^\| [^|]+ \| `([\w.]+)` \|", section(text, "Round stages"), flags=re.M)
    assert len(stages) >= 10, f"the round stages table lists {len(stages)} functions"
    for stage in stages:
        module, _, name = stage.rpartition(".")
        source = PACKAGE / "pipeline" / f"{module or 'round_stages'}.py"
        assert source.exists() and re.search(rf"^def {name}\(", source.read_text(), flags=re.M), \
            f"round stage function {stage} is not defined in {source}"


def test_readme_is_short_and_its_table_of_contents_reaches_its_headings():
    text = README.read_text()
    n_lines = len(text.splitlines())
    assert n_lines <= MAX_README_LINES, \
        f"README.md has {n_lines} lines (at most {MAX_README_LINES}): move a section to docs/"
    contents = section(text, "Contents")
    toc = re.findall(r"\]\(#([^)]+)\)", contents)
    assert len(toc) >= 8, f"the README's contents list links {len(toc)} sections"
    headings = anchors(text)
    assert not [a for a in toc if a not in headings], \
        f"contents links without a heading: {[a for a in toc if a not in headings]}"
    level2 = {slug(h) for h in re.findall(r"^## (.+)$", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S),
                                          flags=re.M)} - {"contents"}
    assert not sorted(level2 - set(toc)), f"sections missing from the README's contents: {sorted(level2 - set(toc))}"
    first_section = text.split("\n## ")[1:3]
    assert first_section[0].startswith("Contents") and first_section[1].startswith("Two commands"), \
        "the README opens with its contents, then the two commands"
    assert "make demo" in first_section[1] and "make test" in first_section[1]


@pytest.mark.parametrize("doc", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_resolve(doc):
    assert not broken_links(doc), f"{doc.relative_to(ROOT)}: broken links: {broken_links(doc)}"


def test_the_slowest_first_list_names_existing_test_files():
    from tests.conftest import SLOWEST_FIRST

    tests = Path(__file__).resolve().parent
    assert [name for name in SLOWEST_FIRST if not (tests / name).is_file()] == []
