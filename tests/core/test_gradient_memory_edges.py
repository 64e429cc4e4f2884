"""gradient_memory's figures against hand-computed values: the too-big error, unbudgeted steps, process memory."""

from __future__ import annotations

import ctypes
import math
import sys

import psutil
import pytest

from prismatic_assets.core import gradient_memory as gm
from prismatic_assets.core.gradient_memory import MemoryBudget, PlannedBatch, Polynomial, StepCost, unbudgeted_batches

GIB = 2**30
UNIT = 2**18  # the hand-made cost below counts in units of 256 KiB, so its figures reach GiB


def _cost(*, split_head: bool, can_recompute: bool) -> StepCost:
    """Two blocks keeping 100 units per token each, 10 units per token of block input, 1,000 units
    outside the blocks, 50 units per logit position, 7 units per sample's gradient block, 3 of projection."""
    return StepCost(blocks=(Polynomial(token=100 * UNIT), Polynomial(token=100 * UNIT)),
                    block_inputs=(10.0 * UNIT, 10.0 * UNIT), other=Polynomial(const=1000 * UNIT),
                    logit_position=50.0 * UNIT, sample_block=7.0 * UNIT, block_cap=1e15, projection=3.0 * UNIT,
                    split_head=split_head, can_recompute=can_recompute)


def _expected_message(index: int, tokens: int, need_units: float, how: str, budget: float, resident: float) -> str:
    need = need_units * UNIT
    least = math.ceil(10 * (resident + need / 0.8) / GIB) / 10
    return (f"sample {index} ({tokens} tokens) needs {need / GIB:.2f} GiB for its gradient step {how}; "
            f"{resident / GIB:.2f} GiB is already resident (model, projection table, runtime), so the memory budget "
            f"of {budget / GIB:.2f} GiB leaves {max(0.0, budget - resident) / GIB:.2f} GiB: raise compute.memory_gb "
            f"to at least {least:.1f}, or lower proxy.max_length so that long samples are cut")


def test_the_too_big_error_with_recomputation_and_logit_chunks():
    # 100 tokens, every block recomputed, logits in chunks of 16: kept 0; inputs (10 + 10) x 100 = 2,000;
    # head max(4 x 16 x 50, 2 x 16 x 50 + 7) = 3,200; workspace 100 x 100 + 7 = 10,007; other 1,000;
    # projection 3: 13,010 units.
    error = gm._too_big(4, 100, _cost(split_head=True, can_recompute=True), 4 * GIB, 1.5 * GIB)
    assert str(error) == _expected_message(
        4, 100, 13010, "with every block recomputed in backward and the logits in chunks of 16 positions",
        4 * GIB, 1.5 * GIB)


def test_the_too_big_error_without_recomputation_or_chunks():
    # 100 tokens, nothing recomputed, all 100 logit positions: kept 2 x 100 x 100 = 20,000; head
    # max(4 x 5,000, 2 x 5,000 + 7) = 20,000; workspace 10,007; other 1,000; projection 3: 41,003 units.
    error = gm._too_big(0, 100, _cost(split_head=False, can_recompute=False), 2 * GIB, 3 * GIB)
    assert str(error) == _expected_message(
        0, 100, 41003, "(this model's blocks cannot be recomputed) and all its logits", 2 * GIB, 3 * GIB)
    assert "leaves 0.00 GiB" in str(error)  # more resident than the budget: nothing left, not a negative


def test_a_sample_shorter_than_the_smallest_logit_chunk_names_its_own_length():
    # 10 tokens: chunks of min(16, 10) = 10. inputs 200; head max(2,000, 1,007); workspace 1,007; 1,000; 3.
    error = gm._too_big(2, 10, _cost(split_head=True, can_recompute=True), 1 * GIB, 0)
    assert str(error) == _expected_message(
        2, 10, 3203, "with every block recomputed in backward and the logits in chunks of 10 positions", GIB, 0)


def test_a_step_recomputes_nothing_unless_asked():
    cost = _cost(split_head=False, can_recompute=True)
    assert cost.bytes(1, 100, 100) == cost.bytes(1, 100, 100, 0) == 41003 * UNIT
    assert cost.bytes(1, 100, 100, 1) == (10000 + 1000 + 1000 + 20000 + 3) * UNIT  # one block kept, one recomputed


def test_a_budget_in_gib():
    assert MemoryBudget.gb(1.5).total_bytes == 1_610_612_736
    assert MemoryBudget.gb(0.25).total_bytes == 268_435_456


