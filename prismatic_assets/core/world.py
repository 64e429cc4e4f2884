"""A procedural world for the arms: a skewed seed pool and a pool-conditioned problem generator.

The world is a set of reasoning-gym task families, each at a few difficulty levels; a
(family, level) pair is a *cell*. Everything here is deterministic in its seeds.

What it does:
- `draw_entry` makes one problem of a cell: reasoning-gym's generator with the level's own
  band of its curriculum (`RangeAttributeMode.UPPER_BOUND`, so level 2 means level 2's
  numbers, not levels 0..2 mixed).
- `write_solution` gives the response a student learns from: the task's worked solution
  where reasoning-gym has one (`answer_cot`, e.g. gsm_symbolic), else a short derivation
  written here per family (Euclid's steps for gcd, partial products for products, legs
  per animal for leg_counting, ...), ending in ``\\boxed{answer}``. The boxed answer is the
  derivation's own result, never copied from the task, so the task's scorer
  (`procedural.score_item`) really checks it.
- `seed_counts` / `seed_pool_items`: a seed pool skewed like real data sets: family weights
  fall with rank as a Zipf law, level weights geometrically, apportioned to whole problems.
- `write_problems`: the stand-in for the paper's few-shot LLM. Given the exemplars one
  request shows (drawn by the caller from an arm's own pool), it writes new problems:
  mostly a fresh problem of an exemplar's cell, sometimes the neighbouring level, now and
  then a family none of the exemplars has (`GeneratorMix`).
- `cell_coverage`: the proxy-free coverage figure, the number and entropy of cells.

What it does not: store, embed, choose which candidates an arm accepts (`pipeline/arms.py`),
or read any setting from a profile (the caller passes them).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence

from prismatic_assets.core.procedural import TaskItem
from prismatic_assets.core.samples import Sample, normalize_text

__all__ = ["GENERATOR_MODES", "WORLD_SOURCE", "Exemplar", "GeneratorMix", "WorldError", "Written", "cell_coverage",
           "check_world", "draw_entry", "held_out_items", "level_count", "seed_counts", "seed_pool_items",
           "solved_families", "world_item", "world_seed", "write_problems", "write_solution"]

#: `Sample.source` of the world's seed pool (also the seed source name in a profile).
WORLD_SOURCE = "world"
#: What a written problem is, relative to the exemplar it came from.
GENERATOR_MODES = ("same_cell", "neighbour_level", "new_family", "same_cell_fallback")


class WorldError(ValueError):
    """A world setting that cannot work; the message names the setting and the fix."""


def world_seed(*parts: object) -> int:
    """A seed in [0, 2**31) that depends only on `parts` (stable across processes and machines)."""
    payload = json.dumps(list(parts), sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:4], "little") & 0x7FFFFFFF


# -- cells -------------------------------------------------------------------------------------
#: Problems are drawn by index in [0, INDEX_SPACE): the size every cell's dataset is built with
#: (some tasks precompute per-index choices at construction, so it is not unbounded).
INDEX_SPACE = 2 ** 20


@functools.lru_cache(maxsize=None)
def _cell_dataset(family: str, level: int):
    """reasoning-gym's generator of one cell: the curriculum set to `level`, each range at that
    level's own band. Problems are drawn by index (`dataset[i]` seeds its RNG with i)."""
    from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode
    from reasoning_gym.factory import DATASETS, create_curriculum, create_dataset, has_curriculum

    if not has_curriculum(family):
        return create_dataset(family, seed=0, size=INDEX_SPACE)
    curriculum = create_curriculum(family)
    curriculum.set_global_level(level)
    config = curriculum.generate_configuration({"seed": 0, "size": INDEX_SPACE},
                                               context=DefaultCurriculumContext(mode=RangeAttributeMode.UPPER_BOUND))
    return DATASETS[family][0](config)


@functools.lru_cache(maxsize=None)
def level_count(family: str) -> int:
    """How many difficulty levels reasoning-gym's curriculum of `family` has (1 without one)."""
    from reasoning_gym.factory import create_curriculum, has_curriculum

    if not has_curriculum(family):
        return 1
    return min(len(a.levels) for a in create_curriculum(family).attributes.values())


