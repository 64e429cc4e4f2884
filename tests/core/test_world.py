"""The procedural world: cells, responses graded by the task's own scorer, the skewed seed pool,
and the pool-conditioned generator. Real reasoning-gym generators and scorers throughout."""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

import pytest

from prismatic_assets.core.procedural import TaskItem, score_item, verify_item
from prismatic_assets.core.samples import Sample, normalize_text
from prismatic_assets.core.world import (
    INDEX_SPACE,
    Exemplar,
    GeneratorMix,
    WorldError,
    cell_coverage,
    check_world,
    draw_entry,
    held_out_items,
    seed_counts,
    seed_pool_items,
    solved_families,
    world_item,
    world_seed,
    write_problems,
    write_solution,
)
from prismatic_assets.infra.config import WorldConfig

FAMILIES = WorldConfig().families  # the default world: every family has a derivation
MIX = GeneratorMix(0.7, 0.2, 0.1)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_response_passes_its_task_scorer(family):
    for level in (0, 1, 2):
        for i in range(12):
            item = world_item(family, level, world_seed("t", family, level, i), sample_id=f"x{i}")
            assert verify_item(item) is None, (item.sample.prompt, item.sample.response, item.entry["answer"])
            assert item.sample.response.count("\n") >= 1  # a derivation, not a one-line answer
            assert item.sample.meta == {"family": family, "level": level}


def test_the_boxed_answer_is_the_derivations_own_result():
    """The derivation computes its answer from the problem; it does not copy the task's answer,
    so the scorer check can fail: a derivation of another problem is rejected."""
    entry = draw_entry("gcd", 0, 5)
    other = draw_entry("gcd", 0, 6)
    assert entry["answer"] != other["answer"]
    wrong = TaskItem(world_item("gcd", 0, 5, sample_id="w").sample, "gcd", 0, entry)
    response = write_solution("gcd", other)
    assert score_item(wrong, response) == (other["answer"], False)
    a, b = entry["metadata"]["numbers"]
    assert f"{max(a, b)} = {max(a, b) // min(a, b)} × {min(a, b)} + {max(a, b) % min(a, b)}" in \
        write_solution("gcd", entry)  # the first step of Euclid's algorithm, computed here


def test_a_worked_solution_is_used_where_the_task_has_one():
    entry = draw_entry("gsm_symbolic", 0, 3)
    response = write_solution("gsm_symbolic", entry)
    first_step = entry["metadata"]["answer_cot"].strip().splitlines()[0]
    assert response.startswith(first_step) and "####" not in response
    item = TaskItem(world_item("gsm_symbolic", 0, 3, sample_id="g").sample, "gsm_symbolic", 0, entry)
    assert score_item(item, response)[1]


def test_levels_are_distinct_bands_of_the_curriculum():
    terms = {lvl: {draw_entry("basic_arithmetic", lvl, i)["metadata"]["num_terms"] for i in range(30)}
             for lvl in (0, 1, 2)}
    assert terms == {0: {2}, 1: {3}, 2: {4}}  # reasoning-gym's own level values, one band each


def test_cell_coverage_counts_cells_and_their_entropy():
    n, h = cell_coverage([("a", 0), ("a", 0), ("b", 1)])
    assert n == 2 and h == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)))
    assert cell_coverage([]) == (0, 0.0)
    assert cell_coverage([("a", 0)] * 5) == (1, 0.0)


def test_seed_counts_follow_the_zipf_and_level_weights():
    # families a, b weigh 1, 1/2; levels 0, 1 weigh 1, 1/2: cells 4/9, 2/9, 2/9, 1/9 of 10
    # -> 4.44, 2.22, 2.22, 1.11; floors 4, 2, 2, 1 and the one left over to the largest remainder (a, 0).
    counts = seed_counts(["a", "b"], [0, 1], 10, family_zipf=1.0, level_decay=0.5)
    assert counts == {("a", 0): 5, ("a", 1): 2, ("b", 0): 2, ("b", 1): 1}
    flat = seed_counts(["a", "b"], [0, 1], 10, family_zipf=0.0, level_decay=1.0)
    assert flat == {("a", 0): 3, ("a", 1): 3, ("b", 0): 2, ("b", 1): 2}
    default = WorldConfig().pool
    shape = seed_counts(FAMILIES, (0, 1, 2), default.size, default.family_zipf, default.level_decay)
    assert sum(shape.values()) == default.size
    per_family = [sum(shape[(f, lvl)] for lvl in (0, 1, 2)) for f in FAMILIES]
    assert per_family[0] == round(default.size / sum(r ** -1.5 for r in range(1, 11)))  # 150 / 1.99 = 75
    assert min(per_family) >= 1


