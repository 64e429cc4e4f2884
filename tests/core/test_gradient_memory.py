"""Gradient steps planned within a memory budget: same vectors, steps that fit, clear errors."""

from __future__ import annotations

import functools
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from prismatic_assets.core.gradient_memory import (
    HEADROOM,
    KeptBytes,
    MemoryBudget,
    MemoryBudgetError,
    Polynomial,
    StepCost,
    fit_polynomial,
    plan_batches,
    resident_bytes,
)
from prismatic_assets.core.gradients import GradientEmbedder, GradientSpec
from prismatic_assets.core.models import model_fingerprint
from prismatic_assets.core.projection import ProjectionSpec
from tests.conftest import make_tiny_llama, make_tiny_qwen2

LONG = ("Prove that the sum of two odd numbers is even. " * 2,
        "Write them as 2a + 1 and 2b + 1; their sum is 2(a + b + 1), a multiple of two. " * 8)
SHORT = [("What is 2 + 3?", "5"), ("Name a prime.", "7 is prime."), ("Is 9 odd?", "Yes, 9 = 2 * 4 + 1."),
         ("Halve 10.", "10 / 2 = 5.")]
PAIRS = [SHORT[0], LONG, *SHORT[1:]]
MB = 1_000_000


@pytest.fixture(scope="module")
def tokenizer(packaged_tokenizer):
    return packaged_tokenizer


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _embedder(tokenizer, budget: int | None, layers: int = 2) -> GradientEmbedder:
    model = make_tiny_llama(tokenizer, layers=layers)
    memory = None if budget is None else MemoryBudget(budget, resident=lambda: 0)
    return GradientEmbedder(model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=320),
                            model_fingerprint(model, tokenizer), memory=memory)


def _assert_same(many, one):
    for m, o in zip(many, one, strict=True):
        assert m.error is None and o.error is None
        np.testing.assert_allclose(m.vector, o.vector, rtol=1e-5, atol=1e-5)
        assert m.loss == pytest.approx(o.loss, rel=1e-5)


def _allocated_peak(run) -> int:
    """Peak bytes allocated by torch on CPU while `run()` runs, from the profiler's memory events
    (each op's own allocations minus frees, in time order): a measurement, not the model."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    current = peak = 0
    for event in sorted(prof.profiler.function_events, key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def test_long_and_short_samples_within_a_small_budget(tokenizer, one_thread):
    """The budgeted embedder gives the one-at-a-time vectors; the long sample goes alone with its
    logits in chunks, the short ones share steps, and every step's memory stays under the budget."""
    budget = 40 * MB
    embedder = _embedder(tokenizer, budget)
    one = [embedder.embed(p, r) for p, r in PAIRS]
    embedder.step_cost()  # measured once, by short forwards of its own
    shapes = []
    hook = embedder.model.model.embed_tokens.register_forward_pre_hook(lambda m, a: shapes.append(tuple(a[0].shape)))
    many = embedder.embed_many(PAIRS, batch_size=8)
    hook.remove()
    _assert_same(many, one)
    plan = embedder.last_plan
    lengths = {i: embedder.plan([PAIRS[i]])[0].tokens for i in range(len(PAIRS))}
    assert lengths[1] > 4 * max(lengths[i] for i in (0, 2, 3, 4))
    assert plan[0].indices == (1,) and plan[0].logit_chunk is not None  # the long one, alone and chunked
    assert max(len(p.indices) for p in plan[1:]) >= 2  # short samples share steps
    assert sorted(i for p in plan for i in p.indices) == list(range(len(PAIRS)))
    # The steps that ran are the planned ones (the model saw B x T = batch x padded length).
    assert shapes == [(len(p.indices), p.tokens) for p in plan]
    assert all(p.predicted_bytes <= budget * (1 - HEADROOM) for p in plan)
    # Measured, per step: what torch allocated stays under the budget.
    for p in plan:
        pairs = [PAIRS[i] for i in p.indices]
        peak = _allocated_peak(functools.partial(embedder.embed_many, pairs, batch_size=8))
        assert peak <= budget, (p, peak)
        assert peak >= 0.4 * p.predicted_bytes  # the model is not absurdly loose either


