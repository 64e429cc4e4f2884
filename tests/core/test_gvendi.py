"""Tests for prismatic_assets.core.gvendi against the Vendi-Score package and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from vendi_score import vendi

from prismatic_assets.core import gvendi
from prismatic_assets.core.gvendi import (
    GVendiResult,
    SecondMoment,
    g_vendi,
    g_vendi_from_moment,
    renyi_entropy,
    vendi_from_kernel,
)

INF = float("inf")


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """(n, d) rows of unequal norms with a decaying spectrum, so no score is trivially 1 or max."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)) @ np.diag(np.linspace(1.0, 0.05, d)) * rng.uniform(0.5, 3, (n, 1))


def _vendi_q(q: float):
    """Vendi-Score spells q = inf as the string 'inf' (float inf gives NaN there)."""
    return "inf" if math.isinf(q) else q


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("n, d", [(1, 8), (5, 16), (40, 16), (16, 40), (300, 32), (64, 64)])
@pytest.mark.parametrize("q", [1.0, 2.0, INF, 0.5])
def test_matches_vendi_score_dual(n, d, q):
    x = _vectors(n, d)
    ours = g_vendi(x, q=q).score
    ref = vendi.score_dual(x, q=_vendi_q(q))
    assert ours == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("n, d", [(5, 16), (40, 16), (16, 40)])
@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 2.0, 3.0, INF])
def test_matches_the_kernel_definition(n, d, q):
    x = _vectors(n, d, seed=1)
    ours = g_vendi(x, q=q)
    kernel = vendi_from_kernel(x, q=q)
    assert ours.score == pytest.approx(kernel.score, rel=1e-6)
    assert (ours.n, ours.dim) == (kernel.n, kernel.dim) == (n, d)
    if q > 0:  # score_K does not drop round-off eigenvalues, so q = 0 would count them
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        assert ours.score == pytest.approx(vendi.score_K(xn @ xn.T, q=_vendi_q(q)), rel=1e-6)


def test_vendi_score_x_ignores_q_and_we_do_not():
    # Vendi-Score 0.0.3's score_X passes q=1 to score_K whatever q is: the bug class to avoid.
    x = _vectors(30, 12)
    assert vendi.score_X(x, q=2) == pytest.approx(vendi.score_X(x, q=1))
    assert g_vendi(x, q=2).score < g_vendi(x, q=1).score


# ----------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 2.0, INF])
@pytest.mark.parametrize("n, d", [(1, 4), (3, 3), (5, 8), (8, 8)])
def test_orthogonal_rows_give_n(q, n, d):
    x = np.eye(d)[:n] * np.arange(1, n + 1)[:, None]  # orthogonal, unequal norms
    assert g_vendi(x, q=q).score == pytest.approx(n, rel=1e-9)
    assert vendi_from_kernel(x, q=q).score == pytest.approx(n, rel=1e-9)


@pytest.mark.parametrize("q", [0.0, 0.5, 1.0, 2.0, INF])
@pytest.mark.parametrize("n", [1, 2, 50])
def test_identical_rows_give_1(q, n):
    row = np.random.default_rng(3).standard_normal(20)
    x = np.tile(row, (n, 1)) * np.arange(1, n + 1)[:, None]  # same direction, different norms
    assert g_vendi(x, q=q).score == pytest.approx(1.0, abs=1e-9)


def test_n_copies_of_k_orthogonal_directions_give_k():
    x = np.repeat(np.eye(6)[:3], 10, axis=0)  # 30 rows, 3 directions
    assert g_vendi(x).score == pytest.approx(3.0, rel=1e-9)


def test_opposite_directions_count_as_one():
    # C = (1/N) sum g g^T does not see the sign: g and -g are the same direction.
    x = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert g_vendi(x).score == pytest.approx(1.0)


@pytest.mark.parametrize("n, d", [(2, 50), (10, 50), (50, 10), (500, 10), (200, 200)])
@pytest.mark.parametrize("q", [0.0, 1.0, 2.0, INF])
def test_score_lies_between_1_and_min_n_d(n, d, q):
    r = g_vendi(np.random.default_rng(n + d).standard_normal((n, d)), q=q)
    assert 1.0 <= r.score <= min(n, d) + 1e-9
    assert r.entropy == pytest.approx(math.log(r.score))


def test_q_orders_the_scores():
    # Renyi entropies decrease in q; strictly for a non-uniform spectrum.
    x = _vectors(100, 20)
    scores = [g_vendi(x, q=q).score for q in (0.0, 0.5, 1.0, 2.0, 5.0, INF)]
    assert all(a > b for a, b in zip(scores, scores[1:]))
    assert scores[0] == pytest.approx(20)  # q = 0 counts the rank


