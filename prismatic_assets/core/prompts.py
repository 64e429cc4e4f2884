"""Prompts for one synthesis round, the parser for generated problems, and few-shot draws.

What it does:
- `build_problem_request` writes the chat messages that show the generator a few pool
  problems and ask for `n_new` new, non-multiple-choice problems, each between
  ``<problem>`` and ``</problem>`` lines.
- `parse_problems` reads those problems back from the generated text and says what went
  wrong (`ParsedProblems.issues`), tolerating what small models do: a missing closing tag
  at the end, numbered ``Problem 1:`` / ``Example 3:`` / ``Question 2.`` headers instead of
  tags, markdown, solutions after
  the problem, copies of the examples, more or fewer problems than asked.
- `build_solution_request` asks the teacher for a step-by-step solution ending in
  ``\\boxed{}``.
- `sample_few_shot` (strategy "random", as in the paper) and
  `sample_few_shot_from_cluster` (strategy "sparse_cluster": all examples from one
  cluster) pick the pool problems to show; `draw_few_shot` selects one by name.

What it does not: call a model, apply a chat template, or decide which cluster to target
(the caller passes it). The wording is our own.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prismatic_assets.core.samples import normalize_text

__all__ = [
    "FEW_SHOT_STRATEGIES",
    "FewShotDraw",
    "ParsedProblems",
    "build_problem_request",
    "build_solution_request",
    "draw_few_shot",
    "parse_problems",
    "sample_few_shot",
    "sample_few_shot_from_cluster",
]

FEW_SHOT_STRATEGIES = ("random", "sparse_cluster")

OPEN_TAG = "<problem>"
CLOSE_TAG = "</problem>"

# ---------------------------------------------------------------------------- requests

_PROBLEM_SYSTEM = (
    "You write new, original {subject} problems for a training set. "
    "Follow the output format exactly."
)

_PROBLEM_USER = """Here are some example {subject} problems, each between {open} and {close}:

{examples}

Write {count} that {verb} similar to the examples or harder.
Rules:
- Each problem is self-contained and has one final answer.
- No multiple-choice problems.
- Do not copy the examples.
- Do not write solutions or answers.
- Put each new problem between {open} and {close}, like the examples.

Output format:
{format}"""

_SOLUTION_USER = """{problem}