def test_the_budget_changes_the_steps_not_the_vectors(tokenizer, one_thread):
    reference = None
    plans = {}
    for budget in (None, 400 * MB, 40 * MB, 20 * MB):
        embedder = _embedder(tokenizer, budget)
        out = embedder.embed_many(PAIRS, batch_size=8)
        if reference is None:
            reference = out
        _assert_same(out, reference)
        plans[budget] = [(p.indices, p.logit_chunk) for p in embedder.last_plan]
    (today,) = plans[None]  # no budget: one step, longest first, all logits at once (today's batching)
    assert today[0][0] == 1 and sorted(today[0]) == [0, 1, 2, 3, 4] and today[1] is None
    assert len({tuple(v) for v in plans.values()}) == 4  # every budget planned differently
    assert len(plans[20 * MB]) > len(plans[40 * MB]) > len(plans[400 * MB])


def test_plan_is_the_steps_embed_many_takes(tokenizer, one_thread):
    """`plan` gives, without a gradient, the steps `embed_many` then takes under the same limits:
    indices into the pairs given (a pair that cannot be encoded left out), padded lengths, logit
    chunks, recomputed blocks and predicted bytes."""
    too_long = ("word " * 400, "a")  # its prompt alone is over max_length: never planned
    pairs = [SHORT[0], too_long, LONG, *SHORT[1:], too_long]
    kept = [0, 2, 3, 4, 5]
    # (budget, batch_size, max_batch_tokens, the most samples a step takes): 40 MB fits two short
    # samples a step and the long one only with its logits in chunks; 400 MB fits all four short
    # ones (3 with batch_size 3), but in 90 padded tokens only the two shortest (39 and 40 tokens),
    # with a budget or without.
    for budget, batch_size, max_tokens, most in ((40 * MB, 2, None, 2), (400 * MB, 3, None, 3),
                                                 (400 * MB, 8, 90, 2), (400 * MB, None, None, 4), (None, 8, 90, 2)):
        embedder = _embedder(tokenizer, budget)
        planned = embedder.plan(pairs, batch_size=batch_size, max_batch_tokens=max_tokens)
        out = embedder.embed_many(pairs, batch_size=batch_size, max_batch_tokens=max_tokens)
        assert planned == embedder.last_plan
        assert sorted(i for p in planned for i in p.indices) == kept == [i for i, o in enumerate(out) if not o.error]
        assert max(len(p.indices) for p in planned) == most
        assert all((p.predicted_bytes > 0) == (budget is not None) for p in planned)  # no budget: nothing predicted
        assert any(p.logit_chunk is not None for p in planned) == (budget == 40 * MB)
    with pytest.raises(ValueError, match="max_batch_tokens must be positive or None, got 0"):
        embedder.plan(pairs, max_batch_tokens=0)


def _step_cost(tokenizer, model, params: str | None = None, budget: int = 400 * MB):
    """The step cost a budgeted embedder measures on `model` (short samples, d = 16)."""
    return GradientEmbedder(model, tokenizer, ProjectionSpec(dim=16), GradientSpec(max_length=64, params=params),
                            "fp", memory=MemoryBudget(budget, resident=lambda: 0)).step_cost()