@pytest.mark.parametrize(
    ("lengths", "prompts", "max_batch", "max_tokens", "expected"),
    [
        # longest first; at most 2 a step
        ([5, 9, 7, 3], [1, 2, 3, 1], 2, None, [((1, 2), 9, 7), ((0, 3), 5, 4)]),
        # 3 a step, at most 20 padded tokens: 9 + 9 fits, a third 9 does not; 5 x 3 = 15 fits
        ([5, 9, 7, 3, 4], [0, 0, 0, 0, 0], 3, 20, [((1, 2), 9, 9), ((0, 4, 3), 5, 5)]),
        # exactly at the token cap: 2 x 10 = 20 fits
        ([10, 10, 10], [4, 2, 3], 5, 20, [((0, 1), 10, 8), ((2,), 10, 7)]),
        # a sample alone above the cap still gets its step
        ([30, 2], [5, 1], 4, 20, [((0,), 30, 25), ((1,), 2, 1)]),
        ([6], [2], 1, None, [((0,), 6, 4)]),
        ([], [], 3, None, []),
    ],
)
def test_unbudgeted_steps(lengths, prompts, max_batch, max_tokens, expected):
    assert unbudgeted_batches(lengths, prompts, max_batch, max_tokens) == [
        PlannedBatch(indices, tokens, positions, 0, None, 0.0) for indices, tokens, positions in expected]