def draw_entry(family: str, level: int, index: int) -> dict[str, Any]:
    """Problem `index` (taken modulo INDEX_SPACE) of cell (family, level): reasoning-gym's entry
    (question, answer, metadata)."""
    return dict(_cell_dataset(family, level)[index % INDEX_SPACE])


def check_world(families: Sequence[str], levels: Sequence[int], *, families_key: str = "world.families",
                levels_key: str = "world.levels", need_solutions: bool = True) -> None:
    """Refuse families reasoning-gym does not know, families without a solution writer (when the
    world writes their responses), repeated names, and levels a family's curriculum does not
    have. Errors name the settings (`families_key`, `levels_key`)."""
    from reasoning_gym.factory import DATASETS

    if not families:
        raise WorldError(f"{families_key} is empty: name at least one reasoning-gym task")
    if not levels:
        raise WorldError(f"{levels_key} is empty: use e.g. [0, 1, 2]")
    for name, values in ((families_key, families), (levels_key, levels)):
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise WorldError(f"{name} repeats {repeated}: list each once")
    unknown = [f for f in families if f not in DATASETS]
    if unknown:
        raise WorldError(f"{families_key}: unknown reasoning-gym task(s) {unknown}; known tasks: {sorted(DATASETS)}")
    if need_solutions:
        unsolved = [f for f in families if f not in _WRITERS and not _has_worked_solution(f)]
        if unsolved:
            raise WorldError(f"{families_key}: no worked solution or derivation for {unsolved}; families with one: "
                             f"{solved_families()}")
    bad = sorted({f"{f} (levels 0..{level_count(f) - 1})" for f in families for lvl in levels
                  if not 0 <= lvl < level_count(f)})
    if bad:
        raise WorldError(f"{levels_key}={list(levels)}: not a level of {bad}; lower the levels or drop those "
                         f"families from {families_key}")


@functools.lru_cache(maxsize=None)
def _has_worked_solution(family: str) -> bool:
    return "answer_cot" in draw_entry(family, 0, 0)["metadata"]


def solved_families() -> list[str]:
    """Families whose responses this module writes (plus any task whose entries carry `answer_cot`)."""
    return sorted(_WRITERS) + ["gsm_symbolic"]


def world_item(family: str, level: int, index: int, *, sample_id: str, source: str = WORLD_SOURCE,
               with_solution: bool = True) -> TaskItem:
    """Problem `index` of a cell as a TaskItem: prompt = the question, response = its worked
    solution (or, without `with_solution`, only the boxed answer: held-out problems of families
    the world does not write solutions for are only asked, never trained on)."""
    entry = draw_entry(family, level, index)
    answer = str(entry["answer"]).strip()
    response = write_solution(family, entry) if with_solution else f"The answer is \\boxed{{{answer}}}."
    sample = Sample(sample_id=sample_id, prompt=str(entry["question"]).strip(), response=response, answer=answer,
                    category=family, source=source,
                    source_ref=f"reasoning_gym:{family}:level={level}:index={index % INDEX_SPACE}",
                    meta={"family": family, "level": level})
    return TaskItem(sample, family, level, entry)


def cell_coverage(cells: Iterable[tuple[str, int]]) -> tuple[int, float]:
    """(number of distinct cells, Shannon entropy in nats of the cell counts) of a pool."""
    counts = Counter(cells)
    total = sum(counts.values())
    if total == 0:
        return 0, 0.0
    return len(counts), float(-sum(c / total * math.log(c / total) for c in counts.values()))


# -- the seed pool -----------------------------------------------------------------------------
def seed_counts(families: Sequence[str], levels: Sequence[int], size: int, family_zipf: float,
                level_decay: float) -> dict[tuple[str, int], int]:
    """Problems per cell of a seed pool of `size`: family at rank r (its position in `families`)
    weighs r**-family_zipf, level at position j weighs level_decay**j; each cell gets the
    product, apportioned to whole problems by largest remainder (ties to the earlier cell).

    Refused: a shape that leaves a family without any problem (raise the size or flatten the
    skew: a family with no seed problem could only ever come from the generator's novelty)."""
    if size < 1:
        raise WorldError(f"world.pool.size={size}: the seed pool needs at least one problem")
    fw = [(rank + 1) ** -family_zipf for rank in range(len(families))]
    lw = [level_decay ** j for j in range(len(levels))]
    total = sum(fw) * sum(lw)
    quotas = {(f, lvl): size * a * b / total for f, a in zip(families, fw) for lvl, b in zip(levels, lw)}
    counts = {cell: math.floor(q) for cell, q in quotas.items()}
    order = sorted(quotas, key=lambda c: -(quotas[c] - counts[c]))  # stable: earlier cells win ties
    for cell in order[:size - sum(counts.values())]:
        counts[cell] += 1
    empty = [f for f in families if sum(counts[(f, lvl)] for lvl in levels) == 0]
    if empty:
        raise WorldError(f"world.pool: families {empty} get no seed problem of {size} under family_zipf="
                         f"{family_zipf} and level_decay={level_decay}; raise world.pool.size, lower "
                         "world.pool.family_zipf, or drop those families from world.families")
    return counts