class _Plain(torch.nn.Module):
    """A causal LM's whole forward and nothing else: no head to split off, no logits_to_keep, and a
    config with the inner model's vocab_size (or, `with_vocab=False`, none)."""

    def __init__(self, inner, with_vocab: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.config = SimpleNamespace(vocab_size=inner.config.vocab_size) if with_vocab else SimpleNamespace()

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_the_step_cost_counts_each_logit_row_and_the_largest_selected_parameter(tokenizer, one_thread):
    """4 bytes per logit position and row: the rows of the output head when it has a weight, else
    the config's vocab_size, else the tokenizer's length (a config may claim a padded vocabulary the
    head does not have, or the reverse); 4 bytes per element of the largest selected parameter."""
    vocab = len(tokenizer)
    cost = functools.partial(_step_cost, tokenizer)
    claims_more = make_tiny_llama(tokenizer)
    claims_more.config.vocab_size = vocab + 64
    found = cost(claims_more, params=r"\.mlp\.")
    assert (found.logit_position, found.split_head, found.sample_block) == (4 * vocab, True, 4 * 32 * 64)
    no_weight = make_tiny_llama(tokenizer)
    no_weight.config.vocab_size = vocab + 64
    no_weight.get_output_embeddings = torch.nn.Identity  # a head without a weight: its rows are unknown
    found = cost(no_weight)
    assert (found.logit_position, found.split_head, found.sample_block) == (4 * (vocab + 64), False, 4 * vocab * 32)
    found = cost(_Plain(make_tiny_llama(tokenizer), with_vocab=False))
    assert (found.logit_position, found.split_head) == (4 * vocab, False)
    # Per-sample gradient blocks: 1/32 of the budget, at least 1 MiB, at most the default 256 MiB.
    for budget, cap in ((400 * MB, 400 * MB // 32), (16 * MB, 2**20), (64 * 2**30, 256 * 2**20)):
        assert cost(make_tiny_llama(tokenizer), budget=budget).block_cap == cap


class _KeywordBlocks(torch.nn.Module):
    """A causal LM whose blocks take their hidden states by keyword: backward cannot recompute them."""

    def __init__(self, vocab: int) -> None:
        from tests.core.test_per_sample import _Stack

        super().__init__()
        self.inner, self.config = _Stack(vocab=vocab, width=8, by_keyword=True), SimpleNamespace(vocab_size=vocab)

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.inner(input_ids))


def test_the_probe_measures_the_same_blocks_whichever_way_it_runs_the_model(tokenizer, one_thread):
    """The decoder alone (a split head), the whole model with logits_to_keep=1, or the whole model:
    the blocks save the same bytes. Outside them, per token: a split head holds three copies of
    the hidden states (the head's input, its gradient, the full-size gradient) where the whole
    model's probe saw one (the final norm's output the head reads): two more, 4 bytes x 32 each."""
    cost = functools.partial(_step_cost, tokenizer)
    split = cost(make_tiny_llama(tokenizer))
    kept_logits = make_tiny_llama(tokenizer)
    kept_logits.get_output_embeddings = torch.nn.Identity  # no head to split off: logits_to_keep=1
    whole = [cost(kept_logits), cost(_Plain(make_tiny_llama(tokenizer)))]
    assert split.split_head and not any(c.split_head for c in whole)
    assert all(block.token > 0 and block.pair > 0 for block in split.blocks) and len(split.blocks) == 2
    assert split.block_inputs == (4 * 32.0, 4 * 32.0)  # each block's input: the hidden states, float32
    for c in whole:
        assert (c.blocks, c.block_inputs) == (split.blocks, split.block_inputs)
        assert split.other.token - c.other.token == 2 * 4 * 32 and split.other.const == c.other.const


def test_a_model_that_changes_its_logits_after_the_head_computes_them_all_at_once(tokenizer, one_thread):
    """Logits scaled after the head (as softcapping models do): the head cannot be split off, so no
    step computes its logits in chunks, and the vectors are still the one-at-a-time ones."""
    model = make_tiny_llama(tokenizer)

    def scaled(module, args, out):
        out["logits"] = 2.0 * out.logits
        return out
    model.register_forward_hook(scaled)
    embedder = GradientEmbedder(model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=320), "fp",
                                memory=MemoryBudget(400 * MB, resident=lambda: 0))
    assert not embedder.step_cost().split_head
    one = [embedder.embed(p, r) for p, r in PAIRS]
    _assert_same(embedder.embed_many(PAIRS, batch_size=2), one)
    assert len(embedder.last_plan) == 3 and all(p.logit_chunk is None for p in embedder.last_plan)


def _untied_head_only(tokenizer) -> GradientEmbedder:
    """A Qwen2-shaped model with its own output matrix, and only that matrix selected: no gradient
    flows back into the decoder."""
    return GradientEmbedder(make_tiny_qwen2(tokenizer), tokenizer, ProjectionSpec(dim=64),
                            GradientSpec(max_length=320, params=r"^lm_head\."), "fp",
                            memory=MemoryBudget(400 * MB, resident=lambda: 0))


@pytest.mark.parametrize("make", [lambda tok: _embedder(tok, 400 * MB), _untied_head_only],
                         ids=["every-parameter", "untied-head-only"])
def test_a_step_of_several_samples_with_its_logits_in_chunks_gives_each_its_own_vector(tokenizer, one_thread, make):
    """On a tiny model the planner chunks only lone long samples; a step of three samples of other
    lengths, its logits 7 positions at a time (or all at once), gives each its one-at-a-time
    vector and loss."""
    from prismatic_assets.core.gradients import encode_chat_sample

    embedder = make(tokenizer)
    pairs = [LONG, (LONG[0], LONG[1][:200]), SHORT[1]]
    one = [embedder.embed(p, r) for p, r in pairs]
    encoded = [encode_chat_sample(tokenizer, p, r, 320) for p, r in pairs]
    assert embedder.step_cost().split_head and len({e.n_response_tokens for e in encoded}) == 3  # as a plan would
    for chunk in (7, None):
        _assert_same(embedder._embed_batch_hooks(encoded, 0, chunk), one)


def test_blocks_that_cannot_be_recomputed_are_found_by_a_probe_with_a_warning(tokenizer, one_thread):
    cost = functools.partial(_step_cost, tokenizer)
    with pytest.warns(RuntimeWarning, match=r"decoder blocks cannot be recomputed in backward \(block 3 \(_Block\) "
                                            r"does not take its hidden states as its first positional argument\)"):
        found = cost(_KeywordBlocks(len(tokenizer)))
    assert len(found.blocks) == 4 and not found.can_recompute
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cost(make_tiny_llama(tokenizer)).can_recompute


def test_blocks_are_recomputed_when_that_is_what_fits(tokenizer, one_thread):
    model = make_tiny_llama(tokenizer, layers=4)

    def budgeted(budget: int) -> GradientEmbedder:
        return GradientEmbedder(model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=256), "fp",
                                memory=MemoryBudget(budget, resident=lambda: 0))

    one = [budgeted(10**9).embed(*LONG)]
    # Above 32 x one sample's head gradient (6.3 MB) the step cost no longer depends on the budget.
    probe = budgeted(250 * MB)
    cost = probe.step_cost()
    (alone,) = probe.plan([LONG])
    assert alone.positions < 256  # all of its logits at once is the least a lone step takes first
    need = cost.bytes(1, alone.tokens, alone.positions, recompute=0)
    saved = cost.blocks[-1].at(1, alone.tokens) - cost.block_inputs[-1] * alone.tokens
    assert saved > 0
    # Room for all the logits only if at least one block is recomputed.
    embedder = budgeted(int((need - saved / 2) / (1 - HEADROOM)))
    embedder.step_cost()  # its probes run the model too: measured first
    runs = []  # the step's forwards of the last block: without gradients (keeping nothing), then in backward
    hook = model.model.layers[-1].mlp.register_forward_hook(lambda *a: runs.append(torch.is_grad_enabled()))
    out = embedder.embed_many([LONG])
    hook.remove()
    (step,) = embedder.last_plan
    assert step.recompute >= 1 and step.logit_chunk is None
    assert runs == [False, True]
    _assert_same(out, one)