# ----------------------------------------------------------------------------- parameters


def test_normalize_changes_the_score_for_unequal_norms():
    x = np.array([[10.0, 0.0], [0.0, 1.0]])
    assert g_vendi(x, normalize=True).score == pytest.approx(2.0)
    # As given, C = diag(100, 1)/101: one dominant direction.
    raw = g_vendi(x, normalize=False).score
    assert raw == pytest.approx(math.exp(-(100 / 101) * math.log(100 / 101) - (1 / 101) * math.log(1 / 101)))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert g_vendi(unit, normalize=False).score == pytest.approx(g_vendi(unit).score)


@pytest.mark.parametrize("batch_size", [1, 7, 64, 10_000])
def test_batch_size_does_not_change_the_score(batch_size):
    x = _vectors(150, 24)
    assert g_vendi(x, batch_size=batch_size).score == pytest.approx(g_vendi(x).score, rel=1e-12)


def test_streaming_batches_equals_one_shot():
    x = _vectors(257, 24)
    one_shot = g_vendi(x)
    uneven = g_vendi([x[:1], x[1:100], x[100:101], x[101:]])
    generator = g_vendi(x[i:i + 10] for i in range(0, 257, 10))
    rebatched = g_vendi([x], batch_size=16)  # a big batch is sliced further
    rows = g_vendi((row for row in x), batch_size=50)  # single (d,) rows are gathered
    mixed = g_vendi([x[0], x[1], x[2:200], x[200]] + list(x[201:]))
    for r in (uneven, generator, rebatched, rows, mixed):
        assert r.score == pytest.approx(one_shot.score, rel=1e-12) and r.n == 257


def test_compute_dtype_float32_is_close_but_not_identical():
    x = _vectors(500, 64)
    exact = g_vendi(x).score
    fast = g_vendi(x, compute_dtype="float32").score
    assert fast != exact and fast == pytest.approx(exact, rel=1e-5)


@pytest.mark.parametrize(
    "make, rel",
    [
        (lambda x: torch.from_numpy(x), 1e-12),
        (lambda x: torch.from_numpy(x).float(), 1e-5),
        (lambda x: torch.from_numpy(x).bfloat16(), 2e-2),  # 8 mantissa bits
        (lambda x: x.astype(np.float32), 1e-5),
        (lambda x: x.tolist(), 1e-12),
        (lambda x: [torch.from_numpy(x[:10]), x[10:]], 1e-12),
    ],
)
def test_accepts_numpy_torch_and_lists(make, rel):
    x = _vectors(40, 8)
    assert g_vendi(make(x)).score == pytest.approx(g_vendi(x).score, rel=rel)


def test_result_fields():
    r = g_vendi(np.eye(4)[:3], q=2)
    assert isinstance(r, GVendiResult)
    assert (r.n, r.dim, r.q) == (3, 4, 2.0)
    assert r.score == pytest.approx(3.0) and r.entropy == pytest.approx(math.log(3))


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "vectors, match",
    [
        (np.zeros((0, 8)), "no vectors"),
        ([], "no vectors"),
        (iter([]), "no vectors"),
        (np.zeros(8), r"\(N, d\)"),
        (np.zeros((2, 3, 4)), r"\(N, d\)"),
        (np.zeros((3, 0)), "width 0"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), "row 1 is all zeros"),
        (np.array([[1.0, np.nan]]), "row 0 has a NaN"),
        (np.array([[1.0, 0.0], [np.inf, 1.0]]), "row 1 has a NaN or infinite"),
        ([np.ones((4, 3)), np.ones((4, 3)) * np.array([1, 1, np.nan])], "row 4 has"),  # global index
        ([np.ones((4, 3)), np.ones((2, 5))], r"\(b, 3\)"),
        ([np.ones(3), np.ones(4)], "different widths"),
    ],
)
def test_bad_input_raises(vectors, match):
    with pytest.raises(ValueError, match=match):
        g_vendi(vectors, batch_size=3)


def test_row_index_is_global_across_batches():
    x = np.ones((20, 4))
    x[13] = 0.0
    with pytest.raises(ValueError, match="row 13 "):
        g_vendi(x, batch_size=5)