def _fresh_item(family: str, level: int, parts: tuple, seen: set[str], max_attempts: int, *, sample_id: str,
                source: str, with_solution: bool = True) -> tuple[TaskItem | None, int]:
    """The first problem of the cell whose normalized text is not in `seen` (added to it), trying
    up to `max_attempts` indices derived from `parts`; (None, attempts) when every one was seen."""
    for attempt in range(max_attempts):
        index = world_seed("item", *parts, attempt)
        entry = draw_entry(family, level, index)
        key = normalize_text(str(entry["question"]))
        if key in seen:
            continue
        seen.add(key)
        return world_item(family, level, index, sample_id=sample_id, source=source,
                          with_solution=with_solution), attempt + 1
    return None, max_attempts


def seed_pool_items(counts: Mapping[tuple[str, int], int], seed: int, *, max_attempts: int,
                    exclude: Iterable[str] = ()) -> list[TaskItem]:
    """The seed pool: `counts[cell]` distinct problems of each cell, none of them in `exclude`
    (normalized problem texts, e.g. the held-out problems). Ids: ``world:<family>:L<level>:<i>``.

    A cell too small for its count (every try repeats a problem) is an error naming it."""
    seen = set(exclude)
    items: list[TaskItem] = []
    for (family, level), n in counts.items():
        for i in range(n):
            item, _ = _fresh_item(family, level, ("seed", seed, family, level, i), seen, max_attempts,
                                  sample_id=f"{WORLD_SOURCE}:{family}:L{level}:{i:03d}", source=WORLD_SOURCE)
            if item is None:
                raise WorldError(f"world: cell ({family}, level {level}) gave no new problem for seed problem {i + 1} "
                                 f"of {n} in {max_attempts} tries (its problems repeat): lower world.pool.size, "
                                 "flatten the skew, or raise world.generator.max_attempts")
            items.append(item)
    return items


def held_out_items(families: Sequence[str], levels: Sequence[int], per_family: int, seed: int, *, id_prefix: str,
                   max_attempts: int, with_solution: bool = False) -> list[TaskItem]:
    """`per_family` distinct problems of each family, spread evenly over `levels` (earlier levels
    get the remainder). Ids: ``<id_prefix>:<family>:L<level>:<i>``."""
    seen: set[str] = set()
    items: list[TaskItem] = []
    for family in families:
        for j, level in enumerate(levels):
            n = per_family // len(levels) + (1 if j < per_family % len(levels) else 0)
            for i in range(n):
                item, _ = _fresh_item(family, level, (id_prefix, seed, family, level, i), seen, max_attempts,
                                      sample_id=f"{id_prefix}:{family}:L{level}:{i:03d}", source=id_prefix,
                                      with_solution=with_solution)
                if item is None:
                    raise WorldError(f"held-out set {id_prefix!r}: cell ({family}, level {level}) gave no new problem "
                                     f"in {max_attempts} tries: lower the held-out count per family")
                items.append(item)
    return items


# -- the generator -----------------------------------------------------------------------------
@dataclass(frozen=True)
class GeneratorMix:
    """What share of written problems keep an exemplar's cell, move to a neighbouring level, or
    take a family none of the request's exemplars has. The three add up to 1."""

    same_cell: float
    neighbour_level: float
    new_family: float

    def __post_init__(self) -> None:
        shares = (self.same_cell, self.neighbour_level, self.new_family)
        if any(s < 0 for s in shares) or not math.isclose(sum(shares), 1.0, abs_tol=1e-9):
            raise WorldError(f"world.generator: same_cell={self.same_cell}, neighbour_level={self.neighbour_level}, "
                             f"new_family={self.new_family} must be >= 0 and add up to 1")