def test_a_skew_that_leaves_a_family_empty_is_refused():
    # weights 1, 1/8, 1/27 of 3 problems: quotas 2.58, 0.32, 0.10 -> a gets all three
    with pytest.raises(WorldError, match=r"families \['b', 'c'\] get no seed problem.*world\.pool\.size"):
        seed_counts(["a", "b", "c"], [0], 3, family_zipf=3.0, level_decay=0.5)


def test_the_seed_pool_is_distinct_deterministic_and_avoids_excluded_problems():
    counts = {("gcd", 0): 6, ("leg_counting", 0): 4}
    items = seed_pool_items(counts, seed=3, max_attempts=20)
    keys = [normalize_text(i.sample.prompt) for i in items]
    assert len(set(keys)) == 10 and [i.sample for i in items] == [i.sample for i in seed_pool_items(counts, 3,
                                                                                                     max_attempts=20)]
    assert Counter((i.family, i.level) for i in items) == Counter(counts)
    other = seed_pool_items(counts, seed=3, max_attempts=20, exclude=keys[:3])
    assert not set(keys[:3]) & {normalize_text(i.sample.prompt) for i in other}
    assert seed_pool_items(counts, seed=4, max_attempts=20) != items


def test_a_cell_too_small_for_its_count_is_an_error_naming_it():
    # products at level 0 multiplies two one-digit numbers: 100 problems in all
    with pytest.raises(WorldError, match=r"cell \(products, level 0\) gave no new problem"):
        seed_pool_items({("products", 0): 101}, seed=0, max_attempts=50)


def test_held_out_items_spread_over_levels_and_need_no_solution_writer():
    items = held_out_items(["spell_backward", "gcd"], [0, 1, 2], 4, seed=9, id_prefix="h", max_attempts=20)
    assert Counter((i.family, i.level) for i in items) == Counter(
        {("spell_backward", 0): 2, ("spell_backward", 1): 1, ("spell_backward", 2): 1, ("gcd", 0): 2, ("gcd", 1): 1,
         ("gcd", 2): 1})
    assert all(score_item(i, f"\\boxed{{{i.entry['answer']}}}")[1] for i in items)


@pytest.mark.parametrize("families, levels, match", [
    (["no_such_task"], [0], "unknown reasoning-gym task"),
    (["spell_backward"], [0], r"no worked solution or derivation for \['spell_backward'\]"),
    (["gcd", "gcd"], [0], r"world\.families repeats \['gcd'\]"),
    (["gcd"], [0, 7], r"world\.levels=\[0, 7\]: not a level of \['gcd \(levels 0\.\.3\)'\]"),
    ([], [0], "world.families is empty"),
])
def test_bad_world_settings_are_named(families, levels, match):
    with pytest.raises(WorldError, match=match):
        check_world(families, levels)


def test_generator_shares_must_add_up():
    with pytest.raises(WorldError, match="add up to 1"):
        GeneratorMix(0.7, 0.2, 0.2)


def _exemplars(pool: list[Exemplar], k: int, rng: random.Random) -> list[Exemplar]:
    return rng.sample(pool, k)


def test_the_generator_mirrors_its_pool():
    """A pool 80% gcd (level 0), 20% spread over four other families. Each slot copies a uniformly
    chosen exemplar of a uniform draw, so P(exemplar is gcd) = 0.8; same_cell and
    neighbour_level keep the family, new_family leaves it (gcd is absent from a draw of 5 with
    probability C(20,5)/C(100,5) < 0.0002). Expected gcd share 0.8 x (0.7 + 0.2) = 0.72, with
    a binomial sd of sqrt(p(1-p)/n), doubled for the two slots of a request sharing exemplars;
    the bound is 4 of those."""
    others = ["basic_arithmetic", "leg_counting", "count_bits", "letter_counting"]
    pool = [Exemplar(f"g{i}", "gcd", 0) for i in range(80)] + \
        [Exemplar(f"o{i}", others[i % 4], i % 2) for i in range(20)]
    rng, seen, written = random.Random(0), set(), []
    for request in range(500):
        exemplars = _exemplars(pool, 5, rng)
        out = write_problems(exemplars, 2, families=FAMILIES, levels=(0, 1, 2), mix=MIX,
                             request_seed=world_seed("mirror", request), seen=seen, id_prefix=f"q{request}",
                             max_attempts=20)
        for w in out:
            assert w.item is not None
            shown = {e.family for e in exemplars}
            source = next(e for e in exemplars if e.sample_id == w.exemplar_id)
            if w.mode == "new_family":
                assert w.family not in shown and w.level == source.level
            elif w.mode == "neighbour_level":
                assert w.family == source.family and w.level == (source.level + 1 if source.level < 2 else 1)
            else:
                assert w.mode == "same_cell" and (w.family, w.level) == (source.family, source.level)
        written += out
    n = len(written)
    share = sum(w.family == "gcd" for w in written) / n
    expected = 0.8 * (MIX.same_cell + MIX.neighbour_level)
    bound = 4 * math.sqrt(2 * expected * (1 - expected) / n)
    assert abs(share - expected) < bound, (share, expected, bound)
    modes = Counter(w.mode for w in written)
    for mode, p in (("same_cell", 0.7), ("neighbour_level", 0.2), ("new_family", 0.1)):
        assert abs(modes[mode] / n - p) < 4 * math.sqrt(p * (1 - p) / n), (mode, modes)
    assert len({normalize_text(w.item.sample.prompt) for w in written}) == n  # every problem fresh