def test_a_sample_that_cannot_fit_names_the_setting_and_the_figure(tokenizer, one_thread):
    embedder = _embedder(tokenizer, 3 * MB)
    with pytest.raises(MemoryBudgetError, match=r"sample 1 \(\d+ tokens\) needs .* raise compute.memory_gb to at "
                                                r"least [0-9.]+") as caught:
        embedder.embed_many(PAIRS)
    figure = float(re.search(r"at least ([0-9.]+)", str(caught.value)).group(1))
    # The stated figure is enough: with that budget the same samples go through.
    enough = GradientEmbedder(embedder.model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=320),
                              embedder.model_fingerprint, memory=MemoryBudget.gb(figure, resident=lambda: 0))
    assert all(o.error is None for o in enough.embed_many(PAIRS))


def test_what_is_already_resident_counts_against_the_budget(tokenizer, one_thread):
    model = make_tiny_llama(tokenizer)
    embedder = GradientEmbedder(model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=320), "fp",
                                memory=MemoryBudget(100 * MB, resident=lambda: 99 * MB))
    with pytest.raises(MemoryBudgetError, match="already resident"):
        embedder.embed_many(PAIRS)
    # This process's own resident memory: a few hundred MB at least (torch and the model are loaded).
    assert 100 * MB < resident_bytes() < 64 * 2**30