@dataclass(frozen=True)
class Exemplar:
    """A pool problem shown to the generator: its id and cell."""

    sample_id: str
    family: str
    level: int


@dataclass(frozen=True)
class Written:
    """One problem the generator wrote (or failed to write) for one slot of a request."""

    slot: int
    mode: str  # one of GENERATOR_MODES
    exemplar_id: str  # the exemplar it came from
    family: str
    level: int
    attempts: int  # indices tried until a problem not seen before came up
    item: TaskItem | None  # None: every try repeated a problem already seen (no fresh problem)


def _neighbour(level: int, levels: Sequence[int]) -> int:
    """One level up (the paper asks for problems "similar or harder"); one down at the top level."""
    ordered = sorted(levels)
    at = ordered.index(level)
    return ordered[at + 1] if at + 1 < len(ordered) else ordered[at - 1]


def write_problems(exemplars: Sequence[Exemplar], n_new: int, *, families: Sequence[str], levels: Sequence[int],
                   mix: GeneratorMix, request_seed: int, seen: set[str], id_prefix: str, max_attempts: int
                   ) -> list[Written]:
    """`n_new` new problems written from one request's exemplars.

    For each slot: pick one exemplar at random; with probability `mix.same_cell` write a problem
    of its cell, `mix.neighbour_level` of its family at the neighbouring level, else
    (`mix.new_family`) of a family none of the exemplars has, at the exemplar's level (when the
    exemplars cover every family, the slot keeps the exemplar's cell: "same_cell_fallback").
    A problem is fresh: its normalized text is not in `seen`, to which it is added.
    Deterministic in (request_seed, exemplars, seen). Sample ids: ``<id_prefix>:p<slot>``.
    """
    if not exemplars:
        raise WorldError("a generator request needs at least one exemplar: the pool is empty")
    if len(levels) < 2 and mix.neighbour_level > 0:
        raise WorldError(f"world.generator.neighbour_level={mix.neighbour_level} but world.levels={list(levels)} has "
                         "one level: add a level or set neighbour_level to 0 (and same_cell to match)")
    rng = random.Random(request_seed)
    shown = {e.family for e in exemplars}
    written = []
    for slot in range(n_new):
        exemplar = exemplars[rng.randrange(len(exemplars))]
        u = rng.random()
        family, level = exemplar.family, exemplar.level
        if u < mix.same_cell:
            mode = "same_cell"
        elif u < mix.same_cell + mix.neighbour_level:
            mode, level = "neighbour_level", _neighbour(exemplar.level, levels)
        else:
            unseen = [f for f in families if f not in shown]
            mode = "new_family" if unseen else "same_cell_fallback"
            family = unseen[rng.randrange(len(unseen))] if unseen else family
        item, attempts = _fresh_item(family, level, (request_seed, slot), seen, max_attempts,
                                     sample_id=f"{id_prefix}:p{slot}", source="arm")
        written.append(Written(slot, mode, exemplar.sample_id, family, level, attempts, item))
    return written


# -- responses ----------------------------------------------------------------------------------
def _boxed(answer: object) -> str:
    return f"The answer is \\boxed{{{answer}}}."