def test_resident_memory_read_three_ways_agrees(monkeypatch):
    rss = psutil.Process().memory_info().rss
    assert abs(gm.resident_bytes() - rss) < 0.1 * rss  # psutil
    monkeypatch.setitem(sys.modules, "psutil", None)  # without psutil: /proc/self/statm
    from_statm = gm.resident_bytes("cpu")
    assert abs(from_statm - rss) < 0.1 * rss

    def no_proc(*args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(gm, "open", no_proc, raising=False)  # without /proc: the peak from getrusage
    import resource

    peak = gm.resident_bytes()
    assert peak == resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 >= 0.9 * rss


def test_freed_memory_is_handed_back_through_glibc(monkeypatch):
    monkeypatch.setattr(gm, "_LIBC", False)
    gm.release_freed_memory()
    assert isinstance(gm._LIBC, ctypes.CDLL) and hasattr(gm._LIBC, "malloc_trim")  # glibc on Linux
    found = gm._LIBC
    gm.release_freed_memory()
    assert gm._LIBC is found  # looked up once
    monkeypatch.setattr(gm, "_LIBC", False)
    monkeypatch.setattr(gm.ctypes.util, "find_library", lambda name: None)
    gm.release_freed_memory()  # no C library found: nothing to do, and not looked for again
    assert gm._LIBC is None
    monkeypatch.setattr(gm, "_LIBC", False)
    monkeypatch.setattr(gm.ctypes.util, "find_library", lambda name: "/no/such/libc.so")
    gm.release_freed_memory()
    assert gm._LIBC is None


def test_resident_memory_without_psutil_is_statms_second_field_in_pages(monkeypatch):
    """Field 2 of /proc/self/statm is the resident set in pages (proc(5)); a made-up file pins it."""
    import io
    import os

    opened = []

    def statm(path, *args, **kwargs):
        opened.append(path)
        return io.StringIO("1000 37 5 1 0 200 0\n")

    monkeypatch.setitem(sys.modules, "psutil", None)
    monkeypatch.setattr(gm, "open", statm, raising=False)
    assert gm.resident_bytes() == 37 * os.sysconf("SC_PAGE_SIZE")
    assert opened == ["/proc/self/statm"]


def test_resident_memory_on_a_gpu_is_what_torch_has_allocated_there(monkeypatch):
    asked = []

    def allocated(device):
        asked.append(device)
        return 123_456

    monkeypatch.setattr(gm.torch.cuda, "memory_allocated", allocated)
    assert gm.resident_bytes("cuda:1") == 123_456
    assert asked == [gm.torch.device("cuda:1")]


def _round_cost(split_head: bool) -> StepCost:
    """10 bytes per token per block (2 blocks), 1 per token of a block's input, 10 per logit position
    and copy, nothing else: B samples of T tokens, P logit positions in all, c blocks recomputed
    take 10BT(2 - c) + cBT + max(40P, 10BT) bytes."""
    return StepCost(blocks=(Polynomial(token=10.0), Polynomial(token=10.0)), block_inputs=(1.0, 1.0),
                    other=Polynomial(), logit_position=10.0, sample_block=0.0, block_cap=0.0, projection=0.0,
                    split_head=split_head, can_recompute=True)


def _usable(usable: float) -> float:
    """The budget that leaves `usable` bytes to plan once the 20% headroom is set aside."""
    return usable / (1 - gm.HEADROOM)


def test_each_planned_step_predicts_its_own_peak():
    lengths, prompts, cost = [300, 100, 90, 80], [10, 10, 10, 10], _round_cost(split_head=True)
    # 27,000 usable: 300 tokens, 290 positions: 6,000 + 11,600; three of 100 tokens, 3 x 90 positions:
    # 6,000 + 10,800.
    plan = gm.plan_batches(lengths, prompts, cost, _usable(27000), 0, max_batch=8)
    assert [(p.indices, p.predicted_bytes) for p in plan] == [((0,), 17600), ((1, 2, 3), 16800)]
    # 14,040 usable: the long one with one block recomputed and 268 positions at a time:
    # 3,000 + 300 + 10,720; then two padded to 100 tokens (4,000 + 7,200) and the 80-token one alone
    # (1,600 + 2,800).
    plan = gm.plan_batches(lengths, prompts, cost, _usable(14040), 0, max_batch=8)
    assert [(p.indices, p.recompute, p.logit_chunk, p.predicted_bytes) for p in plan] == [
        ((0,), 1, 268, 14020), ((1, 2), 0, None, 11200), ((3,), 0, None, 4400)]


def test_a_step_may_fill_the_token_cap_exactly():
    cost = _round_cost(split_head=True)
    plan = gm.plan_batches([100, 100, 100], [10, 10, 10], cost, 10**9, 0, max_batch=8, max_batch_tokens=200)
    assert [p.indices for p in plan] == [(0, 1), (2,)]  # 2 x 100 = 200 fits; a third would make 300


@pytest.mark.parametrize(("usable", "expected"), [
    # all 90 positions of each sample at once: B = 1: 2,000 + 3,600; B = 2: 4,000 + 7,200; B = 3: 16,800
    (12000, [((0, 1), 0, 11200), ((2,), 0, 5600)]),
    # 5,000: alone with nothing recomputed is 5,600; one block recomputed: 1,000 + 100 + 3,600
    (5000, [((0,), 1, 4700), ((1,), 1, 4700), ((2,), 1, 4700)]),
    # 4,000: both blocks recomputed: 200 + 3,600
    (4000, [((0,), 2, 3800), ((1,), 2, 3800), ((2,), 2, 3800)]),
])
def test_steps_of_a_model_whose_logits_cannot_be_split(usable, expected):
    plan = gm.plan_batches([100, 100, 100], [10, 10, 10], _round_cost(split_head=False), _usable(usable), 0,
                           max_batch=8)
    assert [(p.indices, p.recompute, p.predicted_bytes) for p in plan] == expected
    assert all(p.logit_chunk is None and p.positions == 90 for p in plan)


def test_a_sample_too_big_for_a_model_whose_logits_cannot_be_split():
    with pytest.raises(gm.MemoryBudgetError, match=r"sample 0 \(100 tokens\) .* and all its logits"):
        gm.plan_batches([100], [10], _round_cost(split_head=False), _usable(3500), 0, max_batch=8)


def test_freed_memory_is_trimmed_with_no_padding_and_a_libc_without_malloc_trim_is_left_alone(monkeypatch):
    calls = []

    class Libc:
        def __init__(self, name):
            self.name = name

        def malloc_trim(self, pad):
            calls.append(pad)
            return 1

    monkeypatch.setattr(gm, "_LIBC", False)
    monkeypatch.setattr(gm.ctypes, "CDLL", Libc)
    gm.release_freed_memory()
    gm.release_freed_memory()
    assert calls == [0, 0]  # malloc_trim(3): pad 0 keeps nothing spare at the top of the heap

    class WithoutTrim:
        def __init__(self, name):
            self.name = name

    monkeypatch.setattr(gm, "_LIBC", False)
    monkeypatch.setattr(gm.ctypes, "CDLL", WithoutTrim)
    gm.release_freed_memory()  # another C library (musl): nothing to call, and not looked for again
    assert gm._LIBC is None


def test_a_model_whose_blocks_cannot_be_recomputed_is_never_planned_with_recomputation():
    cost = StepCost(blocks=(Polynomial(token=10.0), Polynomial(token=10.0)), block_inputs=(1.0, 1.0),
                    other=Polynomial(), logit_position=10.0, sample_block=0.0, block_cap=0.0, projection=0.0,
                    split_head=False, can_recompute=False)
    # alone: 2,000 + 3,600 = 5,600 bytes; 5,000 usable would fit only with a block recomputed
    with pytest.raises(gm.MemoryBudgetError, match=r"this model's blocks cannot be recomputed"):
        gm.plan_batches([100], [10], cost, _usable(5000), 0, max_batch=8)
    assert [p.recompute for p in gm.plan_batches([100], [10], cost, _usable(5600), 0, max_batch=8)] == [0]


def test_the_head_phase_counts_the_gradient_block_beside_two_copies_of_the_logits():
    # 5 positions of 1 byte: four copies 20, or two copies and a 100-byte gradient block 110; the
    # blocks' phase (nothing kept) is the gradient block alone, 100.
    cost = StepCost(blocks=(Polynomial(),), block_inputs=(0.0,), other=Polynomial(), logit_position=1.0,
                    sample_block=100.0, block_cap=1e9, projection=0.0, split_head=True, can_recompute=True)
    assert cost.bytes(1, 10, 5) == 110


def test_a_step_of_a_model_without_repeated_blocks():
    # other 3 x 2 x 10 = 60; no logit position: head max(0, 0 + 4) = 4, workspace 0 + 4; projection 5
    cost = StepCost(blocks=(), block_inputs=(), other=Polynomial(token=3.0), logit_position=1.0, sample_block=2.0,
                    block_cap=1e9, projection=5.0, split_head=False, can_recompute=False)
    assert cost.bytes(2, 10, 0) == 69
    assert cost.bytes(2, 10, 20) == 60 + 80 + 5  # 20 positions: four copies of the logits


def test_fit_polynomial_clamps_a_negative_term_to_zero_exactly():
    # Through (16, 1,000), (32, 900), (64, 2,000) at batch 1: const 4,600/3, token -46.875,
    # pair 1,300/1,536 (solved by hand). The token term is dropped; the constant stays (the longest
    # point then predicts 1,533 + 64^2 x 0.846 = 5,000 >= 2,000).
    fitted = gm.fit_polynomial((16, 32, 64), [1000.0, 900.0, 2000.0], batch=1)
    assert fitted.token == 0.0
    assert (fitted.const, fitted.pair) == pytest.approx((4600 / 3, 1300 / 1536))


@pytest.mark.parametrize(("tokens", "measured"), [((16, 32), [1.0, 2.0, 3.0]), ((16, 32, 64), [1.0, 2.0]),
                                                  ((16, 32, 64, 128), [1.0, 2.0, 3.0, 4.0])])
def test_fit_polynomial_needs_three_points(tokens, measured):
    with pytest.raises(ValueError, match="three lengths and three measurements"):
        gm.fit_polynomial(tokens, measured, batch=1)


@pytest.mark.parametrize("total", [0, -5, True, 1.5, "8"])
def test_a_budget_is_a_positive_whole_number_of_bytes(total):
    with pytest.raises(ValueError, match="memory budget must be a positive number of bytes"):
        MemoryBudget(total)


def test_the_smallest_budgets_are_accepted():
    import numpy as np

    assert MemoryBudget(1).total_bytes == 1 and MemoryBudget(np.int64(2)).total_bytes == 2


def test_kept_bytes_adds_each_distinct_storage_once_to_the_running_region():
    import torch

    weight = torch.zeros(100)
    kept = gm.KeptBytes([weight])
    a, b = torch.zeros(10), torch.zeros(6)  # float32: 40 and 24 bytes
    for t in (a, b, a[2:], weight, torch.empty(0), torch.empty(5, device="meta"), None, 3.0):
        kept.add(t)  # a view of a, the excluded weight, storages without data and non-tensors add nothing
    assert dict(kept.bytes) == {-1: 64.0}
    kept.region = 2
    kept.add(torch.zeros(3, dtype=torch.float64))
    kept.add(b)
    assert dict(kept.bytes) == {-1: 64.0, 2: 24.0}
    empty = gm.KeptBytes([])
    empty.add(torch.empty(0))  # no data (address 0): not even an entry of 0 bytes
    assert dict(empty.bytes) == {}


def test_fit_polynomial_never_gives_a_negative_constant():
    # Through (16, 1,000), (32, 3,000), (64, 4,000) at batch 1: const -2,000, token 218.75,
    # pair -1.953125 (solved by hand): pair and const are clamped to zero.
    fitted = gm.fit_polynomial((16, 32, 64), [1000.0, 3000.0, 4000.0], batch=1)
    assert (fitted.const, fitted.pair) == (0.0, 0.0) and fitted.token == pytest.approx(218.75)