def test_plan_batches_by_hand():
    """A cost with round numbers: 10 bytes per token per block (2 blocks), 1 per token of a
    block's input, 10 per logit position and copy; nothing else. Budgets worked out by hand."""
    cost = StepCost(blocks=(Polynomial(token=10.0), Polynomial(token=10.0)), block_inputs=(1.0, 1.0),
                    other=Polynomial(), logit_position=10.0, sample_block=0.0, block_cap=0.0, projection=0.0,
                    split_head=True, can_recompute=True)
    # B samples of T tokens, P positions, c blocks recomputed: 10BT(2 - c) + cBT + max(40P, 10BT).
    assert cost.bytes(1, 100, 50, 0) == 2000 + 2000
    assert cost.bytes(1, 100, 50, 2) == 200 + 2000
    assert cost.bytes(2, 100, 100, 1) == 2000 + 200 + 4000
    lengths, prompts = [300, 100, 90, 80], [10, 10, 10, 10]
    def budget(usable: float) -> float:  # what leaves `usable` bytes to plan, HEADROOM aside
        return usable / (1 - HEADROOM)

    # 27000 usable: the 300-token sample (290 positions) alone, 6000 + 11600; with a second
    # one at 256 positions each 12000 + 20480 > 27000. The three short ones: 6000 + 10800.
    plan = plan_batches(lengths, prompts, cost, budget(27000), 0, max_batch=8)
    assert [(p.indices, p.recompute, p.logit_chunk) for p in plan] == [((0,), 0, None), ((1, 2, 3), 0, None)]
    # 14040 usable: at 256 positions the long one needs one block recomputed
    # (3000 + 300 + 10240 = 13540), then takes 268 positions at a time; 3 short ones: 16800 > 14040.
    plan = plan_batches(lengths, prompts, cost, budget(14040), 0, max_batch=8)
    assert [(p.indices, p.recompute, p.logit_chunk) for p in plan] == [((0,), 1, 268), ((1, 2), 0, None),
                                                                        ((3,), 0, None)]
    # 10800 usable: even two recomputed blocks leave no room for 256 positions (10840),
    # so no recompute and smaller chunks: 6000 + 40P <= 10800, P = 120.
    plan = plan_batches(lengths, prompts, cost, budget(10800), 0, max_batch=8)
    assert [(p.indices, p.recompute, p.logit_chunk) for p in plan] == [((0,), 0, 120), ((1,), 0, None),
                                                                        ((2, 3), 0, None)]
    assert all(p.predicted_bytes <= 10800 for p in plan)
    # The batch cap and the token cap still hold (a lone sample over the token cap still runs).
    assert [p.indices for p in plan_batches(lengths, prompts, cost, 10**9, 0, max_batch=2)] == [(0, 1), (2, 3)]
    assert [p.indices for p in plan_batches(lengths, prompts, cost, 10**9, 0, 8, max_batch_tokens=250)] == \
        [(0,), (1, 2), (3,)]
    # What is resident comes off the budget; below 16 positions with every block recomputed: too big.
    assert plan_batches(lengths, prompts, cost, budget(27000) + 12000, 12000, max_batch=8) == \
        plan_batches(lengths, prompts, cost, budget(27000), 0, max_batch=8)
    with pytest.raises(MemoryBudgetError, match="sample 0 \\(300 tokens\\)"):
        plan_batches(lengths, prompts, cost, 1000, 0, max_batch=8)


def test_fit_polynomial_recovers_constant_linear_and_quadratic_terms():
    truth = Polynomial(const=5000.0, token=300.0, pair=4.0)
    lengths = (16, 32, 64)
    fitted = fit_polynomial(lengths, [truth.at(2, t) for t in lengths], batch=2)
    assert (fitted.const, fitted.token, fitted.pair) == pytest.approx((5000.0, 300.0, 4.0))
    # A term that would come out negative is dropped and the constant covers the longest length.
    noisy = fit_polynomial(lengths, [1000.0, 900.0, 2000.0], batch=1)
    assert noisy.token >= 0 and noisy.pair >= 0 and noisy.at(1, 64) >= 2000.0