Solve this problem step by step. Write the final answer inside \\boxed{{}}."""


def build_problem_request(
    few_shot: Sequence[str],
    n_new: int = 2,
    rng: random.Random | None = None,
    *,
    subject: str = "math",
    include_system: bool = True,
) -> list[dict[str, str]]:
    """Chat messages asking for `n_new` new problems modelled on `few_shot`.

    The examples are shuffled with `rng` (kept in the given order when rng is None) and
    shown in the same ``<problem>`` blocks the answer must use: small models copy the
    format of what they see (SmolLM2-135M shown ``Example 1:`` headers answered with
    ``Example 3:`` headers). The expected output is shown as `n_new` ``<problem>`` blocks
    with ``...`` placeholders (a copied placeholder is too short to survive
    `parse_problems`). `subject` names the domain ("math"); `include_system`
    adds a one-line system message.
    """
    if n_new < 1:
        raise ValueError(f"n_new={n_new}: ask for at least one new problem (n_new >= 1)")
    examples = [p.strip() for p in few_shot if p and p.strip()]
    if not examples:
        raise ValueError("few_shot is empty: pass at least one pool problem to show the generator")
    if rng is not None:
        examples = examples[:]
        rng.shuffle(examples)
    shown = "\n\n".join(f"{OPEN_TAG}\n{p}\n{CLOSE_TAG}" for p in examples)
    fmt = "\n".join(f"{OPEN_TAG}\n...\n{CLOSE_TAG}" for _ in range(n_new))
    user = _PROBLEM_USER.format(
        subject=subject,
        examples=shown,
        count=f"{n_new} new {subject} problem{'s' if n_new > 1 else ''}",
        verb="are" if n_new > 1 else "is",
        open=OPEN_TAG,
        close=CLOSE_TAG,
        format=fmt,
    )
    messages = [{"role": "user", "content": user}]
    if include_system:
        messages.insert(0, {"role": "system", "content": _PROBLEM_SYSTEM.format(subject=subject)})
    return messages


def build_solution_request(problem: str) -> list[dict[str, str]]:
    """One user message: the problem, then the request to solve it step by step and box
    the final answer. No system message (reasoning teachers such as R1-Distill are meant to
    be prompted without one)."""
    if not problem or not problem.strip():
        raise ValueError("problem is empty: pass the problem text to solve")
    return [{"role": "user", "content": _SOLUTION_USER.format(problem=problem.strip())}]


# ---------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedProblems:
    """Problems parsed from one generation and what went wrong.

    problems: the kept problems, in order, at most `n_expected`.
    issues: one line per problem found but dropped or repaired, plus whole-response notes
        ("no delimiters found", "expected 2 problems, got 1").
    n_found: blocks found before any filtering.
    """

    problems: list[str] = field(default_factory=list)
    issues: list[str] = field(default_factory=list)
    n_found: int = 0


_TAG = re.compile(r"<\s*(/?)\s*problem(?:[\s_#-]*\d+)?\s*>", re.IGNORECASE)
# "Problem 1:", "### Problem 2", "**New Problem 3.**", "Problem:", "Example 4:", "Question 2."
# at the start of a line.
_HEADER = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*(?:new[ \t]+)?(?:problem|example|question)"
    r"(?:[ \t]*#?[ \t]*\d+[ \t]*[:.)\-]?|[ \t]*:)[ \t]*(?:\*\*|__)?[ \t]*(?:\*\*|__)?",
    re.IGNORECASE | re.MULTILINE,
)
# The label a model may repeat inside a block: "Problem 1:", "**Example 2.**".
_LABEL = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*(?:new[ \t]+)?(?:problem|example|question)"
    r"(?:[ \t]*#?[ \t]*\d+[ \t]*[:.)\-]?|[ \t]*:)[ \t]*(?:\*\*|__)?[ \t]*",
    re.IGNORECASE,
)
_NUMBERED = re.compile(r"^[ \t]*(?:\*\*)?\d{1,2}[.)](?:\*\*)?[ \t]+", re.MULTILINE)
_FENCE = re.compile(r"^[ \t]*```[^\n]*$", re.MULTILINE)
# A solution or answer the model added after the problem: everything from here is cut.
_SOLUTION = re.compile(
    r"^[ \t]*(?:#{1,6}[ \t]*)?(?:\*\*|__)?[ \t]*"
    r"(?:solution|answer|final answer|hint|explanation)s?[ \t]*(?:\*\*|__)?[ \t]*[:.]",
    re.IGNORECASE | re.MULTILINE,
)
_OPTION_PAREN = re.compile(r"(?<![A-Za-z\\])\(\s*([A-E])\s*\)")
_OPTION_LINE = re.compile(r"^[ \t]*(?:\*\*)?\(?([A-E])[.):](?:\*\*)?[ \t]+\S", re.MULTILINE)
_CHOICES_WORDS = re.compile(r"\b(?:answer choices|options)\s*:", re.IGNORECASE)
_ENDS_SENTENCE = re.compile(r"[.?!$)\]}\"']\s*$")


def _blocks_from_tags(text: str) -> tuple[list[str], list[str]]:
    """Blocks between <problem> tags; a block also ends at the next opening tag or at the
    end of the text (reported). Closing tags without an opening tag are ignored."""
    blocks: list[str] = []
    notes: list[str] = []
    tags = list(_TAG.finditer(text))
    for i, tag in enumerate(tags):
        if tag.group(1):  # a closing tag; consumed by the opening tag before it
            continue
        nxt = tags[i + 1] if i + 1 < len(tags) else None
        n = len(blocks) + 1
        if nxt is None:
            blocks.append(text[tag.end() :])
            notes.append(f"problem {n}: truncated: unterminated block")
        elif nxt.group(1):
            blocks.append(text[tag.end() : nxt.start()])
        else:
            blocks.append(text[tag.end() : nxt.start()])
            notes.append(f"problem {n}: missing closing tag")
    return blocks, notes


def _split_on(pattern: re.Pattern[str], text: str) -> list[str]:
    starts = list(pattern.finditer(text))
    return [
        text[m.end() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        for i, m in enumerate(starts)
    ]


def _clean(block: str) -> tuple[str, bool]:
    """Strip fences, a leading "Problem 1:" label and markdown emphasis around the block;
    cut an appended solution. Returns the text and whether a solution was cut."""
    s = _FENCE.sub("", block).strip()
    s = _LABEL.sub("", s, count=1).strip()
    cut = _SOLUTION.search(s)
    if cut:
        s = s[: cut.start()]
    s = s.strip()
    for wrap in ("**", "__", '"'):
        if s.startswith(wrap) and s.endswith(wrap) and len(s) > 2 * len(wrap):
            s = s[len(wrap) : -len(wrap)].strip()
    return s, cut is not None


def _is_multiple_choice(problem: str) -> bool:
    letters = {m.group(1) for m in _OPTION_PAREN.finditer(problem)}
    letters |= {m.group(1) for m in _OPTION_LINE.finditer(problem)}
    letters |= set(re.findall(r"\\textbf\{\(([A-E])\)", problem))
    return {"A", "B"} <= letters or bool(_CHOICES_WORDS.search(problem))


def parse_problems(
    text: str,
    n_expected: int = 2,
    few_shot: Sequence[str] = (),
    *,
    min_words: int = 5,
) -> ParsedProblems:
    """Read the problems out of one generation. Never raises.

    Delimiters, in order of preference: ``<problem>...</problem>`` tags (also
    ``<Problem 1>``); else ``Problem 1:`` / ``### Problem 2`` / ``Example 3:`` / ``Question
    4.`` headers; else a numbered
    list (``1.`` / ``2)``). A last block without its closing tag (the generation ran out)
    is kept only if it ends like a sentence.

    Each block is cleaned (code fences, a ``Problem 1:`` label, emphasis, and any
    ``Solution:`` / ``Answer:`` part removed) and dropped, with an issue, when it is empty,
    has fewer than `min_words` words, is multiple-choice, repeats one of `few_shot` (the
    model echoed an example) or repeats an earlier block. At most `n_expected` problems
    are kept; extras are dropped and reported, as is a shortfall.
    """
    issues: list[str] = []
    try:
        text = text or ""
        blocks, notes = _blocks_from_tags(text)
        if blocks:
            issues.extend(notes)
        else:
            blocks = _split_on(_HEADER, text)
            if blocks:
                issues.append("no <problem> tags; split on 'Problem/Example/Question N' headers")
            else:
                blocks = _split_on(_NUMBERED, text)
                if len(blocks) >= 2:
                    issues.append("no <problem> tags; split on a numbered list")
                else:
                    blocks = []
        if not blocks:
            issues.append("no delimiters found")
            return ParsedProblems([], issues, 0)

        examples = {normalize_text(p) for p in few_shot}
        seen: dict[str, int] = {}
        kept: list[str] = []
        truncated = bool(notes) and notes[-1].endswith("truncated: unterminated block")
        for n, block in enumerate(blocks, 1):
            problem, cut = _clean(block)
            if cut:
                issues.append(f"problem {n}: solution/answer text removed")
            key = normalize_text(problem)
            if not problem:
                issues.append(f"problem {n}: empty")
            elif len(problem.split()) < min_words:
                words = len(problem.split())
                issues.append(f"problem {n}: too short ({words} words < {min_words})")
            elif n == len(blocks) and truncated and not cut and not _ENDS_SENTENCE.search(problem):
                issues.append(f"problem {n}: dropped, ends mid-sentence")
            elif _is_multiple_choice(problem):
                issues.append(f"problem {n}: multiple-choice options detected")
            elif key in examples:
                issues.append(f"problem {n}: copies a few-shot example")
            elif key in seen:
                issues.append(f"problem {n}: duplicate of problem {seen[key]}")
            else:
                seen[key] = n
                kept.append(problem)
        if len(kept) > n_expected:
            issues.append(
                f"expected {n_expected} problems, got {len(kept)}: kept the first {n_expected}"
            )
            kept = kept[:n_expected]
        elif len(kept) < n_expected:
            issues.append(f"expected {n_expected} problems, got {len(kept)}")
        return ParsedProblems(kept, issues, len(blocks))
    except Exception as exc:  # noqa: BLE001 - a bad generation must not stop a round
        issues.append(f"parser error: {type(exc).__name__}: {exc}")
        return ParsedProblems([], issues, 0)


# ---------------------------------------------------------------------------- few-shot


@dataclass(frozen=True)
class FewShotDraw:
    """The pool ids chosen as few-shot examples and how.

    ids: the chosen ids, cluster members first, then top-ups from the rest of the pool.
    strategy: "random" or "sparse_cluster".
    cluster: the target cluster (None for "random").
    topped_up: how many ids came from outside the cluster because it had fewer than k.
    """

    ids: tuple[str, ...]
    strategy: str
    cluster: int | None = None
    topped_up: int = 0


def _check_k(n_pool: int, k: int) -> None:
    if k < 1:
        raise ValueError(f"k={k}: draw at least one few-shot example (k >= 1)")
    if n_pool < k:
        raise ValueError(
            f"the pool has {n_pool} problems but k={k} few-shot examples were asked for: "
            "lower the few-shot count or add seed problems"
        )


def sample_few_shot(pool_ids: Sequence[str], k: int, rng: random.Random) -> list[str]:
    """k distinct pool ids drawn uniformly at random (strategy "random", the paper's)."""
    _check_k(len(pool_ids), k)
    return rng.sample(list(pool_ids), k)


def _cluster_of(
    pool_ids: Sequence[str], assignments: Mapping[str, int] | Sequence[int] | Any
) -> list[int]:
    """The cluster of each pool id, from a mapping or an array aligned with pool_ids."""
    if isinstance(assignments, Mapping):
        missing = [i for i in pool_ids if i not in assignments]
        if missing:
            raise ValueError(
                f"{len(missing)} pool ids have no cluster assignment (first: {missing[0]!r}): "
                "assign every pool sample to a cluster before drawing from clusters"
            )
        return [int(assignments[i]) for i in pool_ids]
    values = [int(c) for c in assignments]
    if len(values) != len(pool_ids):
        raise ValueError(
            f"assignments has {len(values)} entries but the pool has {len(pool_ids)} ids: "
            "pass one cluster per pool id, in pool order, or a mapping id -> cluster"
        )
    return values


def sample_few_shot_from_cluster(
    pool_ids: Sequence[str],
    assignments: Mapping[str, int] | Sequence[int] | Any,
    cluster: int,
    k: int,
    rng: random.Random,
) -> FewShotDraw:
    """k distinct pool ids from one cluster (strategy "sparse_cluster").

    `assignments` maps each pool id to its cluster (a mapping, or a sequence / numpy array
    aligned with `pool_ids`). When the cluster has fewer than k members, all of them are
    used and the rest are drawn at random from the other pool ids; `topped_up` records how
    many.
    """
    _check_k(len(pool_ids), k)
    clusters = _cluster_of(pool_ids, assignments)
    members = [i for i, c in zip(pool_ids, clusters) if c == cluster]
    others = [i for i, c in zip(pool_ids, clusters) if c != cluster]
    if len(members) >= k:
        return FewShotDraw(tuple(rng.sample(members, k)), "sparse_cluster", cluster, 0)
    chosen = rng.sample(members, len(members)) + rng.sample(others, k - len(members))
    return FewShotDraw(tuple(chosen), "sparse_cluster", cluster, k - len(members))


def draw_few_shot(
    strategy: str,
    pool_ids: Sequence[str],
    k: int,
    rng: random.Random,
    *,
    assignments: Mapping[str, int] | Sequence[int] | Any = None,
    cluster: int | None = None,
) -> FewShotDraw:
    """Draw few-shot ids with the strategy named in `FEW_SHOT_STRATEGIES`."""
    if strategy == "random":
        return FewShotDraw(tuple(sample_few_shot(pool_ids, k, rng)), "random")
    if strategy == "sparse_cluster":
        if assignments is None or cluster is None:
            raise ValueError(
                "strategy 'sparse_cluster' needs assignments (pool id -> cluster) and the "
                "target cluster: pass both, or use strategy='random'"
            )
        return sample_few_shot_from_cluster(pool_ids, assignments, cluster, k, rng)
    raise ValueError(f"unknown few-shot strategy {strategy!r}: use one of {FEW_SHOT_STRATEGIES}")
