"""The world's worked solutions, line by line, on small hand-made problems whose every step was
computed by hand: the student learns from these texts, so each step must be right and the last
line must box the derivation's own result."""

from __future__ import annotations

import pytest

from prismatic_assets.core.world import WorldError, write_solution

BOX = "The answer is \\boxed{{{}}}."


def _solve(family: str, **metadata: object) -> list[str]:
    return write_solution(family, {"metadata": metadata}).split("\n")


ARITHMETIC = ("Work inside parentheses first, then multiplication and division, then addition and subtraction, "
              "left to right:")


@pytest.mark.parametrize("expression, steps, answer", [
    ("( 56 + -33 ) - 84", ["56 + -33 = 23", "23 - 84 = -61"], -61),
    ("7 - 12 / 5 * 2", ["12 / 5 = 2", "2 * 2 = 4", "7 - 4 = 3"], 3),
    ("-7 / 2 + 1", ["-7 / 2 = -4", "-4 + 1 = -3"], -3),
    ("-(2 - 5) * 3", ["2 - 5 = -3", "-(-3) = 3", "3 * 3 = 9"], 9),
    ("+8 - 3", ["8 - 3 = 5"], 5),
])
def test_basic_arithmetic_works_one_operation_at_a_time_with_floor_division(expression, steps, answer):
    assert _solve("basic_arithmetic", expression=expression) == [ARITHMETIC, *steps, BOX.format(answer)]


def test_a_unary_plus_keeps_the_sign_of_a_bracketed_value_and_writes_no_step():
    assert _solve("basic_arithmetic", expression="+(2 - 5) * 2") == [
        ARITHMETIC, "2 - 5 = -3", "-3 * 2 = -6", BOX.format(-6)]


@pytest.mark.parametrize("expression", ["2 ** 3", "7 % 3", "x + 1", "not 1", "1.5 + 2"])
def test_an_expression_outside_integer_arithmetic_is_refused(expression):
    with pytest.raises(ValueError, match="cannot evaluate"):
        _solve("basic_arithmetic", expression=expression)


def test_chain_sum_keeps_a_running_total():
    assert _solve("chain_sum", expression="57 + 87 - 70") == [
        "Add and subtract from left to right, keeping a running total:", "57 + 87 = 144", "144 - 70 = 74",
        BOX.format(74)]


@pytest.mark.parametrize("expression, lines, answer", [
    ("57 * 87 * 70", ["57 × 87 = 57 × 80 + 57 × 7 = 4560 + 399 = 4959", "4959 × 70 = 347130"], 347130),
    ("914 * 807", ["914 × 807 = 914 × 800 + 914 × 7 = 731200 + 6398 = 737598"], 737598),
    ("12 * 345", ["12 × 345 = 12 × 300 + 12 × 40 + 12 × 5 = 3600 + 480 + 60 = 4140"], 4140),
    ("7 * 5", ["7 × 5 = 35"], 35),
])
def test_products_split_the_second_factor_into_its_nonzero_digits(expression, lines, answer):
    assert _solve("products", expression=expression) == [
        "Multiply from left to right, splitting the second factor by its digits:", *lines, BOX.format(answer)]


def test_gcd_shows_every_division_of_euclids_algorithm():
    assert _solve("gcd", numbers=[84, 36, 10]) == [
        "Euclid's algorithm: divide, keep the remainder, repeat until it is 0.",
        "gcd(84, 36):", "84 = 2 × 36 + 12", "36 = 3 × 12 + 0", "gcd(84, 36) = 12",
        "gcd(12, 10):", "12 = 1 × 10 + 2", "10 = 5 × 2 + 0", "gcd(12, 10) = 2", BOX.format(2)]


def test_lcm_divides_the_product_by_euclids_gcd():
    assert _solve("lcm", numbers=[4, 6, 10]) == [
        "lcm(a, b) = a × b / gcd(a, b), with the gcd from Euclid's remainders.",
        "gcd(6, 4): 6 mod 4 = 2, 4 mod 2 = 0; so gcd = 2", "lcm(6, 4) = 6 × 4 / 2 = 12",
        "gcd(12, 10): 12 mod 10 = 2, 10 mod 2 = 0; so gcd = 2", "lcm(12, 10) = 12 × 10 / 2 = 60", BOX.format(60)]


@pytest.mark.parametrize("animals, lines, answer", [
    ({"cow": 2, "bee": 1}, ["2 cows: 2 × 4 = 8", "1 bee: 1 × 6 = 6", "Total: 8 + 6 = 14"], 14),
    ({"lobster": 6, "duck": 3, "snake": 1}, ["6 lobsters: 6 × 10 = 60", "3 ducks: 3 × 2 = 6", "1 snake: 1 × 0 = 0",
                                             "Total: 60 + 6 + 0 = 66"], 66),
    ({"spider": 3}, ["3 spiders: 3 × 8 = 24"], 24),
])
def test_leg_counting_multiplies_legs_per_animal_and_totals_several_kinds(animals, lines, answer):
    assert _solve("leg_counting", animals=animals) == [
        "Legs per animal times how many there are:", *lines, BOX.format(answer)]