def test_the_generator_is_deterministic_in_its_seeds():
    exemplars = [Exemplar("a", "gcd", 0), Exemplar("b", "letter_counting", 1)]

    def run(seed):
        return [w.item.sample for w in write_problems(exemplars, 4, families=FAMILIES, levels=(0, 1, 2), mix=MIX,
                                                      request_seed=seed, seen=set(), id_prefix="q",
                                                      max_attempts=20)]
    assert run(11) == run(11) and run(11) != run(12)


def test_no_fresh_problem_is_a_recorded_slot_not_a_crash():
    every = {normalize_text(draw_entry("products", 0, i)["question"]) for i in range(3000)}
    assert len(every) == 100  # two one-digit factors
    out = write_problems([Exemplar("p", "products", 0)], 2, families=["products"], levels=(0, 1, 2),
                         mix=GeneratorMix(1.0, 0.0, 0.0), request_seed=1, seen=set(every), id_prefix="q",
                         max_attempts=7)
    assert [(w.item, w.attempts, w.mode) for w in out] == [(None, 7, "same_cell")] * 2


def test_new_family_falls_back_when_the_exemplars_cover_every_family():
    out = write_problems([Exemplar("a", "gcd", 0)], 3, families=["gcd"], levels=(0, 1), mix=GeneratorMix(0, 0, 1.0),
                         request_seed=5, seen=set(), id_prefix="q", max_attempts=20)
    assert [(w.mode, w.family, w.level) for w in out] == [("same_cell_fallback", "gcd", 0)] * 3


def test_a_neighbour_level_needs_two_levels():
    with pytest.raises(WorldError, match="neighbour_level=0.2 but world.levels=\\[0\\] has one level"):
        write_problems([Exemplar("a", "gcd", 0)], 1, families=["gcd"], levels=(0,), mix=MIX, request_seed=1,
                       seen=set(), id_prefix="q", max_attempts=5)


def test_world_seeds_are_pinned_and_depend_only_on_the_parts():
    # Pinned: "stable across processes and machines"; every draw of the world (pools, requests,
    # acceptance) derives from these, so a change here changes every recorded result.
    assert [world_seed(), world_seed("item", 0), world_seed("accept", 0, 1, "random", 0)] == \
        [567104335, 1499862196, 19819791]
    assert world_seed({"a": 1, "b": 2}) == world_seed({"b": 2, "a": 1})
    assert world_seed(Path("data/x.jsonl")) == world_seed("data/x.jsonl") != world_seed("data/y.jsonl")
    assert all(0 <= world_seed("r", i) < 2 ** 31 for i in range(200))


def test_the_demo_seed_pool_draws_are_pinned():
    # Pinned: benchmarks/results/arms*.md record results per world.seed; they hold for these draws.
    items = seed_pool_items({("gcd", 0): 2, ("products", 1): 1}, seed=0, max_attempts=20)
    assert [i.sample.source_ref for i in items] == ["reasoning_gym:gcd:level=0:index=155713",
                                                    "reasoning_gym:gcd:level=0:index=853689",
                                                    "reasoning_gym:products:level=1:index=859253"]


def test_a_world_item_is_the_cells_problem_with_its_answer_and_provenance():
    entry = draw_entry("gcd", 1, 5)
    expected = str(math.gcd(*entry["metadata"]["numbers"]))
    item = world_item("gcd", 1, INDEX_SPACE + 5, sample_id="s1", source="src")
    assert item.sample == Sample(sample_id="s1", prompt=entry["question"].strip(),
                                 response=write_solution("gcd", entry), answer=expected, category="gcd", source="src",
                                 source_ref="reasoning_gym:gcd:level=1:index=5")
    assert (item.family, item.level, item.entry) == ("gcd", 1, entry)
    bare = world_item("gcd", 1, 5, sample_id="s2", with_solution=False).sample
    assert (bare.source, bare.response, bare.answer) == ("world", f"The answer is \\boxed{{{expected}}}.", expected)


