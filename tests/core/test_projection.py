"""Tests for prismatic_assets.core.projection: specs, keys, determinism, chunking, JL quality."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from prismatic_assets.core import projection
from prismatic_assets.core.gvendi import g_vendi, vendi_from_kernel
from prismatic_assets.core.projection import (
    ALGORITHM_VERSION,
    ProjectionSpec,
    Projector,
    l2_normalize,
    make_projector,
)

KINDS = ["countsketch", "rademacher"]


def _grad(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def _lowrank_grads(n: int, input_dim: int, rank: int, seed: int = 0) -> torch.Tensor:
    """(n, input_dim) gradients with a decaying rank-`rank` structure, per-coordinate scales
    spread over orders of magnitude (like per-layer gradients), and a little noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(input_dim, rank, generator=g) * torch.exp(torch.randn(input_dim, 1, generator=g))
    coeff = torch.randn(n, rank, generator=g) * torch.linspace(1.0, 0.05, rank)
    return coeff @ basis.T + 0.05 * torch.randn(n, input_dim, generator=g)


# ----------------------------------------------------------------------------- spec and key


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "gaussian"},
        {"kind": "CountSketch"},
        {"dim": 0},
        {"dim": -5},
        {"dim": 1.5},
        {"dim": True},
        {"dim": projection.MAX_DIM + 1},
        {"seed": -1},
        {"seed": 0.5},
        {"seed": 2**63},
    ],
)
def test_spec_rejects_bad_fields(kwargs):
    with pytest.raises(ValueError):
        ProjectionSpec(**kwargs)


def test_spec_accepts_numpy_integers():
    spec = ProjectionSpec(dim=np.int64(16), seed=np.int32(3))
    assert spec == ProjectionSpec(dim=16, seed=3) and type(spec.seed) is int
    assert make_projector(spec, 10).project([torch.ones(10)]).shape == (16,)


def test_spec_defaults():
    spec = ProjectionSpec()
    assert (spec.kind, spec.dim, spec.seed) == ("countsketch", 1024, 0)


def test_key_is_a_stable_string():
    # Pinned: stored vectors are keyed by this string; changing it orphans every cache.
    assert ProjectionSpec().key(100) == f"countsketch-v{ALGORITHM_VERSION}-dim1024-seed0-in100"


@pytest.mark.parametrize(
    "other, input_dim",
    [
        (ProjectionSpec(kind="rademacher"), 100),
        (ProjectionSpec(dim=512), 100),
        (ProjectionSpec(seed=1), 100),
        (ProjectionSpec(), 101),
    ],
)
def test_key_changes_with_every_field(other, input_dim):
    assert other.key(input_dim) != ProjectionSpec().key(100)


@pytest.mark.parametrize("kind", KINDS)
def test_key_is_device_independent(kind):
    spec = ProjectionSpec(kind=kind)
    assert spec.key(10, "cpu") == spec.key(10, "cuda")


@pytest.mark.parametrize("input_dim", [0, -1, 2.0, True])
def test_key_rejects_bad_input_dim(input_dim):
    with pytest.raises(ValueError, match="input_dim"):
        ProjectionSpec().key(input_dim)


def test_projector_exposes_spec_input_dim_and_key():
    spec = ProjectionSpec(dim=16, seed=3)
    p = make_projector(spec, 50)
    assert isinstance(p, Projector)
    assert p.spec == spec and p.input_dim == 50 and p.key == spec.key(50)


def test_make_projector_rejects_non_spec():
    with pytest.raises(TypeError, match="ProjectionSpec"):
        make_projector({"kind": "countsketch"}, 10)


# ----------------------------------------------------------------------------- the hash


def test_torch_hash_matches_the_python_reference_bit_for_bit():
    # int64 wraparound and masked shifts must reproduce SplitMix64 exactly: this is what makes
    # the vectors identical on every device.
    base = projection._stream_base("countsketch", 12345)
    start, n = 2**40 - 3, 64
    out = torch.empty(n, dtype=torch.int64)
    projection._hash_block(out, torch.empty_like(out), start, base)
    for k in range(n):
        expected = projection._splitmix64(base + (start + k + 1) * projection._GOLDEN)
        assert int(out[k]) & projection._MASK64 == expected


def test_splitmix64_reference_matches_published_values():
    # First outputs of SplitMix64 seeded with 1234567 (from the reference C implementation).
    state = 1234567
    outs = []
    for _ in range(3):
        state = (state + projection._GOLDEN) & projection._MASK64
        outs.append(projection._splitmix64(state))
    assert outs == [6457827717110365317, 3203168211198807973, 9817491932198370423]


def test_countsketch_buckets_and_signs_are_pinned():
    # Regression pin of ALGORITHM_VERSION 1: if this changes, bump ALGORITHM_VERSION.
    p = make_projector(ProjectionSpec("countsketch", 1024, 0), 8)
    v = p.project_many([[row] for row in torch.eye(8)])  # (8, 1024): column h(i), sign s(i)
    got = [(int(r.nonzero()[0, 0]), int(r[r != 0][0])) for r in v]
    assert got == [(161, -1), (76, 1), (466, -1), (337, -1), (94, -1), (488, 1), (240, -1), (731, 1)]