_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def _evaluate_steps(expression: str) -> tuple[int, list[str]]:
    """Evaluate an integer expression (+ - * /, parentheses, unary minus) one operation at a
    time, in Python's order; "/" is floor division, as reasoning-gym computes its answers."""
    steps: list[str] = []

    def value(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            if isinstance(node.op, ast.UAdd):  # +(x) is x: no step
                return inner
            if not isinstance(node.operand, ast.Constant):  # a signed literal such as -8: no step
                steps.append(f"-({inner}) = {-inner}")
            return -inner
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = value(node.left), value(node.right)
            op = _OPS[type(node.op)]
            if op == "/":
                if b == 0:
                    raise ValueError(f"division by zero in {expression!r}")
                result = a // b
            else:
                result = a + b if op == "+" else a - b if op == "-" else a * b
            steps.append(f"{a} {op} {b} = {result}")
            return result
        raise ValueError(f"cannot evaluate {ast.dump(node)} in {expression!r}")

    return value(ast.parse(expression, mode="eval").body), steps


def _basic_arithmetic(entry: Mapping[str, Any]) -> str:
    result, steps = _evaluate_steps(entry["metadata"]["expression"])
    lines = ["Work inside parentheses first, then multiplication and division, then addition and subtraction, "
             "left to right:"] + steps
    return "\n".join(lines + [_boxed(result)])


def _chain_sum(entry: Mapping[str, Any]) -> str:
    result, steps = _evaluate_steps(entry["metadata"]["expression"])
    return "\n".join(["Add and subtract from left to right, keeping a running total:"] + steps + [_boxed(result)])


def _multiply_steps(a: int, b: int) -> str:
    """a x b by partial products over the digits of b: 914 x 807 = 914 x 800 + 914 x 7 = ..."""
    parts = [(int(d) * 10 ** (len(str(b)) - 1 - i)) for i, d in enumerate(str(b)) if d != "0"]
    if len(parts) <= 1:
        return f"{a} × {b} = {a * b}"
    terms = " + ".join(f"{a} × {p}" for p in parts)
    values = " + ".join(str(a * p) for p in parts)
    return f"{a} × {b} = {terms} = {values} = {a * b}"


def _products(entry: Mapping[str, Any]) -> str:
    factors = [int(t) for t in entry["metadata"]["expression"].split("*")]
    total, lines = factors[0], ["Multiply from left to right, splitting the second factor by its digits:"]
    for f in factors[1:]:
        lines.append(_multiply_steps(total, f))
        total *= f
    return "\n".join(lines + [_boxed(total)])


def _euclid(a: int, b: int) -> tuple[int, list[tuple[int, int, int, int]]]:
    """gcd(a, b) and Euclid's steps (a, q, b, r) with a = q x b + r, until r = 0."""
    steps = []
    while b:
        q, r = divmod(a, b)
        steps.append((a, q, b, r))
        a, b = b, r
    return a, steps


def _gcd(entry: Mapping[str, Any]) -> str:
    numbers = [int(n) for n in entry["metadata"]["numbers"]]
    g, lines = numbers[0], ["Euclid's algorithm: divide, keep the remainder, repeat until it is 0."]
    for n in numbers[1:]:
        a, b = max(g, n), min(g, n)
        new, steps = _euclid(a, b)
        lines.append(f"gcd({a}, {b}):")
        lines += [f"{x} = {q} × {y} + {r}" for x, q, y, r in steps]
        lines.append(f"gcd({a}, {b}) = {new}")
        g = new
    return "\n".join(lines + [_boxed(g)])


def _lcm(entry: Mapping[str, Any]) -> str:
    numbers = [int(n) for n in entry["metadata"]["numbers"]]
    current, lines = numbers[0], ["lcm(a, b) = a × b / gcd(a, b), with the gcd from Euclid's remainders."]
    for n in numbers[1:]:
        a, b = max(current, n), min(current, n)
        g, steps = _euclid(a, b)
        remainders = ", ".join(f"{x} mod {y} = {r}" for x, _, y, r in steps)
        result = a * b // g
        lines.append(f"gcd({a}, {b}): {remainders}; so gcd = {g}")
        lines.append(f"lcm({a}, {b}) = {a} × {b} / {g} = {result}")
        current = result
    return "\n".join(lines + [_boxed(current)])


def _leg_counting(entry: Mapping[str, Any]) -> str:
    from reasoning_gym.arithmetic.leg_counting import ANIMALS

    lines, totals = ["Legs per animal times how many there are:"], []
    for animal, count in entry["metadata"]["animals"].items():
        legs = ANIMALS[animal]
        totals.append(count * legs)
        lines.append(f"{count} {animal}{'s' if count > 1 else ''}: {count} × {legs} = {count * legs}")
    total = sum(totals)
    if len(totals) > 1:
        lines.append(f"Total: {' + '.join(str(t) for t in totals)} = {total}")
    return "\n".join(lines + [_boxed(total)])


def _count_bits(entry: Mapping[str, Any]) -> str:
    n = int(entry["metadata"]["number"])
    powers = [2 ** i for i in range(n.bit_length() - 1, -1, -1) if n >> i & 1]
    binary = format(n, "b")
    lines = [f"Write {n} as a sum of powers of two: {n} = {' + '.join(str(p) for p in powers) or '0'}.",
             f"So {n} in binary is {binary}; each power of two is one 1 bit.",
             f"Count of 1 bits: {len(powers)}"]
    return "\n".join(lines + [_boxed(len(powers))])


def _simple_equations(entry: Mapping[str, Any]) -> str:
    import sympy

    variable = entry["metadata"]["variable"]
    left, right = entry["metadata"]["equation"].split("=")
    x = sympy.Symbol(variable)
    poly = sympy.Poly(sympy.sympify(left), x)
    if poly.degree() != 1:
        raise ValueError(f"not a linear equation in {variable}: {entry['metadata']['equation']!r}")
    a, c = (int(v) for v in (poly.coeff_monomial(x), poly.coeff_monomial(1)))
    d = int(sympy.sympify(right))
    value = Fraction(d - c, a)
    lines = [f"The left side is {a}*{variable} {'+' if c >= 0 else '-'} {abs(c)}."]
    if c:
        lines.append(f"{'Subtract' if c > 0 else 'Add'} {abs(c)} on both sides: {a}*{variable} = {d} "
                     f"{'-' if c > 0 else '+'} {abs(c)} = {d - c}")
    lines.append(f"Divide both sides by {a}: {variable} = {d - c} / {a} = {value}")
    return "\n".join(lines + [_boxed(value)])


def _letter_counting(entry: Mapping[str, Any]) -> str:
    letter = entry["metadata"]["target_letter"]
    words = entry["metadata"]["span"]
    counts = [w.lower().count(letter) for w in words]
    lines = [f'Count "{letter}" in each word: ' + ", ".join(f"{w} {c}" for w, c in zip(words, counts)) + ".",
             f"Total: {' + '.join(str(c) for c in counts)} = {sum(counts)}"]
    return "\n".join(lines + [_boxed(sum(counts))])


def _digit(d: int) -> str:
    return str(d) if d < 10 else chr(ord("a") + d - 10)


def _base_conversion(entry: Mapping[str, Any]) -> str:
    meta = entry["metadata"]
    source, target, text = int(meta["source_base"]), int(meta["target_base"]), str(meta["source_repr"])
    lines = []
    value = int(text, source)
    if source != 10:
        digits = [int(ch, 36) for ch in text]
        terms = " + ".join(f"{d}×{source}^{len(digits) - 1 - i}" for i, d in enumerate(digits))
        values = " + ".join(str(d * source ** (len(digits) - 1 - i)) for i, d in enumerate(digits))
        lines.append(f"{text} in base {source} = {terms} = {values} = {value} in base 10.")
    if target == 10:
        return "\n".join(lines + [_boxed(value)])
    lines.append(f"Divide by {target} repeatedly and keep the remainders:")
    n, remainders = value, []
    while n:
        q, r = divmod(n, target)
        lines.append(f"{n} ÷ {target} = {q} remainder {r}" + (f" ({_digit(r)})" if r >= 10 else ""))
        remainders.append(_digit(r))
        n = q
    result = "".join(reversed(remainders)) or "0"
    lines.append(f"Reading the remainders from last to first: {result}")
    return "\n".join(lines + [_boxed(result)])


#: A derivation per family: entry -> response text ending in the boxed result.
_WRITERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "basic_arithmetic": _basic_arithmetic, "chain_sum": _chain_sum, "products": _products, "gcd": _gcd,
    "lcm": _lcm, "leg_counting": _leg_counting, "count_bits": _count_bits, "simple_equations": _simple_equations,
    "letter_counting": _letter_counting, "base_conversion": _base_conversion,
}


def write_solution(family: str, entry: Mapping[str, Any]) -> str:
    """The response to one problem: the task's worked solution (`answer_cot`, its final "#### x"
    line replaced by a boxed answer) where reasoning-gym has one, else this module's derivation."""
    cot = entry.get("metadata", {}).get("answer_cot")
    if cot:
        body = "\n".join(line for line in str(cot).strip().splitlines() if not line.startswith("####"))
        final = str(cot).strip().splitlines()[-1]
        answer = final[4:].strip() if final.startswith("####") else str(entry["answer"]).strip()
        return f"{body}\n{_boxed(answer)}"
    writer = _WRITERS.get(family)
    if writer is None:
        raise WorldError(f"no worked solution or derivation for family {family!r}; families with one: "
                         f"{solved_families()}")
    return writer(entry)