def test_every_level_of_a_curriculum_is_accepted_and_the_next_one_refused():
    check_world(["gcd", "basic_arithmetic"], [0, 1, 2, 3])  # gcd's curriculum has 4 levels
    for levels in ([4], [-1]):
        with pytest.raises(WorldError, match=r"not a level of \['gcd \(levels 0\.\.3\)'\]"):
            check_world(["gcd"], levels)


def test_every_solved_family_passes_the_world_check():
    assert "gsm_symbolic" in solved_families()
    check_world(solved_families(), [0])


def test_cell_coverage_of_one_problem_is_one_cell():
    assert cell_coverage([("a", 0)]) == (1, 0.0)


def test_a_seed_pool_of_one_problem_is_allowed_and_of_none_refused():
    assert seed_counts(["a"], [0], 1, family_zipf=1.0, level_decay=0.5) == {("a", 0): 1}
    with pytest.raises(WorldError, match=r"world\.pool\.size=0"):
        seed_counts(["a"], [0], 0, family_zipf=1.0, level_decay=0.5)


def test_seed_pool_items_carry_their_ids_source_and_derivations():
    items = seed_pool_items({("gcd", 0): 2, ("lcm", 1): 1}, seed=1, max_attempts=20)
    assert [(i.sample.sample_id, i.sample.source) for i in items] == [
        ("world:gcd:L0:000", "world"), ("world:gcd:L0:001", "world"), ("world:lcm:L1:000", "world")]
    for item in items:
        numbers = item.entry["metadata"]["numbers"]
        expected = math.gcd(*numbers) if item.family == "gcd" else math.lcm(*numbers)
        assert item.sample.response.count("\n") >= 2 and item.sample.response.endswith(f"\\boxed{{{expected}}}.")


def test_held_out_items_carry_their_ids_and_a_derivation_when_asked():
    items = held_out_items(["gcd"], [0, 1], 3, seed=2, id_prefix="ho", max_attempts=20, with_solution=True)
    assert [(i.sample.sample_id, i.sample.source) for i in items] == [
        ("ho:gcd:L0:000", "ho"), ("ho:gcd:L0:001", "ho"), ("ho:gcd:L1:000", "ho")]
    for item in items:
        expected = math.gcd(*item.entry["metadata"]["numbers"])
        assert item.sample.response.count("\n") >= 2 and item.sample.response.endswith(f"\\boxed{{{expected}}}.")


def _write(exemplars: list[Exemplar], n: int, levels: tuple[int, ...], mix: GeneratorMix, seen: set[str] | None = None,
           families: tuple[str, ...] = ("gcd",)):
    return write_problems(exemplars, n, families=families, levels=levels, mix=mix, request_seed=3,
                          seen=set() if seen is None else seen, id_prefix="r7", max_attempts=20)


def test_written_problems_carry_their_slot_id_and_source():
    out = _write([Exemplar("a", "gcd", 0), Exemplar("b", "gcd", 1)], 3, (0, 1), MIX)
    assert [(w.slot, w.item.sample.sample_id, w.item.sample.source) for w in out] == [
        (0, "r7:p0", "arm"), (1, "r7:p1", "arm"), (2, "r7:p2", "arm")]
    for w in out:
        assert w.item.sample.response.endswith(f"\\boxed{{{math.gcd(*w.item.entry['metadata']['numbers'])}}}.")


def test_attempts_count_the_indices_tried_until_a_fresh_problem():
    seen: set[str] = set()
    first = _write([Exemplar("a", "gcd", 0)], 1, (0,), GeneratorMix(1.0, 0.0, 0.0), seen)[0]
    assert first.attempts == 1 and seen == {normalize_text(first.item.sample.prompt)}
    again = _write([Exemplar("a", "gcd", 0)], 1, (0,), GeneratorMix(1.0, 0.0, 0.0), seen)[0]
    assert again.attempts == 2 and again.item.sample.prompt != first.item.sample.prompt and len(seen) == 2


@pytest.mark.parametrize("levels, level, neighbour", [
    ((2, 0, 1), 0, 1), ((2, 0, 1), 1, 2), ((2, 0, 1), 2, 1), ((0, 1), 1, 0), ((0, 1), 0, 1)])
def test_the_neighbour_level_is_one_up_and_one_down_at_the_top(levels, level, neighbour):
    out = _write([Exemplar("a", "gcd", level)], 2, levels, GeneratorMix(0.0, 1.0, 0.0))
    assert [(w.mode, w.level, w.item.level) for w in out] == [("neighbour_level", neighbour, neighbour)] * 2


def test_one_level_is_enough_without_neighbour_levels():
    out = _write([Exemplar("a", "gcd", 0)], 2, (0,), GeneratorMix(0.9, 0.0, 0.1), families=("gcd", "lcm"))
    assert all(w.item is not None and w.level == 0 for w in out)