@pytest.mark.parametrize("q", [-1.0, float("nan"), "inf", None, True])
def test_bad_q_raises(q):
    with pytest.raises(ValueError, match="q must"):
        g_vendi(np.eye(3), q=q)


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, True])
def test_bad_batch_size_raises(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        g_vendi(np.eye(3), batch_size=batch_size)


def test_not_an_array_raises():
    with pytest.raises(TypeError):
        g_vendi(3.0)


def test_kernel_form_refuses_large_n(monkeypatch):
    monkeypatch.setattr(gvendi, "KERNEL_MAX_N", 10)
    with pytest.raises(ValueError, match="use g_vendi"):
        vendi_from_kernel(np.eye(11))


# ----------------------------------------------------------------------------- SecondMoment


def test_second_moment_matrix():
    x = _vectors(30, 6)
    m = SecondMoment(6)
    assert m.update(x[:10]) is m
    m.update(x[10:]).update(np.zeros((0, 6)))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    c = m.matrix()
    assert m.n == 30 and c.shape == (6, 6) and c.dtype == np.float64
    assert np.allclose(c, xn.T @ xn / 30, atol=1e-14)
    assert np.allclose(c, c.T) and np.trace(c) == pytest.approx(1.0)


def test_second_moment_without_normalizing_divides_by_the_trace():
    x = _vectors(30, 6)
    c = SecondMoment(6, normalize=False).update(x).matrix()
    assert np.allclose(c, x.T @ x / np.sum(x * x), atol=1e-14)


def test_second_moment_accepts_one_vector_and_matches_g_vendi():
    x = _vectors(12, 5)
    m = SecondMoment(5)
    for row in x:
        m.update(row)
    assert g_vendi_from_moment(m, q=2).score == pytest.approx(g_vendi(x, q=2).score, rel=1e-12)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: SecondMoment(0), ValueError, "dim"),
        (lambda: SecondMoment(4, compute_dtype="float16"), ValueError, "compute_dtype"),
        (lambda: SecondMoment(4).matrix(), ValueError, "no vectors"),
        (lambda: SecondMoment(4).update(np.ones((2, 3))), ValueError, r"\(b, 4\)"),
        (lambda: SecondMoment(4).update(np.ones((2, 4))).update(np.zeros((1, 4))), ValueError, "row 2 is all zeros"),
        (lambda: g_vendi_from_moment(SecondMoment(4)), ValueError, "no vectors"),
    ],
)
def test_second_moment_errors(make, error, match):
    with pytest.raises(error, match=match):
        make()


# ----------------------------------------------------------------------------- renyi_entropy


@pytest.mark.parametrize(
    "eigenvalues, q, expected",
    [
        ([0.25] * 4, 0.0, math.log(4)),
        ([0.25] * 4, 1.0, math.log(4)),
        ([0.25] * 4, 2.0, math.log(4)),
        ([0.25] * 4, INF, math.log(4)),
        ([1.0, 0.0, 0.0], 1.0, 0.0),  # 0 ln 0 = 0
        ([1.0, 0.0, 0.0], 0.0, 0.0),
        ([0.5, 0.5, -1e-17], 1.0, math.log(2)),  # round-off negative clipped
        ([0.5, 0.5, -1e-17], 0.0, math.log(2)),
        ([0.75, 0.25], 1.0, -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
        ([0.75, 0.25], 2.0, -math.log(0.75**2 + 0.25**2)),
        ([0.75, 0.25], INF, -math.log(0.75)),
        ([0.75, 0.25], 0.5, 2 * math.log(math.sqrt(0.75) + math.sqrt(0.25))),
    ],
)
def test_renyi_entropy_table(eigenvalues, q, expected):
    assert renyi_entropy(np.array(eigenvalues), q) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    "eigenvalues, q, match",
    [
        ([0.5, 0.5], -0.5, "q must"),
        ([0.5, 0.5], float("nan"), "q must"),
        ([], 1.0, "non-empty"),
        ([0.5, np.nan], 1.0, "finite"),
        ([1.1, -0.1], 1.0, "negative"),
        ([0.5, 0.6], 1.0, "divide them by their sum"),
    ],
)
def test_renyi_entropy_errors(eigenvalues, q, match):
    with pytest.raises(ValueError, match=match):
        renyi_entropy(np.array(eigenvalues), q)