def test_rademacher_signs_are_pinned():
    p = make_projector(ProjectionSpec("rademacher", 8, 0), 3)
    rows = p.project_many([[row] for row in torch.eye(3)]) * math.sqrt(8)  # (3, 8) = P * sqrt(dim)
    assert rows.round().int().tolist() == [
        [1, 1, 1, -1, -1, 1, 1, 1],
        [1, -1, -1, -1, 1, -1, 1, -1],
        [-1, -1, -1, 1, 1, 1, -1, -1],
    ]


@pytest.mark.parametrize("cache_bytes", [0, 2**20])  # signs regenerated per block, or one cached int8 table
@pytest.mark.parametrize("how", ["rows", "gather"])
def test_rademacher_signs_are_the_bits_of_the_python_reference_hash(cache_bytes, how):
    # Entry (i, c) of P * sqrt(dim) is 1 - 2 * bit (c % 64) of SplitMix64 output number
    # i * words + c // 64 of the stream, least significant bit first: every byte of a word counts.
    dim, input_dim = 100, 3
    words = -(-dim // 64)
    base = projection._stream_base("rademacher", 7)

    def word(number: int) -> int:
        return projection._splitmix64(base + (number + 1) * projection._GOLDEN)

    expected = [[1 - 2 * ((word(i * words + c // 64) >> (c % 64)) & 1) for c in range(dim)]
                for i in range(input_dim)]
    p = make_projector(ProjectionSpec("rademacher", dim, 7), input_dim, cache_bytes=cache_bytes)
    assert p.cached == (cache_bytes > 0)
    if how == "rows":
        got = p.project_many([[row] for row in torch.eye(input_dim)])
    else:  # the rows of P at arbitrary coordinates, as used for sparse gradients
        got = p.project_rows(torch.eye(input_dim).unsqueeze(-1), torch.arange(input_dim), 0)  # width-1 rows
    assert (got * math.sqrt(dim)).round().int().tolist() == expected


def test_projectors_built_without_a_device_are_on_the_cpu():
    assert Projector(ProjectionSpec("countsketch", 16, 0), 4).device == torch.device("cpu")
    for cls, kind in ((projection._CountSketch, "countsketch"), (projection._Rademacher, "rademacher")):
        assert cls(ProjectionSpec(kind, 16, 0), 4).device == torch.device("cpu")


def test_countsketch_maps_each_coordinate_to_one_signed_bucket():
    dim = 16
    p = make_projector(ProjectionSpec("countsketch", dim, 0), 40)
    rows = p.project_many([[row] for row in torch.eye(40)])  # (40, 16)
    assert ((rows != 0).sum(dim=1) == 1).all()
    assert set(rows[rows != 0].tolist()) <= {1.0, -1.0}


def test_countsketch_buckets_and_signs_are_balanced():
    dim, n = 64, 200_000
    p = make_projector(ProjectionSpec("countsketch", dim, 7), n)
    ids = p._index.long()
    counts = torch.bincount(ids % dim, minlength=dim).double()  # (dim,) coordinates per bucket
    expected = n / dim
    # Multinomial: each count has sd sqrt(n/dim) ~ 56; 6 sd is far beyond chance.
    assert (counts - expected).abs().max() < 6 * math.sqrt(expected)
    negative = (ids >= dim).double().mean()
    assert abs(negative - 0.5) < 6 * math.sqrt(0.25 / n)


def test_rademacher_entries_are_plus_minus_one_over_sqrt_dim():
    dim, n = 96, 300  # 96 is not a multiple of 64: the last word is cut
    p = make_projector(ProjectionSpec("rademacher", dim, 2), n)
    rows = p.project_many([[row] for row in torch.eye(n)])  # (n, dim) = P
    assert torch.allclose(rows.abs(), torch.full_like(rows, 1 / math.sqrt(dim)))
    frac_negative = (rows < 0).double().mean()
    assert abs(frac_negative - 0.5) < 6 * math.sqrt(0.25 / rows.numel())
    assert len({tuple(r.sign().int().tolist()) for r in rows}) == n  # rows are distinct


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", KINDS)
def test_same_spec_gives_same_vector_across_instances(kind):
    g = _grad(5000)
    a = make_projector(ProjectionSpec(kind, 64, 3), 5000).project([g])
    b = make_projector(ProjectionSpec(kind, 64, 3), 5000).project([g])
    assert torch.equal(a, b)


@pytest.mark.parametrize("kind", KINDS)
def test_seed_changes_the_vector(kind):
    g = _grad(5000)
    a = make_projector(ProjectionSpec(kind, 64, 3), 5000).project([g])
    b = make_projector(ProjectionSpec(kind, 64, 4), 5000).project([g])
    assert a.shape == b.shape == (64,)
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_dim_changes_the_vector_not_just_its_length(kind):
    g = _grad(5000)
    a = make_projector(ProjectionSpec(kind, 64, 3), 5000).project([g])
    b = make_projector(ProjectionSpec(kind, 32, 3), 5000).project([g])
    assert b.shape == (32,)
    if kind == "countsketch":  # other buckets, not the first 32 coordinates of the 64-dim vector
        assert abs(torch.nn.functional.cosine_similarity(a[:32], b, dim=0)) < 0.9
    # Both keep the gradient's length: the scale follows dim (JL: within ~3 standard errors).
    norm = g.norm()
    assert abs(a.norm() / norm - 1) < 3 * (2 / 64) ** 0.5 and abs(b.norm() / norm - 1) < 3 * (2 / 32) ** 0.5


def test_kind_changes_the_vector():
    g = _grad(5000)
    a = make_projector(ProjectionSpec("countsketch", 64, 0), 5000).project([g])
    b = make_projector(ProjectionSpec("rademacher", 64, 0), 5000).project([g])
    assert not torch.allclose(a, b, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_output_is_float32_cpu_and_not_normalized(kind):
    g = 10 * _grad(3000)
    v = make_projector(ProjectionSpec(kind, 128, 0), 3000).project([g])
    assert v.dtype == torch.float32 and v.device.type == "cpu" and v.shape == (128,)
    assert v.norm() > 100  # about ||g|| = 10 * sqrt(3000) ~ 548, not 1


# ----------------------------------------------------------------------------- chunks


@pytest.mark.parametrize("kind", KINDS)
def test_result_depends_on_coordinates_not_on_how_they_are_split(kind):
    g = _grad(10_000)
    p = make_projector(ProjectionSpec(kind, 64, 0), 10_000)
    whole = p.project([g])
    split = p.project(list(torch.split(g, [1, 4999, 3000, 2000])))
    shaped = p.project([g[:6000].reshape(60, 100), g[6000:].reshape(2, 2000)])  # any shape, flattened
    assert torch.allclose(whole, split, atol=1e-4) and torch.allclose(whole, shaped, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_chunk_order_matters(kind):
    a, b = _grad(3000, 1), _grad(3000, 2)
    p = make_projector(ProjectionSpec(kind, 64, 0), 6000)
    assert not torch.allclose(p.project([a, b]), p.project([b, a]), atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sizes", [[100], [3000, 2999], [3000, 3001], []])
def test_chunk_sizes_must_sum_to_input_dim(kind, sizes):
    p = make_projector(ProjectionSpec(kind, 16, 0), 6000 if sizes != [100] else 99)
    with pytest.raises(ValueError, match="input_dim"):
        p.project([torch.zeros(s) for s in sizes])


@pytest.mark.parametrize(
    "chunks, error",
    [
        (torch.zeros(10), TypeError),  # a bare tensor, not a sequence of chunks
        ([np.zeros(10)], TypeError),
        ([torch.zeros(10, dtype=torch.int64)], TypeError),
    ],
)
def test_bad_chunks_raise(chunks, error):
    with pytest.raises(error):
        make_projector(ProjectionSpec(dim=8), 10).project(chunks)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_and_fp64_chunks_accumulate_like_fp32(kind):
    g = _grad(20_000)
    p = make_projector(ProjectionSpec(kind, 64, 0), 20_000)
    ref = p.project([g[:5000], g[5000:]])
    from_bf16 = p.project([g[:5000].bfloat16(), g[5000:].bfloat16()])
    from_fp64 = p.project([g[:5000].double(), g[5000:]])
    assert from_bf16.dtype == torch.float32
    # bf16 keeps 8 mantissa bits: per-coordinate error ~2**-9 relative, random in sign.
    assert (from_bf16 - ref).norm() / ref.norm() < 2**-7
    assert torch.allclose(from_fp64, ref, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_bytes_changes_memory_not_vectors(kind):
    g = _grad(7000)
    spec = ProjectionSpec(kind, 100, 5)  # 100 is not a multiple of 64
    cached = make_projector(spec, 7000)
    regenerated = make_projector(spec, 7000, cache_bytes=0)
    assert cached.cached and not regenerated.cached
    assert torch.allclose(cached.project([g[:10], g[10:]]), regenerated.project([g[:10], g[10:]]), atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_project_many_equals_stacked_project(kind):
    grads = [_grad(4000, s) for s in range(5)]
    p = make_projector(ProjectionSpec(kind, 32, 0), 4000)
    many = p.project_many([[g[:1000], g[1000:]] for g in grads])
    one = torch.stack([p.project([g[:1000], g[1000:]]) for g in grads])
    assert many.shape == (5, 32) and torch.allclose(many, one, atol=1e-4)
    assert p.project_many([]).shape == (0, 32)


# Cached (table in memory) and regenerated paths; the regenerated ones span several blocks:
# CountSketch hashes 32767 coordinates per block on CPU, the dense kind 511 rows at dim 64.
_PATHS = [("countsketch", None), ("countsketch", 0), ("rademacher", None), ("rademacher", 0)]


@pytest.mark.parametrize("kind, cache_bytes", _PATHS)
def test_batched_projection_equals_one_at_a_time(kind, cache_bytes):
    n = 70_000 if kind == "countsketch" else 5_000
    kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    p = make_projector(ProjectionSpec(kind, 64, 2), n, **kwargs)
    assert p.cached == (cache_bytes is None)
    grads = torch.stack([_grad(n, s) for s in range(6)])  # (6, n)
    cut = [0, 7, 3000, n]
    one = torch.stack([p.project([g[a:b] for a, b in zip(cut, cut[1:])]) for g in grads])
    many = p.project_many([[g[a:b] for a, b in zip(cut, cut[1:])] for g in grads])
    torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)
    # Slices of B gradients, in any order and of any sizes, add up to the same vectors.
    pieces = [(0, 1), (1, 4000), (4000, n)]
    sliced = sum(p.project_slice(grads[:, a:b], a) for a, b in reversed(pieces))
    # Another summation order: round-off relative to the largest entry, not to each entry.
    scale = float(one.abs().max())
    torch.testing.assert_close(sliced, one, rtol=1e-5, atol=1e-5 * scale)
    # Without the batch, each vector is its own: no sample leaks into another.
    torch.testing.assert_close(p.project_slice(grads[2:3], 0), one[2:3], rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("kind, cache_bytes", _PATHS)
def test_project_rows_equals_the_projection_of_the_scattered_matrix(kind, cache_bytes):
    vocab, width, offset = 300, 24, 50  # a (300, 24) table stored after 50 other coordinates
    n = offset + vocab * width + 10
    kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    p = make_projector(ProjectionSpec(kind, 64, 4), n, **kwargs)
    rows = torch.tensor([299, 3, 150, 0, 17])
    values = torch.randn(3, len(rows), width, generator=torch.Generator().manual_seed(1))  # (B, R, width)
    dense = torch.zeros(3, n)
    for r, row in enumerate(rows.tolist()):
        dense[:, offset + row * width: offset + (row + 1) * width] = values[:, r]
    expected = p.project_many([[d] for d in dense])
    torch.testing.assert_close(p.project_rows(values, rows, offset), expected, rtol=1e-5,
                               atol=1e-5 * float(expected.abs().max()))
    with pytest.raises(ValueError, match="outside input_dim"):
        p.project_rows(values, torch.tensor([0, 1, 2, 3, vocab + 1]), offset)


@pytest.mark.parametrize("kind", KINDS)
def test_project_slice_checks_its_arguments(kind):
    p = make_projector(ProjectionSpec(kind, 16, 0), 100)
    with pytest.raises(ValueError, match="past input_dim"):
        p.project_slice(torch.zeros(2, 60), 50)
    with pytest.raises(TypeError, match="2-D"):
        p.project_slice(torch.zeros(60), 0)
    with pytest.raises(ValueError, match="offset"):
        p.project_slice(torch.zeros(1, 10), -1)


def test_bf16_dense_projection_rounds_values_and_accumulates_in_fp32():
    n = 5_000
    spec = ProjectionSpec("rademacher", 64, 3)
    fp32 = make_projector(spec, n, cache_bytes=0)
    bf16 = make_projector(spec, n, cache_bytes=0, compute_dtype="bfloat16")
    assert fp32.compute_dtype == "float32" and bf16.compute_dtype == "bfloat16"
    assert bf16.key == fp32.key + "-bf16"  # other vectors, other cache key
    grads = [_grad(n, s) for s in range(3)]
    got = bf16.project_many([[g] for g in grads])
    # Same as the fp32 projection of the bf16-rounded values (signs are exact in bf16) ...
    rounded = fp32.project_many([[g.bfloat16().float()] for g in grads])
    torch.testing.assert_close(got, rounded, rtol=1e-5, atol=1e-5)
    # ... which is not the fp32 projection of the values themselves, though close to it.
    exact = fp32.project_many([[g] for g in grads])
    assert not torch.allclose(got, exact, rtol=1e-5, atol=1e-5)
    assert (got - exact).norm() / exact.norm() < 2**-7
    with pytest.raises(ValueError, match="compute_dtype"):
        make_projector(spec, n, compute_dtype="float16")


def test_block_bytes_changes_the_block_not_the_vectors():
    n = 5_000
    spec = ProjectionSpec("rademacher", 64, 3)
    grads = [[_grad(n, s)] for s in range(4)]
    small = make_projector(spec, n, cache_bytes=0, block_bytes=64 * 4 * 7)  # 7 rows per block
    default = make_projector(spec, n, cache_bytes=0)
    assert small._block_rows == 7
    got, want = small.project_many(grads), default.project_many(grads)
    # Other blocks sum the 5,000 products in another order: float32 round-off relative to the
    # vectors' scale (entries up to ~25 here), so atol is 1e-5 of the largest entry.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
    assert float((got - want).norm() / want.norm()) < 1e-5


def test_project_many_needs_one_chunk_layout_for_dense():
    p = make_projector(ProjectionSpec("rademacher", 16, 0), 100)
    with pytest.raises(ValueError, match="chunk sizes"):
        p.project_many([[torch.zeros(100)], [torch.zeros(50), torch.zeros(50)]])


# ----------------------------------------------------------------------------- CPU guard


def test_dense_projection_of_a_full_model_is_refused_on_cpu():
    with pytest.raises(ValueError, match="countsketch"):
        make_projector(ProjectionSpec("rademacher", 1024, 0), 134_515_008)


def test_allow_slow_lifts_the_cpu_guard(monkeypatch):
    monkeypatch.setattr(projection, "CPU_DENSE_MAX_ENTRIES", 1000)
    spec = ProjectionSpec("rademacher", 64, 0)
    with pytest.raises(ValueError, match="allow_slow"):
        make_projector(spec, 100)
    slow = make_projector(spec, 100, allow_slow=True)
    monkeypatch.setattr(projection, "CPU_DENSE_MAX_ENTRIES", 1 << 40)
    g = _grad(100)
    assert torch.equal(slow.project([g]), make_projector(spec, 100).project([g]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_cpu_and_cuda_give_the_same_vectors(kind):
    g = _grad(50_000)
    spec = ProjectionSpec(kind, 256, 9)
    cpu = make_projector(spec, 50_000).project([g[:123], g[123:]])
    gpu = make_projector(spec, 50_000, device="cuda", compute_dtype="float32" if kind == "rademacher" else None
                         ).project([g[:123].cuda(), g[123:].cuda()])
    assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_dense_projection_matches_the_cpu_emulation():
    grads = torch.stack([_grad(50_000, s) for s in range(4)])
    spec = ProjectionSpec("rademacher", 256, 9)
    gpu = make_projector(spec, 50_000, device="cuda", cache_bytes=0)
    assert gpu.compute_dtype == "bfloat16" and gpu.key.endswith("-bf16")
    cpu = make_projector(spec, 50_000, compute_dtype="bfloat16", cache_bytes=0)
    assert torch.allclose(gpu.project_many([[g.cuda()] for g in grads]), cpu.project_many([[g] for g in grads]),
                          rtol=1e-4, atol=1e-3)


# ----------------------------------------------------------------------------- JL quality


@pytest.mark.parametrize("kind", KINDS)
def test_norms_and_inner_products_are_preserved_approximately(kind):
    # For a JL map with d = 1024 outputs, ||Px||^2 / ||x||^2 has mean 1 and sd ~ sqrt(2/d)
    # = 0.044, and <Px, Py> - <x, y> for unit x, y has sd ~ sqrt((1 + <x,y>^2) / d) <= 0.044.
    # Bounds of 5 sd per pair, and 5 sd / sqrt(m) on the mean of m pairs, are never hit by
    # chance here, yet a wrong scale or a biased sign would fail them at once.
    n, dim, m = 20_000, 1024, 20
    p = make_projector(ProjectionSpec(kind, dim, 1), n)
    x = l2_normalize(torch.stack([_grad(n, s) for s in range(m)]))  # (m, n)
    y = l2_normalize(x + 0.7 * l2_normalize(torch.stack([_grad(n, 100 + s) for s in range(m)])))  # correlated
    px = p.project_many([[r] for r in x])  # (m, dim)
    py = p.project_many([[r] for r in y])
    sd = math.sqrt(2 / dim)
    ratios = px.double().pow(2).sum(1)  # ||x|| = 1
    assert (ratios - 1).abs().max() < 5 * sd
    assert abs(ratios.mean() - 1) < 5 * sd / math.sqrt(m)
    err = (px.double() * py.double()).sum(1) - (x.double() * y.double()).sum(1)
    assert err.abs().max() < 5 * sd
    assert abs(err.mean()) < 5 * sd / math.sqrt(m)


def test_dense_and_countsketch_g_vendi_agree_and_track_the_exact_score():
    # 100 gradients of 8000 coordinates with a rank-30 decaying structure: the exact score is
    # the kernel Vendi of the full gradients (~18.4). Projection to 512 dims distorts each
    # cosine by ~1/sqrt(512) = 0.044, which shifts the score by a few percent (seeds 0-2
    # gave 0.05-2.6% between the kinds, at most 3% from the exact score).
    grads = _lowrank_grads(100, 8000, 30)
    exact = vendi_from_kernel(grads.double().numpy()).score
    scores = {}
    for kind in KINDS:
        p = make_projector(ProjectionSpec(kind, 512, 0), 8000)
        scores[kind] = g_vendi(p.project_many([[g] for g in grads])).score
    assert abs(scores["countsketch"] - scores["rademacher"]) / scores["rademacher"] < 0.05
    for score in scores.values():
        assert abs(score - exact) / exact < 0.1


# ----------------------------------------------------------------------------- l2_normalize


@pytest.mark.parametrize(
    "rows",
    [
        [[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]],
        [[1.0, 1.0, 1.0]],
        [[-2.0, 0.0]],
    ],
)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_l2_normalize_rows(rows, backend):
    x = np.array(rows) if backend == "numpy" else torch.tensor(rows, dtype=torch.float64)
    out = l2_normalize(x)
    assert type(out) is type(x)
    out_np = np.asarray(out)
    norms = np.linalg.norm(np.asarray(rows), axis=1)
    for row, norm, o in zip(rows, norms, out_np):
        if norm == 0:
            assert np.all(o == 0)  # zero rows stay zero, never NaN
        else:
            assert np.isclose(np.linalg.norm(o), 1.0) and np.allclose(o * norm, row)


def test_l2_normalize_keeps_float_dtype_and_floats_integers():
    assert l2_normalize(np.ones((2, 3), dtype=np.float32)).dtype == np.float32
    assert l2_normalize(torch.ones(2, 3, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert l2_normalize(np.array([[3, 4]])).tolist() == [[0.6, 0.8]]
    assert l2_normalize(torch.tensor([3, 4])).dtype == torch.float32  # one (d,) vector


# ----------------------------------------------------------------------------- edges the mutation run found


def test_int64_view_of_64_bit_patterns():
    # Two's complement: 2**63 is the most negative int64, 2**63 - 1 the largest, 2**64 wraps to 0.
    assert projection._to_i64((1 << 63) - 1) == (1 << 63) - 1
    assert projection._to_i64(1 << 63) == -(1 << 63)
    assert projection._to_i64((1 << 64) - 1) == -1
    assert projection._to_i64(1 << 64) == 0
    assert projection._to_i64(-1) == -1


# Memory a call allocates, from the documented layout: on CPU, CountSketch works in blocks of
# 32767 coordinates (two int64 hash buffers and int32 ids when not cached, a float32 copy);
# the dense kind in blocks of 32767 // (64 * words) rows.
_CPU_BLOCK = 32767


def test_countsketch_working_bytes():
    spec = ProjectionSpec(dim=16)
    assert make_projector(spec, 100).working_bytes(3) == 4 * _CPU_BLOCK
    assert make_projector(spec, 100, cache_bytes=0).working_bytes(3) == (16 + 4 + 4) * _CPU_BLOCK
    # Any other device (here torch's shape-only "meta" device) works in blocks of 2**20.
    assert make_projector(spec, 100, device="meta").working_bytes(3) == 4 * 2**20


def test_dense_working_bytes_on_cpu():
    spec = ProjectionSpec("rademacher", 64)
    rows = _CPU_BLOCK // 64  # 511 rows of one 64-sign word
    signs = rows * 64 * 4  # float32
    assert make_projector(spec, 100).working_bytes(3) == signs + signs + 3 * rows * 4  # a cached block is copied
    assert make_projector(spec, 100, cache_bytes=0).working_bytes(3) == signs + rows * 80 + 3 * rows * 4
    bf16 = make_projector(spec, 100, cache_bytes=0, compute_dtype="bfloat16")
    # bf16 signs and values, with float32 copies of both for the product on CPU.
    assert bf16.working_bytes(3) == rows * 64 * 2 + rows * 80 + 3 * rows * (2 + 4) + rows * 64 * 4
    assert make_projector(ProjectionSpec("rademacher", 100), 100, cache_bytes=0)._block_rows == _CPU_BLOCK // 128


def test_dense_defaults_off_the_cpu_are_bf16_in_256_mib_blocks():
    p = make_projector(ProjectionSpec("rademacher", 64), 100, device="meta", cache_bytes=0)
    assert p.compute_dtype == "bfloat16" and p.key.endswith("-bf16")
    rows = 256 * 2**20 // (64 * 2)  # bf16 signs of one word per row
    assert p._block_rows == rows
    assert p.working_bytes(2) == rows * 64 * 2 + rows * 80 + 2 * rows * (2 + 4) + rows * 64 * 4
    assert make_projector(ProjectionSpec("rademacher", 64), 100, device="meta", cache_bytes=0,
                          block_bytes=1)._block_rows == 1  # at least one row


@pytest.mark.parametrize("kind, per_entry", [("countsketch", 4), ("rademacher", 64)])
def test_the_table_is_cached_exactly_when_it_fits_cache_bytes(kind, per_entry):
    spec = ProjectionSpec(kind, 64, 1)
    fits = make_projector(spec, 50, cache_bytes=50 * per_entry)
    short = make_projector(spec, 50, cache_bytes=50 * per_entry - 1)
    assert fits.cached and not short.cached
    table = fits._cache if kind == "rademacher" else fits._index  # int8 signs, int32 buckets
    assert table.element_size() * table.nelement() <= 50 * per_entry  # the table fits what it was allowed
    g = _grad(50)
    torch.testing.assert_close(fits.project([g]), short.project([g]), rtol=1e-5, atol=1e-6)


def test_the_default_cache_is_two_gib():
    # 2**31 + 1024 int8 signs do not fit in 2 GiB: regenerated (and nothing allocated up front).
    assert not make_projector(ProjectionSpec("rademacher", 1024), 2**21 + 1).cached
    assert projection.DEFAULT_CACHE_BYTES == 2 * 1024**3


@pytest.mark.parametrize("cache_bytes", [-1, True, 1.5, "1"])
def test_cache_bytes_must_be_a_non_negative_integer(cache_bytes):
    with pytest.raises(ValueError, match="cache_bytes"):
        make_projector(ProjectionSpec(dim=8), 10, cache_bytes=cache_bytes)


@pytest.mark.parametrize("block_bytes", [-1, True, 1.5])
def test_block_bytes_must_be_a_non_negative_integer(block_bytes):
    with pytest.raises(ValueError, match="block_bytes"):
        make_projector(ProjectionSpec("rademacher", 8), 10, block_bytes=block_bytes)


def test_the_cpu_guard_takes_exactly_its_limit_and_names_the_cost(monkeypatch):
    monkeypatch.setattr(projection, "CPU_DENSE_MAX_ENTRIES", 64 * 100)
    assert make_projector(ProjectionSpec("rademacher", 64, 0), 100).input_dim == 100  # 6400 entries: allowed
    with pytest.raises(ValueError, match=r"6\.46e\+03 sign draws, roughly 0 s per sample"):
        make_projector(ProjectionSpec("rademacher", 64, 0), 101)
    monkeypatch.undo()
    # 134.5M x 1024 entries at 10 ns each: 1377 s.
    with pytest.raises(ValueError, match="roughly 23 minutes per sample"):
        make_projector(ProjectionSpec("rademacher", 1024, 0), 134_515_008)
    with pytest.raises(ValueError, match="roughly 86 s per sample"):
        make_projector(ProjectionSpec("rademacher", 1024, 0), 8_400_000)


def test_countsketch_project_many_takes_samples_split_differently():
    a, b = _grad(300, 1), _grad(300, 2)
    p = make_projector(ProjectionSpec("countsketch", 32, 0), 300)
    many = p.project_many([[a], [b[:100], b[100:]], [a[:7], a[7:]]])
    torch.testing.assert_close(many, torch.stack([p.project([a]), p.project([b]), p.project([a])]))


@pytest.mark.parametrize("kind", KINDS)
def test_slices_and_rows_reach_the_last_coordinate_and_no_further(kind):
    n = 100
    p = make_projector(ProjectionSpec(kind, 16, 0), n)
    g = _grad(n).unsqueeze(0)  # (1, n)
    whole = p.project_many([[g[0]]])
    torch.testing.assert_close(p.project_slice(g[:, :60], 0) + p.project_slice(g[:, 60:], np.int64(60)), whole)
    torch.testing.assert_close(p.project_slice(g[:, 99:], 99), p.project_many([[torch.eye(n)[99] * g[0, 99]]]))
    for offset in (100, True, 1.0):
        with pytest.raises(ValueError, match="offset"):
            p.project_slice(g[:, :1], offset)
    # A (10, 9) table at offset 10: rows 0..9 end exactly at coordinate 100.
    values = g[:, 10:].reshape(1, 10, 9)
    torch.testing.assert_close(p.project_rows(values, torch.arange(10), 10) + p.project_slice(g[:, :10], 0), whole)
    with pytest.raises(ValueError, match="outside input_dim"):
        p.project_rows(values[:, :2], torch.tensor([-1, 0]), 10)


@pytest.mark.parametrize("kind", KINDS)
def test_project_rows_checks_its_rows_and_skips_empty_input(kind):
    p = make_projector(ProjectionSpec(kind, 16, 0), 100)
    values = torch.ones(2, 3, 4)
    with pytest.raises(ValueError, match="integer row indices"):
        p.project_rows(values, torch.tensor([0.0, 1.0, 2.0]), 0)
    with pytest.raises(ValueError, match="integer row indices"):
        p.project_rows(values, torch.tensor([0, 1]), 0)
    with pytest.raises(TypeError, match="3-D"):
        p.project_rows(torch.ones(3, 4), torch.tensor([0, 1, 2]), 0)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        p.project_rows(values.long(), torch.tensor([0, 1, 2]), 0)
    assert torch.equal(p.project_rows(torch.ones(2, 0, 4), torch.zeros(0, dtype=torch.long), 0), torch.zeros(2, 16))
    assert torch.equal(p.project_rows(torch.ones(2, 3, 0), [0, 1, 2], 0), torch.zeros(2, 16))
    assert p.project_rows(values, [0, 1, 2], 0).shape == (2, 16)  # a list of row indices


@pytest.mark.parametrize("kind", KINDS)
def test_project_slice_rejects_non_tensors_and_integer_values(kind):
    p = make_projector(ProjectionSpec(kind, 16, 0), 100)
    with pytest.raises(TypeError, match="2-D tensor, got ndarray"):
        p.project_slice(np.zeros((1, 10)), 0)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        p.project_slice(torch.zeros(1, 10, dtype=torch.int32), 0)


def test_a_wrong_shape_names_the_call_it_expects():
    p = make_projector(ProjectionSpec("countsketch", 16, 0), 100)
    with pytest.raises(TypeError, match=r"^project_slice\(values \(B, n\), offset\): values must be a 2-D tensor"):
        p.project_slice(torch.zeros(3), 0)
    with pytest.raises(TypeError, match=r"^project_rows\(values \(B, R, width\), rows \(R,\), offset\): values must"):
        p.project_rows(torch.zeros(2, 3), torch.tensor([0, 1]), 0)


@pytest.mark.parametrize("kind, cache_bytes", _PATHS)
def test_project_rows_of_several_sign_words_and_int32_rows(kind, cache_bytes):
    # dim 100 takes two 64-bit words of signs per row of the dense matrix; rows may come as int32.
    n, width = 400, 6
    kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    p = make_projector(ProjectionSpec(kind, 100, 4), n, **kwargs)
    rows = torch.tensor([60, 2, 31], dtype=torch.int32)
    values = torch.randn(2, 3, width, generator=torch.Generator().manual_seed(3))
    dense = torch.zeros(2, n)
    for r, row in enumerate(rows.tolist()):
        dense[:, 10 + row * width: 10 + (row + 1) * width] = values[:, r]
    expected = p.project_many([[d] for d in dense])
    torch.testing.assert_close(p.project_rows(values, rows, 10), expected, rtol=1e-5, atol=1e-5)


def test_dense_working_bytes_of_two_sign_words_per_row():
    rows = _CPU_BLOCK // 128  # 255 rows of two 64-sign words
    p = make_projector(ProjectionSpec("rademacher", 100), 100, cache_bytes=0)
    assert p.working_bytes(3) == rows * 2 * 64 * 4 + rows * 2 * 80 + 3 * rows * 4


def test_l2_normalize_one_numpy_vector_and_many_zero_rows():
    np.testing.assert_allclose(l2_normalize(np.array([3.0, 4.0])), [0.6, 0.8])
    x = np.ones((1000, 8))
    x[::2] = 0.0
    scratch = np.full((1000, 8), 5.0)  # freed memory the result may land in: zero rows must be written
    del scratch
    out = l2_normalize(x)
    assert np.all(out[::2] == 0.0) and np.allclose(out[1::2], 1 / math.sqrt(8))


@pytest.mark.parametrize("kind, cache_bytes", _PATHS)
def test_vectors_are_float32_whatever_torch_default_dtype(kind, cache_bytes):
    n = 3000
    kwargs = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    p = make_projector(ProjectionSpec(kind, 32, 1), n, **kwargs)
    g = _grad(n)
    want = p.project_many([[g], [g.bfloat16()]])
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert p.project_many([]).dtype == torch.float32
        got = p.project_many([[g], [g.bfloat16()]])
        sliced = p.project_slice(g.unsqueeze(0), 0)
    finally:
        torch.set_default_dtype(before)
    assert got.dtype == sliced.dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(sliced, want[:1], rtol=1e-5, atol=1e-5)


def test_bad_input_messages_name_the_sample_and_the_shape():
    p = make_projector(ProjectionSpec("rademacher", 16, 0), 100)
    with pytest.raises(ValueError, match="sample 1 splits its gradient"):
        p.project_many([[torch.zeros(100)], [torch.zeros(50), torch.zeros(50)]])
    with pytest.raises(ValueError, match="sample 2 splits its gradient"):
        p.project_many([[torch.zeros(100)], [torch.zeros(100)], [torch.zeros(50), torch.zeros(50)]])
    with pytest.raises(TypeError, match=r"values must be a 2-D tensor, got \(3,\)"):
        p.project_slice(torch.zeros(3), 0)


def test_cached_countsketch_of_long_bf16_chunks_spans_several_blocks():
    # bf16 input is converted block by block (32767 coordinates): each block must read its own ids.
    n = 70_000
    p = make_projector(ProjectionSpec("countsketch", 64, 2), n)
    assert p.cached
    g = _grad(n).bfloat16()
    got = p.project([g[:5], g[5:]])
    want = p.project([g[:5].float(), g[5:].float()])  # float32 input goes in whole
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_input_on_another_device_is_moved_to_the_projectors(kind):
    # torch's "meta" device stands in for an accelerator: shapes and devices only, no values.
    p = make_projector(ProjectionSpec(kind, 16), 100, device="meta", cache_bytes=0)
    out = p.project_slice(torch.ones(2, 100), 0)
    assert out.device.type == "meta" and out.shape == (2, 16) and out.dtype == torch.float32
    flats = p._check_chunks([torch.ones(10, 10)])
    assert flats[0].device.type == "meta" and flats[0].shape == (100,)


@pytest.mark.parametrize("input_dim, cost", [(11_718_750, "2 minutes"), (585_937_500, "100 minutes")])
def test_the_cpu_guard_states_long_costs_in_minutes(input_dim, cost):
    # x 1024 entries at 10 ns: 120 s (from two minutes on, minutes are named) and 6000 s.
    with pytest.raises(ValueError, match=f"roughly {cost} per sample"):
        make_projector(ProjectionSpec("rademacher", 1024, 0), input_dim)


def test_dense_rows_of_65_columns_take_two_sign_words():
    p = make_projector(ProjectionSpec("rademacher", 65, 0), 40, cache_bytes=0)
    rows = p.project_many([[row] for row in torch.eye(40)])  # (40, 65) = P
    assert torch.allclose(rows.abs(), torch.full_like(rows, 1 / math.sqrt(65)))
    cached = make_projector(ProjectionSpec("rademacher", 65, 0), 40)
    assert torch.equal(cached.project_many([[row] for row in torch.eye(40)]), rows)
    assert p.working_bytes(1) == (_CPU_BLOCK // 128) * (2 * 64 * 4 + 2 * 80 + 4)


def test_very_wide_dense_rows_go_one_row_per_block():
    p = make_projector(ProjectionSpec("rademacher", 20_000, 0), 10, cache_bytes=0)
    words = -(-20_000 // 64)  # 313 words: one row is already past the 32767-sign CPU block
    assert p.working_bytes(1) == words * 64 * 4 + words * 80 + 4


def test_spec_bounds_and_the_key_format():
    from types import SimpleNamespace

    from prismatic_assets.core.projection_spec import MAX_DIM, ProjectionSpec, check_input_dim, projection_key

    assert ProjectionSpec().key(10) == "countsketch-v1-dim1024-seed0-in10"
    assert ProjectionSpec(dim=1).key(1, "cuda") == "countsketch-v1-dim1-seed0-in1"  # the device is not in the key
    assert ProjectionSpec(dim=MAX_DIM, seed=2**63 - 1).seed == 2**63 - 1
    numpy_spec = ProjectionSpec(dim=np.int64(8), seed=np.int64(3))
    assert type(numpy_spec.dim) is int and type(numpy_spec.seed) is int
    check_input_dim(1)
    dense = ProjectionSpec(kind="rademacher", dim=4)
    # The device's type decides the dense default dtype: a `.type` attribute first, else the name before ":".
    for cpu in ("cpu", "cpu:0", SimpleNamespace(type="cpu")):
        assert projection_key(dense, 10, cpu) == "rademacher-v1-dim4-seed0-in10"
    for gpu in ("cuda", "cuda:1", SimpleNamespace(type="cuda")):
        assert projection_key(dense, 10, gpu) == "rademacher-v1-dim4-seed0-in10-bf16"
