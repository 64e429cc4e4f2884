"""Spearman's rho, its bootstrap interval over the sets, and the label entropy, against hand computations.

The interval is checked against the exact bootstrap distribution: with n = 5 sets there are
5^5 = 3125 equally likely resamples, enumerated here (ranked by scipy); the sampled interval must land on the
exact distribution's 2.5% and 97.5% points, and the share of degenerate resamples must match.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from prismatic_assets.core.ranking import bootstrap_spearman, entropy, spearman


def test_rho_without_ties_is_the_textbook_formula():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [2.0, 1.0, 4.0, 3.0, 5.0]
    # d = rank differences (-1, 1, -1, 1, 0): sum d^2 = 4; rho = 1 - 6*4 / (5*24) = 0.8
    assert spearman(x, y) == pytest.approx(0.8)
    assert spearman(x, [5.0, 4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_rho_with_ties_uses_average_ranks():
    x = [10.0, 20.0, 20.0, 30.0]  # ranks 1, 2.5, 2.5, 4
    y = [1.0, 3.0, 2.0, 4.0]      # ranks 1, 3, 2, 4
    # Pearson of the rank vectors by hand: centred x (-1.5, 0, 0, 1.5), y (-1.5, 0.5, -0.5, 1.5);
    # sum xy = 4.5, sum x^2 = 4.5, sum y^2 = 5 -> rho = 4.5 / sqrt(4.5 * 5) = 0.9486833
    assert spearman(x, y) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)


@pytest.mark.parametrize("x, y, why", [
    ([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], "constant measure"),
    ([1.0, 2.0, 3.0, 4.0], [0.5, 0.5, 0.5, 0.5], "constant accuracy"),
    ([1.0, 2.0], [1.0, 2.0], "two sets"),
    ([1.0, float("nan"), 3.0, 4.0], [1.0, 2.0, float("nan"), 4.0], "two finite pairs left"),
])
def test_rho_is_undefined_without_a_ranking(x, y, why):
    assert spearman(x, y) is None, why
    result = bootstrap_spearman(x, y, resamples=200, seed=0)
    assert result.rho is None and result.low is None and result.high is None


def _exact_bootstrap(x, y):
    """Every resample of n sets with replacement, each with probability n^-n: (sorted rho values, degenerate count)."""
    n = len(x)
    values, degenerate = [], 0
    for rows in itertools.product(range(n), repeat=n):
        rows = list(rows)
        xs, ys = np.asarray(x)[rows], np.asarray(y)[rows]
        if len(set(xs)) == 1 or len(set(ys)) == 1:
            degenerate += 1
            continue
        values.append(spearmanr(xs, ys).statistic)  # scipy: an implementation independent of ours
    return np.sort(np.array(values)), degenerate


def _exact_quantile(sorted_values, q):
    """The smallest value whose share of the (equally weighted) valid resamples at or below it is >= q."""
    cdf = np.arange(1, sorted_values.size + 1) / sorted_values.size
    return float(sorted_values[np.searchsorted(cdf, q - 1e-12)])


def test_the_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [0.10, 0.30, 0.20, 0.50, 0.40]
    exact, degenerate = _exact_bootstrap(x, y)
    # Degenerate: only the 5 resamples that repeat one set (x and y are both all distinct).
    assert degenerate == 5 and exact.size == 5 ** 5 - 5
    low, high = _exact_quantile(exact, 0.025), _exact_quantile(exact, 0.975)
    # The known answer: ranks of y (1, 3, 2, 5, 4), sum d^2 = 4, rho = 1 - 6*4/(5*24) = 0.8; the exact
    # bootstrap's 2.5% point is 1/9 (a resample with ties), its 97.5% point 1.
    assert spearman(x, y) == pytest.approx(0.8)
    assert (low, high) == (pytest.approx(1 / 9), pytest.approx(1.0))
    # Far enough from 2.5% on both sides that 20,000 draws land on the same atom (SE ~0.001).
    assert np.mean(exact < low - 1e-9) < 0.021 and np.mean(exact <= low + 1e-9) > 0.07
    result = bootstrap_spearman(x, y, resamples=20_000, seed=3)
    assert result.rho == pytest.approx(0.8)
    assert (result.low, result.high) == (pytest.approx(low), pytest.approx(high))
    assert result.degenerate / result.resamples == pytest.approx(degenerate / 5 ** 5, abs=0.002)
    assert result.n == 5 and result.valid_resamples == result.resamples - result.degenerate


def test_a_perfect_ranking_has_a_degenerate_free_interval_of_one():
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    y = [0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.65, 0.9]
    result = bootstrap_spearman(x, y, resamples=500, seed=0)
    # every non-degenerate resample of a monotone relation ranks perfectly
    assert (result.rho, result.low, result.high) == (1.0, 1.0, 1.0)


def test_the_bootstrap_is_repeatable_and_the_seed_matters():
    rng = np.random.default_rng(0)
    x, y = rng.random(8), rng.random(8)
    a, b = bootstrap_spearman(x, y, 300, seed=1), bootstrap_spearman(x, y, 300, seed=1)
    assert (a.low, a.high) == (b.low, b.high)
    others = {(bootstrap_spearman(x, y, 300, seed=s).low, bootstrap_spearman(x, y, 300, seed=s).high)
              for s in range(2, 7)}
    assert len(others | {(a.low, a.high)}) > 1


def test_every_resample_degenerate_gives_no_interval():
    # two sets only differ: any resample that misses one of them is constant on both sides;
    # with n = 3 and two equal x values, many resamples are degenerate but not all
    result = bootstrap_spearman([1.0, 1.0, 2.0], [0.0, 1.0, 2.0], resamples=1000, seed=0)
    assert result.rho == pytest.approx(spearmanr([1, 1, 2], [0, 1, 2]).statistic)
    assert 0 < result.degenerate < 1000


def test_entropy_of_labels():
    assert entropy([("a", 0)] * 4) == 0.0
    assert entropy([("a", 0), ("a", 1), ("b", 0), ("b", 1)]) == pytest.approx(math.log(4))
    assert entropy(["a", "a", "b"]) == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    with pytest.raises(ValueError, match="empty"):
        entropy([])


# ----------------------------------------------------------------------------- edges the mutation run found


def test_missing_values_are_dropped_pairs():
    # None (a set whose measure could not be computed) reads as NaN: its pair is left out.
    assert spearman([1, None, 3, 4], [1, 2, 3, 5]) == 1.0
    assert spearman([1, 2, 3, 4], [4, 3, None, 1]) == -1.0
    result = bootstrap_spearman([1.0, 2.0, None, 4.0, 5.0], [None, 2, math.nan, 4, 5], resamples=20)
    assert (result.rho, result.n) == (1.0, 3)


@pytest.mark.parametrize("x, y", [([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]), ([[1.0, 2.0]] * 3, [[1.0, 2.0]] * 3)])
def test_spearman_needs_two_one_dimensional_sequences_of_equal_length(x, y):
    with pytest.raises(ValueError, match="two 1-D sequences of equal length"):
        spearman(x, y)


def test_defaults_are_2000_resamples_and_seed_0_and_the_record_says_so():
    result = bootstrap_spearman([1.0, 2.0, 3.0, 4.0, 5.0], [2.0, 1.0, 4.0, 3.0, 5.0])
    assert (result.resamples, result.seed, result.n) == (2000, 0, 5)
    assert result.as_dict() == {"rho": result.rho, "low": result.low, "high": result.high, "n": 5,
                                "resamples": 2000, "degenerate": result.degenerate, "seed": 0}
    assert result.valid_resamples == 2000 - result.degenerate


@pytest.mark.parametrize("resamples", [0, -3, True, 2.5, 1.0, "10"])
def test_resamples_must_be_a_positive_integer(resamples):
    with pytest.raises(ValueError, match="must be an integer >= 1"):
        bootstrap_spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], resamples=resamples)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.1])
def test_confidence_must_lie_strictly_between_0_and_1(confidence):
    with pytest.raises(ValueError, match="must be in"):
        bootstrap_spearman([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], confidence=confidence)


def test_no_rho_means_no_bootstrap_and_the_record_keeps_n_and_seed():
    result = bootstrap_spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], resamples=50, seed=7)
    assert result.as_dict() == {"rho": None, "low": None, "high": None, "n": 4, "resamples": 0, "degenerate": 0,
                                "seed": 7}


def _draw(seed: int, resamples: int, n: int) -> np.ndarray:
    """The resamples bootstrap_spearman documents: numpy's default_rng(seed) set indices."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def test_one_resample_valid_or_degenerate():
    """With resamples=1 the interval is that one resample's rho, or none when it is degenerate."""
    x, y = [1.0, 2.0, 3.0], [1.0, 3.0, 2.0]
    constant = next(s for s in range(1000) if len(set(_draw(s, 1, 3)[0])) == 1)
    varied = next(s for s in range(1000) if len(set(_draw(s, 1, 3)[0])) == 3)
    none = bootstrap_spearman(x, y, resamples=1, seed=constant)
    assert none.as_dict() == {"rho": 0.5, "low": None, "high": None, "n": 3, "resamples": 1, "degenerate": 1,
                              "seed": constant}
    one = bootstrap_spearman(x, y, resamples=1, seed=varied)
    row = _draw(varied, 1, 3)[0]
    expected = spearmanr(np.array(x)[row], np.array(y)[row]).statistic
    assert (one.low, one.high, one.degenerate, one.seed) == (pytest.approx(expected), pytest.approx(expected), 0,
                                                              varied)


def test_the_interval_ends_are_resample_values_not_interpolations():
    """Percentiles by the inverted CDF: with 10 valid resamples the 2.5% and 97.5% points are the
    smallest and the largest rho (linear interpolation would land between two of them)."""
    x, y = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [2.0, 1.0, 4.0, 3.0, 6.0, 5.0, 8.0, 7.0]
    rhos = sorted(spearmanr(np.array(x)[row], np.array(y)[row]).statistic for row in _draw(3, 10, 8))
    result = bootstrap_spearman(x, y, resamples=10, seed=3)
    assert result.degenerate == 0 and rhos[0] < rhos[1] and rhos[-2] < rhos[-1]
    assert (result.low, result.high) == (pytest.approx(rhos[0]), pytest.approx(rhos[-1]))


def test_the_entropy_of_one_label_is_positive_zero():
    assert math.copysign(1.0, entropy(["a", "a", "a"])) == 1.0