def test_kept_bytes_counts_what_autograd_saves_once():
    layer = torch.nn.Linear(8, 16)
    for p in layer.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 8, requires_grad=True)
    kept = KeptBytes(layer.parameters())
    with kept.recording([]):
        y = torch.tanh(layer(x))  # Linear saves its (frozen, excluded) weight; tanh saves its output
        z = y * y  # mul saves y twice: one storage, counted once
    assert kept.bytes[-1] == 4 * 16 * 4
    del z


def test_the_step_cost_is_the_same_each_time_it_is_measured(tokenizer, one_thread):
    """Saved tensors are counted, not kept by autograd: a storage freed during a probe forward
    must not hide a later one that the allocator puts at its address (that made the measured
    cost, and so the plans, change from one measurement to the next)."""
    model = make_tiny_llama(tokenizer, layers=4)

    def measured() -> StepCost:
        return GradientEmbedder(model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=256), "fp",
                                memory=MemoryBudget(250 * MB, resident=lambda: 0)).step_cost()

    first = measured()
    assert [measured() for _ in range(3)] == [first] * 3
    # Four blocks of one shape: each after the first saves the same per token (the first also keeps its input).
    assert len({b.token for b in first.blocks[1:]}) == 1 and first.blocks[0].token >= first.blocks[1].token


def test_a_budgeted_embedder_leaves_nothing_behind_once_dropped(tokenizer, one_thread):
    """Measuring the step cost must not tie the model to autograd graphs that outlive it: a
    long-lived process (a notebook, an in-process run, a Ray actor) that loads proxies one after
    another would otherwise keep every model it ever loaded."""
    import gc
    import weakref

    embedder = _embedder(tokenizer, 200 * MB)
    out = embedder.embed_many(PAIRS)
    assert all(o.error is None for o in out) and embedder._cost is not None  # the probe forwards ran
    model = weakref.ref(embedder.model)
    del embedder, out
    gc.collect()
    assert model() is None


def test_a_graph_recorded_for_counting_refuses_backward():
    layer = torch.nn.Linear(8, 16)
    x = torch.randn(4, 8, requires_grad=True)
    with KeptBytes([]).recording([]):
        y = torch.tanh(layer(x)).sum()
    with pytest.raises(RuntimeError, match="cannot run backward"):
        y.backward()


def test_the_memory_a_step_freed_is_handed_back_before_the_next_within_a_budget(tokenizer, one_thread, monkeypatch):
    import prismatic_assets.core.gradients as gradients

    handed_back = []
    monkeypatch.setattr(gradients, "release_freed_memory", lambda: handed_back.append(1))
    _embedder(tokenizer, None).embed_many(PAIRS, batch_size=8)
    assert handed_back == []  # no budget: nothing to keep under
    embedder = _embedder(tokenizer, 40 * MB)
    embedder.embed_many(PAIRS, batch_size=8)
    assert len(embedder.last_plan) > 1
    assert len(handed_back) == 1 + len(embedder.last_plan)  # once the step cost is measured, then after each step


def test_a_budget_without_a_resident_reader_counts_this_process(tokenizer, one_thread):
    """resident=None: the process's own resident memory counts against the budget (a few hundred MB
    here), so a budget of 64 GiB plans steps and one of 50 MB has no room left."""
    model = make_tiny_llama(tokenizer)
    ample = GradientEmbedder(model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=320), "fp",
                             memory=MemoryBudget.gb(64))
    assert [o.error for o in ample.embed_many(PAIRS)] == [None] * len(PAIRS)
    tight = GradientEmbedder(model, tokenizer, ProjectionSpec(dim=64), GradientSpec(max_length=320), "fp",
                             memory=MemoryBudget(50 * MB))
    with pytest.raises(MemoryBudgetError, match="already resident"):
        tight.plan(PAIRS)