@pytest.mark.parametrize("number, powers, binary, bits", [(13, "8 + 4 + 1", "1101", 3), (64, "64", "1000000", 1),
                                                          (0, "0", "0", 0)])
def test_count_bits_writes_the_number_as_powers_of_two(number, powers, binary, bits):
    assert _solve("count_bits", number=number) == [
        f"Write {number} as a sum of powers of two: {number} = {powers}.",
        f"So {number} in binary is {binary}; each power of two is one 1 bit.", f"Count of 1 bits: {bits}",
        BOX.format(bits)]


@pytest.mark.parametrize("equation, variable, lines, answer", [
    ("3*x + 5 = 20", "x", ["The left side is 3*x + 5.", "Subtract 5 on both sides: 3*x = 20 - 5 = 15",
                           "Divide both sides by 3: x = 15 / 3 = 5"], "5"),
    ("5*h + 1 = 11", "h", ["The left side is 5*h + 1.", "Subtract 1 on both sides: 5*h = 11 - 1 = 10",
                           "Divide both sides by 5: h = 10 / 5 = 2"], "2"),
    ("4*x - 6 = 10", "x", ["The left side is 4*x - 6.", "Add 6 on both sides: 4*x = 10 + 6 = 16",
                           "Divide both sides by 4: x = 16 / 4 = 4"], "4"),
    ("2*x = 7", "x", ["The left side is 2*x + 0.", "Divide both sides by 2: x = 7 / 2 = 7/2"], "7/2"),
])
def test_simple_equations_undo_the_constant_then_divide(equation, variable, lines, answer):
    assert _solve("simple_equations", equation=equation, variable=variable) == [*lines, BOX.format(answer)]


@pytest.mark.parametrize("equation", ["3*y + 2 = 8", "7 = 7", "x*x + 1 = 5"])
def test_an_equation_not_linear_in_its_variable_is_refused(equation):
    with pytest.raises(ValueError, match="not a linear equation in x"):
        _solve("simple_equations", equation=equation, variable="x")


def test_letter_counting_counts_the_letter_in_each_word_ignoring_case():
    assert _solve("letter_counting", target_letter="l", span=["Lily", "sky", "bell"]) == [
        'Count "l" in each word: Lily 2, sky 0, bell 2.', "Total: 2 + 0 + 2 = 4", BOX.format(4)]


@pytest.mark.parametrize("source, target, text, lines, answer", [
    (2, 10, "1101", ["1101 in base 2 = 1×2^3 + 1×2^2 + 0×2^1 + 1×2^0 = 8 + 4 + 0 + 1 = 13 in base 10."], "13"),
    (10, 16, "26", ["Divide by 16 repeatedly and keep the remainders:", "26 ÷ 16 = 1 remainder 10 (a)",
                    "1 ÷ 16 = 0 remainder 1", "Reading the remainders from last to first: 1a"], "1a"),
    (16, 3, "1f", ["1f in base 16 = 1×16^1 + 15×16^0 = 16 + 15 = 31 in base 10.",
                   "Divide by 3 repeatedly and keep the remainders:", "31 ÷ 3 = 10 remainder 1",
                   "10 ÷ 3 = 3 remainder 1", "3 ÷ 3 = 1 remainder 0", "1 ÷ 3 = 0 remainder 1",
                   "Reading the remainders from last to first: 1011"], "1011"),
    (12, 13, "b", ["b in base 12 = 11×12^0 = 11 = 11 in base 10.", "Divide by 13 repeatedly and keep the remainders:",
                   "11 ÷ 13 = 0 remainder 11 (b)", "Reading the remainders from last to first: b"], "b"),
    (10, 2, "0", ["Divide by 2 repeatedly and keep the remainders:", "Reading the remainders from last to first: 0"],
     "0"),
])
def test_base_conversion_expands_to_base_ten_then_divides_repeatedly(source, target, text, lines, answer):
    assert _solve("base_conversion", source_base=source, target_base=target, source_repr=text) == [
        *lines, BOX.format(answer)]


@pytest.mark.parametrize("cot, answer", [
    ("Step 1: 2 + 3 = 5\nStep 2: 5 * 2 = 10\n#### 10", "10"),
    ("  Step 1: 2 + 3 = 5\nStep 2: 5 * 2 = 10\n####10\n", "10"),
])
def test_a_worked_solution_ends_in_its_own_final_answer_boxed(cot, answer):
    assert write_solution("gsm_symbolic", {"metadata": {"answer_cot": cot}}) == \
        f"Step 1: 2 + 3 = 5\nStep 2: 5 * 2 = 10\n{BOX.format(answer)}"


def test_a_worked_solution_without_a_final_line_boxes_the_tasks_answer():
    entry = {"answer": " 5 ", "metadata": {"answer_cot": "2 + 3 = 5"}}
    assert write_solution("gsm_symbolic", entry) == f"2 + 3 = 5\n{BOX.format(5)}"


def test_a_family_without_a_solution_is_an_error_naming_it():
    with pytest.raises(WorldError, match=r"family 'spell_backward'; families with one: \[.*'gcd'.*'gsm_symbolic'\]"):
        write_solution("spell_backward", {"question": "Spell 'cat' backward", "answer": "tac"})