def test_float32_path_keeps_the_callers_array_and_names_bad_rows():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 16)).astype(np.float32) * 5
    before = x.copy()
    fast = g_vendi(x, compute_dtype="float32", batch_size=128)
    assert np.array_equal(x, before)  # normalized in a copy, never in place
    assert fast.score == pytest.approx(g_vendi(x.astype(np.float64)).score, rel=1e-5)
    unnormalized = g_vendi(x, normalize=False, compute_dtype="float32", batch_size=128)
    assert unnormalized.score == pytest.approx(g_vendi(x, normalize=False).score, rel=1e-5)
    assert unnormalized.score != pytest.approx(fast.score, rel=1e-4)  # row lengths count when not normalized
    bad = x.copy()
    bad[200, 3] = np.nan
    with pytest.raises(ValueError, match="row 200"):
        g_vendi(bad, compute_dtype="float32", batch_size=128)
    bad[200] = 0
    with pytest.raises(ValueError, match="row 200 is all zeros"):
        g_vendi(bad, compute_dtype="float32", batch_size=128)


def test_float32_path_on_unit_rows_matches_float64_with_or_without_rescaling():
    """Unit float32 rows go to BLAS as they are; rows off unit length (one batch of each, a
    Fortran-ordered batch, float64 input) are rescaled. Every mix gives the float64 score."""
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((900, 48)) * np.linspace(1.0, 0.1, 48)).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    exact = g_vendi(unit.astype(np.float64)).score
    assert np.abs(np.einsum("ij,ij->i", unit, unit) - 1).max() <= gvendi.UNIT_TOLERANCE
    before = unit.copy()
    assert g_vendi(unit, compute_dtype="float32", batch_size=256).score == pytest.approx(exact, rel=1e-5)
    assert np.array_equal(unit, before)
    mixed = [unit[:300], x[300:600] * 3, np.asfortranarray(unit[600:800]), unit[800:].astype(np.float64)]
    assert g_vendi(mixed, compute_dtype="float32").score == pytest.approx(exact, rel=1e-5)
    # A row just beyond the tolerance is rescaled, not taken as unit: scaled by 1.01, it would weigh 2% more.
    heavy = unit.copy()
    heavy[::2] *= 1.01
    assert g_vendi(heavy, compute_dtype="float32").score == pytest.approx(exact, rel=1e-5)
    assert g_vendi(heavy, normalize=False, compute_dtype="float32").score != pytest.approx(exact, rel=1e-5)


# ----------------------------------------------------------------------------- edges the mutation run found


