"""Procedural reasoning tasks from reasoning-gym: a candidate source and held-out task sets.

What it does:
- `task_items` draws problems from reasoning-gym's task generators, spread over several
  task families and difficulty levels (each family's own curriculum levels), deterministic
  in the seed. Each item is a `Sample` whose response states the answer in the form a
  student is trained on (`\\boxed{...}`), plus the reasoning-gym entry it came from.
- `score_item` grades a response with the task's own scorer (reasoning-gym's
  `score_answer`), on the answer extracted from the response; `verify_item` uses it to
  check that a candidate's stored response carries a correct answer.

Why: the embedded 135M model cannot write and verify competition problems (its rounds
accepted 0 candidates); these generators give problems whose answers are known and checked
by code, so a local run shows what the diversity filter does with real gradients.

What it does not: call any LLM, store anything, or embed (see `pipeline/arms.py`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from prismatic_assets.core.answers import extract_answer
from prismatic_assets.core.samples import Sample

__all__ = ["PROCEDURAL_SOURCE", "TaskItem", "check_families", "response_for", "score_item", "task_items",
           "verify_item"]

#: `Sample.source` of every procedural item.
PROCEDURAL_SOURCE = "procedural"


@dataclass(frozen=True)
class TaskItem:
    """One generated problem: the sample, its family and level, and the generator's entry."""

    sample: Sample
    family: str
    level: int
    entry: dict[str, Any]


def check_families(families: Sequence[str], key: str = "arms.source.families") -> None:
    """Refuse names reasoning-gym does not know, listing the ones it does."""
    from reasoning_gym.factory import DATASETS

    unknown = [f for f in families if f not in DATASETS]
    if unknown:
        raise ValueError(f"{key}: unknown reasoning-gym task(s) {unknown}; known tasks: {sorted(DATASETS)}")


def _dataset(family: str, level: int, seed: int, size: int):
    """reasoning-gym's dataset for `family` at curriculum `level` (clamped to its levels)."""
    from reasoning_gym.factory import create_curriculum, create_dataset, has_curriculum

    if not has_curriculum(family):
        return create_dataset(family, seed=seed, size=size)
    curriculum = create_curriculum(family)
    top = min(len(a.levels) for a in curriculum.attributes.values()) - 1
    curriculum.set_global_level(min(level, top))
    config = curriculum.generate_configuration({"seed": seed, "size": size})
    from reasoning_gym.factory import DATASETS

    return DATASETS[family][0](config)


def _derived_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "big")


def response_for(entry: dict[str, Any]) -> str:
    """The training response of a generated problem: the answer, boxed."""
    return f"The answer is \\boxed{{{str(entry['answer']).strip()}}}."


def task_items(families: Sequence[str], levels: Sequence[int], n: int, seed: int, *, id_prefix: str
               ) -> list[TaskItem]:
    """`n` problems spread evenly over every (family, level) pair, in blocks per pair.

    Deterministic in (families, levels, n, seed, id_prefix); the same call gives the same
    items, and ids are ``<id_prefix>:<family>:<level>:<index>``. Items come family by
    family, as reasoning-gym generates them (one dataset per task and level).
    """
    if n < 1:
        raise ValueError(f"n={n}: ask for at least one problem")
    check_families(families)
    pairs = [(f, lvl) for f in families for lvl in levels]
    if not pairs:
        raise ValueError("no (family, level) pair: set at least one family and one level")
    per_pair = [n // len(pairs) + (1 if i < n % len(pairs) else 0) for i in range(len(pairs))]
    items: list[TaskItem] = []
    for (family, level), count in zip(pairs, per_pair):
        if count == 0:
            continue
        data = _dataset(family, level, _derived_seed(seed, id_prefix, family, level), count)
        for i in range(count):
            entry = data[i]
            sample = Sample(
                sample_id=f"{id_prefix}:{family}:{level}:{i}", prompt=str(entry["question"]).strip(),
                response=response_for(entry), answer=str(entry["answer"]).strip(), category=family,
                source=PROCEDURAL_SOURCE, source_ref=f"reasoning_gym:{family}:level={level}:seed={seed}:{i}",
                meta={"family": family, "level": level})
            items.append(TaskItem(sample, family, level, dict(entry)))
    return items


def score_item(item: TaskItem, response: str) -> tuple[str | None, bool]:
    """(extracted answer, correct) of a response, graded by the task's own scorer."""
    from reasoning_gym.factory import get_score_answer_fn

    extracted = extract_answer(response, stated=True)
    if extracted is None:
        return None, False
    try:
        score = float(get_score_answer_fn(item.family)(extracted, item.entry))
    except Exception:  # a scorer that cannot read the answer counts it wrong
        score = 0.0
    return extracted, score >= 1.0


def verify_item(item: TaskItem) -> str | None:
    """None when the item's own response is graded correct, else the reason it is not."""
    extracted, correct = score_item(item, item.sample.response)
    if extracted is None:
        return "no_answer_in_response"
    return None if correct else "scorer_rejects_answer"