@pytest.mark.parametrize("compute_dtype", ["float64", "float32"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_second_moment_of_several_batches_is_the_whole_matrix(compute_dtype, normalize, dtype):
    # Batches of growing size (the float32 path reuses a buffer: it must grow), rows of any length.
    x = _vectors(40, 16).astype(dtype)
    m = SecondMoment(16, normalize=normalize, compute_dtype=compute_dtype)
    for start, stop in [(0, 2), (2, 12), (12, 40)]:
        m.update(x[start:stop])
    rows = x.astype(np.float64)
    if normalize:
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    expected = rows.T @ rows / np.trace(rows.T @ rows)
    assert m.n == 40
    np.testing.assert_allclose(m.matrix(), expected, atol=1e-6 if compute_dtype == "float32" else 1e-13)
    assert g_vendi_from_moment(m).n == 40


def test_defaults_are_shannon():
    x = _vectors(20, 8)
    m = SecondMoment(8).update(x)
    assert g_vendi_from_moment(m).score == pytest.approx(g_vendi(x, q=1.0).score, rel=1e-12)
    assert vendi_from_kernel(x).score == pytest.approx(vendi.score_dual(x, q=1), rel=1e-9)


def test_one_dimension_and_bad_widths():
    assert SecondMoment(1).update(np.array([[2.0], [-3.0]])).matrix().tolist() == [[1.0]]
    assert vendi_from_kernel(np.array([[1.0], [2.0], [-1.0]])).score == pytest.approx(1.0)
    for dim in (0, True, 2.0):
        with pytest.raises(ValueError, match="dim must be a positive integer"):
            SecondMoment(dim)


@pytest.mark.parametrize("vectors", [np.zeros((0, 4)), np.zeros((3, 0)), np.ones(4)])
def test_the_kernel_form_rejects_empty_or_flat_input(vectors):
    with pytest.raises(ValueError, match="non-empty"):
        vendi_from_kernel(vectors)


def test_the_kernel_form_names_a_bad_row_and_takes_exactly_its_limit(monkeypatch):
    with pytest.raises(ValueError, match="row 1 is all zeros"):
        vendi_from_kernel(np.array([[1.0, 0.0], [0.0, 0.0]]))
    monkeypatch.setattr(gvendi, "KERNEL_MAX_N", 5)
    assert vendi_from_kernel(np.eye(5)).score == pytest.approx(5.0)


def test_a_scalar_is_not_a_set_of_vectors():
    with pytest.raises(TypeError, match=r"expected an \(N, d\) array"):
        g_vendi(5)


@pytest.mark.parametrize("negative, raises", [(-0.5e-8, False), (-1e-8, False), (-1.5e-8, True)])
def test_renyi_entropy_tolerates_round_off_below_zero_only(negative, raises):
    eigenvalues = [0.5 - negative, 0.5, negative]  # the largest is 0.5: the tolerance is 1e-8 itself
    if raises:
        with pytest.raises(ValueError, match="negative beyond round-off"):
            renyi_entropy(eigenvalues, 1.0)
    else:
        assert renyi_entropy(eigenvalues, 1.0) == pytest.approx(math.log(2), abs=1e-6)


def test_torch_and_numpy_float32_inputs_give_the_same_score_to_the_bit():
    """A float32 tensor is read as float32, as a numpy array is: on the float32 path a float64
    detour would change the rounding of the norms (bf16/fp16 tensors, which numpy cannot hold,
    are widened; see test_accepts_numpy_torch_and_lists)."""
    x = _vectors(200, 24).astype(np.float32)
    for compute_dtype in ("float64", "float32"):
        assert (g_vendi(torch.from_numpy(x), compute_dtype=compute_dtype).score
                == g_vendi(x, compute_dtype=compute_dtype).score)


def _batch_sizes(monkeypatch) -> list[int]:
    """The row counts of the batches SecondMoment.update receives from now on."""
    seen: list[int] = []
    update = SecondMoment.update

    def recording(self, batch):
        seen.append(len(batch))
        return update(self, batch)

    monkeypatch.setattr(SecondMoment, "update", recording)
    return seen


def test_batches_of_an_iterable_are_cut_to_batch_size(monkeypatch):
    # The memory bound (about 2 * batch_size * d) holds whatever batch sizes the caller streams.
    x = _vectors(60, 4)
    seen = _batch_sizes(monkeypatch)
    streamed = g_vendi([x[:25], x[25:28], *x[28:40], x[40:]], batch_size=10)
    assert seen == [10, 10, 5, 3, 10, 2, 10, 10]
    assert streamed.score == pytest.approx(g_vendi(x).score, rel=1e-12)


def test_default_batch_sizes_are_the_documented_ones(monkeypatch):
    x = np.random.default_rng(0).standard_normal((40_000, 2))
    seen = _batch_sizes(monkeypatch)
    g_vendi(x)
    assert seen == [8192] * 4 + [40_000 - 4 * 8192]
    seen.clear()
    g_vendi(x.astype(np.float32), compute_dtype="float32")
    assert seen == [32768, 40_000 - 32768]


def test_renyi_entropy_computes_in_float64_whatever_the_input():
    half_quarters = math.log(2) * 1.5  # -(1/2 ln 1/2 + 2 * 1/4 ln 1/4)
    for q, expected in [(1.0, half_quarters), (2.0, -math.log(0.5**2 + 2 * 0.25**2))]:
        assert renyi_entropy(np.array([0.5, 0.25, 0.25], dtype=np.float32), q) == renyi_entropy([0.5, 0.25, 0.25], q)
        assert renyi_entropy(np.array([0.5, 0.25, 0.25], dtype=np.float32), q) == pytest.approx(expected, abs=1e-15)


def test_float32_rows_whose_squares_overflow_float32_are_normalized_in_float64():
    x = _vectors(50, 8)
    huge = (x * 1e20).astype(np.float32)  # finite values; their squares are above float32's 3.4e38
    assert np.isinf(np.einsum("ij,ij->i", huge, huge)).all()
    assert g_vendi(huge, compute_dtype="float32").score == pytest.approx(g_vendi(x).score, rel=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_the_float32_path_copies_only_rows_blas_cannot_read_as_they_are(normalize):
    """No copy of float32 C-ordered rows that need no scaling (unit rows, or any rows when not
    normalizing); a reused buffer for the rest. The copy is what costs memory at N = 1M."""
    x = _vectors(64, 16).astype(np.float32)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    m = SecondMoment(16, normalize=normalize, compute_dtype="float32").update(unit)
    assert m._buffer is None
    for copied in (unit.astype(np.float64), np.asfortranarray(unit)) + ((x * 2,) if normalize else ()):
        m = SecondMoment(16, normalize=normalize, compute_dtype="float32").update(copied)
        assert m._buffer is not None and m._buffer.shape == (64, 16)
    if not normalize:
        assert SecondMoment(16, normalize=False, compute_dtype="float32").update(x * 2)._buffer is None
